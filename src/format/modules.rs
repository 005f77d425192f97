//! The kernel modules a VM needs before its disks work, taken from the kernel's own entry
//! (`modules/<release>/`) and packed as an initramfs layer: `/vmbuild/boot/modules/` and
//! `modules.load`, which stage 1 (or the agent, on a cpio root) loads in order. A Debian
//! kernel package has no `modules.dep`, so dependencies come from each module's
//! `.modinfo` (`modinfo`). Both the disk builder (a UKI's initramfs) and the test
//! phase use it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cpio::CpioWriter;
use super::modinfo;
use crate::fsio::{io_err, IoError};

/// A gzip cpio with `wanted` and every module they depend on under
/// `/vmbuild/boot/modules/`, and `/vmbuild/boot/modules.load` naming them in load order
/// (dependencies first). A module the kernel has built in, or lacks, is left out: the
/// config check above has spoken for the ones that matter. Empty for a kernel without
/// modules.
/// `kernel` is the kernel entry's folder, `release` its kernel release (the manifest's
/// detail), `kernel_name` the recipe's name for messages.
pub(crate) fn layer(
    kernel_name: &str,
    kernel: &Path,
    release: Option<&str>,
    wanted: &[&str],
) -> Result<Vec<u8>, ModulesError> {
    let release = release.unwrap_or("");
    let tree = kernel.join("modules").join(release);
    if release.is_empty() || !tree.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: BTreeMap<String, ModuleFile> = BTreeMap::new();
    // Sorted, so that a name found twice always resolves to the same file (the first).
    for entry in walkdir::WalkDir::new(&tree)
        .sort_by_file_name()
        .into_iter()
        .flatten()
    {
        let path = entry.path();
        if let Some(name) = modinfo::module_name(path) {
            files
                .entry(name)
                .or_insert(ModuleFile::Plain(path.to_path_buf()));
        } else if modinfo::is_compressed_module(path) {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let name = name[..name.find(".ko").unwrap_or(name.len())].replace('-', "_");
            files
                .entry(name)
                .or_insert(ModuleFile::Compressed(path.to_path_buf()));
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in wanted {
        add_with_deps(name, &files, &mut bytes, &mut order, 0).map_err(|compressed| {
            ModulesError::Compressed(format!(
                "kernel `{}` has compressed modules ({}); vmbuild loads uncompressed .ko \
                 files only (a kernel built with CONFIG_MODULE_COMPRESS_NONE=y, or with \
                 the drivers built in: modules/kconfig/virtio.config and ext4.config)",
                kernel_name,
                compressed.display()
            ))
        })?;
    }
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let mut cpio = CpioWriter::fast(Vec::new());
    let write = |cpio: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        cpio.dir("/vmbuild", 0o755)?;
        cpio.dir("/vmbuild/boot", 0o755)?;
        cpio.dir("/vmbuild/boot/modules", 0o755)?;
        for name in &order {
            cpio.file(
                &format!("/vmbuild/boot/modules/{name}.ko"),
                0o644,
                &bytes[name],
            )?;
        }
        let list: String = order.iter().map(|n| format!("{n}\n")).collect();
        cpio.file("/vmbuild/boot/modules.load", 0o644, list.as_bytes())
    };
    write(&mut cpio).map_err(io_err("pack", &tree))?;
    Ok(cpio.finish().map_err(io_err("pack", &tree))?)
}

/// Why the modules could not be packed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ModulesError {
    /// The kernel's modules are compressed: the recipe's kernel cannot be used (exit 2).
    #[error("{0}")]
    Compressed(String),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A module file of the kernel entry.
enum ModuleFile {
    Plain(PathBuf),
    /// `.ko.xz` and the like: busybox's insmod cannot load it.
    Compressed(PathBuf),
}

/// Appends `name` to `order` after what it depends on (depth-first; modules.dep graphs
/// have no cycles, and a depth past 32 says this one does). A name with no file is built
/// in, or not in this kernel; `Err` names a compressed module that is needed.
fn add_with_deps(
    name: &str,
    files: &BTreeMap<String, ModuleFile>,
    bytes: &mut BTreeMap<String, Vec<u8>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<(), PathBuf> {
    if order.iter().any(|n| n == name) || depth > 32 {
        return Ok(());
    }
    let path = match files.get(name) {
        None => return Ok(()),
        Some(ModuleFile::Compressed(path)) => return Err(path.clone()),
        Some(ModuleFile::Plain(path)) => path,
    };
    // An unreadable module is left for insmod to complain about in the guest.
    let data = fs_err::read(path).unwrap_or_default();
    for dep in modinfo::depends(&data) {
        add_with_deps(&dep, files, bytes, order, depth + 1)?;
    }
    if !order.iter().any(|n| n == name) {
        order.push(name.to_string());
        bytes.insert(name.to_string(), data);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(modules: &[(&str, &str)]) -> (tempfile::TempDir, BTreeMap<String, ModuleFile>) {
        let dir = tempfile::tempdir().unwrap();
        let mut files = BTreeMap::new();
        for (name, depends) in modules {
            let path = dir.path().join(name);
            fs_err::write(&path, format!("\x7fELF\0depends={depends}\0")).unwrap();
            let (key, entry) = match modinfo::module_name(&path) {
                Some(module) => (module, ModuleFile::Plain(path.clone())),
                None => (
                    name.trim_end_matches(".ko.xz").to_string(),
                    ModuleFile::Compressed(path.clone()),
                ),
            };
            files.insert(key, entry);
        }
        (dir, files)
    }

    fn load_order(
        files: &BTreeMap<String, ModuleFile>,
        wanted: &[&str],
    ) -> Result<Vec<String>, PathBuf> {
        let (mut bytes, mut order) = (BTreeMap::new(), Vec::new());
        for name in wanted {
            add_with_deps(name, files, &mut bytes, &mut order, 0)?;
        }
        Ok(order)
    }

    #[test]
    fn modules_load_after_what_they_depend_on_each_once() {
        let (_dir, files) = tree(&[
            ("virtio.ko", ""),
            ("virtio_ring.ko", ""),
            ("virtio_pci.ko", "virtio_ring,virtio"),
            ("virtio_blk.ko", "virtio,virtio_ring"),
            ("ext4.ko", "jbd2,crc16"),
            ("jbd2.ko", ""),
            ("loop-a.ko", "loop_b"),
            ("loop-b.ko", "loop_a"),
        ]);
        // crc16 has no file: built in.
        let order = load_order(&files, &["virtio_pci", "virtio_blk", "ext4"]).unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_pci",
                "virtio_blk",
                "jbd2",
                "ext4"
            ]
        );
        // A cycle ends instead of recursing forever, each module still once.
        let mut cycle = load_order(&files, &["loop_a"]).unwrap();
        cycle.sort();
        assert_eq!(cycle, ["loop_a", "loop_b"]);
    }

    #[test]
    fn a_needed_compressed_module_is_refused_even_as_a_dependency() {
        let (_dir, files) = tree(&[("ext4.ko", "jbd2"), ("jbd2.ko.xz", "")]);
        let refused = load_order(&files, &["ext4"]).unwrap_err();
        assert!(refused.ends_with("jbd2.ko.xz"), "{refused:?}");
    }
}
