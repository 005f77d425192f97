//! Identity of the host tools a build uses (qemu, gcc, mke2fs, ...), for cache keys.
//! Asking a tool for its version costs a process start, so answers are remembered in the
//! store, keyed by the binary's path, size, mtime and inode: a cached run stats the binary
//! and spawns nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::process::{self, ProcessError};

#[derive(Serialize, Deserialize, Default)]
struct VersionCache {
    tools: BTreeMap<String, CachedVersion>,
}

#[derive(Serialize, Deserialize, PartialEq)]
struct CachedVersion {
    stamp: String,
    version: String,
}

/// Looks up tool versions, remembering them in `<store>/tools.json`.
pub struct Tools {
    cache_file: PathBuf,
    cache: std::sync::Mutex<VersionCache>,
}

impl Tools {
    pub fn new(store_root: &Path) -> Tools {
        let cache_file = store_root.join("tools.json");
        let cache = fs_err::read(&cache_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default();
        Tools {
            cache_file,
            cache: std::sync::Mutex::new(cache),
        }
    }

    /// The first line of `tool --version` (or of `tool <args>`), e.g. "QEMU emulator version 7.2.22".
    pub fn version(&self, tool: &str, args: &[&str]) -> Result<String, ProcessError> {
        let key = format!("{tool} {}", args.join(" "));
        self.remembered(tool, &key, |path| {
            let mut command = Command::new(path);
            command.args(args);
            let output = process::run(&mut command)?;
            first_line(&output.stdout)
                // Some tools (mke2fs -V) print their version on stderr.
                .or_else(|| first_line(&output.stderr))
                .ok_or_else(|| ProcessError::NoVersion {
                    command: process::describe(&command),
                })
        })
    }

    /// The version of `tool` (`tool --version`) and the sha256 of its binary: what a
    /// state it saved must be restored by (a rebuilt binary of the same version may lay
    /// out its devices' state differently).
    pub fn identity(&self, tool: &str) -> Result<String, ProcessError> {
        let version = self.version(tool, &["--version"])?;
        let digest = self.binary_digest(tool)?;
        Ok(format!("{version} {digest}"))
    }

    /// `sha256:<hex>` of `tool`'s binary: the identity of a tool that cannot print its
    /// version without failing (mkfs.fat).
    pub fn binary_digest(&self, tool: &str) -> Result<String, ProcessError> {
        let digest = self.remembered(tool, &format!("{tool} sha256"), |path| {
            crate::hashing::sha256_file(path)
                .map(|(digest, _)| digest)
                .map_err(|source| ProcessError::Spawn {
                    command: format!("hash {}", path.display()),
                    source,
                })
        })?;
        Ok(format!("sha256:{digest}"))
    }

    /// `sha256:<hex>` of a file the host provides (firmware), remembered like a tool's.
    pub fn file_digest(&self, path: &Path) -> Result<String, ProcessError> {
        let hash = |path: &Path| {
            crate::hashing::sha256_file(path)
                .map(|(digest, _)| format!("sha256:{digest}"))
                .map_err(|source| ProcessError::Spawn {
                    command: format!("hash {}", path.display()),
                    source,
                })
        };
        let meta = fs_err::metadata(path).map_err(|source| ProcessError::Spawn {
            command: format!("hash {}", path.display()),
            source,
        })?;
        self.remembered_at(path, &meta, &format!("file {}", path.display()), hash)
    }

    /// What `compute` says of `tool`'s binary, remembered under `key` until the binary
    /// changes (its path, size, mtime or inode).
    fn remembered(
        &self,
        tool: &str,
        key: &str,
        compute: impl FnOnce(&Path) -> Result<String, ProcessError>,
    ) -> Result<String, ProcessError> {
        let missing = || ProcessError::Missing {
            command: tool.to_string(),
            tool: tool.to_string(),
            package: process::package_for(tool).to_string(),
        };
        let path = process::which(tool).ok_or_else(missing)?;
        let meta = fs_err::metadata(&path).map_err(|_| missing())?;
        self.remembered_at(&path, &meta, key, compute)
    }

    /// What `compute` says of the file at `path` (with `meta`), remembered under `key`
    /// until it changes.
    fn remembered_at(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
        key: &str,
        compute: impl FnOnce(&Path) -> Result<String, ProcessError>,
    ) -> Result<String, ProcessError> {
        let stamp = format!(
            "{}:{}:{}:{}",
            path.display(),
            meta.len(),
            meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
            meta.ino()
        );
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hit) = cache
                .tools
                .get(key)
                .filter(|c| c.stamp == stamp && !c.version.is_empty())
            {
                return Ok(hit.version.clone());
            }
        }
        let version = compute(path)?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.tools.insert(
            key.to_string(),
            CachedVersion {
                stamp,
                version: version.clone(),
            },
        );
        // Best effort: a cache that cannot be written only costs a process start next time.
        if let Ok(bytes) = serde_json::to_vec_pretty(&*cache) {
            let tmp = self
                .cache_file
                .with_extension(format!("tmp.{}", std::process::id()));
            if fs_err::write(&tmp, bytes).is_ok() {
                let _ = fs_err::rename(&tmp, &self.cache_file);
            }
        }
        Ok(version)
    }
}

/// The first non-empty line of a tool's output, trimmed.
fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_on_stderr_is_read_and_no_version_at_all_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let tools = Tools::new(dir.path());
        let version = tools.version("sh", &["-c", "echo 'tool 1.2' >&2"]).unwrap();
        assert_eq!(version, "tool 1.2");
        let err = tools.version("sh", &["-c", "true"]).unwrap_err();
        assert!(matches!(err, ProcessError::NoVersion { .. }), "{err}");
        assert!(err.to_string().contains("printed no version"), "{err}");
    }
}
