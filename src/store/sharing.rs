//! The store's side of the remote cache: lookups that fall back to it (pulling under the
//! key's lock, published like a build), and uploads of what is published here.

use super::remote::Upload;
use super::{Entry, KeyLock, Manifest, Result, Store, StoreError, MANIFEST};
use crate::fsio::io_err;

impl Store {
    /// A usable cached entry of `kind`: `lookup_local`'s, else one pulled from the remote
    /// cache.
    pub fn lookup(&self, key: &str, name: &str, kind: &str) -> Result<Option<Entry>> {
        if let Some(entry) = self.lookup_local(key, name)? {
            return Ok(Some(entry));
        }
        // Kinds kept local never reach the server: no lock taken, no second look here.
        if self.remote.is_none() || !super::remote::shared_kind(kind) {
            return Ok(None);
        }
        // Another vmbuild holding the lock is building or pulling the entry: the caller's
        // wait for the lock (`get_or_build`) then finds its result.
        let Ok(lock) = self.try_lock(key) else {
            return Ok(None);
        };
        self.pull(key, name, kind, &lock)
    }

    /// `lookup`, but waiting (`on_wait` says so) while another vmbuild holds the key's
    /// lock, then taking what it made (`vmbuild pull`).
    pub fn lookup_waiting(
        &self,
        key: &str,
        name: &str,
        kind: &str,
        on_wait: impl FnOnce(),
    ) -> Result<Option<Entry>> {
        if let Some(entry) = self.lookup_local(key, name)? {
            return Ok(Some(entry));
        }
        let lock = self.lock(key, on_wait)?;
        self.pull(key, name, kind, &lock)
    }

    /// The remote cache's entry under `key`, downloaded, checked and published here as
    /// `name`; `None` on a miss or on any problem (a notice says it).
    fn pull(&self, key: &str, name: &str, kind: &str, lock: &KeyLock) -> Result<Option<Entry>> {
        let Some(remote) = &self.remote else {
            return Ok(None);
        };
        if let Some(entry) = self.lookup_local(key, name)? {
            return Ok(Some(entry));
        }
        let Some(mut found) = remote.find(key, kind) else {
            return Ok(None);
        };
        // Published under the name it is looked up by (the key is the same for identical
        // inputs under another recipe name).
        if found.manifest.head.name != name {
            found.manifest.head.name = name.to_string();
            found.bytes = serde_json::to_vec_pretty(&found.manifest).expect("manifests serialize");
        }
        let staging = self.stage(key, name, lock)?;
        if !remote.download(&found, staging.out()) {
            return Ok(None);
        }
        self.commit(staging, &found.bytes, found.manifest.head)
            .map(Some)
    }

    /// Uploads a published entry to the remote cache, if there is one to write to; a
    /// problem is a notice. (`publish` does this for every new entry.)
    pub fn push(&self, entry: &Entry) -> Result<Upload> {
        let manifest_path = entry.path.join(MANIFEST);
        let bytes = fs_err::read(&manifest_path).map_err(io_err("read", &manifest_path))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadManifest {
                path: manifest_path,
                message: e.to_string(),
            })?;
        Ok(self.upload(entry, &manifest, &bytes, false))
    }

    /// Uploads `entry` (its whole manifest and the manifest's bytes); `replace` even over
    /// a good record on the server (`-f`).
    pub(super) fn upload(
        &self,
        entry: &Entry,
        manifest: &Manifest,
        bytes: &[u8],
        replace: bool,
    ) -> Upload {
        match &self.remote {
            Some(remote) => remote.upload(&entry.path, manifest, bytes, replace),
            None => Upload::NotShared,
        }
    }
}
