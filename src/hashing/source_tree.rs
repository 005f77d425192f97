//! Source trees such as a kernel checkout, keyed in place: which files count (`.git` left
//! out; in a git checkout, what git lists: tracked files and untracked ones its ignore
//! rules do not exclude), a stat
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
pub(crate) struct Listing {
    pub(crate) digest: String,
    /// `path\0entry\n` per file, sorted by path; an entry is `f:<sha256>:<size>` (`x:` when
    /// executable) or `l:<symlink target>`.
    pub(crate) text: String,
}

impl Listing {
    /// The listing of `(path, entry)` pairs given in path order.
    fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Listing {
        let mut text = String::new();
        for (rel, entry) in entries {
            text.push_str(rel);
            text.push('\0');
            text.push_str(entry);
            text.push('\n');
        }
        Listing {
            digest: sha256_hex(text.as_bytes()),
            text,
        }
    }

    /// `(path, entry)` per file, in path order.
    pub(crate) fn files(&self) -> impl Iterator<Item = (&str, &str)> {
        parse_lines(&self.text)
    }

    /// Reads a listing kept by `save` and checks it against its digest: a damaged one is
    /// treated as missing.
    pub(crate) fn load(dir: &Path, digest: &str) -> Option<Listing> {
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let text = std::fs::read_to_string(dir.join(digest)).ok()?;
        (sha256_hex(text.as_bytes()) == digest).then(|| Listing {
            digest: digest.to_string(),
            text,
        })
    }

    /// Keeps the listing under its digest in `dir`, unless it is there already. A kernel
    /// tree's listing is megabytes and every edit makes a new one: only the newest
    /// `KEPT_LISTINGS` stay (older diffs then say the listing is no longer kept).
    pub(crate) fn save(&self, dir: &Path) -> std::io::Result<()> {
        let path = dir.join(&self.digest);
        // There already, unless damaged (of another size: a cheap check on every keying).
        if path
            .metadata()
            .is_ok_and(|m| m.len() == self.text.len() as u64)
        {
            return Ok(());
        }
        fs_err::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{}.tmp.{}", self.digest, std::process::id()));
        fs_err::write(&tmp, &self.text)?;
        fs_err::rename(&tmp, &path)?;
        prune(dir, KEPT_LISTINGS);
        Ok(())
    }
}

/// How many tree listings `Listing::save` keeps.
pub(crate) const KEPT_LISTINGS: usize = 32;

/// Removes all but the `keep` most recently written listings in `dir` (best effort).
fn prune(dir: &Path, keep: usize) {
    let Ok(items) = std::fs::read_dir(dir) else {
        return;
    };
    let mut listings: Vec<(std::time::SystemTime, PathBuf)> = items
        .flatten()
        .filter(|e| e.file_name().len() == 64)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if listings.len() <= keep {
        return;
    }
    listings.sort_unstable_by_key(|(modified, _)| std::cmp::Reverse(*modified));
    for (_, path) in &listings[keep..] {
        let _ = std::fs::remove_file(path);
    }
}

fn parse_lines(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|line| line.split_once('\0'))
}

/// How one file differs between two listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Added,
    Removed,
    Modified,
}

impl Change {
    pub(crate) fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Removed => 'D',
            Change::Modified => 'M',
        }
    }
}

