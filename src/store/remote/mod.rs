//! The remote cache: the local store's entries shared through any server that speaks the
//! Bazel HTTP cache protocol (nginx with WebDAV, bazel-remote, an S3 proxy).
//!
//! - Every output file is a blob at `cas/<sha256>`, and so are the entry's
//!   `manifest.json` and, when signed, its `manifest.sig`.
//! - The entry is `ac/<key>`: a minimal REAPI `ActionResult` naming those two blobs
//!   (`action`), so caches that check `ac/` records accept it.
//! - A pull (`pull`) reads the record, the manifest (checked against its hash, its
//!   signature when keys are trusted, its key, kind, status and paths), then streams every
//!   output into a staging folder, hashing on the way; one byte off and the entry is not
//!   used. The store publishes what passed with its usual atomic rename.
//! - A push (`push`) uploads the blobs the server lacks (`HEAD` first), `WORKERS` at a time and
//!   streamed from disk, then the manifest, then the record: a reader never finds a
//!   record whose blobs are not there yet.
//! - Nothing here fails a build: every problem comes back as a notice for the caller to
//!   show, and the entry is built locally instead.

pub(crate) mod action;
mod client;
pub mod keys;
mod pull;
mod push;
mod unpack;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::recipe::RemoteMode;
use client::{Client, Failure};
use keys::{PublicKey, SecretKey};

use super::manifest::{Manifest, MANIFEST};

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
    /// The address itself (the message names it).
    #[error("remote cache: {0}")]
    BadUrl(String),
    #[error("remote cache {url}: {message}")]
    Settings { url: String, message: String },
    #[error("read the signing key {}: {message}", path.display())]
    SigningKey { path: PathBuf, message: String },
}

/// Figures of what went over the wire, for the summary and benchmarks.
#[derive(Debug, Default)]
pub struct Traffic {
    pub pulled: AtomicUsize,
    /// Entries the server has that were not used (corrupt, unsigned, malformed).
    pub refused: AtomicUsize,
    pub pushed: AtomicUsize,
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

pub struct Remote {
    client: Client,
    writable: bool,
    /// Set when the server refused an upload (401, 403, ...): no more are tried.
    uploads_refused: AtomicBool,
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
        crate::recipe::check_url(&settings.url).map_err(RemoteError::BadUrl)?;
        // Only a writer signs: a reader does not need (or read) the key.
        let signing_key = match settings.mode {
            RemoteMode::Readwrite => settings.signing_key.as_ref(),
            _ => None,
        };
        let notices = Arc::new(Mutex::new(Vec::new()));
        let mut writable = settings.mode == RemoteMode::Readwrite;
        let signer = match signing_key {
            None => None,
            // A project's `vmbuild.toml` names the key its CI writers hold: anyone else
            // still reads the cache, and uploads nothing unsigned.
            Some(path) if !path.exists() => {
                writable = false;
                push_notice(
                    &notices,
                    format!(
                        "the signing key {} is not here: nothing is uploaded (readers need \
                         no key; pass --remote read to say so)",
                        path.display()
                    ),
                );
                None
            }
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
                url: client::redact(&settings.url),
                message: format!("trusted key: {message}"),
            })?;
        let on_down = {
            let notices = Arc::clone(&notices);
            let url = client::redact(&settings.url);
            Box::new(move |why: String| {
                push_notice(
                    &notices,
                    format!("remote cache {url} cannot be used ({why}): carrying on with the local store only"),
                )
            })
        };
        Ok(Some(Remote {
            client: Client::new(&settings.url, on_down),
            writable,
            uploads_refused: AtomicBool::new(false),
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
    /// by a writer that signs. Nor is a failure of this host's (a full disk).
    fn note_broken(&self, key: &str, failure: &Failure) {
        let mut broken = self.broken();
        match failure {
            Failure::Down | Failure::Local(_) => return,
            Failure::Mismatch { expected, .. } => {
                broken.blobs.insert(expected.clone());
            }
            Failure::Untrusted(_) if self.signer.is_none() => return,
            _ => {}
        }
        broken.records.insert(key.to_string());
    }
}

/// Keeps `line` for the caller to show, its control characters escaped: names and paths
/// in it may come from the server, and must not steer the user's terminal.
fn push_notice(notices: &Mutex<Vec<String>>, line: String) {
    let line: String = line
        .chars()
        .flat_map(|c| match c.is_control() {
            true => c.escape_default().collect::<Vec<_>>(),
            false => vec![c],
        })
        .collect();
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
