//! Two runs of tests side by side (`vmbuild compare`): which tests changed status, which
//! came or went, and whose duration changed most. Pure: it takes two `RunResults` and
//! returns a `Comparison`; the command line prints it.

use std::collections::HashMap;

use serde::Serialize;

use super::{RunResults, Status, TestResult};

/// Tests shorter than this in both runs are left out of the duration changes: at that
/// size the change is the host's noise, not the test's.
pub const NOISE_SECONDS: f64 = 0.05;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Tests whose status differs, and tests in only one run: those of the earlier run in
    /// its order, then those only the later one has, in its order.
    pub changes: Vec<Change>,
    /// Tests in both runs whose duration differs (a result taken from the store keeps its
    /// duration) and that took `NOISE_SECONDS` or more in either, largest change (either
    /// way) first.
    pub durations: Vec<DurationChange>,
    /// Tests in both runs with the same status.
    pub unchanged: usize,
    /// The sum of every test's duration in each run.
    pub before_seconds: f64,
    pub after_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub name: String,
    /// `None`: the test is new in the later run.
    pub before: Option<Status>,
    /// `None`: the later run does not have the test.
    pub after: Option<Status>,
    /// From a passing status (pass, flaky, skip) to a failure (`Status::is_failure`).
    pub regressed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DurationChange {
    pub name: String,
    /// Seconds, in the earlier and the later run.
    pub before: f64,
    pub after: f64,
}

impl DurationChange {
    /// Seconds gained (negative: saved).
    pub fn delta(&self) -> f64 {
        self.after - self.before
    }

    /// The change as a percentage of the earlier duration; `None` when that was zero.
    pub fn percent(&self) -> Option<f64> {
        (self.before > 0.0).then(|| self.delta() / self.before * 100.0)
    }
}

/// A status a test may go from and count as a regression when it now fails: a skipped
/// test that starts failing regressed too.
fn passing(status: Status) -> bool {
    matches!(status, Status::Pass | Status::Flaky | Status::Skip)
}

impl Change {
    /// Went from a failure to a passing status.
    pub fn fixed(&self) -> bool {
        matches!((self.before, self.after), (Some(b), Some(a)) if b.is_failure() && passing(a))
    }
}

impl Comparison {
    /// What changed from `before` to `after`. Tests are matched by name.
    pub fn between(before: &RunResults, after: &RunResults) -> Comparison {
        let later: HashMap<&str, &TestResult> =
            after.tests.iter().map(|t| (t.name.as_str(), t)).collect();
        let earlier: HashMap<&str, &TestResult> =
            before.tests.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut changes = Vec::new();
        let mut durations = Vec::new();
        let mut unchanged = 0;
        for old in &before.tests {
            let Some(new) = later.get(old.name.as_str()) else {
                changes.push(Change {
                    name: old.name.clone(),
                    before: Some(old.status),
                    after: None,
                    regressed: false,
                });
                continue;
            };
            if old.status == new.status {
                unchanged += 1;
            } else {
                changes.push(Change {
                    name: old.name.clone(),
                    before: Some(old.status),
                    after: Some(new.status),
                    regressed: passing(old.status) && new.status.is_failure(),
                });
            }
            let noise = old.duration < NOISE_SECONDS && new.duration < NOISE_SECONDS;
            if old.duration != new.duration && !noise {
                durations.push(DurationChange {
                    name: old.name.clone(),
                    before: old.duration,
                    after: new.duration,
                });
            }
        }
        for new in &after.tests {
            if !earlier.contains_key(new.name.as_str()) {
                changes.push(Change {
                    name: new.name.clone(),
                    before: None,
                    after: Some(new.status),
                    regressed: false,
                });
            }
        }
        durations.sort_by(|a, b| {
            b.delta()
                .abs()
                .total_cmp(&a.delta().abs())
                .then_with(|| a.name.cmp(&b.name))
        });
        Comparison {
            changes,
            durations,
            unchanged,
            before_seconds: before.tests.iter().map(|t| t.duration).sum(),
            after_seconds: after.tests.iter().map(|t| t.duration).sum(),
        }
    }

