//! Content hashing: SHA-256 of files and of whole trees, the way cache keys see them.
//! A tree is its sorted relative paths with, for each, the kind, the exec bit and the
//! content hash (or symlink target). Mtimes, owners and absolute paths never enter.
//! Files are hashed in parallel on all cores.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

mod source_tree;
#[cfg(test)]
pub(crate) use source_tree::source_tree_listing;
pub(crate) use source_tree::{changes, kernel_tree_listing, stat_cache_name, Change, Listing};
/// Hex SHA-256 of a byte string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Incremental SHA-256, for data that arrives in pieces (files, downloads). ring's
/// implementation is OpenSSL's assembly (SHA-NI, AVX2): faster than `sha256sum` here.
pub struct Sha256Stream(ring::digest::Context);

impl Default for Sha256Stream {
    fn default() -> Self {
        Sha256Stream(ring::digest::Context::new(&ring::digest::SHA256))
    }
}

impl Sha256Stream {
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finish())
    }
}

/// Which side of a `copy_hashed` failed (a network read, say, or a local write).
#[derive(Debug)]
pub enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies `reader` into `writer` while hashing, up to `limit` bytes: the hex SHA-256 of
/// what was copied and its size, which is `limit + 1` when the reader had more (so a
/// download from a server that sends too much stops there). The reads run on a thread of
/// their own, a buffer ahead of the hashing and writing: a download's socket copies and
/// its hashing overlap.
pub fn copy_hashed(
    reader: &mut (impl Read + Send),
    writer: &mut impl std::io::Write,
    limit: u64,
) -> Result<(String, u64), CopyError> {
    const BUFFER: usize = 1 << 20;
    const BUFFERS: usize = 3;
    if limit <= BUFFER as u64 {
        // One buffer's worth (most files of a tree): a thread costs more than it saves.
        let mut buf = vec![0u8; limit as usize + 1];
        let n = fill(reader, &mut buf).map_err(CopyError::Read)?;
        let copied = (n as u64).min(limit);
        let mut hasher = Sha256Stream::default();
        hasher.update(&buf[..copied as usize]);
        writer
            .write_all(&buf[..copied as usize])
            .map_err(CopyError::Write)?;
        return Ok((hasher.finish_hex(), n as u64));
    }
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel(BUFFERS);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(vec![0u8; BUFFER])
            .expect("the channel holds every buffer");
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Ok(mut buf) = empty_rx.recv() {
                let filled = fill(reader, &mut buf);
                let last = !matches!(filled, Ok(n) if n > 0);
                if full_tx.send(filled.map(|n| (buf, n))).is_err() || last {
                    break;
                }
            }
        });
        // Owning its ends of the channels, so that returning early (an error, too much
        // data) drops them and the reading thread ends at its next send or receive.
        let mut consume = move || {
            let mut hasher = Sha256Stream::default();
            let mut size = 0u64;
            while let Ok(filled) = full_rx.recv() {
                let (buf, n) = filled.map_err(CopyError::Read)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > limit {
                    return Ok((hasher.finish_hex(), limit + 1));
                }
                hasher.update(&buf[..n]);
                writer.write_all(&buf[..n]).map_err(CopyError::Write)?;
                // The reader may have ended already: its buffers are not needed then.
                let _ = empty_tx.send(buf);
            }
            Ok((hasher.finish_hex(), size))
        };
        consume()
    })
}

/// Reads into `buf` until it is full or the reader ends (a socket gives a few KiB per
/// read: whole buffers make fewer, larger writes, and hashing in large blocks).
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(got) => n += got,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Hex SHA-256 and size of a file, read in large blocks.
pub fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = fs_err::File::open(path)?;
    let mut hasher = Sha256Stream::default();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((hasher.finish_hex(), size))
}

/// One entry of a hashed tree, as it appears in cache-key inputs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TreeEntry {
    File {
        sha256: String,
        size: u64,
        exec: bool,
    },
    Symlink {
        target: String,
    },
    Dir,
}

