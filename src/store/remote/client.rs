//! HTTP to the remote cache: the Bazel HTTP cache protocol's `GET`/`HEAD`/`PUT` of
//! `cas/<sha256>` and `ac/<key>`, with bounded timeouts and retries. A server that cannot
//! be reached (after the retries) is marked down: every later request fails at once, so a
//! dead cache costs one wait, not one per entry.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::fsio::SparseWriter;
use crate::hashing::{copy_hashed, CopyError};
pub(crate) use crate::recipe::redact;

/// Tries of one request, and the wait before the second (it grows fourfold).
const TRIES: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two reads or writes on a new connection (ureq leaves a pooled one without:
/// there the request's whole deadline is the bound).
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The whole of a small request (`ac/`, `HEAD`, a manifest): a server that trickles
/// bytes cannot hold a lookup longer.
const SMALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest `ac/` record read (real ones are about a hundred bytes).
const MAX_ACTION: u64 = 1 << 20;
/// The largest manifest or signatures blob read whole into memory.
const MAX_RECORD: u64 = 64 << 20;
/// A large blob's transfer may take this long plus a second per `SLOWEST_RATE` bytes: a
/// server trickling bytes cannot hold a pull forever.
const TRANSFER_GRACE: Duration = Duration::from_secs(60);
const SLOWEST_RATE: u64 = 1 << 20;

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
    /// A record not signed by a trusted key.
    Untrusted(String),
    /// The server refuses uploads (401, 403, 405, 409, 411, 413, or a `PUT` answered
    /// with anything but a 2xx of its own).
    Refused(String),
    /// This host could not take what the server sent (a full disk): no fault of the
    /// server's.
    Local(String),
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
            Failure::Untrusted(message)
            | Failure::Refused(message)
            | Failure::Local(message)
            | Failure::Other(message) => f.write_str(message),
        }
    }
}

pub(crate) struct Client {
    /// The base URL without any `user:password@`, which goes in `auth` instead.
    base: String,
    /// `Authorization: Basic ...` from the URL's `user:password@`, for servers behind
    /// htpasswd (bazel-remote, nginx `auth_basic`).
    auth: Option<String>,
    agent: ureq::Agent,
    down: AtomicBool,
    /// Said when the server is first found unreachable.
    on_down: Box<dyn Fn(String) + Send + Sync>,
}

/// A request's failure as the retry loop sees it.
enum Attempt {
    /// Worth trying again (connection refused or reset, 5xx, 408, 429).
    Transient(String),
    /// Not worth another try, and none of the server's answers will be better: a 4xx to
    /// a read (but 404), a timeout. As good as down.
    Unusable(String),
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
        let (base, auth) = split_credentials(base.trim_end_matches('/'));
        Client {
            base,
            auth,
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

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.auth {
            Some(auth) => request.set("Authorization", auth),
            None => request,
        }
    }

