//! Each test's own result entry, so that a rerun repeats only the tests that failed or
//! changed. A test's key is its recipe's key inputs with the bundles taken out and, in
//! their place, what the test sees of them: its own script (and header) and the files
//! every bundle shares (anything that is not one of its tests). So an edit to one script
//! reruns that test alone; an edit to a shared file reruns the tests of the recipe. The
//! entry, `<key>-<recipe>.<test>`, holds `result.json` and the test's logs; a passing (or
//! flaky, or skipped) one is reused by the next run with the same key.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use super::queue::bundle_tests;
use super::runner::TestError;
use super::shards::RECIPE_KEY;
use super::{Status, TestResult};
use crate::format::bundle::{TestMeta, SHARED_SHA256};
use crate::fsio::io_err;
use crate::hashing::sha256_hex;
use crate::store::{Entry, Manifest, Status as EntryStatus, Store, StoreError};

/// The test's result in its entry.
const RESULT_JSON: &str = "result.json";
/// Entry names are at most this long (`grammar::recipe_name`).
const MAX_NAME: usize = 100;

/// The result entries of one test recipe's tests.
pub(crate) struct Cases<'a> {
    store: &'a Store,
    recipe: &'a str,
    /// The recipe's key, recorded in each test's entry (`gc` keeps those of kept keys).
    recipe_key: &'a str,
    /// The recipe's key inputs without its bundles: what every test's key holds.
    base: Value,
    /// Each bundle's shared files (its digest; its key, for a bundle built before
    /// vmbuild recorded the digest) and its key (for tests without their own digest).
    bundles: BTreeMap<String, (Value, String)>,
    /// A flaky result is not reused (`--flaky-fails`).
    flaky_fails: bool,
}

/// The kind of a test's own result entry.
pub(crate) const CASE_KIND: &str = "test-case";

/// A test's key and the name of its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaseKey {
    pub key: String,
    pub name: String,
}

