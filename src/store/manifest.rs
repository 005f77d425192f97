//! `manifest.json`: what an entry holds and how it was made. The key's inputs are kept
//! so `vmbuild explain` can say which input changed; what stays out of the key (host,
//! times, KVM or TCG) is recorded here.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::hashing::TreeEntry;

pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A successful build or an all-pass test run: a cache hit.
    Ok,
    /// A test run with failures: kept for `vmbuild results`, rerun next time.
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub name: String,
    pub kind: String,
    pub key: String,
    pub status: Status,
    /// The cache key's inputs, as hashed.
    pub inputs: serde_json::Value,
    /// Every output path with its hash and size.
    #[serde(default)]
    pub outputs: BTreeMap<String, TreeEntry>,
    /// Seconds since the epoch when the entry was made.
    pub created: u64,
    pub build_seconds: f64,
    pub host: String,
    /// Builder-specific facts outside the key (accelerator, kernel release, ...).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl Manifest {
    pub fn new(name: &str, kind: &str, key: &str, inputs: serde_json::Value) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            name: name.to_string(),
            kind: kind.to_string(),
            key: key.to_string(),
            status: Status::Ok,
            inputs,
            outputs: BTreeMap::new(),
            created: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            build_seconds: 0.0,
            host: hostname(),
            details: serde_json::Map::new(),
        }
    }
}

fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
