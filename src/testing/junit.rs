//! JUnit XML, as CI systems read it: one `<testsuite>` per test recipe, one `<testcase>`
//! per test and per TAP subtest; fail -> `<failure>`, timeout and crash -> `<error>`,
//! skip -> `<skipped>`.

use std::fmt::Write;

use super::{RunResults, Status};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn element(status: Status, message: &str) -> String {
    let message = escape(message);
    match status {
        Status::Pass => String::new(),
        Status::Skip => format!("<skipped message=\"{message}\"/>"),
        Status::Fail => format!("<failure message=\"{message}\" type=\"fail\"/>"),
        Status::Timeout => format!("<error message=\"{message}\" type=\"timeout\"/>"),
        Status::Crash => format!("<error message=\"{message}\" type=\"crash\"/>"),
    }
}

/// Renders results; `logs` gives each test's output for `<system-out>`.
pub fn render(results: &[&RunResults], logs: &dyn Fn(&str, &str) -> String) -> String {
    let mut suites = String::new();
    let (mut all_tests, mut all_failures, mut all_errors, mut all_skipped, mut all_time) =
        (0, 0, 0, 0, 0.0);
    for run in results {
        let mut cases = String::new();
        let (mut tests, mut failures, mut errors, mut skipped, mut time) = (0, 0, 0, 0, 0.0);
        let mut count = |status: Status| {
            tests += 1;
            match status {
                Status::Fail => failures += 1,
                Status::Timeout | Status::Crash => errors += 1,
                Status::Skip => skipped += 1,
                Status::Pass => {}
            }
        };
        for t in &run.tests {
            count(t.status);
            time += t.duration;
            let message = t.reason.clone().unwrap_or_else(|| match t.exit_code {
                Some(code) => format!("exit status {code}"),
                None => t.status.name().to_string(),
            });
            let _ = writeln!(
                cases,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">{}<system-out>{}</system-out></testcase>",
                escape(&t.name),
                escape(&run.recipe),
                t.duration,
                element(t.status, &message),
                escape(&logs(&run.recipe, &t.name)),
            );
            for sub in &t.subtests {
                count(sub.status);
                let _ = writeln!(
                    cases,
                    "    <testcase name=\"{}\" classname=\"{}.{}\" time=\"0\">{}</testcase>",
                    escape(&sub.name),
                    escape(&run.recipe),
                    escape(&t.name),
                    element(sub.status, sub.status.name()),
                );
            }
        }
        let _ = write!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\" time=\"{time:.3}\">\n{cases}  </testsuite>\n",
            escape(&run.recipe)
        );
        all_tests += tests;
        all_failures += failures;
        all_errors += errors;
        all_skipped += skipped;
        all_time += time;
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"vmbuild\" tests=\"{all_tests}\" failures=\"{all_failures}\" errors=\"{all_errors}\" skipped=\"{all_skipped}\" time=\"{all_time:.3}\">\n{suites}</testsuites>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tap::Subtest, TestResult};

    #[test]
    fn statuses_map_to_junit_elements_and_text_is_escaped() {
        let t = |name: &str, status| TestResult {
            name: name.into(),
            status,
            duration: 0.5,
            log: String::new(),
            exit_code: None,
            reason: None,
            subtests: vec![],
        };
        let mut tap = t("tap", Status::Pass);
        tap.subtests = vec![Subtest {
            name: "a<b".into(),
            status: Status::Fail,
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
        };
        let xml = render(&[&run], &|_, _| "out & \u{1}".into());
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
