//! Checking entries against their manifests: the cheap check every cache hit makes
//! (each output present, of its kind, with its recorded size) and the full rehash
//! (`vmbuild verify`, `--verify-on-hit`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{Entry, Store, MANIFEST};
use crate::hashing::{self, TreeEntry};

/// Problems a stat of every output finds: missing, another kind, another size or exec bit.
/// Costs a manifest read and a stat per output, no reading of contents.
pub(super) fn sizes(store: &Store, entry: &Entry) -> Vec<String> {
    let manifest = match store.manifest(entry) {
        Ok(m) => m,
        Err(e) => return vec![e.to_string()],
    };
    let mut problems = Vec::new();
    for (rel, want) in &manifest.outputs {
        let path = entry.path.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            problems.push(format!("{rel}: missing"));
            continue;
        };
        let kind = meta.file_type();
        match want {
            TreeEntry::File { size, exec, .. } => {
                if !kind.is_file() {
                    problems.push(format!("{rel}: not a file"));
                } else if meta.len() != *size {
                    problems.push(format!("{rel}: size {} bytes, expected {size}", meta.len()));
                } else if (meta.permissions().mode() & 0o111 != 0) != *exec {
                    problems.push(format!("{rel}: exec bit changed"));
                }
            }
            TreeEntry::Dir if !kind.is_dir() => problems.push(format!("{rel}: not a folder")),
            TreeEntry::Symlink { .. } if !kind.is_symlink() => {
                problems.push(format!("{rel}: not a symlink"))
            }
            _ => {}
        }
    }
    problems
}

/// Rehashes an entry's outputs; returns what differs from its manifest.
pub(super) fn rehash(store: &Store, entry: &Entry) -> Vec<String> {
    let manifest = match store.manifest(entry) {
        Ok(m) => m,
        Err(e) => return vec![e.to_string()],
    };
    let actual = match hashing::hash_tree(&entry.path, |p| p != Path::new(MANIFEST)) {
        Ok(tree) => tree,
        Err(e) => return vec![format!("cannot read: {e}")],
    };
    let expected = &manifest.outputs;
    let mut problems = Vec::new();
    for (path, want) in expected {
        match actual.get(path) {
            None => problems.push(format!("{path}: missing")),
            Some(got) if got != want => problems.push(match (want, got) {
                (TreeEntry::File { sha256: w, .. }, TreeEntry::File { sha256: g, .. }) => {
                    format!("{path}: sha256 mismatch (expected {w}, actual {g})")
                }
                _ => format!("{path}: changed"),
            }),
            Some(_) => {}
        }
    }
    problems.extend(
        actual
            .keys()
            .filter(|p| !expected.contains_key(*p))
            .map(|p| format!("{p}: not in manifest")),
    );
    problems
}