impl TreeEntry {
    /// Hashes one path without following a final symlink.
    /// Anything but a regular file, a folder or a symlink (a FIFO would block the read, a
    /// device never end it) is refused with `InvalidInput`, naming the path.
    pub fn of(path: &Path) -> std::io::Result<TreeEntry> {
        let meta = fs_err::symlink_metadata(path)?;
        let kind = meta.file_type();
        Ok(if kind.is_symlink() {
            let target = fs_err::read_link(path)?;
            TreeEntry::Symlink {
                target: utf8(target.as_os_str(), path)?.to_string(),
            }
        } else if kind.is_dir() {
            TreeEntry::Dir
        } else if !kind.is_file() {
            return Err(special_file(path, &kind));
        } else {
            let (sha256, size) = sha256_file(path)?;
            TreeEntry::File {
                sha256,
                size,
                exec: meta.permissions().mode() & 0o111 != 0,
            }
        })
    }
}

/// A name as UTF-8, or `InvalidInput` naming the path: a lossy conversion would let two
/// different names collapse into one key (and an edit to one be a stale hit).
pub fn utf8<'a>(name: &'a std::ffi::OsStr, path: &Path) -> std::io::Result<&'a str> {
    name.to_str().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: the name is not UTF-8; rename it (vmbuild keys names by their text)",
                path.display()
            ),
        )
    })
}

fn special_file(path: &Path, kind: &std::fs::FileType) -> std::io::Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    };
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is {what}: inputs must be regular files, folders or symlinks",
            path.display()
        ),
    )
}

/// Every entry under `root` by relative path, sorted. `keep` filters relative paths
/// (returning false for a folder skips everything below it).
pub fn hash_tree(
    root: &Path,
    keep: impl Fn(&Path) -> bool,
) -> std::io::Result<BTreeMap<String, TreeEntry>> {
    let mut paths: Vec<PathBuf> = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    for entry in walker.filter_entry(|e| e.path().strip_prefix(root).map(&keep).unwrap_or(true)) {
        let entry = entry.map_err(|e| {
            let path = e
                .path()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| root.to_path_buf());
            std::io::Error::other(format!("walk {}: {e}", path.display()))
        })?;
        paths.push(entry.into_path());
    }
    // Small trees are hashed inline: starting the thread pool costs more than it saves.
    let hash = |path: &PathBuf| -> std::io::Result<(String, TreeEntry)> {
        let rel = utf8(path.strip_prefix(root).unwrap_or(path).as_os_str(), path)?;
        Ok((rel.to_string(), TreeEntry::of(path)?))
    };
    if paths.len() < PARALLEL_FROM_FILES {
        paths.iter().map(hash).collect()
    } else {
        paths.par_iter().map(hash).collect()
    }
}

/// Trees with fewer files than this are hashed on one thread.
const PARALLEL_FROM_FILES: usize = 64;

/// One digest for a whole tree listing.
pub fn tree_digest(tree: &BTreeMap<String, TreeEntry>) -> String {
    let listing = serde_json::to_vec(tree).expect("tree listings serialize");
    sha256_hex(&listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_hash_sees_content_exec_bit_and_symlinks_but_not_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.sh");
        std::fs::write(&a, "echo hi\n").unwrap();
        std::os::unix::fs::symlink("a.sh", dir.path().join("link")).unwrap();
        let first = tree_digest(&hash_tree(dir.path(), |_| true).unwrap());

        // Touching the file changes nothing.
        let f = std::fs::File::options().write(true).open(&a).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(
            first,
            tree_digest(&hash_tree(dir.path(), |_| true).unwrap())
        );

        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exec = tree_digest(&hash_tree(dir.path(), |_| true).unwrap());
        assert_ne!(first, exec);

        std::fs::remove_file(dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join("link")).unwrap();
        assert_ne!(exec, tree_digest(&hash_tree(dir.path(), |_| true).unwrap()));
    }

    #[test]
    fn special_files_and_non_utf8_names_are_refused_naming_the_path() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let err = hash_tree(dir.path(), |_| true).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("pipe is a FIFO"), "{err}");
        let err = TreeEntry::of(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");

        std::fs::remove_file(&fifo).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(dir.path().join(odd), "x").unwrap();
        let err = hash_tree(dir.path(), |_| true).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn filter_skips_whole_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "x").unwrap();
        std::fs::write(dir.path().join("kept"), "x").unwrap();
        let tree = hash_tree(dir.path(), |p| p != Path::new(".git")).unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["kept"]);
    }

    #[test]
    fn file_hash_matches_known_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "abc").unwrap();
        let (hash, size) = sha256_file(&p).unwrap();
        assert_eq!(
            hash,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(size, 3);
    }
}
