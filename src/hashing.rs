//! Content hashing: SHA-256 of files and of whole trees, the way cache keys see them.
//! A tree is its sorted relative paths with, for each, the kind, the exec bit and the
//! content hash (or symlink target). Mtimes, owners and absolute paths never enter.
//! Files are hashed in parallel on all cores.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
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

/// Digest of a source tree such as a kernel checkout: `.git` is left out and, in a git
/// checkout, everything its `.gitignore` files exclude (build products). A stat cache in `cache_file` (path, size,
/// mtime, ctime, inode -> hash) means only changed files are read again, so re-keying an
/// unchanged tree costs a parallel walk and a stat per file.
///
/// Every name in `required` must be among the keyed files (a kernel tree needs its top-level
/// `Makefile` and `Kconfig`); when one is missing, the error names the ignore rule that hid it.
pub fn source_tree_digest(
    root: &Path,
    cache_file: &Path,
    required: &[&str],
) -> std::io::Result<String> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    // Cache lines: "<stamp>\t<entry>\t<path>", borrowed straight from the file's text.
    let cache_text = fs_err::read_to_string(cache_file).unwrap_or_default();
    let old: HashMap<&str, (&str, &str)> = cache_text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            let (stamp, entry, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((path, (stamp, entry)))
        })
        .collect();

    // Each walker thread collects into its own list, handed over when the thread ends.
    struct Collector<'a> {
        root: &'a Path,
        local: Vec<(String, std::fs::Metadata)>,
        sink: &'a Mutex<Vec<(String, std::fs::Metadata)>>,
        error: &'a Mutex<Option<std::io::Error>>,
    }
    impl Drop for Collector<'_> {
        fn drop(&mut self) {
            self.sink
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut self.local);
        }
    }
    let found = Mutex::new(Vec::new());
    let walk_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(false)
        .git_global(false)
        // .gitignore only speaks for git checkouts: Debian's linux-source tarball, for one,
        // ships a .gitignore that ignores every top-level entry.
        .require_git(true)
        .parents(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build_parallel()
        .run(|| {
            let mut collector = Collector {
                root,
                local: Vec::new(),
                sink: &found,
                error: &walk_error,
            };
            Box::new(move |entry| {
                match entry {
                    Ok(entry) if entry.depth() > 0 => {
                        if let Ok(meta) = entry.path().symlink_metadata() {
                            if !meta.is_dir() {
                                let rel = entry
                                    .path()
                                    .strip_prefix(collector.root)
                                    .unwrap_or(entry.path());
                                collector
                                    .local
                                    .push((rel.to_string_lossy().into_owned(), meta));
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        *collector.error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(std::io::Error::other(e.to_string()))
                    }
                }
                ignore::WalkState::Continue
            })
        });
    if let Some(e) = walk_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let mut files = found.into_inner().unwrap_or_else(|e| e.into_inner());
    // In a git checkout, ignore rules never hide a tracked file: the build reads those too
    // (Debian's linux-source tree ignores `/*` yet a checkout of it tracks everything).
    if root.join(".git").exists() {
        let walked: std::collections::HashSet<String> =
            files.iter().map(|(rel, _)| rel.clone()).collect();
        for rel in git_tracked(root)? {
            if !walked.contains(&rel) {
                if let Ok(meta) = root.join(&rel).symlink_metadata() {
                    files.push((rel, meta));
                }
            }
        }
    }
    files.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for name in required {
        if files
            .binary_search_by(|(rel, _)| rel.as_str().cmp(name))
            .is_err()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "{}: the files vmbuild keys hold no top-level `{name}`{}",
                    root.display(),
                    ignore_rule(root, name)
                        .map(|rule| format!(" (hidden by the ignore rule {rule})"))
                        .unwrap_or_default()
                ),
            ));
        }
    }

    let stamp = |m: &std::fs::Metadata| {
        format!(
            "{}:{}.{}:{}.{}:{}:{:o}",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            m.mode()
        )
    };
    // Unchanged files (same stamp) keep their cached entry; the rest are read again.
    let hashed: Vec<(String, Option<String>)> = files
        .par_iter()
        .map(|(rel, meta)| {
            let st = stamp(meta);
            if old
                .get(rel.as_str())
                .is_some_and(|(cached, _)| *cached == st)
            {
                return Ok((st, None));
            }
            let entry = match TreeEntry::of(&root.join(rel))? {
                TreeEntry::File { sha256, size, exec } => {
                    format!("{}:{sha256}:{size}", if exec { 'x' } else { 'f' })
                }
                TreeEntry::Symlink { target } => format!("l:{target}"),
                TreeEntry::Dir => "d".to_string(),
            };
            Ok((st, Some(entry)))
        })
        .collect::<std::io::Result<_>>()?;

    let mut digest = Sha256Stream::default();
    let mut cache = String::with_capacity(cache_text.len().max(files.len() * 120));
    let mut changed = old.len() != files.len();
    for ((rel, _), (st, fresh)) in files.iter().zip(&hashed) {
        changed |= fresh.is_some();
        let entry = match fresh {
            Some(e) => e.as_str(),
            None => old[rel.as_str()].1,
        };
        digest.update(rel.as_bytes());
        digest.update(b"\0");
        digest.update(entry.as_bytes());
        digest.update(b"\n");
        cache.push_str(st);
        cache.push('\t');
        cache.push_str(entry);
        cache.push('\t');
        cache.push_str(rel);
        cache.push('\n');
    }
    if changed {
        if let Some(dir) = cache_file.parent() {
            fs_err::create_dir_all(dir)?;
        }
        let tmp = cache_file.with_extension(format!("tmp.{}", std::process::id()));
        fs_err::write(&tmp, cache)?;
        fs_err::rename(&tmp, cache_file)?;
    }
    Ok(digest.finish_hex())
}

