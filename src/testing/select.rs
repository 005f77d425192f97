//! Which tests of a recipe a run takes and in what order: `--filter` and `--exclude`
//! globs, `--shard K/N` (a deterministic part, balanced by recorded durations), and
//! `--order name|slowest|random` (random with a printed, reproducible seed). Pure
//! functions of the test names and the last durations, so every CI machine that sees the
//! same durations cuts the same shards.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};

/// The order tests are handed to VMs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Order {
    /// Longest first by the last run's durations (new tests first of all): the run ends
    /// soonest when the last test to start is a short one.
    #[default]
    Slowest,
    Name,
    /// Shuffled by `Selection::seed`.
    Random,
}

impl Order {
    pub fn parse(text: &str) -> Result<Order, String> {
        match text {
            "slowest" => Ok(Order::Slowest),
            "name" => Ok(Order::Name),
            "random" => Ok(Order::Random),
            other => Err(format!(
                "`{other}` is not an order: use name, slowest or random"
            )),
        }
    }
}

/// The most parts a suite is cut into.
const MAX_SHARDS: u32 = 1000;

/// Part `index` (1-based) of `count` equal-effort parts of the tests (`--shard K/N`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// `K/N`, with 1 <= K <= N <= `MAX_SHARDS`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || {
            format!(
                "`{text}` is not a shard: write K/N, with 1 <= K <= N <= {MAX_SHARDS} (e.g. 2/3)"
            )
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            k.trim().parse::<u32>().map_err(|_| bad())?,
            n.trim().parse::<u32>().map_err(|_| bad())?,
        );
        if index == 0 || index > count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// `shard-K-of-N`, in entry names.
    pub fn label(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

/// What a run takes of a recipe's tests.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub include: Vec<GlobMatcher>,
    pub exclude: Vec<GlobMatcher>,
    pub shard: Option<Shard>,
    pub order: Order,
    pub seed: u64,
    /// Run each test this many times (0 or 1: once); such runs store nothing.
    pub iterate: u32,
}

impl Selection {
    /// Compiles `--filter` and `--exclude` globs (`*`, `?`, `[...]`, `{a,b}`), matched
    /// against test names.
    pub fn globs(patterns: &[String]) -> Result<Vec<GlobMatcher>, String> {
        patterns
            .iter()
            .map(|p| {
                Glob::new(p)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| format!("`{p}` is not a glob: {e}"))
            })
            .collect()
    }

    /// Whether the run takes fewer tests than the recipe has, or repeats them: its
    /// results are not the recipe's.
    pub fn is_partial(&self) -> bool {
        !self.include.is_empty() || !self.exclude.is_empty() || self.iterate > 1
    }

    /// Whether `name` passes `--filter` and `--exclude`.
    pub fn wants(&self, name: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| g.is_match(name)))
            && !self.exclude.iter().any(|g| g.is_match(name))
    }
}

/// The names of shard `shard` among `names`: the tests, longest first by `durations`
/// (those without one count as the median of the known, or 1 s), each go to the part with
/// the least total so far (ties: the lower part, then the name), so the parts end at about
/// the same time and the cut depends only on the names and the durations.
pub fn shard_of<'a>(
    names: &[&'a str],
    durations: &BTreeMap<String, f64>,
    shard: Shard,
) -> Vec<&'a str> {
    let mut known: Vec<f64> = names
        .iter()
        .filter_map(|n| durations.get(*n).copied())
        .filter(|d| d.is_finite() && *d >= 0.0)
        .collect();
    known.sort_by(f64::total_cmp);
    let fallback = known.get(known.len() / 2).copied().unwrap_or(1.0);
    let weight = |name: &str| {
        durations
            .get(name)
            .copied()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .unwrap_or(fallback)
    };
    let mut sorted: Vec<&str> = names.to_vec();
    sorted.sort_by(|a, b| weight(b).total_cmp(&weight(a)).then(a.cmp(b)));
    let mut totals = vec![0.0_f64; shard.count as usize];
    let mut mine = Vec::new();
    for name in sorted {
        let (part, _) = totals
            .iter()
            .enumerate()
            .min_by(|(i, a), (j, b)| a.total_cmp(b).then(i.cmp(j)))
            .expect("at least one shard");
        totals[part] += weight(name);
        if part + 1 == shard.index as usize {
            mine.push(name);
        }
    }
    mine
}

/// Sorts `names` into `order`: by `durations` longest first (unknown first of all, then
/// by name), by name, or shuffled by `seed`.
pub fn order(names: &mut [String], durations: &BTreeMap<String, f64>, order: Order, seed: u64) {
    match order {
        Order::Name => names.sort(),
        Order::Slowest => {
            let of = |n: &String| durations.get(n).copied().unwrap_or(f64::MAX);
            names.sort_by(|a, b| of(b).total_cmp(&of(a)).then(a.cmp(b)));
        }
        Order::Random => {
            names.sort();
            let mut rng = fastrand::Rng::with_seed(seed);
            rng.shuffle(names);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:02}")).collect()
    }

    #[test]
    fn shards_cover_every_test_exactly_once_and_balance_by_duration() {
        let all = names(24);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let durations: BTreeMap<String, f64> = all
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), 1.0 + i as f64 * 19.0 / 23.0))
            .collect();
        let mut seen: Vec<&str> = Vec::new();
        let mut totals = Vec::new();
        for index in 1..=3 {
            let part = shard_of(&refs, &durations, Shard { index, count: 3 });
            totals.push(part.iter().map(|n| durations[*n]).sum::<f64>());
            seen.extend(part);
        }
        seen.sort();
        assert_eq!(seen, refs);
        let (lo, hi) = totals
            .iter()
            .fold((f64::MAX, 0.0_f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
        assert!(hi - lo <= 20.0, "{totals:?}");
        // Without durations: equal parts.
        let part = shard_of(&refs, &BTreeMap::new(), Shard { index: 2, count: 3 });
        assert_eq!(part.len(), 8);
    }

    #[test]
    fn shard_and_order_arguments_are_checked() {
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0", "1/4294967295"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        assert!(Order::parse("fastest")
            .unwrap_err()
            .contains("name, slowest or random"));
    }

    #[test]
    fn random_order_is_reproducible_from_its_seed() {
        let (mut a, mut b, mut c) = (names(20), names(20), names(20));
        order(&mut a, &BTreeMap::new(), Order::Random, 7);
        order(&mut b, &BTreeMap::new(), Order::Random, 7);
        order(&mut c, &BTreeMap::new(), Order::Random, 8);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut slow = names(3);
        let durations = [("t00".to_string(), 1.0), ("t02".to_string(), 5.0)].into();
        order(&mut slow, &durations, Order::Slowest, 0);
        assert_eq!(slow, ["t01", "t02", "t00"]);
    }

    #[test]
    fn filters_and_excludes_match_test_names() {
        let selection = Selection {
            include: Selection::globs(&["fs-*".into(), "net?".into()]).unwrap(),
            exclude: Selection::globs(&["*-slow".into()]).unwrap(),
            ..Selection::default()
        };
        assert!(selection.wants("fs-ext4"));
        assert!(selection.wants("net1"));
        assert!(!selection.wants("fs-ext4-slow"));
        assert!(!selection.wants("block"));
        assert!(Selection::globs(&["[".into()]).is_err());
    }
}
