//! URLs pinned by sha256: streamed to a temp file while hashing, kept only when the hash
//! matches. A mismatch names the expected and actual hashes and stores nothing.

use std::path::{Path, PathBuf};

use super::FetchError;
use crate::fsio::io_err;
use crate::hashing::CopyError;

/// Downloads `url` into `downloads/<sha256>` (once) and returns the file.
pub fn download(url: &str, sha256: &str, downloads: &Path) -> Result<PathBuf, FetchError> {
    let target = downloads.join(sha256);
    if target.is_file() {
        return Ok(target);
    }
    fs_err::create_dir_all(downloads).map_err(io_err("create", downloads))?;
    let http = |message: String| FetchError::Http {
        url: url.to_string(),
        message,
    };
    // A stalled mirror ends the build with an error, not a hang.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(15))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let response = agent.get(url).call().map_err(|e| http(e.to_string()))?;
    let mut body = response.into_reader();
    let mut tmp = tempfile::Builder::new()
        .prefix(".http-")
        .tempfile_in(downloads)
        .map_err(io_err("create a temp file in", downloads))?;
    let (actual, _) =
        crate::hashing::copy_hashed(&mut body, &mut tmp, u64::MAX).map_err(|e| match e {
            CopyError::Read(e) => http(e.to_string()),
            CopyError::Write(e) => io_err("write", tmp.path())(e).into(),
        })?;
    if actual != sha256 {
        return Err(FetchError::HashMismatch {
            what: url.to_string(),
            expected: sha256.to_string(),
            actual,
        });
    }
    tmp.persist(&target)
        .map_err(|e| io_err("store", &target)(e.error))?;
    Ok(target)
}
