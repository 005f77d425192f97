//! The remote cache: the local store's entries shared through any server that speaks the
//! Bazel HTTP cache protocol (nginx with WebDAV, bazel-remote, an S3 proxy).
//!
//! - Every output file is a blob at `cas/<sha256>`, and so are the entry's
//!   `manifest.json` and, when signed, its `manifest.sig`.
//! - The entry is `ac/<key>`: a minimal REAPI `ActionResult` naming those two blobs
//!   (`action`), so caches that check `ac/` records accept it.
//! - A pull reads the record, the manifest (checked against its hash, its signature when
//!   keys are trusted, its key and its status), then streams every output into a staging
//!   folder, hashing on the way; one byte off and the entry is not used. The store
//!   publishes what passed with its usual atomic rename.
//! - A push uploads the blobs the server lacks (`HEAD` first), `WORKERS` at a time and
//!   streamed from disk, then the manifest, then the record: a reader never finds a
//!   record whose blobs are not there yet.
//! - Nothing here fails a build: every problem comes back as a notice for the caller to
//!   show, and the entry is built locally instead.

pub(crate) mod action;
mod client;
pub mod keys;
mod unpack;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::hashing::{self, TreeEntry};
use crate::recipe::{units::approx_size, RemoteMode};
use client::{Client, Failure};
use keys::{PublicKey, SecretKey};

use super::manifest::{Manifest, Status, MANIFEST};

/// Transfers in flight at once, per entry.
pub(crate) const WORKERS: usize = 8;
/// The name of the signatures file in the `ac/` record.
const SIGNATURES: &str = "manifest.sig";

/// Entry kinds kept out of the remote cache: kernel source trees (the pinned tarball
/// they are unpacked from is the thing to share, and it is fetched by hash anyway) and
/// saved VM states (tied to the host's qemu and CPU, and large).
const LOCAL_KINDS: [&str; 2] = ["source", "environment"];

/// Whether entries of `kind` go to the remote cache.
pub(crate) fn shared_kind(kind: &str) -> bool {
    !LOCAL_KINDS.contains(&kind)
}

/// Where the remote cache is and how to use it, from the command line, the environment
/// and `vmbuild.toml`.
#[derive(Debug, Clone)]
pub struct RemoteSettings {
    pub url: String,
    pub mode: RemoteMode,
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache {url}: {message}")]
    Settings { url: String, message: String },
    #[error("read the signing key {}: {message}", path.display())]
    SigningKey { path: PathBuf, message: String },
}

/// Figures of what went over the wire, for the summary and benchmarks.
#[derive(Debug, Default)]
pub struct Traffic {
    pub pulled: AtomicUsize,
    pub pushed: AtomicUsize,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

pub struct Remote {
    client: Client,
    writable: bool,
    /// Set when the server refused an upload (401, 403, ...): no more are tried.
    refused: AtomicBool,
    signer: Option<SecretKey>,
    trusted: Vec<PublicKey>,
    notices: Arc<Mutex<Vec<String>>>,
    /// Records and blobs this process found broken on the server: replaced when it
    /// uploads the same entry (otherwise a record already there is left as it is).
    broken: Mutex<Broken>,
    pub traffic: Traffic,
}

#[derive(Default)]
struct Broken {
    records: BTreeSet<String>,
    blobs: BTreeSet<String>,
    /// Keys this process looked up and did not get (missing, or not usable): not asked
    /// again, nor reported twice.
    missed: BTreeSet<String>,
}

/// What became of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    Sent,
    /// The server has a good record for the key already.
    Present,
    /// Not for the remote cache (a failed result, a local-only kind, `--remote read`).
    NotShared,
    /// Said in a notice (or the server is down).
    Failed,
}

/// A manifest found under `ac/<key>`, checked, with its exact bytes.
pub(crate) struct Found {
    pub manifest: Manifest,
    pub bytes: Vec<u8>,
}

