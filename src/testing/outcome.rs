//! What a test's end means, as pure functions: its status from the agent's `END`, and,
//! after a try, whether it runs again (`--retries`) or what its final status is (a pass
//! after failures is `flaky`, or a failure under `--flaky-fails`).

use std::time::Duration;

use super::protocol::End;
use super::Status;

/// A test's status, exit code and reason from the agent's `END` (`timeout`: its own).
pub(crate) fn ended(end: &End, timeout: Duration) -> (Status, Option<i32>, Option<String>) {
    match end {
        End::Exit(0) => (Status::Pass, Some(0), None),
        End::Exit(77) => (
            Status::Skip,
            Some(77),
            Some("the test exited 77 (skip)".to_string()),
        ),
        End::Exit(code) => (Status::Fail, Some(*code), None),
        End::Timeout => (
            Status::Timeout,
            None,
            Some(format!("killed after {timeout:?}")),
        ),
    }
}

/// What follows a try of a test.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// It failed (for this reason) and has tries left: it runs again, in a fresh VM.
    Retry(Option<String>),
    /// Its result: the status and reason to report.
    Final(Status, Option<String>),
}

/// The verdict on a try that ended with `status` (and `reason`), after `failed_before`
/// failed tries, with `retries` allowed.
pub(crate) fn verdict(
    status: Status,
    reason: Option<String>,
    failed_before: usize,
    retries: u32,
    flaky_fails: bool,
) -> Verdict {
    if status.is_failure() && failed_before < retries as usize {
        return Verdict::Retry(reason);
    }
    match (status, failed_before) {
        (Status::Pass, 1..) if flaky_fails => Verdict::Final(
            Status::Fail,
            Some(format!(
                "flaky: failed {failed_before} time(s), then passed (--flaky-fails)"
            )),
        ),
        (Status::Pass, 1..) => Verdict::Final(
            Status::Flaky,
            Some(format!("failed {failed_before} time(s) before it passed")),
        ),
        _ => Verdict::Final(status, reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_map_to_statuses() {
        let t = Duration::from_secs(5);
        assert_eq!(ended(&End::Exit(0), t).0, Status::Pass);
        assert_eq!(ended(&End::Exit(77), t).0, Status::Skip);
        assert_eq!(ended(&End::Exit(3), t), (Status::Fail, Some(3), None));
        let (status, _, reason) = ended(&End::Timeout, t);
        assert_eq!(
            (status, reason.as_deref()),
            (Status::Timeout, Some("killed after 5s"))
        );
    }

    #[test]
    fn failures_retry_while_tries_last_and_a_late_pass_is_flaky() {
        assert_eq!(
            verdict(Status::Fail, None, 0, 2, false),
            Verdict::Retry(None)
        );
        assert_eq!(
            verdict(Status::Crash, Some("oops".into()), 1, 2, false),
            Verdict::Retry(Some("oops".into()))
        );
        assert_eq!(
            verdict(Status::Timeout, Some("t".into()), 2, 2, false),
            Verdict::Final(Status::Timeout, Some("t".into()))
        );
        assert_eq!(
            verdict(Status::Fail, None, 0, 0, false),
            Verdict::Final(Status::Fail, None)
        );
        assert!(matches!(
            verdict(Status::Pass, None, 1, 2, false),
            Verdict::Final(Status::Flaky, Some(_))
        ));
        let Verdict::Final(status, Some(reason)) = verdict(Status::Pass, None, 2, 2, true) else {
            panic!("a final failure");
        };
        assert_eq!(status, Status::Fail);
        assert!(reason.contains("--flaky-fails"), "{reason}");
        // A pass on the first try, and a skip, stay what they are.
        assert_eq!(
            verdict(Status::Pass, None, 0, 2, true),
            Verdict::Final(Status::Pass, None)
        );
        assert_eq!(
            verdict(Status::Skip, None, 0, 2, false),
            Verdict::Final(Status::Skip, None)
        );
    }
}