/// The files git tracks in the checkout at `root`, relative to it.
fn git_tracked(root: &Path) -> std::io::Result<Vec<String>> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .output()
        .map_err(|e| {
            std::io::Error::other(format!("run `git ls-files` in {}: {e}", root.display()))
        })?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "`git ls-files` in {} failed: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    out.stdout
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| {
            std::str::from_utf8(name).map(str::to_string).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{}: a tracked file name is not UTF-8: {}",
                        root.display(),
                        String::from_utf8_lossy(name)
                    ),
                )
            })
        })
        .collect()
}

/// `file:line:pattern` of the ignore rule that hides `name` in `root`, if one does.
fn ignore_rule(root: &Path, name: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["check-ignore", "-v", "--no-index", "--"])
        .arg(name)
        .output()
        .ok()?;
    let line = String::from_utf8_lossy(&out.stdout);
    let (rule, _path) = line.trim().split_once('\t')?;
    Some(format!("`{rule}`"))
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

    #[test]
    fn source_tree_digest_skips_ignored_files_and_reuses_its_stat_cache() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("src");
        std::fs::create_dir_all(tree.join(".git/objects")).unwrap();
        std::fs::create_dir_all(tree.join(".git/refs")).unwrap();
        std::fs::write(tree.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(tree.join(".gitignore"), "*.o\n").unwrap();
        std::fs::write(tree.join("main.c"), "int main;").unwrap();
        let cache = dir.path().join("stat-cache");
        let first = source_tree_digest(&tree, &cache, &[]).unwrap();
        std::fs::write(tree.join("main.o"), "object").unwrap();
        std::fs::write(tree.join(".git/description"), "changed").unwrap();
        assert_eq!(
            first,
            source_tree_digest(&tree, &cache, &[]).unwrap(),
            "ignored files changed the digest"
        );
        std::fs::write(tree.join("main.c"), "int main(void);").unwrap();
        let edited = source_tree_digest(&tree, &cache, &[]).unwrap();
        assert_ne!(first, edited);
        assert!(std::fs::read_to_string(&cache).unwrap().contains("main.c"));
    }

    #[test]
    fn tracked_files_count_even_when_ignored_and_a_hidden_makefile_names_its_rule() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        std::fs::create_dir_all(&tree).unwrap();
        let git = |args: &[&str]| {
            let ok = std::process::Command::new("git")
                .arg("-C")
                .arg(&tree)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "git {args:?}");
        };
        git(&["init", "-q"]);
        // As in Debian's linux-source tree: everything at the top is ignored.
        std::fs::write(tree.join(".gitignore"), "/*\n").unwrap();
        std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
        std::fs::write(tree.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
        let cache = dir.path().join("stat-cache");
        let required = ["Makefile", "Kconfig"];
        let err = source_tree_digest(&tree, &cache, &required).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(".gitignore:1:/*"), "{err}");
        git(&["add", "-f", "Makefile", "Kconfig", ".gitignore"]);
        let first = source_tree_digest(&tree, &cache, &required).unwrap();
        std::fs::write(tree.join("Makefile"), "all: vmlinux\n").unwrap();
        assert_ne!(first, source_tree_digest(&tree, &cache, &required).unwrap());
    }

    #[test]
    fn outside_a_git_checkout_gitignore_files_are_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        std::fs::create_dir_all(&tree).unwrap();
        // As in Debian's linux-source tarball.
        std::fs::write(tree.join(".gitignore"), "/*\n").unwrap();
        std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
        let cache = dir.path().join("stat-cache");
        let first = source_tree_digest(&tree, &cache, &[]).unwrap();
        std::fs::write(tree.join("Makefile"), "all: vmlinux\n").unwrap();
        assert_ne!(first, source_tree_digest(&tree, &cache, &[]).unwrap());
    }
}