/// The files that differ between two listings, in path order.
pub(crate) fn changes<'a>(old: &'a Listing, new: &'a Listing) -> Vec<(&'a str, Change)> {
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
fn stat_cache_file(dir: &Path, tree: &Path) -> PathBuf {
    dir.join(stat_cache_name(tree))
}

/// The file name of the tree's stat cache.
pub(crate) fn stat_cache_name(tree: &Path) -> String {
    sha256_hex(tree.as_os_str().as_encoded_bytes())
}

/// The files a kernel build needs at the top of its tree.
pub(crate) const KERNEL_TREE_REQUIRED: [&str; 2] = ["Makefile", "Kconfig"];

/// A local kernel tree's listing, through its stat cache in `statcache_dir`: the one way
/// keys and the kernel builder list a tree, so both always agree.
/// The store itself (the folder holding `statcache_dir`) is left out when it lies inside
/// the tree, as `./cache` does when the recipes live in the kernel checkout.
pub(crate) fn kernel_tree_listing(tree: &Path, statcache_dir: &Path) -> std::io::Result<Listing> {
    let store = statcache_dir
        .parent()
        .and_then(|store| fs_err::canonicalize(store).ok());
    source_tree_listing_without(
        tree,
        &stat_cache_file(statcache_dir, tree),
        &KERNEL_TREE_REQUIRED,
        store.as_deref(),
    )
}

/// The listing of a source tree such as a kernel checkout: `.git` is left out and, in a
/// git checkout, everything its ignore rules exclude (build products) unless git tracks
/// it (git itself lists the files).
///
/// A stat cache in `cache_file` keeps, for every folder and file, its stamp (size, mtime,
/// ctime, inode, mode) and, for files, their entry. When nothing changed since (every
/// folder and file has its stamp, and so does git's index, which says what is tracked),
/// the cached listing is the tree's: no folder is read, no git process started, no file
/// opened. Adding, removing or renaming anything changes its folder's stamp; writing a
/// file changes its ctime even when its mtime is set back. Folders are stamped before
/// their files are listed, and a stamp from the last two seconds is not trusted (a write
/// in the same clock tick would not change it), so a change made while vmbuild lists the
/// tree is seen next time. Otherwise the tree is listed again and only files whose stamp
/// changed are read.
///
/// Every name in `required` must be among the listed files (a kernel tree needs its
/// top-level `Makefile` and `Kconfig`); when one is missing, the error names the ignore
/// rule that hid it. A folder among the files (a git submodule, a nested repository) or a
/// symlink that leads out of the tree is refused: what it holds would not be keyed.
#[cfg(test)]
pub(crate) fn source_tree_listing(
    root: &Path,
    cache_file: &Path,
    required: &[&str],
) -> std::io::Result<Listing> {
    source_tree_listing_without(root, cache_file, required, None)
}

/// `source_tree_listing`, leaving out the folder `excluded` (absolute) if it is inside.
fn source_tree_listing_without(
    root: &Path,
    cache_file: &Path,
    required: &[&str],
    excluded: Option<&Path>,
) -> std::io::Result<Listing> {
    let root = &fs_err::canonicalize(root)?;
    let excluded = excluded
        .and_then(|e| e.strip_prefix(root).ok())
        .filter(|rel| !rel.as_os_str().is_empty());
    let cache_text = fs_err::read_to_string(cache_file).unwrap_or_default();
    // A cache whose entries do not give its recorded digest is damaged: not used at all.
    let cache = StatCache::parse(&cache_text).filter(StatCache::whole);
    let index = git_index_stamp(root);
    if let Some(listing) = cache
        .as_ref()
        .filter(|c| required.iter().all(|name| c.has(name)))
        .and_then(|c| c.unchanged(root, &index))
    {
        return Ok(listing);
    }
    let old: HashMap<&str, (&str, &str)> = cache
        .as_ref()
        .map(|c| {
            c.files
                .iter()
                .map(|(st, entry, rel)| (*rel, (*st, *entry)))
                .collect()
        })
        .unwrap_or_default();

    // Stamps taken from here on are trusted only if older than this.
    let trusted_before = now_ns() - RACY_WINDOW_NS;
    // Folders first: a file added while the files are listed makes its folder's stamp
    // differ next time.
    let dirs = walk(root, false, excluded)?.1;
    let mut files = if root.join(".git").exists() {
        git_files(root, excluded)?
    } else {
        walk(root, true, excluded)?.0
    };
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
    let stamp_of = |m: &std::fs::Metadata| {
        if changed_ns(m) >= trusted_before {
            RACY.to_string()
        } else {
            stamp(m)
        }
    };

    // Unchanged files (same stamp) keep their cached entry; the rest are read again.
    let hashed: Vec<(String, Option<String>)> = files
        .par_iter()
        .map(|(rel, meta)| {
            let st = stamp_of(meta);
            if old
                .get(rel.as_str())
                .is_some_and(|(cached, _)| *cached == st && st != RACY)
            {
                return Ok((st, None));
            }
            let path = root.join(rel);
            let entry = match TreeEntry::of(&path)? {
                TreeEntry::File { sha256, size, exec } => {
                    format!("{}:{sha256}:{size}", if exec { 'x' } else { 'f' })
                }
                TreeEntry::Symlink { target } => format!("l:{target}"),
                TreeEntry::Dir => return Err(nested_tree(&path)),
            };
            Ok((st, Some(entry)))
        })
        .collect::<std::io::Result<_>>()?;

    let mut body = String::with_capacity(cache_text.len().max(files.len() * 120));
    for (rel, meta) in &dirs {
        body.push_str(&format!("D\t{}\t{rel}\n", stamp_of(meta)));
    }
    let mut entries = Vec::with_capacity(files.len());
    for ((rel, _), (st, fresh)) in files.iter().zip(&hashed) {
        let entry = match fresh {
            Some(e) => e.as_str(),
            None => old[rel.as_str()].1,
        };
        body.push_str(&format!("F\t{st}\t{entry}\t{rel}\n"));
        entries.push((rel.as_str(), entry));
    }
    // Every link, cached or not: what it leads to can change without the link changing.
    for (rel, entry) in &entries {
        if let Some(target) = entry.strip_prefix("l:") {
            symlink_inside(root, rel, target, &root.join(rel))?;
        }
    }
    let listing = Listing::from_entries(entries);
    let new_cache = format!(
        "{CACHE_HEADER}\t{}\t{}\n{body}",
        index.as_deref().unwrap_or("-"),
        listing.digest
    );
    if new_cache != cache_text {
        if let Some(dir) = cache_file.parent() {
            fs_err::create_dir_all(dir)?;
        }
        let tmp = cache_file.with_extension(format!("tmp.{}", std::process::id()));
        fs_err::write(&tmp, new_cache)?;
        fs_err::rename(&tmp, cache_file)?;
    }
    Ok(listing)
}

/// The stamp of a path changed too recently to be trusted: always read again.
const RACY: &str = "racy";
/// Timestamps here are kernel ticks (a few ms on ext4, a second on some file systems): a
/// write within this long of a stamp may leave it unchanged.
const RACY_WINDOW_NS: i128 = 2_000_000_000;

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The later of a path's mtime and ctime, in nanoseconds since the epoch.
fn changed_ns(m: &std::fs::Metadata) -> i128 {
    let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
    ns(m.mtime(), m.mtime_nsec()).max(ns(m.ctime(), m.ctime_nsec()))
}

fn nested_tree(path: &Path) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{} is a git submodule or a nested repository: vmbuild would not key the files in it; make them part of the tree",
            path.display()
        ),
    )
}

