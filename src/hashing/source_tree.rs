//! Source trees such as a kernel checkout, keyed in place: which files count (`.git` left
//! out; in a git checkout, what its ignore rules exclude, except files git tracks), a stat
//! cache so that re-keying an unchanged tree reads no file, and the tree's listing: one
//! line per file (`path\0entry\n`, sorted), whose SHA-256 is the tree's digest. Listings
//! are kept by digest (`<store>/trees/<digest>`) so `explain` can name the files that
//! changed between two keys, and the kernel builder can tell make which files changed
//! since the build folder's last build.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;

use super::{sha256_hex, utf8, TreeEntry};

/// A source tree's listing and its digest (the SHA-256 of the listing's text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub digest: String,
    /// `path\0entry\n` per file, sorted by path; an entry is `f:<sha256>:<size>` (`x:` when
    /// executable) or `l:<symlink target>`.
    pub text: String,
}

impl Listing {
    /// `(path, entry)` per file, in path order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        parse_lines(&self.text)
    }

    /// Reads a listing kept by `save` and checks it against its digest: a damaged one is
    /// treated as missing.
    pub fn load(dir: &Path, digest: &str) -> Option<Listing> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(digest)).ok()?;
        (sha256_hex(text.as_bytes()) == digest).then(|| Listing {
            digest: digest.to_string(),
            text,
        })
    }

    /// Keeps the listing under its digest in `dir`, unless it is there already.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(&self.digest);
        if path.exists() {
            return Ok(());
        }
        fs_err::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp.{}", self.digest, std::process::id()));
        fs_err::write(&tmp, &self.text)?;
        fs_err::rename(&tmp, &path)
    }
}

fn parse_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| line.split_once('\0'))
}

/// How one file differs between two listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Removed => 'D',
            Change::Modified => 'M',
        }
    }
}

/// The files that differ between two listings, in path order.
pub fn changes<'a>(old: &'a Listing, new: &'a Listing) -> Vec<(&'a str, Change)> {
    let mut old_files = old.files().peekable();
    let mut new_files = new.files().peekable();
    let mut out = Vec::new();
    loop {
        match (old_files.peek(), new_files.peek()) {
            (None, None) => break,
            (Some(&(path, _)), None) => {
                out.push((path, Change::Removed));
                old_files.next();
            }
            (None, Some(&(path, _))) => {
                out.push((path, Change::Added));
                new_files.next();
            }
            (Some(&(a, ea)), Some(&(b, eb))) => match a.cmp(b) {
                std::cmp::Ordering::Less => {
                    out.push((a, Change::Removed));
                    old_files.next();
                }
                std::cmp::Ordering::Greater => {
                    out.push((b, Change::Added));
                    new_files.next();
                }
                std::cmp::Ordering::Equal => {
                    if ea != eb {
                        out.push((a, Change::Modified));
                    }
                    old_files.next();
                    new_files.next();
                }
            },
        }
    }
    out
}

/// Where the stat cache of the tree at `tree` lives, in the folder `dir`.
pub fn stat_cache_file(dir: &Path, tree: &Path) -> PathBuf {
    dir.join(sha256_hex(tree.as_os_str().as_encoded_bytes()))
}

