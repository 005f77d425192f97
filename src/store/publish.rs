//! Making entries: a build's staging folder, and its publication by one rename (an
//! atomic exchange when it replaces an entry), after which a successful entry goes to the
//! remote cache when one is set to be written.

use std::path::Path;
use std::time::SystemTime;

use super::{
    remove_tree, Entry, KeyLock, Manifest, ManifestHead, Result, Staging, Store, StoreError,
    MANIFEST,
};
use crate::fsio::io_err;
use crate::hashing;

/// When `get_or_build` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// Only when the store (or the remote cache) has no usable entry.
    IfMissing,
    /// Always (a stored entry is not good enough for this run), leaving a shared entry on
    /// the remote cache as it is.
    Again,
    /// Always, at the user's word (`-f`): the new entry replaces the remote cache's too,
    /// which is how a bad shared entry is mended.
    Forced,
}

impl Store {
    /// The entry under `key`: reused when present (unless `force`), else made by `build`
    /// into a staging folder and published. The key's lock is held from the second
    /// lookup to the publish, so a concurrent vmbuild waits (`on_wait` says so) and then
    /// finds this one's entry. Returns the entry and whether it was reused.
    pub fn get_or_build<E: From<StoreError>>(
        &self,
        key: &str,
        name: &str,
        kind: &str,
        when: Build,
        on_wait: impl FnOnce(),
        build: impl FnOnce(&Path) -> std::result::Result<Manifest, E>,
    ) -> std::result::Result<(Entry, bool), E> {
        let force = when != Build::IfMissing;
        if !force {
            if let Some(entry) = self.lookup(key, name, kind)? {
                return Ok((entry, true));
            }
        }
        let lock = self.lock(key, on_wait)?;
        if !force {
            // Another vmbuild may have built or pulled it while we waited.
            if let Some(entry) = self.lookup_local(key, name)? {
                return Ok((entry, true));
            }
        }
        let staging = self.stage(key, name, &lock)?;
        let manifest = build(staging.out())?;
        // Others wanting the entry need not wait for the upload.
        let (entry, manifest, bytes) = self.publish_local(staging, manifest)?;
        drop(lock);
        self.upload(&entry, &manifest, &bytes, when == Build::Forced);
        Ok((entry, false))
    }

