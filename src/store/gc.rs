//! Garbage collection: entries no recipe reaches (or older than an age), temp folders of
//! builders that are gone, and what entries leave beside them (kept logs, tree listings).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use super::{is_key, remove_tree, Entry, Result, Store, KEPT_LOG_KEY};
use crate::fsio::io_err;

impl Store {
    /// Removes entries whose key is not in `keep` (when given) or older than `max_age`
    /// (when given), plus temp folders no live builder holds. Returns the removed entries.
    pub fn gc(
        &self,
        keep: Option<&BTreeSet<String>>,
        max_age: Option<Duration>,
    ) -> Result<Vec<Entry>> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut removed = Vec::new();
        for entry in self.entries()? {
            let unreachable = keep.is_some_and(|k| !k.contains(&entry.manifest.key));
            let too_old = max_age
                .is_some_and(|age| now.saturating_sub(entry.manifest.created) > age.as_secs());
            if unreachable || too_old {
                self.remove(&entry)?;
                removed.push(entry);
            }
        }
        let tmp = self.root.join("tmp");
        for item in fs_err::read_dir(&tmp)
            .map_err(io_err("read", &tmp))?
            .flatten()
        {
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(key) = name.get(..64).filter(|k| is_key(k)) else {
                if name.starts_with("trash-") {
                    let _ = remove_tree(&item.path());
                }
                continue;
            };
            // A temp folder whose key lock is free belongs to a builder that is gone.
            if let Ok(lock) = self.try_lock(key) {
                drop(lock);
                let _ = remove_tree(&item.path());
            }
        }
        Ok(removed)
    }

    /// Removes what entries leave beside them once they are gone: kept logs
    /// (`logs/<name>-<key prefix>.*`) of keys no remaining entry or recipe has, and source
    /// tree listings (`trees/<digest>`) that no remaining entry's inputs and no tree in
    /// `current_trees` (the recipes' trees now) name. Returns how many files went.
    pub(crate) fn gc_side_files(
        &self,
        current_keys: &BTreeSet<String>,
        current_trees: &BTreeSet<String>,
    ) -> Result<usize> {
        let mut keys = current_keys.clone();
        let mut trees = current_trees.clone();
        for entry in self.entries()? {
            if entry.manifest.kind == "kernel" {
                if let Ok(manifest) = self.manifest(&entry) {
                    if let Some(tree) = crate::graph::tree_digest(&manifest.inputs) {
                        trees.insert(tree.to_string());
                    }
                }
            }
            keys.insert(entry.manifest.key);
        }
        let mut removed = 0;
        let logs = self.logs_dir();
        for item in fs_err::read_dir(&logs).into_iter().flatten().flatten() {
            let file = item.file_name().to_string_lossy().into_owned();
            // Only logs named by `kept_log`; others (`vmbuild run`'s console) are replaced
            // by their next run.
            let Some(prefix) = file
                .get(..KEPT_LOG_KEY)
                .filter(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
                .filter(|_| file.as_bytes().get(KEPT_LOG_KEY) == Some(&b'-'))
            else {
                continue;
            };
            // A build may be writing it right now (its recipe outside `recipes/`).
            let recent = item
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > SystemTime::now() - Duration::from_secs(3600));
            let kept = recent || keys.iter().any(|k| k.starts_with(prefix));
            if !kept && fs_err::remove_file(item.path()).is_ok() {
                removed += 1;
            }
        }
        let trees_dir = self.trees_dir();
        for item in fs_err::read_dir(&trees_dir).into_iter().flatten().flatten() {
            let file = item.file_name().to_string_lossy().into_owned();
            if !trees.contains(&file) && fs_err::remove_file(item.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the build folders of local kernel trees (`kbuild/local-*`) and the stat
    /// caches (`statcache/*`) not in `keep` (the names the recipes' trees give them),
    /// each build folder under its lock (one in use is left alone), and temp files a
    /// killed vmbuild left in `statcache/` and `trees/` over an hour ago.
    pub(crate) fn gc_tree_caches(&self, keep: &BTreeSet<String>) -> Result<usize> {
        let mut removed = 0;
        let kbuild = self.kbuild_dir();
        for item in fs_err::read_dir(&kbuild).into_iter().flatten().flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if !name.starts_with("local-") || keep.contains(&name) {
                continue;
            }
            if let Ok(lock) = self.try_lock(&self.kbuild_lock_key(&item.path())) {
                if remove_tree(&item.path()).is_ok() {
                    removed += 1;
                }
                drop(lock);
            }
        }
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        for dir in [self.statcache_dir(), self.trees_dir()] {
            for item in fs_err::read_dir(&dir).into_iter().flatten().flatten() {
                let name = item.file_name().to_string_lossy().into_owned();
                let stale_tmp = name.contains(".tmp.")
                    && item
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t < hour_ago);
                let unused = dir == self.statcache_dir() && is_key(&name) && !keep.contains(&name);
                if (stale_tmp || unused) && fs_err::remove_file(item.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Manifest;

    fn manifest(key: &str, name: &str) -> Manifest {
        Manifest::new(name, "bundle", key, serde_json::json!({}))
    }

    #[test]
    fn gc_keeps_reachable_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for k in ["d", "e"] {
            let key = k.repeat(64);
            let lock = store.lock(&key, || {}).unwrap();
            let staging = store.stage(&key, "demo", &lock).unwrap();
            store.publish(staging, manifest(&key, "demo")).unwrap();
        }
        let keep: BTreeSet<String> = ["d".repeat(64)].into();
        let removed = store.gc(Some(&keep), None).unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(store.entries().unwrap().len(), 1);
    }
}
