//! HTTP to the remote cache: the Bazel HTTP cache protocol's `GET`/`HEAD`/`PUT` of
//! `cas/<sha256>` and `ac/<key>`, with bounded timeouts and retries. A server that cannot
//! be reached (after the retries) is marked down: every later request fails at once, so a
//! dead cache costs one wait, not one per entry.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::hashing::Sha256Stream;

/// Tries of one request, and the wait before the second (it grows fourfold).
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two reads or writes of a transfer (not the whole transfer: big blobs stream).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest small record read whole into memory (manifests, signatures, `ac/`).
const MAX_RECORD: u64 = 256 << 20;

/// Why a request did not do what was asked.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server is unreachable (said once, when it was marked down).
    Down,
    /// A blob whose bytes do not hash to its name.
    Mismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Anything else, said in full (status, I/O, a malformed record).
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Down => write!(f, "the remote cache is unreachable"),
            Failure::Mismatch {
                what,
                expected,
                actual,
            } => write!(
                f,
                "{what} does not match its hash (expected sha256 {expected}, actual {actual})"
            ),
            Failure::Other(message) => f.write_str(message),
        }
    }
}

pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    down: AtomicBool,
    /// Said when the server is first found unreachable.
    on_down: Box<dyn Fn(String) + Send + Sync>,
}

/// A request's failure as the retry loop sees it.
enum Attempt {
    /// Worth trying again (connection refused or reset, timeout, 5xx, 429).
    Transient(String),
    Final(Failure),
}

impl Client {
    pub(crate) fn new(base: &str, on_down: Box<dyn Fn(String) + Send + Sync>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(IO_TIMEOUT)
            .timeout_write(IO_TIMEOUT)
            .max_idle_connections_per_host(super::WORKERS * 2)
            .user_agent(concat!("vmbuild/", env!("CARGO_PKG_VERSION")))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            agent,
            down: AtomicBool::new(false),
            on_down,
        }
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Runs `attempt` up to `TRIES` times while it fails transiently, backing off between.
    fn retry<T>(&self, what: &str, attempt: impl Fn() -> Result<T, Attempt>) -> Result<T, Failure> {
        let mut wait = FIRST_BACKOFF;
        let mut last = String::new();
        for try_number in 1..=TRIES {
            if self.down.load(Ordering::Relaxed) {
                return Err(Failure::Down);
            }
            match attempt() {
                Ok(value) => return Ok(value),
                Err(Attempt::Final(failure)) => return Err(failure),
                Err(Attempt::Transient(why)) => last = why,
            }
            if try_number < TRIES {
                std::thread::sleep(wait);
                wait *= 4;
            }
        }
        if !self.down.swap(true, Ordering::Relaxed) {
            (self.on_down)(format!("{what}: {last}"));
        }
        Err(Failure::Down)
    }

    /// A small record (`ac/<key>`, a manifest), or `None` when the server has none.
    pub(crate) fn get_record(&self, path: &str) -> Result<Option<Vec<u8>>, Failure> {
        let url = self.url(path);
        self.retry(&format!("GET {url}"), || {
            let response = match self.agent.get(&url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(e) => return Err(classify(e)),
            };
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(MAX_RECORD + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Attempt::Transient(format!("read {url}: {e}")))?;
            if bytes.len() as u64 > MAX_RECORD {
                return Err(Attempt::Final(Failure::Other(format!(
                    "{url} is larger than {MAX_RECORD} bytes"
                ))));
            }
            Ok(Some(bytes))
        })
    }

    /// A CAS blob read whole, checked against its name; `None` when missing.
    pub(crate) fn get_small_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, Failure> {
        let Some(bytes) = self.get_record(&format!("cas/{sha256}"))? else {
            return Ok(None);
        };
        let actual = crate::hashing::sha256_hex(&bytes);
        if actual != sha256 {
            return Err(Failure::Mismatch {
                what: format!("{}/cas/{sha256}", self.base),
                expected: sha256.to_string(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Streams the CAS blob `sha256` into `target` (created anew), hashing as it goes;
    /// returns the bytes written. A blob that does not hash to its name is a `Mismatch`,
    /// one of another size an error: the caller throws the file away.
    pub(crate) fn download(&self, sha256: &str, size: u64, target: &Path) -> Result<u64, Failure> {
        let url = self.url(&format!("cas/{sha256}"));
        self.retry(&format!("GET {url}"), || {
            let response = match self.agent.get(&url).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Attempt::Final(Failure::Other(format!("{url} is missing"))))
                }
                Err(e) => return Err(classify(e)),
            };
            let local = |e: std::io::Error| {
                Attempt::Final(Failure::Other(format!("write {}: {e}", target.display())))
            };
            let mut file = fs_err::File::create(target).map_err(local)?;
            let mut body = response.into_reader();
            let mut hasher = Sha256Stream::default();
            let mut buf = vec![0u8; 1 << 20];
            let mut written = 0u64;
            loop {
                let n = body
                    .read(&mut buf)
                    .map_err(|e| Attempt::Transient(format!("read {url}: {e}")))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > size {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).map_err(local)?;
            }
            let actual = hasher.finish_hex();
            if written != size {
                return Err(Attempt::Final(Failure::Other(format!(
                    "{url} is {}{written} bytes, its manifest says {size}",
                    if written > size { "over " } else { "" }
                ))));
            }
            if actual != sha256 {
                return Err(Attempt::Final(Failure::Mismatch {
                    what: url.clone(),
                    expected: sha256.to_string(),
                    actual,
                }));
            }
            Ok(written)
        })
    }

    /// Whether the server holds `path` (`HEAD`).
    pub(crate) fn has(&self, path: &str) -> Result<bool, Failure> {
        let url = self.url(path);
        self.retry(&format!("HEAD {url}"), || {
            match self.agent.head(&url).call() {
                Ok(_) => Ok(true),
                Err(ureq::Error::Status(404, _)) => Ok(false),
                Err(e) => Err(classify(e)),
            }
        })
    }

    /// `PUT`s a file, streamed from disk.
    pub(crate) fn put_file(&self, path: &str, file: &Path, size: u64) -> Result<(), Failure> {
        let url = self.url(path);
        self.retry(&format!("PUT {url}"), || {
            let body = fs_err::File::open(file).map_err(|e| {
                Attempt::Final(Failure::Other(format!("read {}: {e}", file.display())))
            })?;
            self.agent
                .put(&url)
                .set("Content-Length", &size.to_string())
                .set("Content-Type", "application/octet-stream")
                .send(body)
                .map(drop)
                .map_err(classify)
        })
    }

    /// `PUT`s bytes.
    pub(crate) fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), Failure> {
        let url = self.url(path);
        self.retry(&format!("PUT {url}"), || {
            self.agent
                .put(&url)
                .set("Content-Type", "application/octet-stream")
                .send_bytes(bytes)
                .map(drop)
                .map_err(classify)
        })
    }
}

fn classify(error: ureq::Error) -> Attempt {
    match error {
        ureq::Error::Status(code, response) => {
            let what = format!(
                "{} answered {code} {}",
                response.get_url(),
                response.status_text()
            );
            match code {
                408 | 429 | 500..=599 => Attempt::Transient(what),
                _ => Attempt::Final(Failure::Other(what)),
            }
        }
        ureq::Error::Transport(t) => Attempt::Transient(t.to_string()),
    }
}