/// A symlink at `rel` must lead to a place inside the tree (lexically: its target joined
/// to its folder, `..` resolved), or what the build reads through it is not keyed.
fn symlink_inside(root: &Path, rel: &str, target: &str, path: &Path) -> std::io::Result<()> {
    // Through every link on the way (a link to `..` inside the tree can lead out of it).
    let resolved_outside = fs_err::canonicalize(path).is_ok_and(|real| !real.starts_with(root));
    let mut depth: Vec<&str> = rel.split('/').collect();
    depth.pop();
    let escapes = target.starts_with('/')
        || target.split('/').any(|part| {
            match part {
                "" | "." => {}
                ".." => {
                    if depth.pop().is_none() {
                        return true;
                    }
                }
                other => depth.push(other),
            }
            false
        });
    if escapes || resolved_outside || target.contains(['\t', '\n', '\r']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is a symlink to `{target}`, outside {}: what it leads to would not be keyed; copy it into the tree",
                path.display(),
                root.display()
            ),
        ));
    }
    Ok(())
}

const CACHE_HEADER: &str = "vmbuild-statcache 2";

/// What can change a path without changing its content's hash being noticed: size,
/// mtime, ctime (set by every write, even one that puts the mtime back), inode, mode.
fn stamp(m: &std::fs::Metadata) -> String {
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
}

/// The stamp of git's index in a checkout (`git add` can make an ignored file tracked
/// without touching the work tree). `.git` may be a folder or, in a worktree or a
/// submodule, a file naming the real one. `None` outside a checkout.
fn git_index_stamp(root: &Path) -> Option<String> {
    let git = root.join(".git");
    let meta = git.symlink_metadata().ok()?;
    let git_dir = if meta.is_dir() {
        git
    } else {
        let text = std::fs::read_to_string(&git).unwrap_or_default();
        match text.trim().strip_prefix("gitdir:") {
            Some(dir) => root.join(dir.trim()),
            // Unreadable: a stamp that never matches, so the tree is always listed anew.
            None => return Some(format!("{RACY}:{}", now_ns())),
        }
    };
    // The index says what is tracked; the config can change what git lists.
    let stamp_of = |name: &str| {
        let path = git_dir.join(name);
        let st = path
            .symlink_metadata()
            .map(|m| stamp(&m))
            .unwrap_or_else(|_| "none".into());
        format!("{}:{st}", path.display())
    };
    Some(format!("{};{}", stamp_of("index"), stamp_of("config")))
}

