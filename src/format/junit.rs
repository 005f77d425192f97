//! JUnit XML, as CI systems read it: `<testsuites>` of `<testsuite>`s of `<testcase>`s,
//! each passed, `<skipped>`, `<failure>` or `<error>`, with its output in `<system-out>`.
//! The test phase maps its results onto these types (`testing::report_files`).

use std::fmt::Write;

/// How one test case ended, in JUnit's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Skipped,
    /// The test ran and failed (`<failure>`).
    Failure,
    /// The test could not finish (`<error>`: timeout, crash).
    Error,
}

#[derive(Debug, Clone)]
pub(crate) struct Case {
    pub name: String,
    pub classname: String,
    pub seconds: f64,
    pub outcome: Outcome,
    /// The `message` attribute of a non-passing outcome.
    pub message: String,
    /// The `type` attribute of a failure or error (`fail`, `timeout`, `crash`).
    pub kind: String,
    pub output: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Suite {
    pub name: String,
    pub cases: Vec<Case>,
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters and U+FFFE/U+FFFF, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('?'),
            '\u{FFFE}' | '\u{FFFF}' => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

fn element(case: &Case) -> String {
    let message = escape(&case.message);
    let kind = escape(&case.kind);
    match case.outcome {
        Outcome::Pass => String::new(),
        Outcome::Skipped => format!("<skipped message=\"{message}\"/>"),
        Outcome::Failure => format!("<failure message=\"{message}\" type=\"{kind}\"/>"),
        Outcome::Error => format!("<error message=\"{message}\" type=\"{kind}\"/>"),
    }
}

#[derive(Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
    seconds: f64,
}

impl Counts {
    fn add(&mut self, case: &Case) {
        self.tests += 1;
        self.seconds += case.seconds;
        match case.outcome {
            Outcome::Failure => self.failures += 1,
            Outcome::Error => self.errors += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Pass => {}
        }
    }

    fn attributes(&self) -> String {
        format!(
            "tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{:.3}\"",
            self.tests, self.failures, self.errors, self.skipped, self.seconds
        )
    }
}

pub(crate) fn render(suites: &[Suite]) -> String {
    let mut body = String::new();
    let mut all = Counts::default();
    for suite in suites {
        let mut cases = String::new();
        let mut counts = Counts::default();
        for case in &suite.cases {
            counts.add(case);
            all.add(case);
            let output = case
                .output
                .as_deref()
                .map(|o| format!("<system-out>{}</system-out>", escape(o)))
                .unwrap_or_default();
            let _ = writeln!(
                cases,
                "    <testcase name=\"{}\" classname=\"{}\" time=\"{:.3}\">{}{output}</testcase>",
                escape(&case.name),
                escape(&case.classname),
                case.seconds,
                element(case),
            );
        }
        let _ = write!(
            body,
            "  <testsuite name=\"{}\" {}>\n{cases}  </testsuite>\n",
            escape(&suite.name),
            counts.attributes()
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"vmbuild\" {}>\n{body}</testsuites>\n",
        all.attributes()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, outcome: Outcome, kind: &str) -> Case {
        Case {
            name: name.into(),
            classname: "smoke".into(),
            seconds: 0.5,
            outcome,
            message: kind.into(),
            kind: kind.into(),
            output: Some("out & \u{1}".into()),
        }
    }

    #[test]
    fn outcomes_map_to_junit_elements_and_text_is_escaped() {
        let mut sub = case("a<b", Outcome::Failure, "fail");
        sub.classname = "smoke.tap".into();
        sub.output = None;
        let suite = Suite {
            name: "smoke".into(),
            cases: vec![
                case("ok", Outcome::Pass, ""),
                case("bad", Outcome::Failure, "fail"),
                case("slow", Outcome::Error, "timeout"),
                case("s", Outcome::Skipped, "skip"),
                sub,
            ],
        };
        let xml = render(&[suite]);
        assert!(
            xml.contains("tests=\"5\" failures=\"2\" errors=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"fail\" type=\"fail\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("<error message=\"timeout\" type=\"timeout\"/>"),
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
        assert_eq!(escape("a\u{FFFE}b\u{FFFF}"), "a?b?");
    }
}