impl<'a> Cases<'a> {
    /// `inputs`: the recipe's key inputs (`KeyInputs::to_value`).
    pub(crate) fn new(
        store: &'a Store,
        recipe: &'a str,
        recipe_key: &'a str,
        inputs: &Value,
        bundles: &[(&str, &Entry)],
        flaky_fails: bool,
    ) -> Cases<'a> {
        let mut base = inputs.clone();
        base["kind"] = json!(CASE_KIND);
        let after: Vec<String> = base
            .pointer("/recipe/after")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(deps) = base.get_mut("deps").and_then(Value::as_object_mut) {
            let names = bundles.iter().map(|(name, _)| name.to_string());
            for dep in names.chain(after) {
                deps.remove(&dep);
            }
        }
        if let Some(recipe) = base.get_mut("recipe").and_then(Value::as_object_mut) {
            // What the test sees of the bundles is added per test; the order of the
            // recipe's `after` does not change what a test does.
            recipe.remove("bundles");
            recipe.remove("after");
        }
        let bundles = bundles
            .iter()
            .map(|(name, entry)| {
                let shared = entry
                    .manifest
                    .details
                    .get(SHARED_SHA256)
                    .cloned()
                    .unwrap_or_else(|| json!({ "bundle": entry.manifest.key }));
                (name.to_string(), (shared, entry.manifest.key.clone()))
            })
            .collect();
        Cases {
            store,
            recipe,
            recipe_key,
            base,
            bundles,
            flaky_fails,
        }
    }

    /// The key of test `meta` of `bundle`.
    pub(crate) fn key(&self, bundle: &str, meta: &TestMeta) -> CaseKey {
        let mut inputs = self.base.clone();
        let script = match &meta.sha256 {
            Some(sha256) => json!(sha256),
            // A bundle from before per-test digests: the whole bundle stands for it.
            None => json!({ "bundle": self.bundles.get(bundle).map(|(_, key)| key) }),
        };
        let shared: BTreeMap<&str, &Value> = self
            .bundles
            .iter()
            .map(|(name, (shared, _))| (name.as_str(), shared))
            .collect();
        inputs["recipe"]["test"] = json!({
            "name": meta.name,
            "bundle": bundle,
            "script": script,
            "timeout_ms": meta.timeout_ms,
            "kconfig": meta.kconfig,
            "disks": meta.disks,
        });
        inputs["recipe"]["shared"] = json!(shared);
        let canonical = serde_json::to_vec(&inputs).expect("key inputs serialize");
        CaseKey {
            key: sha256_hex(&canonical),
            name: entry_name(self.recipe, &meta.name),
        }
    }

    /// The stored passing (or skipped) result under `case`, its logs copied into `out`
    /// (the staged results entry), marked as taken from the cache. One that cannot be
    /// read is not reused (the test runs), and `notice` says why.
    pub(crate) fn reuse(
        &self,
        case: &CaseKey,
        out: &Path,
        notice: &dyn Fn(&str),
    ) -> Option<TestResult> {
        match self.stored(case, Some(out)) {
            Ok(found) => found,
            Err(e) => {
                notice(&format!(
                    "{}: its stored result is not used: {e}",
                    case.name
                ));
                None
            }
        }
    }

    /// Whether a result under `case` would be reused (`--list`).
    pub(crate) fn has(&self, case: &CaseKey) -> bool {
        matches!(self.stored(case, None), Ok(Some(_)))
    }

    /// The reusable result under `case`, its logs copied into `out` when given.
    fn stored(&self, case: &CaseKey, out: Option<&Path>) -> Result<Option<TestResult>, TestError> {
        let Some(entry) = self.store.lookup(&case.key, &case.name, CASE_KIND)? else {
            return Ok(None);
        };
        let path = entry.path.join(RESULT_JSON);
        let bytes = fs_err::read(&path).map_err(io_err("read", &path))?;
        let mut result: TestResult =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadManifest {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let passed = match result.status {
            Status::Pass | Status::Skip => true,
            Status::Flaky => !self.flaky_fails,
            _ => false,
        };
        if !passed {
            return Ok(None);
        }
        if let Some(out) = out {
            copy_logs(&result, &entry.path, out)?;
        }
        result.cached = true;
        result.key = Some(case.key.clone());
        Ok(Some(result))
    }

    /// Publishes `result` (whose logs are in `out`, the staged results entry) as the
    /// test's entry: a passing one is reused by later runs, a failed one is kept to show.
    pub(crate) fn publish(
        &self,
        case: &CaseKey,
        result: &TestResult,
        out: &Path,
    ) -> Result<(), TestError> {
        let lock = self.store.lock(&case.key, || {})?;
        let staging = self.store.stage(&case.key, &case.name, &lock)?;
        copy_logs(result, out, staging.out())?;
        let path = staging.out().join(RESULT_JSON);
        let mut stored = result.clone();
        stored.cached = false;
        stored.key = Some(case.key.clone());
        let json = serde_json::to_vec_pretty(&stored).expect("results serialize");
        fs_err::write(&path, json).map_err(io_err("write", &path))?;
        let mut manifest = Manifest::new(
            &case.name,
            CASE_KIND,
            &case.key,
            json!({ "recipe": self.recipe, "test": result.name }),
        );
        manifest
            .head
            .details
            .insert(RECIPE_KEY.into(), json!(self.recipe_key));
        manifest.head.status = match result.status {
            Status::Pass | Status::Flaky | Status::Skip => EntryStatus::Ok,
            _ => EntryStatus::Failed,
        };
        manifest.head.build_seconds = result.duration;
        self.store.publish_and_unlock(staging, manifest, lock)?;
        Ok(())
    }
}

/// The keys of the own result entries of every test of a recipe (`inputs`, its key inputs)
/// whose bundles are `bundles`: what a run would look up, so what `gc` keeps and `push`
/// sends.
pub(crate) fn all_keys(
    store: &Store,
    recipe: &str,
    recipe_key: &str,
    inputs: &Value,
    bundles: &[(&str, &Entry)],
) -> Result<Vec<CaseKey>, TestError> {
    let cases = Cases::new(store, recipe, recipe_key, inputs, bundles, false);
    Ok(bundle_tests(bundles)?
        .iter()
        .map(|(bundle, meta)| cases.key(bundle, meta))
        .collect())
}

