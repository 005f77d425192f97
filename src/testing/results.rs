//! The files of a results entry: `results.json` (the `RunResults`) and `junit.xml`, next
//! to `console.log` and `tests/<name>.log` that the runner writes.

use std::path::Path;

use super::{RunResults, Status};
use crate::format::junit::{self, Case, Outcome, Suite};
use crate::format::tap;
use crate::fsio::{io_err, IoError};
use crate::store::{Entry, StoreError};

pub const RESULTS_JSON: &str = "results.json";
pub const JUNIT_XML: &str = "junit.xml";

/// The results stored in a results entry.
pub fn read_results(entry: &Entry) -> Result<RunResults, StoreError> {
    let path = entry.path.join(RESULTS_JSON);
    let bytes = fs_err::read(&path).map_err(io_err("read", &path))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::BadManifest {
        path,
        message: e.to_string(),
    })
}

/// Writes `results.json` and `junit.xml` into `out`, a staged results entry whose test
/// logs are already in place.
pub(crate) fn write_results(out: &Path, results: &RunResults) -> Result<(), IoError> {
    let path = out.join(RESULTS_JSON);
    let json = serde_json::to_vec_pretty(results)
        .map_err(|e| io_err("serialize", &path)(std::io::Error::other(e)))?;
    fs_err::write(&path, json).map_err(io_err("write", &path))?;
    let logs = |_: &str, test: &str| read_log(out, test);
    let path = out.join(JUNIT_XML);
    fs_err::write(&path, junit_xml(&[results], &logs)).map_err(io_err("write", &path))
}

/// A test's log in a results entry (empty when it has none).
pub(crate) fn read_log(entry: &Path, test: &str) -> String {
    fs_err::read_to_string(entry.join("tests").join(format!("{test}.log"))).unwrap_or_default()
}

/// JUnit XML for test runs: one `<testsuite>` per test recipe, one `<testcase>` per test
/// and per TAP subtest; fail -> `<failure>`, timeout and crash -> `<error>`, skip and not
/// run -> `<skipped>`. `logs(recipe, test)` gives each test's output for `<system-out>`.
pub fn junit_xml(runs: &[&RunResults], logs: &dyn Fn(&str, &str) -> String) -> String {
    let suites: Vec<Suite> = runs
        .iter()
        .map(|run| {
            let mut cases = Vec::new();
            for t in &run.tests {
                let message = t.reason.clone().unwrap_or_else(|| match t.exit_code {
                    Some(code) => format!("exit status {code}"),
                    None => t.status.name().to_string(),
                });
                cases.push(Case {
                    name: t.name.clone(),
                    classname: run.recipe.clone(),
                    seconds: t.duration,
                    outcome: outcome(t.status),
                    message,
                    kind: t.status.name().to_string(),
                    output: Some(logs(&run.recipe, &t.name)),
                });
                for sub in &t.subtests {
                    let status = match sub.status {
                        tap::Status::Pass => Status::Pass,
                        tap::Status::Fail => Status::Fail,
                        tap::Status::Skip => Status::Skip,
                    };
                    cases.push(Case {
                        name: sub.name.clone(),
                        classname: format!("{}.{}", run.recipe, t.name),
                        seconds: 0.0,
                        outcome: outcome(status),
                        message: sub.status.name().to_string(),
                        kind: sub.status.name().to_string(),
                        output: None,
                    });
                }
            }
            Suite {
                name: run.recipe.clone(),
                cases,
            }
        })
        .collect();
    junit::render(&suites)
}

fn outcome(status: Status) -> Outcome {
    match status {
        Status::Pass | Status::Flaky => Outcome::Pass,
        Status::Skip | Status::NotRun => Outcome::Skipped,
        Status::Fail => Outcome::Failure,
        Status::Timeout | Status::Crash => Outcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestResult;

    #[test]
    fn statuses_map_to_junit_elements() {
        let t = |name: &str, status| TestResult {
            duration: 0.5,
            ..TestResult::without_output(name.into(), status, None)
        };
        let mut tap = t("tap", Status::Pass);
        tap.subtests = vec![tap::Subtest {
            name: "a<b".into(),
            status: tap::Status::Fail,
        }];
        let run = RunResults {
            recipe: "smoke".into(),
            key: "k".into(),
            accel: "tcg".into(),
            kernel_release: "r".into(),
            tests: vec![
                t("ok", Status::Pass),
                t("bad", Status::Fail),
                t("slow", Status::Timeout),
                t("s", Status::Skip),
                tap,
            ],
            console_truncated: false,
        };
        let xml = junit_xml(&[&run], &|_, _| "out & \u{1}".into());
        assert!(
            xml.contains("tests=\"6\" failures=\"2\" errors=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"fail\" type=\"fail\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"a&lt;b\" classname=\"smoke.tap\""),
            "{xml}"
        );
        assert!(
            xml.contains("<system-out>out &amp; ?</system-out>"),
            "{xml}"
        );
    }
}
