//! The content-addressed store. Every output lives in `<root>/<key>-<name>/` next to its
//! `manifest.json`. Builds happen in `<root>/tmp/` and are published by one `rename`
//! (or an atomic exchange when replacing an entry), so a half-built entry is never
//! visible, even after `kill -9`. One lock file per key serialises builders of the same
//! entry across processes; the second one waits, then finds the first one's result.
//!
//! Layout:
//! ```text
//! <root>/<key>-<name>/          published entries (read-only by convention)
//! <root>/tmp/<key>-<name>.<pid> entries being built
//! <root>/locks/<key>.lock       per-key locks (flock)
//! <root>/downloads/<sha256>...  fetched inputs, by hash
//! <root>/tools.json             remembered tool versions
//! ```

mod check;
mod gc;
mod manifest;
mod publish;
pub mod remote;
mod sharing;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub use manifest::{Manifest, ManifestHead, Status, MANIFEST};
pub use publish::Build;
pub use remote::{Remote, RemoteError, RemoteSettings, Upload};

use crate::fsio::{io_err, IoError};
use crate::hashing;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("read manifest {}: {message}", path.display())]
    BadManifest { path: PathBuf, message: String },
    #[error("the store {} cannot be used: {source}\n  help: choose another folder with --cache-dir or VMBUILD_CACHE_DIR", path.display())]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{name}` cannot name a store entry: {message}")]
    BadName { name: String, message: String },
}

type Result<T> = std::result::Result<T, StoreError>;

pub struct Store {
    root: PathBuf,
    /// Rehash every output on a cache hit, not just check sizes (`--verify-on-hit`).
    verify_on_hit: bool,
    /// Damaged entries lookups passed over (and will rebuild), for the caller to report.
    damage: std::sync::Mutex<Vec<String>>,
    /// Where lookups that miss here look next, and where new entries go.
    remote: Option<Remote>,
}

/// A published entry, with the head of its manifest (`Store::manifest` reads all of it).
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: PathBuf,
    pub manifest: ManifestHead,
}

impl Entry {
    /// A text fact of the manifest's details (a kernel's `release`, a disk's `image`).
    pub fn detail(&self, name: &str) -> Option<&str> {
        self.manifest.details.get(name).and_then(|v| v.as_str())
    }
}

/// A folder of the store that looks like an entry: readable, or not and why.
pub enum Scanned {
    Entry(Entry),
    Bad { path: PathBuf, problem: String },
}

impl Scanned {
    pub fn path(&self) -> &Path {
        match self {
            Scanned::Entry(e) => &e.path,
            Scanned::Bad { path, .. } => path,
        }
    }
}

/// An exclusive per-key lock, released on drop.
pub struct KeyLock {
    _file: fs_err::File,
}

/// A folder an entry is being built in. Dropped without publishing, it is removed.
pub struct Staging {
    pub dir: PathBuf,
    key: String,
    name: String,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = remove_tree(&self.dir);
        }
    }
}

impl Staging {
    /// Where this entry's outputs go.
    pub fn out(&self) -> &Path {
        &self.dir
    }

    /// The name the entry will have.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn is_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes a tree, making read-only folders writable first.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            let _ = std::process::Command::new("chmod")
                .arg("-R")
                .arg("u+w")
                .arg(path)
                .status();
            std::fs::remove_dir_all(path)
        }
    }
}

/// The folder of kept logs under the store root.
const LOGS: &str = "logs";
/// The folder of recorded results under the store root.
const RECORDS: &str = "records";
/// How many hex digits of the key name a kept log.
const KEPT_LOG_KEY: usize = 16;

