//! Pulling an entry: the record, then the manifest (checked against its hash, its
//! signature when keys are trusted, its key, kind and status, its paths), then every
//! output streamed into the staging folder and checked as it comes.

use std::path::Path;
use std::sync::atomic::Ordering;

use super::client::Failure;
use super::keys::{self, PublicKey};
use super::{action, shared_kind, unpack, Found, Remote, MANIFEST, SIGNATURES};
use crate::hashing::TreeEntry;
use crate::recipe::units::approx_size;
use crate::store::manifest::{Manifest, Status, MANIFEST_SCHEMA};

impl Remote {
    /// The checked manifest of the `kind` entry under `key`, or `None` (a miss, or a
    /// record not to use: said in a notice). A key asked once is not asked again.
    pub(crate) fn find(&self, key: &str, kind: &str) -> Option<Found> {
        if !shared_kind(kind) || self.broken().missed.contains(key) {
            return None;
        }
        let found = self.find_checked(key, kind);
        if !matches!(found, Ok(Some(_))) {
            self.broken().missed.insert(key.to_string());
        }
        match found {
            Ok(found) => found,
            Err(Failure::Down) => None,
            Err(failure) => {
                self.refuse(key, &failure);
                None
            }
        }
    }

    /// Notes and says why the server's entry under `key` is not used.
    fn refuse(&self, key: &str, failure: &Failure) {
        self.note_broken(key, failure);
        self.traffic.refused.fetch_add(1, Ordering::Relaxed);
        let line = match failure {
            Failure::Local(why) => format!(
                "remote entry {}/ac/{key} cannot be pulled: {why}",
                self.url()
            ),
            _ => format!(
                "remote entry {}/ac/{key} is not used: {failure}",
                self.url()
            ),
        };
        self.notice(line);
    }

    fn find_checked(&self, key: &str, kind: &str) -> Result<Option<Found>, Failure> {
        let Some(record) = self.client.get_action(key)? else {
            return Ok(None);
        };
        let files =
            action::decode(&record).map_err(|e| Failure::Other(format!("its record: {e}")))?;
        let listed = files
            .iter()
            .find(|f| f.path == MANIFEST)
            .ok_or_else(|| Failure::Other(format!("its record names no {MANIFEST}")))?;
        let bytes = self
            .client
            .get_small_blob(&listed.sha256, listed.size)?
            .ok_or_else(|| Failure::Other(format!("its {MANIFEST} blob is missing")))?;
        if !self.trusted.is_empty() {
            self.check_signed(key, &files, &self.trusted)
                .map_err(|why| Failure::Untrusted(format!("{why} (trusted keys are set)")))?;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Other(format!("its {MANIFEST}: {e}")))?;
        let head = &manifest.head;
        if head.schema > MANIFEST_SCHEMA {
            return Err(Failure::Other(format!(
                "its manifest is of schema {}, newer than this vmbuild's {MANIFEST_SCHEMA}",
                head.schema
            )));
        }
        if head.key != key {
            return Err(Failure::Other(format!(
                "its manifest is of key {}",
                head.key
            )));
        }
        // The key holds the recipe's kind: a manifest saying another is not believed (and
        // the kind decides what its paths may be).
        if head.kind != kind {
            return Err(Failure::Other(format!(
                "its manifest is of a {} entry, the key's is a {kind}",
                head.kind
            )));
        }
        if head.status != Status::Ok {
            return Err(Failure::Other(
                "its manifest is of a failed run, which is never shared".into(),
            ));
        }
        crate::recipe::grammar::recipe_name(&head.name)
            .map_err(|e| Failure::Other(format!("its name `{}`: {e}", head.name)))?;
        unpack::check_paths(kind, &manifest.outputs).map_err(Failure::Other)?;
        Ok(Some(Found { manifest, bytes }))
    }

    /// Whether the record's `files` carry a signature by one of `keys` of its manifest.
    pub(super) fn check_signed(
        &self,
        key: &str,
        files: &[action::OutputFile],
        keys: &[PublicKey],
    ) -> Result<(), String> {
        let manifest = files.iter().find(|f| f.path == MANIFEST);
        let signatures = files.iter().find(|f| f.path == SIGNATURES);
        let (Some(manifest), Some(signatures)) = (manifest, signatures) else {
            return Err("it is not signed".into());
        };
        let text = match self
            .client
            .get_small_blob(&signatures.sha256, signatures.size)
        {
            Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(None) => return Err("its signature blob is missing".into()),
            Err(failure) => return Err(format!("its signatures: {failure}")),
        };
        keys::verify(&text, &keys::message(key, &manifest.sha256), keys).map(drop)
    }

    /// Downloads every output of `found` into `out`, each checked against its hash; false
    /// (said in a notice) when any is not right, or the files would not fit on the disk.
    pub(crate) fn download(&self, found: &Found, out: &Path) -> bool {
        let outputs = &found.manifest.outputs;
        let total: u64 = outputs
            .values()
            .map(|e| match e {
                TreeEntry::File { size, .. } => *size,
                _ => 0,
            })
            .fold(0, u64::saturating_add);
        let result = match crate::fsio::free_bytes(out) {
            Ok(free) if free < total => Err(Failure::Local(format!(
                "its files are {}, and the store's disk has {} free",
                approx_size(total),
                approx_size(free)
            ))),
            _ => unpack::materialize(outputs, out, |rel, sha256, size| {
                let bytes = self.client.download(sha256, size, &out.join(rel))?;
                self.traffic.bytes_down.fetch_add(bytes, Ordering::Relaxed);
                Ok(())
            }),
        };
        match result {
            Ok(()) => {
                self.traffic.pulled.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(Failure::Down) => false,
            Err(failure) => {
                let key = &found.manifest.head.key;
                self.broken().missed.insert(key.clone());
                self.refuse(key, &failure);
                false
            }
        }
    }
}
