//! Where the time of a test run went: the slowest tests as a table, and every test's
//! duration as a histogram. `results` prints them; both take several runs (`test` runs
//! several recipes at once).

use super::render::printable;
use crate::testing::{RunResults, TestResult};

/// The upper bound of the first bucket of the histogram, in seconds; each next bucket is
/// twice as wide.
const FIRST_BUCKET: f64 = 0.5;
/// Durations past 0.5 s * 2^40 (longer than a computer lasts) share the last bucket.
const MAX_BUCKETS: usize = 41;

/// The `n` slowest tests of `runs`, slowest first, under a header line: duration, status,
/// `recipe/test`. Every line ends with a newline; empty when there is nothing to show.
pub(super) fn slowest(runs: &[&RunResults], n: usize) -> String {
    let mut tests: Vec<(&str, &TestResult)> = runs
        .iter()
        .flat_map(|run| run.tests.iter().map(|t| (run.recipe.as_str(), t)))
        .collect();
    if tests.is_empty() || n == 0 {
        return String::new();
    }
    tests.sort_by(|(_, a), (_, b)| b.duration.total_cmp(&a.duration));
    tests.truncate(n);
    let mut text = format!(
        "slowest {} test{}:\n",
        tests.len(),
        if tests.len() == 1 { "" } else { "s" }
    );
    for (recipe, t) in tests {
        text.push_str(&format!(
            "{:>9.2}s  {:<7}  {recipe}/{}\n",
            t.duration,
            t.status.name(),
            printable(&t.name)
        ));
    }
    text
}

/// How many tests of `runs` took how long, in buckets by powers of two of seconds
/// (`<0.5s`, `0.5-1s`, `1-2s`, `2-4s`, ...) from the shortest to the longest one that
/// holds a test, with bars of `#` (the fullest `width` long) and counts. Every line ends
/// with a newline; empty when there are no tests.
pub(super) fn histogram(runs: &[&RunResults], width: usize) -> String {
    let mut counts = [0usize; MAX_BUCKETS];
    for t in runs.iter().flat_map(|run| &run.tests) {
        counts[bucket(t.duration)] += 1;
    }
    let Some(first) = counts.iter().position(|&c| c > 0) else {
        return String::new();
    };
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(first);
    let fullest = counts.iter().copied().max().unwrap_or(1);
    let labels: Vec<String> = (first..=last).map(label).collect();
    let label_width = labels.iter().map(String::len).max().unwrap_or(0);
    let mut text = String::from("test durations:\n");
    for (label, &count) in labels.iter().zip(&counts[first..=last]) {
        // Rounded up, so that a bucket with one test still shows a mark.
        let bar = "#".repeat((count * width).div_ceil(fullest));
        text.push_str(&format!("{label:>label_width$}  {bar:<width$}  {count}\n"));
    }
    text
}

/// The histogram bucket of a duration: 0 below `FIRST_BUCKET`, then i for
/// `FIRST_BUCKET * 2^(i-1)` up to `FIRST_BUCKET * 2^i`.
fn bucket(seconds: f64) -> usize {
    let mut upper = FIRST_BUCKET;
    let mut i = 0;
    while seconds >= upper && i + 1 < MAX_BUCKETS {
        upper *= 2.0;
        i += 1;
    }
    i
}

fn label(bucket: usize) -> String {
    if bucket == 0 {
        return format!("<{FIRST_BUCKET}s");
    }
    let low = FIRST_BUCKET * 2f64.powi(bucket as i32 - 1);
    format!("{low}-{}s", low * 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Status;

    fn run(recipe: &str, tests: &[(&str, Status, f64)]) -> RunResults {
        RunResults::of(recipe, tests)
    }

    #[test]
    fn slowest_lists_the_n_longest_tests_of_every_run_slowest_first() {
        let a = run(
            "smoke",
            &[("quick", Status::Pass, 0.2), ("boot", Status::Pass, 16.4)],
        );
        let b = run(
            "fio",
            &[
                ("rand\u{1b}[31m", Status::Fail, 3.0),
                ("seq", Status::Timeout, 120.0),
            ],
        );
        assert_eq!(
            slowest(&[&a, &b], 3),
            "slowest 3 tests:\n\
             \x20  120.00s  timeout  fio/seq\n\
             \x20   16.40s  pass     smoke/boot\n\
             \x20    3.00s  fail     fio/rand\\u{1b}[31m\n"
        );
        assert_eq!(
            slowest(&[&a], 10),
            "slowest 2 tests:\n\
             \x20   16.40s  pass     smoke/boot\n\
             \x20    0.20s  pass     smoke/quick\n"
        );
        assert_eq!(
            slowest(&[&a], 1),
            "slowest 1 test:\n\x20   16.40s  pass     smoke/boot\n"
        );
        assert_eq!(slowest(&[&a], 0), "");
        assert_eq!(slowest(&[], 5), "");
    }

    #[test]
    fn buckets_are_powers_of_two_of_seconds() {
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.49), 0);
        assert_eq!(bucket(0.5), 1);
        assert_eq!(bucket(0.99), 1);
        assert_eq!(bucket(1.0), 2);
        assert_eq!(bucket(3.9), 3);
        assert_eq!(bucket(4.0), 4);
        assert_eq!(bucket(f64::NAN), 0);
        assert_eq!(bucket(f64::INFINITY), MAX_BUCKETS - 1);
        assert_eq!(label(0), "<0.5s");
        assert_eq!(label(1), "0.5-1s");
        assert_eq!(label(2), "1-2s");
        assert_eq!(label(5), "8-16s");
    }

    #[test]
    fn histogram_spans_the_used_buckets_with_bars_scaled_to_the_fullest() {
        let a = run(
            "smoke",
            &[
                ("a", Status::Pass, 1.2),
                ("b", Status::Pass, 1.5),
                ("c", Status::Pass, 1.9),
                ("d", Status::Fail, 1.0),
                ("e", Status::Pass, 5.0),
            ],
        );
        let b = run("fio", &[("f", Status::Pass, 0.7)]);
        // 0.5-1s: 1, 1-2s: 4, 2-4s: 0 (shown, the gap is part of the shape), 4-8s: 1.
        assert_eq!(
            histogram(&[&a, &b], 8),
            "test durations:\n\
             0.5-1s  ##        1\n\
             \x20 1-2s  ########  4\n\
             \x20 2-4s            0\n\
             \x20 4-8s  ##        1\n"
        );
        let quick = run(
            "smoke",
            &[("a", Status::Pass, 0.1), ("b", Status::Skip, 0.0)],
        );
        assert_eq!(histogram(&[&quick], 4), "test durations:\n<0.5s  ####  2\n");
        assert_eq!(histogram(&[], 4), "");
    }
}
