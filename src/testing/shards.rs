//! CI shards (`--shard K/N`): each part's results are an entry of their own, keyed by the
//! recipe's key, the part and the durations it was cut from (`results_entry`); `results
//! --merge` finds the newest complete set of parts for the current inputs, checks that they
//! cover every test exactly once, and publishes the joined results as the recipe's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::cases::{copy_logs, entry_name};
use super::results::{read_results, write_results};
use super::runner::TestError;
use super::select::Shard;
use super::RunResults;
use crate::fsio::io_err;
use crate::hashing::sha256_hex;
use crate::store::{Build, Entry, Manifest, Status, Store, StoreError};

/// In a shard's manifest (and a test's own entry): the key of the recipe it is a part of.
pub(crate) const RECIPE_KEY: &str = "recipe_key";
/// In a shard's manifest: `[K, N]`, the digest of the durations it was cut from, and the
/// names of all the recipe's tests (which the parts together must cover).
const SHARD: &str = "shard";
const CUT: &str = "shard_cut";
const SHARD_OF: &str = "shard_of";

/// The digest of the durations in `previous` (what cuts the shards).
fn cut_digest(previous: Option<&RunResults>) -> String {
    let durations: Vec<(&str, f64)> = previous
        .map(|p| {
            p.tests
                .iter()
                .map(|t| (t.name.as_str(), t.duration))
                .collect()
        })
        .unwrap_or_default();
    sha256_hex(
        serde_json::to_string(&durations)
            .expect("durations serialize")
            .as_bytes(),
    )
}

/// The key and entry name of part `shard` of the recipe `name` under `key`, cut from the
/// durations of `previous`.
pub(crate) fn entry_of(
    key: &str,
    name: &str,
    shard: Shard,
    previous: Option<&RunResults>,
) -> (String, String) {
    let cut = cut_digest(previous);
    (
        sha256_hex(format!("{key}\n{}\n{cut}", shard.label()).as_bytes()),
        entry_name(name, &shard.label()),
    )
}

/// What a shard's manifest records: the recipe's key, the part, the cut, all the tests.
pub(crate) fn details(
    key: &str,
    shard: Shard,
    previous: Option<&RunResults>,
    all: Vec<String>,
) -> [(String, serde_json::Value); 4] {
    [
        (RECIPE_KEY.into(), serde_json::json!(key)),
        (SHARD.into(), serde_json::json!([shard.index, shard.count])),
        (CUT.into(), serde_json::json!(cut_digest(previous))),
        (SHARD_OF.into(), serde_json::json!(all)),
    ]
}

/// Looks up parts 1..=`count` of the recipe `name` under `key`, so that a remote cache's
/// parts are pulled into the store. A part's key holds the durations it was cut from:
/// those of this store's last results (as `vmbuild test --shard` here would cut), and
/// none (as on the fresh runners of a CI matrix) are both tried.
pub(crate) fn look_up_parts(
    store: &Store,
    key: &str,
    name: &str,
    count: u32,
) -> Result<(), StoreError> {
    let previous = super::phase::previous(store, name)?;
    let mut cuts = vec![previous.as_ref()];
    if previous.is_some() {
        cuts.push(None);
    }
    for cut in cuts {
        for index in 1..=count {
            let (part_key, part_name) = entry_of(key, name, Shard { index, count }, cut);
            store.lookup(&part_key, &part_name, "test")?;
        }
    }
    Ok(())
}

/// One shard's results entry.
pub(crate) struct ShardResults {
    pub shard: Shard,
    pub results: RunResults,
    /// The digest of the durations it was cut from.
    pub cut: String,
    /// All the recipe's tests, which the shards together cover.
    pub all: Vec<String>,
    pub entry: Entry,
}

/// The newest complete set of parts (one N, one cut, every K) of the recipe under `key`
/// in the store, each part its newest entry; else the newest set there is (which `merge`
/// then says is incomplete). Any status: a failed part is part of the report. An entry
/// whose results cannot be read is left out (its part shows as missing).
pub(crate) fn newest_set(store: &Store, key: &str) -> Result<Vec<ShardResults>, StoreError> {
    let mut sets: BTreeMap<(u32, String), BTreeMap<u32, ShardResults>> = BTreeMap::new();
    for entry in store.entries()? {
        let details = &entry.manifest.details;
        if entry.manifest.kind != "test" || details.get(RECIPE_KEY) != Some(&serde_json::json!(key))
        {
            continue;
        }
        let field = |name: &str| details.get(name).cloned().unwrap_or_default();
        let Ok([index, count]) = serde_json::from_value::<[u32; 2]>(field(SHARD)) else {
            continue;
        };
        let Ok(results) = read_results(&entry) else {
            continue;
        };
        let part = ShardResults {
            shard: Shard { index, count },
            results,
            cut: serde_json::from_value(field(CUT)).unwrap_or_default(),
            all: serde_json::from_value(field(SHARD_OF)).unwrap_or_default(),
            entry,
        };
        let parts = sets.entry((count, part.cut.clone())).or_default();
        let newer = parts
            .get(&index)
            .is_none_or(|old| old.entry.manifest.created < part.entry.manifest.created);
        if newer {
            parts.insert(index, part);
        }
    }
    let newest = |parts: &BTreeMap<u32, ShardResults>| {
        parts.values().map(|p| p.entry.manifest.created).max()
    };
    let complete = |count: u32, parts: &BTreeMap<u32, ShardResults>| {
        (1..=count).all(|k| parts.contains_key(&k))
    };
    let chosen = sets
        .iter()
        .filter(|((count, _), parts)| complete(*count, parts))
        .max_by_key(|(_, parts)| newest(parts))
        .or_else(|| sets.iter().max_by_key(|(_, parts)| newest(parts)))
        .map(|(set, _)| set.clone());
    Ok(chosen
        .and_then(|set| sets.remove(&set))
        .map(|parts| parts.into_values().collect())
        .unwrap_or_default())
}

