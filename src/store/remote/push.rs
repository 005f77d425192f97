//! Uploading an entry: the blobs the server lacks (or holds corrupt), then the manifest,
//! its signature, and last the record, so no reader finds a record before its blobs.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::client::Failure;
use super::keys;
use super::{action, parallel, shared_kind, unpack, Remote, Upload, MANIFEST, SIGNATURES};
use crate::hashing::{self, TreeEntry};
use crate::store::manifest::{Manifest, Status};

impl Remote {
    /// Uploads the published entry at `path` (its manifest's bytes are `bytes`), unless
    /// the server has a good record for its key already and `replace` is not asked for:
    /// one this process did not find broken and (for a writer that signs) signed by a key
    /// it trusts or its own. So a reader that distrusts a signed record does not replace
    /// it with its own. Blobs the server has are not sent again, but for those found
    /// corrupt. A failure is a notice.
    pub(crate) fn upload(
        &self,
        path: &Path,
        manifest: &Manifest,
        bytes: &[u8],
        replace: bool,
    ) -> Upload {
        let head = &manifest.head;
        if !self.writable || head.status != Status::Ok || !shared_kind(&head.kind) {
            return Upload::NotShared;
        }
        // What every reader would refuse is not sent (it would be rebuilt and sent again).
        if let Err(why) = unpack::check_paths(&head.kind, &manifest.outputs) {
            self.notice(format!("{} is not uploaded: {}", path.display(), why));
            return Upload::NotShared;
        }
        if self.uploads_refused.load(Ordering::Relaxed) {
            return Upload::Failed;
        }
        match self.upload_checked(path, manifest, bytes, replace) {
            Ok(true) => {
                self.traffic.pushed.fetch_add(1, Ordering::Relaxed);
                Upload::Sent
            }
            Ok(false) => Upload::Present,
            Err(Failure::Down) => Upload::Failed,
            Err(Failure::Refused(why)) => {
                if !self.uploads_refused.swap(true, Ordering::Relaxed) {
                    self.notice(format!(
                        "the remote cache refuses uploads ({why}): nothing more is uploaded \
                         this run (--remote read says so for good)"
                    ));
                }
                Upload::Failed
            }
            Err(failure) => {
                self.notice(format!(
                    "upload {} to the remote cache: {failure}",
                    path.display()
                ));
                Upload::Failed
            }
        }
    }

    /// Whether a record for `key` is on the server that this writer should leave.
    fn keep_record(&self, key: &str) -> Result<bool, Failure> {
        if self.broken().records.contains(key) {
            return Ok(false);
        }
        let Some(signer) = &self.signer else {
            return self.client.has(&format!("ac/{key}"), None);
        };
        let Some(record) = self.client.get_action(key)? else {
            return Ok(false);
        };
        let Ok(files) = action::decode(&record) else {
            return Ok(false);
        };
        let mut keys = self.trusted.clone();
        keys.push(signer.public());
        // Signed, and its manifest there whole.
        let manifest = files.iter().find(|f| f.path == MANIFEST);
        let whole = match manifest {
            Some(m) => self
                .client
                .has(&format!("cas/{}", m.sha256), Some(m.size))?,
            None => false,
        };
        Ok(whole && self.check_signed(key, &files, &keys).is_ok())
    }

    fn upload_checked(
        &self,
        path: &Path,
        manifest: &Manifest,
        bytes: &[u8],
        replace: bool,
    ) -> Result<bool, Failure> {
        let key = &manifest.head.key;
        let record = format!("ac/{key}");
        if !replace && self.keep_record(key)? {
            return Ok(false);
        }
        let mut blobs: Vec<(&str, &str, u64)> = manifest
            .outputs
            .iter()
            .filter_map(|(rel, entry)| match entry {
                TreeEntry::File { sha256, size, .. } => {
                    Some((rel.as_str(), sha256.as_str(), *size))
                }
                _ => None,
            })
            .collect();
        blobs.sort_by_key(|(_, sha256, _)| *sha256);
        blobs.dedup_by_key(|(_, sha256, _)| *sha256);
        let corrupt = self.broken().blobs.clone();
        parallel(&blobs, |(rel, sha256, size)| {
            let blob = format!("cas/{sha256}");
            if corrupt.contains(*sha256) || !self.client.has(&blob, Some(*size))? {
                self.client.put_file(&blob, &path.join(rel), *size)?;
                self.traffic.bytes_up.fetch_add(*size, Ordering::Relaxed);
            }
            Ok(())
        })?;
        let manifest_sha256 = hashing::sha256_hex(bytes);
        self.client
            .put_bytes(&format!("cas/{manifest_sha256}"), bytes)?;
        let mut files = vec![action::OutputFile {
            path: MANIFEST.into(),
            sha256: manifest_sha256.clone(),
            size: bytes.len() as u64,
        }];
        if let Some(signer) = &self.signer {
            let signature = signer.sign(&keys::message(key, &manifest_sha256));
            let signature = format!("{signature}\n").into_bytes();
            let sha256 = hashing::sha256_hex(&signature);
            self.client
                .put_bytes(&format!("cas/{sha256}"), &signature)?;
            files.push(action::OutputFile {
                path: SIGNATURES.into(),
                sha256,
                size: signature.len() as u64,
            });
        }
        self.client.put_bytes(&record, &action::encode(&files))?;
        let mut broken = self.broken();
        broken.records.remove(key);
        for (_, sha256, _) in &blobs {
            broken.blobs.remove(*sha256);
        }
        Ok(true)
    }
}
