//! Joining the shards of a test recipe (`--shard K/N`, each its own results entry) into
//! the recipe's results: every part of one N must be there, and no test may be in two.

use std::collections::BTreeMap;

use super::select::Shard;
use super::RunResults;

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
            "shard(s) {} have no results for the current inputs: run `vmbuild test --shard K/N` for them",
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
    use crate::testing::{Status, TestResult};

    fn part(tests: &[&str]) -> RunResults {
        RunResults {
            recipe: "r".into(),
            key: "k".into(),
            accel: "tcg".into(),
            kernel_release: String::new(),
            tests: tests
                .iter()
                .map(|n| TestResult::without_output(n.to_string(), Status::Pass, None))
                .collect(),
            console_truncated: false,
        }
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
