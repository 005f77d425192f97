//! A test bundle's layout and its tests' headers. A bundle entry holds `bundle.cpio.gz`
//! (the tests under `/vmbuild/bundles/<name>/` for the guest) and `tests.json` (each test's
//! `TestMeta`, for the host). Discovery: every executable regular file at the top of a
//! bundle folder is a test, named by its file name. Header comments declare needs,
//! ktest-style: `# vmbuild: timeout=30s`, `# vmbuild: kconfig=CONFIG_EXT4_FS`,
//! `# vmbuild: disks=1`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The bundle's archive, unpacked over the guest's root.
pub(crate) const BUNDLE_CPIO: &str = "bundle.cpio.gz";
/// The bundle's tests and their headers (`Vec<TestMeta>` as JSON).
pub(crate) const TESTS_JSON: &str = "tests.json";

/// Reads a duration such as `30s` or `2m` (the recipe's grammar, passed in so that this
/// leaf does not import the recipe module).
pub(crate) type DurationParser<'a> = &'a dyn Fn(&str) -> Result<Duration, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TestMeta {
    pub name: String,
    /// From `# vmbuild: timeout=`, in milliseconds; else the recipe's timeout applies.
    pub timeout_ms: Option<u64>,
    /// Kernel options the test needs (`=y` or `=m`); it is skipped when the kernel lacks one.
    pub kconfig: Vec<String>,
    /// Scratch disks the test needs attached.
    pub disks: u32,
    /// The script's sha256 (with the bundle's shared files, `SHARED_SHA256` in the
    /// bundle's manifest, what a test's own result is keyed by); absent in bundles built
    /// before vmbuild recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The manifest detail holding the digest of a bundle's files other than its tests
/// (libraries, data, subfolders): what every test of the bundle may read.
pub(crate) const SHARED_SHA256: &str = "shared_sha256";

/// The digest of `tree` (a bundle folder's listing) without the tests named: the files
/// the tests share.
pub(crate) fn shared_digest(
    tree: &std::collections::BTreeMap<String, crate::hashing::TreeEntry>,
    tests: &[TestMeta],
) -> String {
    let mut shared = tree.clone();
    for test in tests {
        shared.remove(&test.name);
    }
    crate::hashing::tree_digest(&shared)
}

/// Scratch disks one test may ask for.
const MAX_DISKS: u32 = 16;

/// Only the first lines are read for headers.
const HEADER_LINES: usize = 30;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
}

pub(crate) fn discover(
    dir: &Path,
    parse_duration: DurationParser,
) -> Result<Vec<TestMeta>, String> {
    let mut tests = Vec::new();
    let entries = fs_err::read_dir(dir).map_err(|e| e.to_string())?;
    let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(meta) = path.metadata() else { continue };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if !valid_name(&name) {
            return Err(format!(
                "test file name `{name}` in {}: use letters, digits and . _ - + only",
                dir.display()
            ));
        }
        let text = fs_err::read(&path).map_err(|e| e.to_string())?;
        let head = String::from_utf8_lossy(&text[..text.len().min(8192)]).into_owned();
        let mut meta = parse_headers(&name, &head, parse_duration)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        meta.sha256 = Some(crate::hashing::sha256_hex(&text));
        tests.push(meta);
    }
    Ok(tests)
}

pub(crate) fn parse_headers(
    name: &str,
    head: &str,
    parse_duration: DurationParser,
) -> Result<TestMeta, String> {
    let mut meta = TestMeta {
        name: name.to_string(),
        timeout_ms: None,
        kconfig: Vec::new(),
        disks: 0,
        sha256: None,
    };
    for (n, line) in head.lines().take(HEADER_LINES).enumerate() {
        let Some(rest) = line.trim().strip_prefix("# vmbuild:") else {
            continue;
        };
        for item in rest.split_whitespace() {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("line {}: `{item}` is not key=value", n + 1))?;
            match key {
                "timeout" => {
                    meta.timeout_ms = Some(
                        parse_duration(value)
                            .map_err(|e| format!("line {}: {e}", n + 1))?
                            .as_millis() as u64,
                    )
                }
                "kconfig" => {
                    for option in value.split(',').filter(|s| !s.is_empty()) {
                        let valid = option.strip_prefix("CONFIG_").is_some_and(|rest| {
                            !rest.is_empty()
                                && rest.bytes().all(|b| {
                                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
                                })
                        });
                        if !valid {
                            return Err(format!(
                                "line {}: `{option}` is not a kernel option (example: CONFIG_EXT4_FS)",
                                n + 1
                            ));
                        }
                        meta.kconfig.push(option.to_string());
                    }
                }
                "disks" => {
                    meta.disks =
                        value
                            .parse()
                            .ok()
                            .filter(|d| *d <= MAX_DISKS)
                            .ok_or_else(|| {
                                format!(
                                "line {}: disks=`{value}` is not a number from 0 to {MAX_DISKS}",
                                n + 1
                            )
                            })?
                }
                other => {
                    return Err(format!(
                        "line {}: unknown header `{other}` (expected timeout, kconfig or disks)",
                        n + 1
                    ))
                }
            }
        }
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_duration(text: &str) -> Result<Duration, String> {
        let secs = text.strip_suffix('s').ok_or("no unit")?;
        Ok(Duration::from_secs(
            secs.parse().map_err(|_| "not a number")?,
        ))
    }

    #[test]
    fn headers_declare_timeout_kconfig_and_disks() {
        let meta = parse_headers(
            "t",
            "#!/bin/sh\n# vmbuild: timeout=30s\n# vmbuild: kconfig=CONFIG_EXT4_FS,CONFIG_XFS_FS disks=2\necho\n",
            &parse_duration,
        )
        .unwrap();
        assert_eq!(meta.timeout_ms, Some(30_000));
        assert_eq!(meta.kconfig, ["CONFIG_EXT4_FS", "CONFIG_XFS_FS"]);
        assert_eq!(meta.disks, 2);
        assert!(
            parse_headers("t", "# vmbuild: colour=blue\n", &parse_duration)
                .unwrap_err()
                .contains("unknown header")
        );
    }

    #[test]
    fn only_executables_are_tests() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lib.sh"), "x").unwrap();
        std::fs::write(dir.path().join("a-test"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("a-test"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let names: Vec<_> = discover(dir.path(), &parse_duration)
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a-test"]);
    }
}