/// `git -C root` with none of the `GIT_*` variables a hook or a script may have set
/// (`GIT_DIR`, `GIT_INDEX_FILE`, ...): the checkout at `root` speaks for itself.
fn git(root: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new("git");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(name);
        }
    }
    // Neither the user's nor the system's git config may change what is listed.
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .arg("-C")
        .arg(root)
        .args(["-c", "core.ignoreCase=false", "-c", "core.quotePath=false"])
        // Without the user's config, its safe.directory goes too: a checkout owned by
        // another user (a CI mount) is still the tree to list.
        .args(["-c", "safe.directory=*"]);
    cmd
}

/// A parsed stat cache, borrowing the file's text.
struct StatCache<'a> {
    /// The git index stamp when the listing was made (`-`: not a git checkout).
    index: &'a str,
    digest: &'a str,
    /// (stamp, relative path) per folder, the root being `.`.
    dirs: Vec<(&'a str, &'a str)>,
    /// (stamp, entry, relative path) per file, in path order.
    files: Vec<(&'a str, &'a str, &'a str)>,
}

impl<'a> StatCache<'a> {
    fn parse(text: &'a str) -> Option<StatCache<'a>> {
        let mut lines = text.lines();
        let mut header = lines.next()?.split('\t');
        if header.next()? != CACHE_HEADER {
            return None;
        }
        let (index, digest) = (header.next()?, header.next()?);
        let mut cache = StatCache {
            index,
            digest,
            dirs: Vec::new(),
            files: Vec::new(),
        };
        for line in lines {
            let mut parts = line.splitn(4, '\t');
            match parts.next()? {
                "D" => cache.dirs.push((parts.next()?, parts.next()?)),
                "F" => cache
                    .files
                    .push((parts.next()?, parts.next()?, parts.next()?)),
                _ => return None,
            }
        }
        Some(cache)
    }

    /// Whether the cache lists the file `rel` (its files are in path order).
    fn has(&self, rel: &str) -> bool {
        self.files
            .binary_search_by(|(_, _, cached)| (*cached).cmp(rel))
            .is_ok()
    }

    /// Whether the cached entries give the digest recorded with them.
    fn whole(&self) -> bool {
        self.listing().digest == self.digest
    }

    fn listing(&self) -> Listing {
        Listing::from_entries(self.files.iter().map(|&(_, entry, rel)| (rel, entry)))
    }

    /// The cached listing, when every folder and file under `root` still has its stamp.
    fn unchanged(&self, root: &Path, index: &Option<String>) -> Option<Listing> {
        if self.index != index.as_deref().unwrap_or("-") || self.dirs.is_empty() {
            return None;
        }
        let same = |(st, rel): (&str, &str)| {
            root.join(rel)
                .symlink_metadata()
                .is_ok_and(|m| stamp(&m) == st)
        };
        let dirs_same = self.dirs.par_iter().all(|&d| same(d));
        if !dirs_same || !self.files.par_iter().all(|&(st, _, rel)| same((st, rel))) {
            return None;
        }
        // Checked whole when parsed.
        Some(self.listing())
    }
}

type Listed = Vec<(String, std::fs::Metadata)>;

/// Every folder (`.` for the root) and every other path under `root` but `.git`, by
/// relative path, walked on all cores, with no ignore rules (outside a git checkout none
/// speaks for the build: Debian's linux-source tarball, for one, ships a .gitignore that
/// ignores every top-level entry). A name that is not UTF-8 is refused (it could not be
/// keyed exactly), as is a name holding a tab or a line break (the listing's separators).
/// Without `files`, only what the stat cache stamps is listed: folders, and every
/// `.gitignore` (one can ignore itself, and git would not list it). `excluded` (relative
/// to the root) is left out.
fn walk(root: &Path, files: bool, excluded: Option<&Path>) -> std::io::Result<(Listed, Listed)> {
    // Each walker thread collects into its own lists, handed over when the thread ends.
    struct Collector<'a> {
        root: &'a Path,
        files: Listed,
        dirs: Listed,
        sink: &'a Mutex<(Listed, Listed)>,
        error: &'a Mutex<Option<std::io::Error>>,
    }
    impl Collector<'_> {
        fn fail(&self, e: std::io::Error) {
            *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    }
    impl Drop for Collector<'_> {
        fn drop(&mut self) {
            let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
            sink.0.append(&mut self.files);
            sink.1.append(&mut self.dirs);
        }
    }
    let found = Mutex::new((Vec::new(), Vec::new()));
    let walk_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let skip: Option<PathBuf> = excluded.map(|x| root.join(x));
    ignore::WalkBuilder::new(root)
        .standard_filters(false)
        .filter_entry(move |e| e.file_name() != ".git" && skip.as_deref() != Some(e.path()))
        .build_parallel()
        .run(|| {
            let mut collector = Collector {
                root,
                files: Vec::new(),
                dirs: Vec::new(),
                sink: &found,
                error: &walk_error,
            };
            Box::new(move |entry| {
                match entry {
                    Ok(entry) => {
                        let is_dir = entry.file_type().is_some_and(|t| t.is_dir());
                        if !files && !is_dir && entry.file_name() != ".gitignore" {
                            return ignore::WalkState::Continue;
                        }
                        if let Ok(meta) = entry.path().symlink_metadata() {
                            let rel = entry
                                .path()
                                .strip_prefix(collector.root)
                                .unwrap_or(entry.path());
                            let rel = if entry.depth() == 0 {
                                Path::new(".")
                            } else {
                                rel
                            };
                            match listable(rel, entry.path()) {
                                Ok(rel) if meta.is_dir() || !files => {
                                    collector.dirs.push((rel.to_string(), meta))
                                }
                                Ok(rel) => collector.files.push((rel.to_string(), meta)),
                                Err(e) => {
                                    collector.fail(e);
                                    return ignore::WalkState::Quit;
                                }
                            }
                        }
                    }
                    Err(e) => collector.fail(std::io::Error::other(e.to_string())),
                }
                ignore::WalkState::Continue
            })
        });
    if let Some(e) = walk_error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let (files, mut dirs) = found.into_inner().unwrap_or_else(|e| e.into_inner());
    dirs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok((files, dirs))
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

