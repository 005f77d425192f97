//! The test phase: boot the artifacts of a `kind = "test"` recipe in VMs, hand tests to
//! the guest agent one at a time from a shared queue, and collect results, logs and the
//! console into a results entry (`results.json`, `junit.xml`, `console.log`,
//! `tests/<name>.log`). The same VMs also run one command (`exec`, for `vmbuild run`) or
//! an interactive shell (`shell`), neither of which stores anything.

pub mod agent;
mod capture;
pub(crate) mod exec;
mod kernel_modules;
mod media;
pub(crate) mod phase;
pub mod protocol;
mod queue;
pub mod results;
pub mod runner;
mod session;
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
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl RunResults {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for t in &self.tests {
            match t.status {
                Status::Pass => s.passed += 1,
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