/// `<recipe>.<part>` (a test, a shard), or when that is too long for an entry name, the
/// recipe's start and a digest of the part.
pub(crate) fn entry_name(recipe: &str, test: &str) -> String {
    let name = format!("{recipe}.{test}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let digest = sha256_hex(test.as_bytes());
    format!(
        "{}.{}",
        &recipe[..recipe.len().min(MAX_NAME - 33)],
        &digest[..32]
    )
}

/// Copies a result's logs (its own and its earlier tries') from the entry `from` to
/// the one staged at `to`.
pub(crate) fn copy_logs(result: &TestResult, from: &Path, to: &Path) -> Result<(), TestError> {
    let logs = std::iter::once(&result.log).chain(result.earlier.iter().map(|a| &a.log));
    for log in logs.filter(|l| !l.is_empty()) {
        // A log is `tests/<file>` or `tests/tries/<file>`: anything else in a stored
        // result is not followed.
        let file = log
            .strip_prefix("tests/")
            .map(|rest| rest.strip_prefix("tries/").unwrap_or(rest));
        let plain = file.is_some_and(|f| !f.is_empty() && !f.contains('/') && f != "..");
        if !plain {
            return Err(TestError::Store(StoreError::BadManifest {
                path: from.join(RESULT_JSON),
                message: format!("the log `{log}` is not a file in tests/ or tests/tries/"),
            }));
        }
        let (source, target) = (from.join(log), to.join(log));
        // Not through a link: a stored result may come from a remote cache.
        let linked = [from.join("tests"), from.join("tests/tries"), source.clone()]
            .iter()
            .any(|p| fs_err::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()));
        if linked {
            return Err(TestError::Store(StoreError::BadManifest {
                path: from.join(RESULT_JSON),
                message: format!("the log `{log}` is reached through a symlink"),
            }));
        }
        if let Some(parent) = target.parent() {
            fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
        }
        fs_err::copy(&source, &target).map_err(io_err("copy", &source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_entry(key: &str, shared: &str) -> Entry {
        let mut manifest = Manifest::new("b", "bundle", key, json!({}));
        manifest
            .head
            .details
            .insert(SHARED_SHA256.into(), json!(shared));
        Entry {
            path: "/nowhere".into(),
            manifest: manifest.head,
        }
    }

    fn meta(name: &str, sha256: &str) -> TestMeta {
        TestMeta {
            name: name.into(),
            timeout_ms: None,
            kconfig: vec![],
            disks: 0,
            sha256: Some(sha256.into()),
        }
    }

    /// The keys of tests `a` (script `a_sha`) and `b` (script "b1") of bundle `b`, in a
    /// recipe whose inputs are `inputs`.
    fn keys(inputs: &Value, bundle: &Entry, a_sha: &str) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cases = Cases::new(&store, "suite", "rk", inputs, &[("b", bundle)], false);
        (
            cases.key("b", &meta("a", a_sha)).key,
            cases.key("b", &meta("b", "b1")).key,
        )
    }

    #[test]
    fn a_test_is_keyed_by_its_script_the_shared_files_and_the_environment_not_its_neighbours() {
        let inputs = |bundle_key: &str, after_key: &str, kernel: &str| {
            json!({
                "kind": "test",
                "recipe": { "name": "suite", "bundles": ["b"], "after": ["first"] },
                "deps": { "b": bundle_key, "first": after_key, "kernel": kernel },
            })
        };
        let base = keys(&inputs("b1", "f1", "k1"), &bundle_entry("b1", "s1"), "a1");
        // Test a's script changes (and with it the bundle's key): only a's key changes.
        let edited = keys(&inputs("b2", "f1", "k1"), &bundle_entry("b2", "s1"), "a2");
        assert_ne!(base.0, edited.0);
        assert_eq!(base.1, edited.1);
        // A shared file changes: every key.
        let shared = keys(&inputs("b3", "f1", "k1"), &bundle_entry("b3", "s2"), "a1");
        assert_ne!(base.0, shared.0);
        assert_ne!(base.1, shared.1);
        // The kernel changes: every key. An `after` recipe changes: none.
        let kernel = keys(&inputs("b1", "f1", "k2"), &bundle_entry("b1", "s1"), "a1");
        assert_ne!(base.1, kernel.1);
        let after = keys(&inputs("b1", "f2", "k1"), &bundle_entry("b1", "s1"), "a1");
        assert_eq!(base, after);
    }

    #[test]
    fn long_names_still_make_entry_names() {
        assert_eq!(entry_name("smoke", "a-pass"), "smoke.a-pass");
        let long = entry_name(&"r".repeat(90), &"t".repeat(90));
        assert!(long.len() <= MAX_NAME, "{long}");
        crate::recipe::grammar::recipe_name(&long).unwrap();
        assert_ne!(long, entry_name(&"r".repeat(90), &"u".repeat(90)));
    }
}