    /// Marks the server down, saying why the first time.
    fn mark_down(&self, why: String) {
        if !self.down.swap(true, Ordering::Relaxed) {
            (self.on_down)(redact(&why));
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
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
                Err(Attempt::Unusable(why)) => {
                    last = why;
                    break;
                }
                Err(Attempt::Transient(why)) => last = why,
            }
            if try_number < TRIES {
                std::thread::sleep(wait);
                wait *= 4;
            }
        }
        self.mark_down(format!("{what}: {last}"));
        Err(Failure::Down)
    }

    /// The `ac/` record under `key`, or `None` when the server has none.
    pub(crate) fn get_action(&self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        self.get_record(&format!("ac/{key}"), MAX_ACTION, SMALL_TIMEOUT)
    }

    /// A record (`ac/<key>`, a manifest) of at most `limit` bytes, read whole within
    /// `deadline`, or `None` when the server has none.
    fn get_record(
        &self,
        path: &str,
        limit: u64,
        deadline: Duration,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let url = self.url(path);
        self.retry(&format!("GET {url}"), || {
            let response = match self.request("GET", &url).timeout(deadline).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => return Ok(None),
                Err(e) => return Err(classify(e, false)),
            };
            let mut bytes = Vec::new();
            response
                .into_reader()
                .take(limit + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| read_failure(&url, e))?;
            if bytes.len() as u64 > limit {
                return Err(Attempt::Final(Failure::Other(format!(
                    "{url} is larger than {limit} bytes"
                ))));
            }
            Ok(Some(bytes))
        })
    }

    /// A CAS blob read whole, checked against its name; `None` when missing.
    /// A CAS blob of `size` bytes (as its record says) read whole and checked against its
    /// name; `None` when missing.
    pub(crate) fn get_small_blob(
        &self,
        sha256: &str,
        size: u64,
    ) -> Result<Option<Vec<u8>>, Failure> {
        let limit = size.min(MAX_RECORD);
        let deadline = SMALL_TIMEOUT + Duration::from_secs(limit / SLOWEST_RATE);
        let Some(bytes) = self.get_record(&format!("cas/{sha256}"), limit, deadline)? else {
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
        // The whole transfer's deadline: ureq sets its read timeout only on a new
        // connection, so on a pooled one this bound is what cuts a stall.
        let deadline = transfer_deadline(size);
        self.retry(&format!("GET {url}"), || {
            let response = match self.request("GET", &url).timeout(deadline).call() {
                Ok(r) => r,
                Err(ureq::Error::Status(404, _)) => {
                    return Err(Attempt::Final(Failure::Other(format!("{url} is missing"))))
                }
                Err(e) => return Err(classify(e, false)),
            };
            let announced = response
                .header("Content-Length")
                .and_then(|n| n.parse().ok());
            if announced.is_some_and(|n: u64| n != size) {
                return Err(Attempt::Final(Failure::Other(format!(
                    "{url} is {} bytes, its manifest says {size}",
                    announced.unwrap_or_default()
                ))));
            }
            let local = |e: std::io::Error| {
                Attempt::Final(Failure::Local(format!("write {}: {e}", target.display())))
            };
            let mut file = SparseWriter::new(fs_err::File::create(target).map_err(local)?);
            let (actual, written) = copy_hashed(&mut response.into_reader(), &mut file, size)
                .map_err(|e| match e {
                    CopyError::Read(e) => read_failure(&url, e),
                    CopyError::Write(e) => local(e),
                })?;
            file.finish().map_err(local)?;
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

    /// Whether the server holds `path` (`HEAD`), of `size` bytes when that is given and
    /// the server says its length (a blob cut short on the server is as good as missing).
    pub(crate) fn has(&self, path: &str, size: Option<u64>) -> Result<bool, Failure> {
        let url = self.url(path);
        self.retry(&format!("HEAD {url}"), || {
            match self.request("HEAD", &url).timeout(SMALL_TIMEOUT).call() {
                Ok(response) => {
                    let length = response
                        .header("Content-Length")
                        .and_then(|n| n.parse().ok());
                    Ok(size.is_none() || length.is_none() || length == size)
                }
                Err(ureq::Error::Status(404, _)) => Ok(false),
                Err(e) => Err(classify(e, false)),
            }
        })
    }

    /// `PUT`s a file, streamed from disk.
    pub(crate) fn put_file(&self, path: &str, file: &Path, size: u64) -> Result<(), Failure> {
        let url = self.url(path);
        self.retry(&format!("PUT {url}"), || {
            let body = fs_err::File::open(file).map_err(|e| {
                Attempt::Final(Failure::Local(format!("read {}: {e}", file.display())))
            })?;
            let response = self
                .request("PUT", &url)
                .timeout(transfer_deadline(size))
                .set("Content-Length", &size.to_string())
                .set("Content-Type", "application/octet-stream")
                .send(body);
            stored(&url, response)
        })
    }

    /// `PUT`s bytes.
    pub(crate) fn put_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), Failure> {
        let url = self.url(path);
        self.retry(&format!("PUT {url}"), || {
            let response = self
                .request("PUT", &url)
                .timeout(SMALL_TIMEOUT + Duration::from_secs(bytes.len() as u64 / SLOWEST_RATE))
                .set("Content-Type", "application/octet-stream")
                .send_bytes(bytes);
            stored(&url, response)
        })
    }
}

/// Whether a `PUT`'s `response` says the server stored the body: a 2xx to the `PUT` itself,
/// nothing else (a redirect not followed stored nothing, and one followed turned the
/// `PUT` into a `GET`, whose 200 says nothing of the body).
fn stored(url: &str, response: Result<ureq::Response, ureq::Error>) -> Result<(), Attempt> {
    match response {
        Ok(r) if (200..300).contains(&r.status()) && r.get_url() == url => Ok(()),
        Ok(r) => Err(Attempt::Final(Failure::Refused(format!(
            "{} answered {} {} to a PUT",
            redact(url),
            r.status(),
            r.status_text()
        )))),
        Err(e) => Err(classify(e, true)),
    }
}

/// How long a transfer of `size` bytes may take in all.
fn transfer_deadline(size: u64) -> Duration {
    TRANSFER_GRACE + Duration::from_secs(size / SLOWEST_RATE)
}

/// A body cut short is worth another try; one that stalls past its timeout is not (a
/// server that slow makes every try as slow).
fn read_failure(url: &str, error: std::io::Error) -> Attempt {
    let what = format!("read {url}: {error}");
    match error.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => Attempt::Unusable(what),
        _ => Attempt::Transient(what),
    }
}

/// How the retry loop takes `error` of a read or (`upload`) a write.
fn classify(error: ureq::Error, upload: bool) -> Attempt {
    match error {
        ureq::Error::Status(code, response) => {
            let what = format!(
                "{} answered {code} {}",
                redact(response.get_url()),
                response.status_text()
            );
            match code {
                408 | 429 | 500..=599 => Attempt::Transient(what),
                401 | 403 | 405 | 409 | 411 | 413 if upload => {
                    Attempt::Final(Failure::Refused(what))
                }
                // A read refused (401, 403) or not understood (400, ...) by a server is
                // refused for every entry: as good as down.
                _ if !upload => Attempt::Unusable(what),
                _ => Attempt::Final(Failure::Other(what)),
            }
        }
        ureq::Error::Transport(t) => {
            let timed_out = std::error::Error::source(&t)
                .and_then(|e| e.downcast_ref::<std::io::Error>())
                .is_some_and(|e| {
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                    )
                });
            match timed_out {
                true => Attempt::Unusable(redact(&t.to_string())),
                false => Attempt::Transient(redact(&t.to_string())),
            }
        }
    }
}

/// The URL without its `user:password@`, and the Basic authorization header they make.
fn split_credentials(url: &str) -> (String, Option<String>) {
    use base64::Engine;
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => {
            let credentials = percent_decode(&authority[..at]);
            let header = base64::engine::general_purpose::STANDARD.encode(credentials);
            (
                format!("{scheme}://{}", &rest[at + 1..]),
                Some(format!("Basic {header}")),
            )
        }
        None => (url.to_string(), None),
    }
}

/// `%XX` escapes decoded (a password with `@` or `:` in it is written `%40`, `%3A`).
fn percent_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_in_addresses_become_a_header() {
        let (base, auth) = super::split_credentials("https://ci:pw@cache:8080/c");
        assert_eq!(base, "https://cache:8080/c");
        assert_eq!(auth.as_deref(), Some("Basic Y2k6cHc="));
        assert_eq!(super::split_credentials("http://h/a@b").1, None);
        let (_, auth) = super::split_credentials("http://ci:p%40ss@h/c");
        assert_eq!(auth.as_deref(), Some("Basic Y2k6cEBzcw=="));
    }
}