    /// Any test went from passing to failing: `vmbuild compare` exits 1.
    pub fn regressed(&self) -> bool {
        self.changes.iter().any(|c| c.regressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tests: &[(&str, Status, f64)]) -> RunResults {
        RunResults::of("smoke", tests)
    }

    fn change(
        name: &str,
        before: Option<Status>,
        after: Option<Status>,
        regressed: bool,
    ) -> Change {
        Change {
            name: name.into(),
            before,
            after,
            regressed,
        }
    }

    #[test]
    fn identical_runs_have_no_changes() {
        let a = run(&[("a", Status::Pass, 1.0), ("b", Status::Fail, 2.0)]);
        let c = Comparison::between(&a, &a);
        assert!(c.changes.is_empty());
        assert_eq!(c.unchanged, 2);
        assert!(!c.regressed());
        assert!(c.durations.is_empty());
    }

    #[test]
    fn status_changes_and_which_are_regressions() {
        use Status::*;
        let before = run(&[
            ("broke", Pass, 1.0),
            ("fixed", Fail, 1.0),
            ("flaky-broke", Flaky, 1.0),
            ("skip-broke", Skip, 0.0),
            ("timed-out", Pass, 1.0),
            ("now-flaky", Pass, 1.0),
            ("fail-to-crash", Fail, 1.0),
            ("not-run", Pass, 1.0),
            ("same", Pass, 1.0),
        ]);
        let after = run(&[
            ("broke", Fail, 1.0),
            ("fixed", Pass, 1.0),
            ("flaky-broke", Crash, 1.0),
            ("skip-broke", Fail, 1.0),
            ("timed-out", Timeout, 1.0),
            ("now-flaky", Flaky, 1.0),
            ("fail-to-crash", Crash, 1.0),
            ("not-run", NotRun, 0.0),
            ("same", Pass, 1.0),
        ]);
        let c = Comparison::between(&before, &after);
        assert_eq!(
            c.changes,
            vec![
                change("broke", Some(Pass), Some(Fail), true),
                change("fixed", Some(Fail), Some(Pass), false),
                change("flaky-broke", Some(Flaky), Some(Crash), true),
                change("skip-broke", Some(Skip), Some(Fail), true),
                change("timed-out", Some(Pass), Some(Timeout), true),
                change("now-flaky", Some(Pass), Some(Flaky), false),
                // Failing either way, and not run (its `after` failed) is not a failure.
                change("fail-to-crash", Some(Fail), Some(Crash), false),
                change("not-run", Some(Pass), Some(NotRun), false),
            ]
        );
        assert_eq!(c.unchanged, 1);
        assert!(c.regressed());
        let fixed: Vec<_> = c
            .changes
            .iter()
            .filter(|c| c.fixed())
            .map(|c| &c.name)
            .collect();
        assert_eq!(fixed, ["fixed"]);
    }

    #[test]
    fn added_and_removed_tests_are_listed_but_are_not_regressions() {
        let before = run(&[("kept", Status::Pass, 1.0), ("gone", Status::Pass, 1.0)]);
        let after = run(&[
            ("new-fail", Status::Fail, 1.0),
            ("kept", Status::Pass, 1.5),
            ("new-pass", Status::Pass, 1.0),
        ]);
        let c = Comparison::between(&before, &after);
        assert_eq!(
            c.changes,
            vec![
                change("gone", Some(Status::Pass), None, false),
                change("new-fail", None, Some(Status::Fail), false),
                change("new-pass", None, Some(Status::Pass), false),
            ]
        );
        assert_eq!(c.unchanged, 1);
        assert!(!c.regressed());
        // Only tests in both runs have a duration change.
        let names: Vec<_> = c.durations.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["kept"]);
    }

    #[test]
    fn durations_are_ordered_by_the_size_of_the_change_either_way() {
        let before = run(&[
            ("slower", Status::Pass, 1.0),
            ("faster", Status::Pass, 10.0),
            ("same", Status::Pass, 3.0),
            ("tiny", Status::Pass, 0.01),
            ("was-tiny", Status::Pass, 0.0),
            ("tie-b", Status::Pass, 1.0),
            ("tie-a", Status::Pass, 1.0),
        ]);
        let after = run(&[
            ("slower", Status::Pass, 3.0),
            ("faster", Status::Pass, 4.0),
            ("same", Status::Pass, 3.0),
            ("tiny", Status::Pass, 0.04),
            ("was-tiny", Status::Pass, 0.5),
            ("tie-b", Status::Pass, 1.5),
            ("tie-a", Status::Pass, 0.5),
        ]);
        let c = Comparison::between(&before, &after);
        let order: Vec<_> = c.durations.iter().map(|d| d.name.as_str()).collect();
        // `tiny` is under the noise floor in both runs, `same` did not change; equal
        // changes go by name.
        assert_eq!(order, ["faster", "slower", "tie-a", "tie-b", "was-tiny"]);
        assert_eq!(c.durations[0].delta(), -6.0);
        assert_eq!(c.durations[0].percent(), Some(-60.0));
        assert_eq!(c.durations[1].percent(), Some(200.0));
        let was_tiny = c.durations.iter().find(|d| d.name == "was-tiny").unwrap();
        assert_eq!(was_tiny.percent(), None);
        assert!((c.before_seconds - 16.01).abs() < 1e-9);
        assert!((c.after_seconds - 12.54).abs() < 1e-9);
    }
}
