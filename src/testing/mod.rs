//! The test phase: boot the artifacts of a `kind = "test"` recipe in VMs, hand tests to
//! the guest agent one at a time from a shared queue, and collect results, logs and the
//! console into a results entry (`results.json`, `junit.xml`, `console.log`,
//! `tests/<name>.log`). The same VMs also run one command (`exec`, for `vmbuild run`) or
//! an interactive shell (`shell`), neither of which stores anything.

pub mod agent;
mod capture;
pub(crate) mod cases;
pub(crate) mod compare;
pub(crate) mod exec;
mod media;
mod outcome;
pub(crate) mod phase;
pub mod protocol;
mod queue;
pub mod results;
pub mod runner;
pub mod select;
mod session;
pub(crate) mod shards;
pub(crate) mod shell;
mod supervisor;
pub(crate) mod warm;

use serde::{Deserialize, Serialize};

use crate::format::{fio, tap};
pub use results::{read_results, JUNIT_XML, RESULTS_JSON};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
    Timeout,
    Crash,
    /// Failed, then passed when retried (`--retries`): counted as passed, listed apart,
    /// a failure under `--flaky-fails`.
    Flaky,
    /// Not run: the recipe comes `after` a test recipe that did not pass.
    #[serde(rename = "not run")]
    NotRun,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::Timeout => "timeout",
            Status::Crash => "crash",
            Status::Flaky => "flaky",
            Status::NotRun => "not run",
        }
    }

    /// Counts as a failure in the summary and the exit code.
    pub fn is_failure(self) -> bool {
        matches!(self, Status::Fail | Status::Timeout | Status::Crash)
    }

    /// Fails the run (exit code 1): a failure, or a test that could not run.
    pub fn fails_run(self) -> bool {
        self.is_failure() || self == Status::NotRun
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub status: Status,
    /// Wall time in seconds, measured on the host from the agent's BEGIN to END.
    pub duration: f64,
    /// The test's output, relative to the results entry.
    pub log: String,
    /// Exit code, when the test exited by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it was skipped, timed out or crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subtests: Vec<tap::Subtest>,
    /// The jobs of a fio JSON report in the test's output: IOPS, bandwidth, latency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fio: Vec<fio::FioJob>,
    /// The output was longer than vmbuild keeps (`runner::MAX_LOG`): the log holds its
    /// start and ends with a `[vmbuild: output truncated after N bytes]` line.
    #[serde(default)]
    pub truncated: bool,
    /// The key of the test's own result entry (its environment, script, the bundle files
    /// it sees, its header): a passing one is reused by any run that has the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Taken from the test's result entry, not run this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The failed tries before this one (`--retries`), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<Attempt>,
    /// A VM that died or stopped answering while it ran this test was replaced this many
    /// times (the test was requeued each time).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub vm_restarts: u32,
}

/// One failed try of a test that was retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub status: Status,
    pub duration: f64,
    /// Its output, relative to the results entry (`tests/tries/<name>.<N>.log`).
    pub log: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

impl TestResult {
    /// A result with no output: for tests that did not run or whose VM said nothing.
    pub(crate) fn without_output(name: String, status: Status, reason: Option<String>) -> Self {
        TestResult {
            name,
            status,
            duration: 0.0,
            log: String::new(),
            exit_code: None,
            reason,
            subtests: vec![],
            fio: vec![],
            truncated: false,
            key: None,
            cached: false,
            earlier: vec![],
            vm_restarts: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResults {
    pub recipe: String,
    pub key: String,
    pub accel: String,
    pub kernel_release: String,
    pub tests: Vec<TestResult>,
    /// A console log was longer than vmbuild keeps and was cut (see `TestResult::truncated`).
    #[serde(default)]
    pub console_truncated: bool,
}

/// `passed, failed, skipped` counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Tests that did not run because an `after` recipe did not pass.
    #[serde(skip_serializing_if = "is_zero")]
    pub not_run: usize,
    /// Of the passed, those that failed first and passed when retried.
    #[serde(skip_serializing_if = "is_zero")]
    pub flaky: usize,
    /// Of all, those whose results came from the store rather than a VM.
    #[serde(skip_serializing_if = "is_zero")]
    pub cached: usize,
}

impl Summary {
    /// The summary line: `N passed, N failed` (`, N skipped`, `, N not run` when any), led
    /// by how many came from the store and how many were flaky, when any.
    pub fn line(&self) -> String {
        let mut lead = Vec::new();
        if self.cached > 0 {
            lead.push(format!("{} from the cache", self.cached));
        }
        if self.flaky > 0 {
            lead.push(format!("{} flaky", self.flaky));
        }
        let mut line = match lead.is_empty() {
            true => String::new(),
            false => format!("{}: ", lead.join(", ")),
        };
        line.push_str(&format!("{} passed, {} failed", self.passed, self.failed));
        if self.skipped > 0 {
            line.push_str(&format!(", {} skipped", self.skipped));
        }
        if self.not_run > 0 {
            line.push_str(&format!(", {} not run", self.not_run));
        }
        line
    }

    pub fn add(&mut self, other: Summary) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        self.not_run += other.not_run;
        self.flaky += other.flaky;
        self.cached += other.cached;
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RunResults {
    /// Results of `recipe` holding `tests` (name, status, duration), for unit tests.
    #[cfg(test)]
    pub(crate) fn of(recipe: &str, tests: &[(&str, Status, f64)]) -> RunResults {
        RunResults {
            recipe: recipe.into(),
            key: "k".into(),
            accel: "tcg".into(),
            kernel_release: "r".into(),
            tests: tests
                .iter()
                .map(|&(name, status, duration)| TestResult {
                    duration,
                    ..TestResult::without_output(name.into(), status, None)
                })
                .collect(),
            console_truncated: false,
        }
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for t in &self.tests {
            s.cached += usize::from(t.cached);
            match t.status {
                Status::Pass => s.passed += 1,
                Status::Flaky => {
                    s.passed += 1;
                    s.flaky += 1;
                }
                Status::Skip => s.skipped += 1,
                Status::NotRun => s.not_run += 1,
                _ => s.failed += 1,
            }
        }
        s
    }

    pub fn all_passed(&self) -> bool {
        self.tests.iter().all(|t| !t.status.fails_run())
    }
}