/// Publishes the results joined from the shards (the logs in `folders`, by test) as the
/// recipe's results entry under `key`, unless a passing one is there: the next runs'
/// durations come from it, and an unchanged rerun of an all-pass suite is a hit.
pub(crate) fn publish_joined(
    store: &Store,
    key: &str,
    name: &str,
    inputs: &serde_json::Value,
    results: &RunResults,
    folders: &BTreeMap<String, PathBuf>,
) -> Result<Entry, TestError> {
    let (entry, _) = store.get_or_build(
        key,
        name,
        "test",
        Build::IfMissing,
        || {},
        |out| {
            let tests = out.join("tests");
            fs_err::create_dir_all(&tests).map_err(io_err("create", &tests))?;
            for test in &results.tests {
                if let Some(folder) = folders.get(&test.name) {
                    copy_logs(test, folder, out)?;
                }
            }
            write_results(out, results)?;
            let mut manifest = Manifest::new(name, "test", key, inputs.clone());
            manifest.head.status = match results.all_passed() {
                true => Status::Ok,
                false => Status::Failed,
            };
            manifest
                .head
                .details
                .insert("joined_from_shards".into(), serde_json::json!(true));
            Ok::<_, TestError>(manifest)
        },
    )?;
    Ok(entry)
}

/// The recipe's results from its shards' (each with its shard and the names of all the
/// recipe's tests), in test-name order; or what is missing or doubled.
pub fn merge(shards: Vec<(Shard, RunResults, Vec<String>)>) -> Result<RunResults, String> {
    let Some(count) = shards.iter().map(|(s, _, _)| s.count).max() else {
        return Err("no shard results for the current inputs".into());
    };
    let mut parts: BTreeMap<u32, RunResults> = BTreeMap::new();
    let mut all: Vec<String> = Vec::new();
    for (shard, results, names) in shards {
        if shard.count == count {
            parts.insert(shard.index, results);
            all = names;
        }
    }
    let missing: Vec<String> = (1..=count)
        .filter(|k| !parts.contains_key(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "shard(s) {} have no results for the current inputs cut from the same durations as \
             the others: run every part from one cache (`vmbuild test --shard K/N`), or share \
             them through a remote cache and merge with --shards N (a part with failures is \
             never uploaded: see its job's output)",
            missing.join(", ")
        ));
    }
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut merged: Option<RunResults> = None;
    for (index, part) in parts {
        for test in &part.tests {
            if let Some(other) = seen.insert(test.name.clone(), index) {
                return Err(format!(
                    "test `{}` is in shard {other}/{count} and shard {index}/{count}: the shards \
                     were cut from different durations; rerun them from one cache",
                    test.name
                ));
            }
        }
        match merged.as_mut() {
            None => merged = Some(part),
            Some(m) => {
                m.tests.extend(part.tests);
                m.console_truncated |= part.console_truncated;
            }
        }
    }
    let mut merged = merged.expect("at least one shard");
    let lost: Vec<&str> = all
        .iter()
        .filter(|name| !seen.contains_key(*name))
        .map(String::as_str)
        .collect();
    if !lost.is_empty() {
        return Err(format!(
            "no shard ran {}: the shards were cut from different durations; rerun them from one cache",
            lost.join(", ")
        ));
    }
    merged.tests.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Status;

    fn part(tests: &[&str]) -> RunResults {
        let tests: Vec<(&str, Status, f64)> =
            tests.iter().map(|n| (*n, Status::Pass, 0.0)).collect();
        RunResults::of("r", &tests)
    }

    fn shard(index: u32) -> Shard {
        Shard { index, count: 3 }
    }

    fn names(all: &[&str]) -> Vec<String> {
        all.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn shards_join_and_gaps_or_doubles_are_named() {
        let abc = || names(&["a", "b", "c"]);
        let all = merge(vec![
            (shard(2), part(&["b"]), abc()),
            (shard(1), part(&["c", "a"]), abc()),
            (shard(3), part(&[]), abc()),
        ])
        .unwrap();
        let joined: Vec<&str> = all.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(joined, ["a", "b", "c"]);
        let gap = merge(vec![(shard(1), part(&["a"]), abc())]).unwrap_err();
        assert!(gap.contains("2/3, 3/3"), "{gap}");
        let double = merge(vec![
            (shard(1), part(&["a"]), abc()),
            (shard(2), part(&["a"]), abc()),
            (shard(3), part(&[]), abc()),
        ])
        .unwrap_err();
        assert!(
            double.contains("`a` is in shard 1/3 and shard 2/3"),
            "{double}"
        );
        let lost = merge(vec![
            (shard(1), part(&["a"]), abc()),
            (shard(2), part(&["b"]), abc()),
            (shard(3), part(&[]), abc()),
        ])
        .unwrap_err();
        assert!(lost.contains("no shard ran c"), "{lost}");
    }
}
