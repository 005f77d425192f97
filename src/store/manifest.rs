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

/// The small part of a manifest that lookups need (see `read_head`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestHead {
    pub schema: u32,
    pub name: String,
    pub kind: String,
    pub key: String,
    pub status: Status,
    /// Seconds since the epoch when the entry was made.
    pub created: u64,
    pub build_seconds: f64,
    pub host: String,
    /// Builder-specific facts outside the key (accelerator, kernel release, ...).
    #[serde(default)]
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The whole manifest: the head, then the large fields (last, so that a lookup can stop
/// reading before them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub head: ManifestHead,
    /// Why this entry was built rather than reused: which inputs changed since the
    /// recipe's previous entry (shown by `explain`, even after that entry is gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebuilt_because: Vec<String>,
    /// The cache key's inputs, as hashed.
    pub inputs: serde_json::Value,
    /// Every output path with its hash and size.
    #[serde(default)]
    pub outputs: BTreeMap<String, TreeEntry>,
}

/// Where the large fields start in a manifest vmbuild wrote: a top-level key of the
/// pretty-printed object. The pattern cannot occur inside a JSON string (strings escape
/// their newlines), so the bytes before it are the head fields.
const LARGE_FIELDS_START: &[u8] = b",\n  \"inputs\": ";

/// Reads just the head of a manifest: the bytes up to the large fields, parsed as an
/// object. Kernel manifests list every module file; a cache hit reads a few hundred bytes
/// of them instead of a megabyte. Manifests not laid out that way are parsed whole.
pub fn read_head(path: &std::path::Path) -> std::io::Result<ManifestHead> {
    use std::io::Read;
    let mut file = fs_err::File::open(path)?;
    let mut bytes = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        let searched_from = bytes.len().saturating_sub(LARGE_FIELDS_START.len());
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(at) = find(&bytes[searched_from..], LARGE_FIELDS_START) {
            bytes.truncate(searched_from + at);
            bytes.extend_from_slice(b"\n}");
            break;
        }
    }
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    match serde_json::from_slice(&bytes) {
        Ok(head) => Ok(head),
        // Laid out otherwise (older field order, edited by hand): parse it whole.
        Err(_) => serde_json::from_slice(&fs_err::read(path)?).map_err(invalid),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl Manifest {
    pub fn new(name: &str, kind: &str, key: &str, inputs: serde_json::Value) -> Manifest {
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Manifest {
            head: ManifestHead {
                schema: MANIFEST_SCHEMA,
                name: name.to_string(),
                kind: kind.to_string(),
                key: key.to_string(),
                status: Status::Ok,
                created,
                build_seconds: 0.0,
                host: hostname(),
                details: serde_json::Map::new(),
            },
            rebuilt_because: Vec::new(),
            inputs,
            outputs: BTreeMap::new(),
        }
    }
}

fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_read_without_the_large_fields_and_matches_the_full_parse() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(
            "k",
            "kernel",
            "abc",
            serde_json::json!({"note": "\n  \"inputs\": fake"}),
        );
        m.head
            .details
            .insert("path".into(), serde_json::json!("/x/\"inputs\": y"));
        for i in 0..2000 {
            m.outputs.insert(format!("modules/{i}.ko"), TreeEntry::Dir);
        }
        let path = dir.path().join("manifest.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        assert_eq!(read_head(&path).unwrap(), m.head);
        // A compact manifest (hand-written, say) still reads.
        std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(read_head(&path).unwrap(), m.head);
    }
}