/// The files of the git checkout at `root` that the build can read: every tracked file
/// (ignore rules never hide those: Debian's linux-source tree ignores `/*` yet a checkout
/// of it tracks everything) and every untracked one its `.gitignore` files do not
/// exclude. Only the checkout's own `.gitignore` files count, not the user's global
/// excludes or `.git/info/exclude`, so every clone keys the same. git walks the tree
/// with its index; each file is then `lstat`ed here, on all cores.
fn git_files(
    root: &Path,
    excluded: Option<&Path>,
) -> std::io::Result<Vec<(String, std::fs::Metadata)>> {
    let out = git(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-per-directory=.gitignore",
        ])
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
    let mut names: Vec<&[u8]> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .collect();
    // A file both tracked and changed appears once per stage during a merge.
    names.sort_unstable();
    names.dedup();
    // The store, when it lies inside the tree (untracked, not ignored), is not the tree's.
    if let Some(excluded) = excluded {
        let prefix = excluded.as_os_str().as_encoded_bytes();
        names.retain(|name| {
            !(name.starts_with(prefix) && matches!(name.get(prefix.len()), None | Some(b'/')))
        });
    }
    let listed: Vec<Option<(String, std::fs::Metadata)>> = names
        .par_iter()
        .map(|name| {
            let full =
                root.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name));
            let rel = std::str::from_utf8(name).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{}: the name is not UTF-8; rename it", full.display()),
                )
            })?;
            let rel = listable(Path::new(rel), &full)?;
            // A tracked file deleted from the work tree is not there to be read.
            match full.symlink_metadata() {
                Ok(m) if m.is_dir() => Err(nested_tree(&full)),
                Ok(m) => Ok(Some((rel.trim_end_matches('/').to_string(), m))),
                Err(_) => Ok(None),
            }
        })
        .collect::<std::io::Result<_>>()?;
    Ok(listed.into_iter().flatten().collect())
}