impl Remote {
    /// The remote cache `settings` name, or `None` when it is off.
    pub fn open(settings: &RemoteSettings) -> Result<Option<Remote>, RemoteError> {
        if settings.mode == RemoteMode::Off {
            return Ok(None);
        }
        crate::recipe::check_url(&settings.url).map_err(|message| RemoteError::Settings {
            url: settings.url.clone(),
            message,
        })?;
        // Only a writer signs: a reader does not need (or read) the key.
        let signing_key = match settings.mode {
            RemoteMode::Readwrite => settings.signing_key.as_ref(),
            _ => None,
        };
        let signer = match signing_key {
            None => None,
            Some(path) => {
                let text = fs_err::read_to_string(path).map_err(|e| RemoteError::SigningKey {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                Some(
                    SecretKey::parse(&text).map_err(|message| RemoteError::SigningKey {
                        path: path.clone(),
                        message,
                    })?,
                )
            }
        };
        let trusted = settings
            .trusted_keys
            .iter()
            .map(|k| PublicKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| RemoteError::Settings {
                url: settings.url.clone(),
                message: format!("trusted key: {message}"),
            })?;
        let notices = Arc::new(Mutex::new(Vec::new()));
        let on_down = {
            let notices = Arc::clone(&notices);
            let url = client::redact(&settings.url);
            Box::new(move |why: String| {
                push_notice(
                    &notices,
                    format!("remote cache {url} is unreachable ({why}): carrying on with the local store only"),
                )
            })
        };
        Ok(Some(Remote {
            client: Client::new(&settings.url, on_down),
            writable: settings.mode == RemoteMode::Readwrite,
            refused: AtomicBool::new(false),
            signer,
            trusted,
            notices,
            broken: Mutex::new(Broken::default()),
            traffic: Traffic::default(),
        }))
    }

    pub fn url(&self) -> &str {
        self.client.base()
    }

    pub(crate) fn writable(&self) -> bool {
        self.writable
    }

    /// Whether the server was found unreachable (everything since was local only).
    pub(crate) fn is_down(&self) -> bool {
        self.client.is_down()
    }

    /// What went wrong since the last call (each already handled: built locally instead).
    pub(crate) fn take_notices(&self) -> Vec<String> {
        std::mem::take(&mut *self.notices.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn notice(&self, line: String) {
        push_notice(&self.notices, line);
    }

    fn broken(&self) -> std::sync::MutexGuard<'_, Broken> {
        self.broken.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what `failure` (of the record under `key`) says is broken on the server.
    /// A signature this host does not trust is no damage: its record is replaced only
    /// by a writer that signs.
    fn note_broken(&self, key: &str, failure: &Failure) {
        let mut broken = self.broken();
        match failure {
            Failure::Down => return,
            Failure::Mismatch { expected, .. } => {
                broken.blobs.insert(expected.clone());
            }
            Failure::Untrusted(_) if self.signer.is_none() => return,
            _ => {}
        }
        broken.records.insert(key.to_string());
    }

    /// The checked manifest under `key`, or `None` (a miss, or a record not to use: said
    /// in a notice).
    pub(crate) fn find(&self, key: &str) -> Option<Found> {
        if self.broken().missed.contains(key) {
            return None;
        }
        let found = self.find_checked(key);
        if !matches!(found, Ok(Some(_))) {
            self.broken().missed.insert(key.to_string());
        }
        match found {
            Ok(found) => found,
            Err(Failure::Down) => None,
            Err(failure) => {
                self.note_broken(key, &failure);
                self.notice(format!(
                    "remote entry {}/ac/{key} is not used: {failure}",
                    self.url()
                ));
                None
            }
        }
    }

    fn find_checked(&self, key: &str) -> Result<Option<Found>, Failure> {
        let Some(record) = self.client.get_action(key)? else {
            return Ok(None);
        };
        let files =
            action::decode(&record).map_err(|e| Failure::Other(format!("its record: {e}")))?;
        let named = |name: &str| files.iter().find(|f| f.path == name);
        let listed = named(MANIFEST)
            .ok_or_else(|| Failure::Other(format!("its record names no {MANIFEST}")))?;
        let bytes = self
            .client
            .get_small_blob(&listed.sha256)?
            .ok_or_else(|| Failure::Other(format!("its {MANIFEST} blob is missing")))?;
        if !self.trusted.is_empty() {
            self.check_signed(key, &files, &self.trusted)
                .map_err(|why| Failure::Untrusted(format!("{why} (trusted keys are set)")))?;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Failure::Other(format!("its {MANIFEST}: {e}")))?;
        let head = &manifest.head;
        if head.key != key {
            return Err(Failure::Other(format!(
                "its manifest is of key {}",
                head.key
            )));
        }
        if head.status != Status::Ok || !shared_kind(&head.kind) {
            return Err(Failure::Other(format!(
                "its manifest is a {:?} {} entry, which is never shared",
                head.status, head.kind
            )));
        }
        crate::recipe::grammar::recipe_name(&head.name)
            .map_err(|e| Failure::Other(format!("its name `{}`: {e}", head.name)))?;
        unpack::check_paths(&head.kind, &manifest.outputs).map_err(Failure::Other)?;
        Ok(Some(Found { manifest, bytes }))
    }

    /// Whether the record's `files` carry a signature by one of `keys` of its manifest.
    fn check_signed(
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
        let text = match self.client.get_small_blob(&signatures.sha256) {
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
            Ok(free) if free < total => Err(Failure::Other(format!(
                "it is {}, and the store's disk has {} free",
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
                self.note_broken(&found.manifest.head.key, &failure);
                self.broken().missed.insert(found.manifest.head.key.clone());
                self.notice(format!(
                    "remote entry {}/ac/{} is not used: {failure}",
                    self.url(),
                    found.manifest.head.key
                ));
                false
            }
        }
    }

    /// Uploads the published entry at `path` (its manifest's bytes are `bytes`), unless
    /// the server has a good record for its key already: one this process did not find
    /// broken and (for a writer that signs) that carries its signature. So a reader that
    /// distrusts a signed record does not replace it with its own. Blobs the server has
    /// are not sent again, but for those found corrupt. A failure is a notice.
    pub(crate) fn upload(&self, path: &Path, manifest: &Manifest, bytes: &[u8]) -> Upload {
        let head = &manifest.head;
        if !self.writable || head.status != Status::Ok || !shared_kind(&head.kind) {
            return Upload::NotShared;
        }
        if self.refused.load(Ordering::Relaxed) {
            return Upload::Failed;
        }
        match self.upload_checked(path, manifest, bytes) {
            Ok(true) => {
                self.traffic.pushed.fetch_add(1, Ordering::Relaxed);
                Upload::Sent
            }
            Ok(false) => Upload::Present,
            Err(Failure::Down) => Upload::Failed,
            Err(Failure::Refused(why)) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
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
            return self.client.has(&format!("ac/{key}"));
        };
        let Some(record) = self.client.get_action(key)? else {
            return Ok(false);
        };
        let Ok(files) = action::decode(&record) else {
            return Ok(false);
        };
        Ok(self.check_signed(key, &files, &[signer.public()]).is_ok())
    }

    fn upload_checked(
        &self,
        path: &Path,
        manifest: &Manifest,
        bytes: &[u8],
    ) -> Result<bool, Failure> {
        let key = &manifest.head.key;
        let record = format!("ac/{key}");
        if self.keep_record(key)? {
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
            if corrupt.contains(*sha256) || !self.client.has(&blob)? {
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
        self.broken().records.remove(key);
        Ok(true)
    }
}

fn push_notice(notices: &Mutex<Vec<String>>, line: String) {
    notices.lock().unwrap_or_else(|e| e.into_inner()).push(line);
}

/// Runs `work` on every item, `WORKERS` at a time; stops at the first failure.
fn parallel<T: Sync>(
    items: &[T],
    work: impl Fn(&T) -> Result<(), Failure> + Sync,
) -> Result<(), Failure> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Failure>> = Mutex::new(None);
    let stopped = || failed.lock().unwrap_or_else(|e| e.into_inner()).is_some();
    let worker = || {
        while !stopped() {
            let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            if let Err(failure) = work(item) {
                let mut slot = failed.lock().unwrap_or_else(|e| e.into_inner());
                // A real problem says more than the `Down` other workers then see.
                if slot.is_none() || matches!(*slot, Some(Failure::Down)) {
                    *slot = Some(failure);
                }
            }
        }
    };
    let workers = WORKERS.min(items.len());
    if workers <= 1 {
        worker();
    } else {
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(worker);
            }
        });
    }
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}