impl Store {
    /// Opens (creating when needed) the store at `root`.
    /// A store that is not a folder, or cannot be written, is `Unusable` (exit 4): said
    /// now, not halfway through a build.
    pub fn open(root: &Path) -> Result<Store> {
        let unusable = |source| StoreError::Unusable {
            path: root.to_path_buf(),
            source,
        };
        if root.exists() && !root.is_dir() {
            return Err(unusable(std::io::Error::other("it is not a folder")));
        }
        for sub in ["tmp", "locks"] {
            let dir = root.join(sub);
            if !dir.is_dir() {
                std::fs::create_dir_all(&dir).map_err(unusable)?;
            }
        }
        tempfile::tempfile_in(root.join("tmp")).map_err(unusable)?;
        Ok(Store {
            root: fs_err::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()),
            verify_on_hit: false,
            damage: std::sync::Mutex::new(Vec::new()),
            remote: None,
        })
    }

    /// Rehash outputs on every cache hit instead of only checking their sizes.
    pub fn set_verify_on_hit(&mut self, on: bool) {
        self.verify_on_hit = on;
    }

    /// Share entries through `remote` from now on.
    pub fn set_remote(&mut self, remote: Option<Remote>) {
        self.remote = remote;
    }

    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    /// What lookups found damaged since the last call (each is rebuilt, not used), and
    /// what went wrong with the remote cache (each handled: the work is done locally).
    pub fn take_notices(&self) -> Vec<String> {
        let mut notices =
            std::mem::take(&mut *self.damage.lock().unwrap_or_else(|e| e.into_inner()));
        if let Some(remote) = &self.remote {
            notices.extend(remote.take_notices());
        }
        // A lookup checks the local store twice (before and under the lock): one note.
        let mut seen = std::collections::BTreeSet::new();
        notices.retain(|n| seen.insert(n.clone()));
        notices
    }

    fn note_damage(&self, path: &Path, problem: &str) {
        self.damage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!(
                "{} is damaged ({problem}): not used, and replaced",
                path.display()
            ));
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn downloads(&self) -> PathBuf {
        self.root.join("downloads")
    }

    /// Stat caches of local source trees (a cache of hashes, never an input).
    pub(crate) fn statcache_dir(&self) -> PathBuf {
        self.root.join("statcache")
    }

    /// Listings of local source trees, by digest (see `hashing::Listing`).
    pub(crate) fn trees_dir(&self) -> PathBuf {
        self.root.join("trees")
    }

    /// Logs of failed builds and VMs, kept since a failed build's staging folder is
    /// removed; `gc` removes those of keys no recipe reaches.
    pub(crate) fn logs_dir(&self) -> PathBuf {
        self.root.join(LOGS)
    }

    /// Named copies of test results (`vmbuild record`), one `<label>.json` each; entries
    /// they were taken from may be gone, `gc` leaves them alone.
    pub(crate) fn records_dir(&self) -> PathBuf {
        self.root.join(RECORDS)
    }

    /// Where a log of `key`'s build or test run is kept (`logs/<key16>-<name>.<suffix>`)
    /// when the staged entry that would hold it is removed, so an error can point to it.
    /// `gc` removes it with the last entry or recipe of its key.
    pub(crate) fn kept_log(&self, key: &str, name: &str, suffix: &str) -> PathBuf {
        let key = key.get(..KEPT_LOG_KEY).unwrap_or(key);
        self.logs_dir().join(format!("{key}-{name}.{suffix}"))
    }

    /// The lock key of a kernel build folder: its builder and `gc` take it.
    pub(crate) fn kbuild_lock_key(&self, build_dir: &Path) -> String {
        hashing::sha256_hex(build_dir.to_string_lossy().as_bytes())
    }

    /// Kernel build folders, kept between builds for incremental builds.
    pub(crate) fn kbuild_dir(&self) -> PathBuf {
        self.root.join("kbuild")
    }

    /// `<root>/<key>-<name>`: the key must be a key and the name a recipe name, so the
    /// path is one folder directly under the root, whatever the caller was given.
    pub fn entry_path(&self, key: &str, name: &str) -> Result<PathBuf> {
        self.child(&format!("{key}-{name}"), key, name)
    }

    /// A folder for `key`/`name` under the store's tmp, with `suffix` (`.<pid>`, ...).
    pub fn temp_path(&self, key: &str, name: &str, suffix: &str) -> Result<PathBuf> {
        let folder = self.child(&format!("{key}-{name}{suffix}"), key, name)?;
        Ok(self
            .root
            .join("tmp")
            .join(folder.file_name().unwrap_or_default()))
    }

    fn child(&self, file_name: &str, key: &str, name: &str) -> Result<PathBuf> {
        let bad = |message: String| StoreError::BadName {
            name: name.to_string(),
            message,
        };
        if !is_key(key) {
            return Err(bad(format!("`{key}` is not a sha256 key")));
        }
        crate::recipe::grammar::recipe_name(name).map_err(bad)?;
        let path = self.root.join(file_name);
        if path.parent() != Some(self.root.as_path()) {
            return Err(bad("it leaves the store folder".into()));
        }
        Ok(path)
    }

    /// The entry under `key` and `name`, whatever its status. A manifest that names
    /// another key or name than its folder is a `BadManifest`: it is not believed.
    pub fn get(&self, key: &str, name: &str) -> Result<Option<Entry>> {
        let path = self.entry_path(key, name)?;
        let entry = self.read_entry(path)?;
        if let Some(e) = &entry {
            if e.manifest.key != key || e.manifest.name != name {
                return Err(StoreError::BadManifest {
                    path: e.path.join(MANIFEST),
                    message: format!(
                        "it says key {} and name `{}`, its folder says key {key} and name `{name}`",
                        e.manifest.key, e.manifest.name
                    ),
                });
            }
        }
        Ok(entry)
    }

    fn read_entry(&self, path: PathBuf) -> Result<Option<Entry>> {
        let manifest_path = path.join(MANIFEST);
        let manifest = match manifest::read_head(&manifest_path) {
            Ok(head) => head,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StoreError::BadManifest {
                    path: manifest_path,
                    message: e.to_string(),
                })
            }
            Err(e) => return Err(io_err("read", &manifest_path)(e).into()),
        };
        Ok(Some(Entry { path, manifest }))
    }

    /// The whole manifest of an entry: key inputs and every output's hash.
    pub fn manifest(&self, entry: &Entry) -> Result<Manifest> {
        let manifest_path = entry.path.join(MANIFEST);
        let bytes = fs_err::read(&manifest_path).map_err(io_err("read", &manifest_path))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadManifest {
            path: manifest_path,
            message: e.to_string(),
        })
    }

    /// A usable entry of this store: present, successful, and its outputs all there with
    /// their recorded sizes (rehashed too with `--verify-on-hit`). Found by its key: an
    /// entry made under another recipe name with identical inputs is a hit. A damaged
    /// entry is a miss, noted for `take_notices`; the build that follows replaces it.
    pub fn lookup_local(&self, key: &str, name: &str) -> Result<Option<Entry>> {
        let found = match self.get(key, name) {
            Ok(Some(entry)) => Some(entry),
            Ok(None) => self.find_by_key(key)?,
            Err(StoreError::BadManifest { path, message }) => {
                self.note_damage(&path, &message);
                None
            }
            Err(e) => return Err(e),
        };
        let Some(entry) = found.filter(|e| e.manifest.status == Status::Ok) else {
            return Ok(None);
        };
        let problems = if self.verify_on_hit {
            self.verify(&entry)
        } else {
            check::sizes(self, &entry)
        };
        match problems.first() {
            None => Ok(Some(entry)),
            Some(first) => {
                let more = match problems.len() {
                    1 => String::new(),
                    n => format!(" and {} more", n - 1),
                };
                self.note_damage(&entry.path, &format!("{first}{more}"));
                Ok(None)
            }
        }
    }

    /// A successful entry under `key` published by another recipe name.
    fn find_by_key(&self, key: &str) -> Result<Option<Entry>> {
        let prefix = format!("{key}-");
        let names: Vec<String> = fs_err::read_dir(&self.root)
            .map_err(io_err("read", &self.root))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|f| f.strip_prefix(&prefix).map(str::to_string))
            .collect();
        for name in names {
            if let Ok(Some(entry)) = self.get(key, &name) {
                if entry.manifest.status == Status::Ok {
                    return Ok(Some(entry));
                }
            }
        }
        Ok(None)
    }

    /// Takes the per-key lock; calls `on_wait` once if another process holds it.
    pub fn lock(&self, key: &str, on_wait: impl FnOnce()) -> Result<KeyLock> {
        let (file, path) = self.lock_file(key)?;
        if !flock(&file, false) {
            on_wait();
            if !flock(&file, true) {
                return Err(io_err("lock", &path)(std::io::Error::last_os_error()).into());
            }
        }
        Ok(KeyLock { _file: file })
    }

    /// The per-key lock if nobody holds it now.
    pub(crate) fn try_lock(&self, key: &str) -> Result<KeyLock> {
        let (file, path) = self.lock_file(key)?;
        if !flock(&file, false) {
            return Err(io_err("lock", &path)(std::io::Error::last_os_error()).into());
        }
        Ok(KeyLock { _file: file })
    }

    fn lock_file(&self, key: &str) -> Result<(fs_err::File, PathBuf)> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock", &path))?;
        Ok((file, path))
    }

    /// Every readable entry in the store (folders named `<key>-<name>` with a manifest
    /// that agrees with the folder's name); `scan` also lists the unreadable ones.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        Ok(self
            .scan()?
            .into_iter()
            .filter_map(|s| match s {
                Scanned::Entry(e) => Some(e),
                Scanned::Bad { .. } => None,
            })
            .collect())
    }

    /// Every folder that looks like an entry (`<64 hex digits>-...`), read or not.
    pub fn scan(&self) -> Result<Vec<Scanned>> {
        let mut found = Vec::new();
        for item in fs_err::read_dir(&self.root)
            .map_err(io_err("read", &self.root))?
            .flatten()
        {
            let path = item.path();
            let Some(file_name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((key, name)) = file_name.split_at_checked(64) else {
                continue;
            };
            let Some(name) = name.strip_prefix('-') else {
                continue;
            };
            if !is_key(key) {
                continue;
            }
            match self.get(key, name) {
                Ok(Some(entry)) => found.push(Scanned::Entry(entry)),
                Ok(None) => found.push(Scanned::Bad {
                    path,
                    problem: format!("no {MANIFEST}"),
                }),
                Err(e) => found.push(Scanned::Bad {
                    path,
                    problem: e.to_string(),
                }),
            }
        }
        found.sort_by(|a, b| a.path().cmp(b.path()));
        Ok(found)
    }

    /// The most recently created entry for a recipe name, whatever its key and status.
    pub fn latest(&self, name: &str) -> Result<Option<Entry>> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.manifest.name == name)
            .max_by_key(|e| e.manifest.created))
    }

    /// Rehashes an entry's outputs; returns what differs from its manifest.
    pub fn verify(&self, entry: &Entry) -> Vec<String> {
        check::rehash(self, entry)
    }

    /// Removes an entry.
    pub fn remove(&self, entry: &Entry) -> Result<()> {
        self.remove_folder(&entry.path)
    }

    /// Removes a folder directly under the store root (an entry, readable or not).
    pub fn remove_folder(&self, path: &Path) -> Result<()> {
        if path.parent() != Some(self.root.as_path()) {
            return Err(io_err("remove", path)(std::io::Error::other(
                "not a folder of this store",
            ))
            .into());
        }
        // Move it out of sight first so nobody sees a half-removed entry.
        let trash = self.root.join("tmp").join(format!(
            "trash-{}-{}",
            std::process::id(),
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        fs_err::rename(path, &trash).map_err(io_err("remove", path))?;
        remove_tree(&trash).map_err(io_err("remove", &trash))?;
        Ok(())
    }
}

/// An exclusive flock; `wait` blocks until it is free. False when not taken.
fn flock(file: &fs_err::File, wait: bool) -> bool {
    let mode = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a file descriptor we own; released when the file closes.
    unsafe { libc::flock(file.as_raw_fd(), mode) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(key: &str, name: &str) -> Manifest {
        Manifest::new(name, "bundle", key, serde_json::json!({"x": 1}))
    }

    #[test]
    fn publish_is_atomic_and_replaces_existing_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = "a".repeat(64);
        let lock = store.lock(&key, || panic!("nobody else holds it")).unwrap();
        let staging = store.stage(&key, "demo", &lock).unwrap();
        std::fs::write(staging.out().join("out.txt"), "one").unwrap();
        let entry = store.publish(staging, manifest(&key, "demo")).unwrap();
        assert_eq!(
            std::fs::read_to_string(entry.path.join("out.txt")).unwrap(),
            "one"
        );
        assert!(store.verify(&entry).is_empty());

        let staging = store.stage(&key, "demo", &lock).unwrap();
        std::fs::write(staging.out().join("out.txt"), "two").unwrap();
        let entry = store.publish(staging, manifest(&key, "demo")).unwrap();
        assert_eq!(
            std::fs::read_to_string(entry.path.join("out.txt")).unwrap(),
            "two"
        );
        // Nothing left behind in tmp.
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn verify_reports_corruption_and_unpublished_builds_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = "b".repeat(64);
        let lock = store.lock(&key, || {}).unwrap();
        let staging = store.stage(&key, "demo", &lock).unwrap();
        std::fs::write(staging.out().join("f"), "good").unwrap();
        let entry = store.publish(staging, manifest(&key, "demo")).unwrap();
        std::fs::write(entry.path.join("f"), "evil").unwrap();
        let problems = store.verify(&entry);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("sha256 mismatch"));

        let other = "c".repeat(64);
        let staging = store.stage(&other, "demo", &lock).unwrap();
        std::fs::write(staging.out().join("f"), "half").unwrap();
        drop(staging);
        assert!(store.get(&other, "demo").unwrap().is_none());
    }
}