/// The listing of a source tree such as a kernel checkout: `.git` is left out and, in a
/// git checkout, everything its ignore rules exclude (build products) unless git tracks
/// it. A stat cache in `cache_file` (path, size, mtime, ctime, inode -> entry) means only
/// changed files are read again, so re-keying an unchanged tree costs a parallel walk and
/// a stat per file.
///
/// Every name in `required` must be among the listed files (a kernel tree needs its
/// top-level `Makefile` and `Kconfig`); when one is missing, the error names the ignore
/// rule that hid it.
pub fn source_tree_listing(
    root: &Path,
    cache_file: &Path,
    required: &[&str],
) -> std::io::Result<Listing> {
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

    let mut files = walk(root)?;
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

    let mut text = String::with_capacity(files.len() * 100);
    let mut cache = String::with_capacity(cache_text.len().max(files.len() * 120));
    let mut changed = old.len() != files.len();
    for ((rel, _), (st, fresh)) in files.iter().zip(&hashed) {
        changed |= fresh.is_some();
        let entry = match fresh {
            Some(e) => e.as_str(),
            None => old[rel.as_str()].1,
        };
        text.push_str(rel);
        text.push('\0');
        text.push_str(entry);
        text.push('\n');
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
    Ok(Listing {
        digest: sha256_hex(text.as_bytes()),
        text,
    })
}

/// Every non-folder under `root` that the ignore rules let through, by relative path,
/// walked on all cores. A name that is not UTF-8 is refused (it could not be keyed
/// exactly), as is a name holding a tab or a newline (the listing's separators).
fn walk(root: &Path) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
    // Each walker thread collects into its own list, handed over when the thread ends.
    struct Collector<'a> {
        root: &'a Path,
        local: Vec<(String, std::fs::Metadata)>,
        sink: &'a Mutex<Vec<(String, std::fs::Metadata)>>,
        error: &'a Mutex<Option<std::io::Error>>,
    }
    impl Collector<'_> {
        fn fail(&self, e: std::io::Error) {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
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
                                match listable(rel, entry.path()) {
                                    Ok(rel) => collector.local.push((rel.to_string(), meta)),
                                    Err(e) => {
                                        collector.fail(e);
                                        return ignore::WalkState::Quit;
                                    }
                                }
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => collector.fail(std::io::Error::other(e.to_string())),
                }
                ignore::WalkState::Continue
            })
        });
    if let Some(e) = walk_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    Ok(found.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// A relative path as listing text: UTF-8, with no tab, newline or NUL in it.
fn listable<'a>(rel: &'a Path, full: &Path) -> std::io::Result<&'a str> {
    let rel = utf8(rel.as_os_str(), full)?;
    if rel.contains(['\t', '\n', '\r']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{}: the name holds a tab or a line break; rename it",
                full.display()
            ),
        ));
    }
    Ok(rel)
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
            let full = root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
            std::str::from_utf8(name)
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!(
                            "{}: a tracked file name is not UTF-8; rename it",
                            full.display()
                        ),
                    )
                })
                .and_then(|rel| listable(Path::new(rel), &full).map(str::to_string))
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
    fn source_tree_digest_skips_ignored_files_and_reuses_its_stat_cache() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("src");
        std::fs::create_dir_all(tree.join(".git/objects")).unwrap();
        std::fs::create_dir_all(tree.join(".git/refs")).unwrap();
        std::fs::write(tree.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(tree.join(".gitignore"), "*.o\n").unwrap();
        std::fs::write(tree.join("main.c"), "int main;").unwrap();
        let cache = dir.path().join("stat-cache");
        let first = source_tree_listing(&tree, &cache, &[]).unwrap().digest;
        std::fs::write(tree.join("main.o"), "object").unwrap();
        std::fs::write(tree.join(".git/description"), "changed").unwrap();
        assert_eq!(
            first,
            source_tree_listing(&tree, &cache, &[]).unwrap().digest,
            "ignored files changed the digest"
        );
        std::fs::write(tree.join("main.c"), "int main(void);").unwrap();
        let edited = source_tree_listing(&tree, &cache, &[]).unwrap().digest;
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
        let err = source_tree_listing(&tree, &cache, &required).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains(".gitignore:1:/*"), "{err}");
        git(&["add", "-f", "Makefile", "Kconfig", ".gitignore"]);
        let first = source_tree_listing(&tree, &cache, &required).unwrap().digest;
        std::fs::write(tree.join("Makefile"), "all: vmlinux\n").unwrap();
        assert_ne!(first, source_tree_listing(&tree, &cache, &required).unwrap().digest);
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
        let first = source_tree_listing(&tree, &cache, &[]).unwrap().digest;
        std::fs::write(tree.join("Makefile"), "all: vmlinux\n").unwrap();
        assert_ne!(first, source_tree_listing(&tree, &cache, &[]).unwrap().digest);
    }

    #[test]
    fn changes_name_added_removed_and_modified_files_and_listings_check_their_digest() {
        let listing = |text: &str| Listing {
            digest: sha256_hex(text.as_bytes()),
            text: text.to_string(),
        };
        let old = listing("Makefile\0f:aa:1\ninit/main.c\0f:bb:2\nold.c\0f:cc:3\n");
        let new = listing("Makefile\0f:aa:1\nadded.c\0f:dd:4\ninit/main.c\0f:ee:2\n");
        assert_eq!(
            changes(&old, &new),
            vec![
                ("added.c", Change::Added),
                ("init/main.c", Change::Modified),
                ("old.c", Change::Removed),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        new.save(dir.path()).unwrap();
        assert_eq!(Listing::load(dir.path(), &new.digest), Some(new.clone()));
        std::fs::write(dir.path().join(&new.digest), "tampered").unwrap();
        assert_eq!(Listing::load(dir.path(), &new.digest), None);
        assert_eq!(Listing::load(dir.path(), "../etc/passwd"), None);
    }

    #[test]
    fn names_that_cannot_be_listed_exactly_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
        let cache = dir.path().join("cache");
        std::fs::write(tree.join(std::ffi::OsStr::from_bytes(b"caf\xe9.c")), "x").unwrap();
        let err = source_tree_listing(&tree, &cache, &[]).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        std::fs::remove_file(tree.join(std::ffi::OsStr::from_bytes(b"caf\xe9.c"))).unwrap();
        std::fs::write(tree.join("two\nlines.c"), "x").unwrap();
        let err = source_tree_listing(&tree, &cache, &[]).unwrap_err();
        assert!(err.to_string().contains("line break"), "{err}");
    }
}