/// `file:line:pattern` of the ignore rule that hides `name` in `root`, if one does.
fn ignore_rule(root: &Path, name: &str) -> Option<String> {
    let out = git(root)
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

    /// Runs git in `dir` (as a test user), asserting success.
    fn git_in(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
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
        let git = |args: &[&str]| git_in(&tree, args);
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
        let first = source_tree_listing(&tree, &cache, &required)
            .unwrap()
            .digest;
        std::fs::write(tree.join("Makefile"), "all: vmlinux\n").unwrap();
        assert_ne!(
            first,
            source_tree_listing(&tree, &cache, &required)
                .unwrap()
                .digest
        );
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
        assert_ne!(
            first,
            source_tree_listing(&tree, &cache, &[]).unwrap().digest
        );
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

    #[test]
    fn the_cached_listing_is_used_only_while_nothing_in_the_tree_or_the_index_changed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        std::fs::create_dir_all(tree.join("init")).unwrap();
        let git = |args: &[&str]| git_in(&tree, args);
        git(&["init", "-q"]);
        std::fs::write(tree.join(".gitignore"), "*.o\n").unwrap();
        std::fs::write(tree.join("init/main.c"), "one").unwrap();
        let cache = dir.path().join("statcache");
        let list = || source_tree_listing(&tree, &cache, &[]).unwrap();
        let first = list();
        assert_eq!(list(), first, "an unchanged tree lists the same");
        let files = |l: &Listing| l.files().map(|(p, _)| p.to_string()).collect::<Vec<_>>();

        // A new file: its folder's stamp changed.
        std::fs::write(tree.join("init/new.c"), "x").unwrap();
        assert!(files(&list()).contains(&"init/new.c".to_string()));

        // New content with the old mtime: the ctime changed.
        let path = tree.join("init/main.c");
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        let before = list();
        std::fs::write(&path, "two").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_ne!(list(), before);

        // An ignored file becomes tracked: only git's index changed.
        std::fs::write(tree.join("init/blob.o"), "o").unwrap();
        assert!(!files(&list()).contains(&"init/blob.o".to_string()));
        git(&["add", "-f", "init/blob.o"]);
        assert!(files(&list()).contains(&"init/blob.o".to_string()));
    }

    #[test]
    fn hostile_trees_give_a_fresh_listing_or_an_error_never_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("linux");
        std::fs::create_dir_all(tree.join("arch")).unwrap();
        std::fs::create_dir_all(tree.join("include")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
        let cache = dir.path().join("statcache");
        let list = || source_tree_listing(&tree, &cache, &[]);
        let fresh = || source_tree_listing(&tree, &dir.path().join("fresh-cache"), &[]);

        // A chain of in-tree links that leads out.
        std::os::unix::fs::symlink("..", tree.join("arch/up")).unwrap();
        std::os::unix::fs::symlink("../arch/up/../outside", tree.join("include/out")).unwrap();
        let err = list().unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        std::fs::remove_file(tree.join("include/out")).unwrap();
        std::fs::remove_file(tree.join("arch/up")).unwrap();

        // A damaged stat cache entry is not believed.
        std::fs::write(tree.join("init.c"), "one").unwrap();
        let good = list().unwrap();
        let text = std::fs::read_to_string(&cache).unwrap();
        let sha = hashing_sha(&tree.join("init.c"));
        std::fs::write(&cache, text.replace(&sha, &"0".repeat(64))).unwrap();
        assert_eq!(list().unwrap(), good);

        // In a git checkout, a .gitignore that ignores itself still counts.
        let git = |args: &[&str]| git_in(&tree, args);
        git(&["init", "-q"]);
        std::fs::write(tree.join(".gitignore"), ".gitignore\nextra.c\n").unwrap();
        std::fs::write(tree.join("extra.c"), "1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2100));
        let before = list().unwrap();
        assert_eq!(list().unwrap(), before);
        std::fs::write(tree.join(".gitignore"), ".gitignore\n").unwrap();
        assert_eq!(list().unwrap(), fresh().unwrap());
        assert_ne!(list().unwrap(), before);
    }

    fn hashing_sha(path: &Path) -> String {
        super::super::sha256_file(path).unwrap().0
    }
}
