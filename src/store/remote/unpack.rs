//! Laying out a pulled entry from its manifest, safely: the manifest comes from a server,
//! so its paths are checked before anything is written (relative, no `.` or `..`, every
//! parent a folder the manifest lists), folders are made first, files are created anew
//! inside them, and symlinks come last, so no write ever goes through a link. A symlink
//! may not name an absolute path or go up (`..`), so none can lead out of the entry, not
//! even through another link; only a root tree's folder (`root/` of a rootfs) holds such
//! links, which are its data (`/bin/sh -> busybox`), never followed by vmbuild.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::client::Failure;
use crate::hashing::TreeEntry;
use crate::store::manifest::MANIFEST;

/// Refuses manifests whose paths could write outside the entry or over its manifest,
/// name one file twice, name blobs by anything but a sha256, or (but in a rootfs's root
/// tree) link anywhere but down the entry.
pub(super) fn check_paths(kind: &str, outputs: &BTreeMap<String, TreeEntry>) -> Result<(), String> {
    for (rel, entry) in outputs {
        let plain = rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
        if !plain || rel == MANIFEST {
            return Err(format!(
                "its manifest lists the path `{rel}`, which no entry has"
            ));
        }
        let path = Path::new(rel);
        match entry {
            TreeEntry::File { sha256, .. } if !super::action::is_sha256(sha256) => {
                return Err(format!(
                    "its manifest names `{rel}` by `{sha256}`, not a sha256"
                ));
            }
            TreeEntry::Symlink { target } if !in_root_tree(kind, rel) && !downward(target) => {
                return Err(format!(
                    "its manifest has `{rel}` link to `{target}`, which may lead out of the entry"
                ));
            }
            _ => {}
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            let parent = parent.to_string_lossy();
            if outputs.get(parent.as_ref()) != Some(&TreeEntry::Dir) {
                return Err(format!(
                    "its manifest lists `{rel}` inside `{parent}`, which it does not list as a folder"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `rel` is in the root tree of a rootfs entry (its `root` format).
fn in_root_tree(kind: &str, rel: &str) -> bool {
    kind == "rootfs" && rel.starts_with(&format!("{}/", crate::format::rootfs::DIR))
}

/// Whether a link to `target` stays below the link's folder: relative, never `..`.
fn downward(target: &str) -> bool {
    !target.is_empty() && !target.starts_with('/') && target.split('/').all(|p| p != "..")
}

/// Creates the folders, fetches every file through `fetch(rel, sha256, size)` (in
/// parallel), sets exec bits, then makes the symlinks. `check_paths` has passed.
pub(super) fn materialize(
    outputs: &BTreeMap<String, TreeEntry>,
    out: &Path,
    fetch: impl Fn(&str, &str, u64) -> Result<(), Failure> + Sync,
) -> Result<(), Failure> {
    let local = |what: &str, path: &Path, e: std::io::Error| {
        Failure::Local(format!("{what} {}: {e}", path.display()))
    };
    // Sorted, so a folder comes before what is in it.
    for (rel, entry) in outputs {
        if *entry == TreeEntry::Dir {
            let path = out.join(rel);
            fs_err::create_dir(&path).map_err(|e| local("create", &path, e))?;
        }
    }
    let files: Vec<(&str, &str, u64, bool)> = outputs
        .iter()
        .filter_map(|(rel, entry)| match entry {
            TreeEntry::File { sha256, size, exec } => {
                Some((rel.as_str(), sha256.as_str(), *size, *exec))
            }
            _ => None,
        })
        .collect();
    super::parallel(&files, |(rel, sha256, size, exec)| {
        fetch(rel, sha256, *size)?;
        let path = out.join(rel);
        let mode = if *exec { 0o755 } else { 0o644 };
        fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| local("set the mode of", &path, e))
    })?;
    for (rel, entry) in outputs {
        if let TreeEntry::Symlink { target } = entry {
            let path = out.join(rel);
            fs_err::os::unix::fs::symlink(target, &path).map_err(|e| local("link", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> TreeEntry {
        TreeEntry::File {
            sha256: "0".repeat(64),
            size: 0,
            exec: false,
        }
    }

    #[test]
    fn paths_that_leave_the_entry_or_pass_through_links_are_refused() {
        let ok: BTreeMap<String, TreeEntry> = [
            ("a".to_string(), TreeEntry::Dir),
            ("a/b".to_string(), file()),
            (
                "c".to_string(),
                TreeEntry::Symlink {
                    target: "a/b".into(),
                },
            ),
        ]
        .into();
        check_paths("rootfs", &ok).unwrap();
        for bad in [
            "../x",
            "/etc/passwd",
            "a/../../x",
            "./a",
            "",
            "manifest.json",
            "a//b",
            "a/./b",
            "a/b/.",
            "a/",
        ] {
            let outputs: BTreeMap<String, TreeEntry> =
                [("a".to_string(), TreeEntry::Dir), (bad.to_string(), file())].into();
            assert!(check_paths("rootfs", &outputs).is_err(), "{bad:?}");
        }
        // `c` is a link: a file under it would be written through the link.
        let mut through_link = ok.clone();
        through_link.insert("c/passwd".into(), file());
        let why = check_paths("rootfs", &through_link).unwrap_err();
        assert!(why.contains("does not list as a folder"), "{why}");
        // Only a root tree links out of itself; a blob is named by its sha256.
        let out: BTreeMap<String, TreeEntry> = [(
            "c".to_string(),
            TreeEntry::Symlink {
                target: "/etc".into(),
            },
        )]
        .into();
        let why = check_paths("test-case", &out).unwrap_err();
        assert!(why.contains("may lead out of the entry"), "{why}");
        let why = check_paths("rootfs", &out).unwrap_err();
        assert!(
            why.contains("may lead out of the entry"),
            "{why}: `c` is not in root/"
        );
        let tree: BTreeMap<String, TreeEntry> = [
            ("root".to_string(), TreeEntry::Dir),
            (
                "root/sh".to_string(),
                TreeEntry::Symlink {
                    target: "/bin/busybox".into(),
                },
            ),
        ]
        .into();
        check_paths("rootfs", &tree).unwrap();
        assert!(check_paths("bundle", &tree).is_err());
        for (target, down) in [
            ("a/b", true),
            ("../c", false),
            ("a/../../c", false),
            ("/etc", false),
            ("", false),
        ] {
            assert_eq!(downward(target), down, "{target}");
        }
        let named: BTreeMap<String, TreeEntry> = [(
            "f".to_string(),
            TreeEntry::File {
                sha256: "../../etc/passwd".into(),
                size: 0,
                exec: false,
            },
        )]
        .into();
        assert!(check_paths("bundle", &named)
            .unwrap_err()
            .contains("not a sha256"));
    }
}