    /// Starts building an entry. The caller holds the key's lock, so any leftover temp
    /// folder for this key is from a builder that died: it is removed.
    pub fn stage(&self, key: &str, name: &str, _lock: &KeyLock) -> Result<Staging> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{key}-");
        for stale in fs_err::read_dir(&tmp)
            .map_err(io_err("read", &tmp))?
            .flatten()
        {
            let file_name = stale.file_name().to_string_lossy().into_owned();
            if file_name.starts_with("trash-") {
                let _ = remove_tree(&stale.path());
            } else if file_name.starts_with(&prefix) {
                // Out of the way first, in one rename: a process the dead builder started
                // (dpkg-deb, say) may still be writing into it, so removing it can fail;
                // what is left in trash is removed later (next stage, `gc`).
                let nonce = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let trash = tmp.join(format!("trash-{}-{nonce}-{file_name}", std::process::id()));
                fs_err::rename(stale.path(), &trash)
                    .map_err(io_err("move away stale", &stale.path()))?;
                let _ = remove_tree(&trash);
            }
        }
        let dir = self.temp_path(key, name, &format!(".{}", std::process::id()))?;
        fs_err::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        Ok(Staging {
            dir,
            key: key.to_string(),
            name: name.to_string(),
        })
    }

    /// Hashes the staged outputs into the manifest, writes it, and publishes the entry
    /// atomically, replacing an existing entry under the same key. A successful entry
    /// then goes to the remote cache, when one is set to be written.
    pub fn publish(&self, staging: Staging, manifest: Manifest) -> Result<Entry> {
        let (entry, manifest, bytes) = self.publish_local(staging, manifest)?;
        self.upload(&entry, &manifest, &bytes, false);
        Ok(entry)
    }

    /// `publish`, releasing the caller's `lock` on the key before the upload: others
    /// wanting the entry need not wait for the network.
    pub fn publish_and_unlock(
        &self,
        staging: Staging,
        manifest: Manifest,
        lock: KeyLock,
    ) -> Result<Entry> {
        let (entry, manifest, bytes) = self.publish_local(staging, manifest)?;
        drop(lock);
        self.upload(&entry, &manifest, &bytes, false);
        Ok(entry)
    }

    /// `publish` but for the upload: the entry, its whole manifest and the manifest's bytes.
    pub(super) fn publish_local(
        &self,
        staging: Staging,
        mut manifest: Manifest,
    ) -> Result<(Entry, Manifest, Vec<u8>)> {
        let outputs = hashing::hash_tree(&staging.dir, |p| p != Path::new(MANIFEST))
            .map_err(io_err("hash outputs in", &staging.dir))?;
        manifest.outputs = outputs;
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifests serialize");
        let entry = self.commit(staging, &bytes, manifest.head.clone())?;
        Ok((entry, manifest, bytes))
    }

    /// Writes `manifest` (the bytes of the manifest whose head is `head`) into the staged
    /// entry and publishes it with one rename (an exchange when replacing an entry).
    pub(super) fn commit(
        &self,
        staging: Staging,
        manifest: &[u8],
        head: ManifestHead,
    ) -> Result<Entry> {
        let manifest_path = staging.dir.join(MANIFEST);
        let file = fs_err::File::create(&manifest_path).map_err(io_err("write", &manifest_path))?;
        std::io::Write::write_all(&mut &file, manifest).map_err(io_err("write", &manifest_path))?;
        file.sync_all().map_err(io_err("sync", &manifest_path))?;
        let target = self.entry_path(&staging.key, &staging.name)?;
        if target.exists() {
            exchange(&staging.dir, &target)?;
        } else {
            fs_err::rename(&staging.dir, &target).map_err(io_err("publish", &target))?;
        }
        if let Ok(dir) = fs_err::File::open(&self.root) {
            let _ = dir.sync_all();
        }
        // After an exchange the staging path holds the old entry; dropping removes it.
        drop(staging);
        Ok(Entry {
            path: target,
            manifest: head,
        })
    }
}

/// Swaps two paths atomically (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())
        .map_err(|e| io_err("publish", a)(std::io::Error::other(e)))?;
    let cb = CString::new(b.as_os_str().as_bytes())
        .map_err(|e| io_err("publish", b)(std::io::Error::other(e)))?;
    // SAFETY: both are valid NUL-terminated paths; AT_FDCWD resolves them as given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc != 0 {
        return Err(io_err("replace", b)(std::io::Error::last_os_error()).into());
    }
    Ok(())
}

/// Swaps two paths where the kernel cannot do it atomically (FreeBSD has no
/// RENAME_EXCHANGE).
#[cfg(not(target_os = "linux"))]
fn exchange(a: &Path, b: &Path) -> Result<()> {
    exchange_by_renames(a, b)
}

/// Swaps `a` (a staged entry) and `b` (the published one) by three renames. Killed
/// between the first two, `b` is missing for the next lookup (a miss: rebuilt), never
/// half of one entry and half of another; `b` aside is in the store's tmp, cleaned as
/// stale. A failed step puts back what it moved.
#[cfg_attr(target_os = "linux", allow(dead_code))]
fn exchange_by_renames(a: &Path, b: &Path) -> Result<()> {
    let mut aside = a.as_os_str().to_owned();
    aside.push(".exchanging");
    let aside = std::path::PathBuf::from(aside);
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|e| StoreError::from(io_err("move", from)(e)))
    };
    rename(b, &aside)?;
    if let Err(e) = rename(a, b) {
        let _ = rename(&aside, b);
        return Err(e);
    }
    // `b` is the new entry now: the old one only has to leave the way, wherever it is.
    if rename(&aside, a).is_err() {
        let _ = remove_tree(&aside);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_by_renames_swaps_and_puts_back_what_it_moved_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "new").unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(b.join("f"), "old").unwrap();
        exchange_by_renames(&a, &b).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
        assert_eq!(std::fs::read_to_string(a.join("f")).unwrap(), "old");
        // The second rename fails (nothing at `a`): the published entry goes back.
        std::fs::remove_dir_all(&a).unwrap();
        assert!(exchange_by_renames(&a, &b).is_err());
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "new");
        assert!(!dir.path().join("a.exchanging").exists());
    }
}
