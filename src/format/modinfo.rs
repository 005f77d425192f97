//! Kernel module files: the `.modinfo` strings that say what a module needs loaded
//! before it (`depends=`), and the name a module file is loaded by. Read straight from
//! the `.ko` file, since a Debian kernel package ships no `modules.dep` (depmod writes
//! it at install time) and the host's kmod is not needed.

use std::path::Path;

/// The module a file holds: its file name without `.ko`, with `-` read as `_`, as the
/// kernel names it (`crc32c-intel.ko` is `crc32c_intel`). `None` for anything but `.ko`.
pub(crate) fn module_name(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    Some(name.strip_suffix(".ko")?.replace('-', "_"))
}

/// Whether a file is a compressed module (`.ko.xz`, `.ko.zst`, `.ko.gz`), which busybox's
/// insmod cannot load as it is.
pub(crate) fn is_compressed_module(file: &Path) -> bool {
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// The modules `module` (the bytes of a `.ko`) depends on. The `.modinfo` section is a
/// run of NUL-terminated `key=value` strings; `depends=` lists names separated by commas
/// (empty when there are none).
pub(crate) fn depends(module: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"depends=";
    let mut at = 0;
    while let Some(found) = find(&module[at..], KEY) {
        let start = at + found;
        // A key starts a string: at the section's start (after a NUL) or the file's.
        if start == 0 || module[start - 1] == 0 {
            let value = &module[start + KEY.len()..];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return String::from_utf8_lossy(&value[..end])
                .split(',')
                .filter(|d| !d.is_empty())
                .map(|d| d.replace('-', "_"))
                .collect();
        }
        at = start + 1;
    }
    Vec::new()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_is_read_from_the_modinfo_strings() {
        let ko =
            b"\x7fELF junk depends=not-this\0license=GPL\0depends=jbd2,mbcache,crc16\0name=ext4\0";
        assert_eq!(depends(ko), ["jbd2", "mbcache", "crc16"]);
        assert!(depends(b"\0depends=\0name=crc16\0").is_empty());
        assert!(depends(b"no modinfo here").is_empty());
        assert_eq!(depends(b"depends=virtio\0"), ["virtio"]);
    }

    #[test]
    fn module_names_read_dashes_as_underscores() {
        assert_eq!(
            module_name(Path::new("/m/crc32c-intel.ko")).as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name(Path::new("/m/ext4.ko.xz")), None);
        assert!(is_compressed_module(Path::new("/m/ext4.ko.xz")));
        assert!(!is_compressed_module(Path::new("/m/ext4.ko")));
    }
}
