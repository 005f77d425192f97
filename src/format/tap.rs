//! TAP and KTAP: a test that prints `ok N - name` / `not ok N - name` lines has each one
//! reported as a subtest. `# SKIP` directives mark skips; `# TODO` failures do not fail.

use serde::{Deserialize, Serialize};

/// What a TAP line says of its subtest; serialized like the test statuses (`pass`,
/// `fail`, `skip`) in `results.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtest {
    pub name: String,
    pub status: Status,
}

/// The top-level subtests in `output`, or none when it is not TAP. Indented lines
/// (nested KTAP subtests) are left to their parent's result line.
pub(crate) fn parse(output: &str) -> Vec<Subtest> {
    let mut subtests = Vec::new();
    for line in output.lines() {
        let (ok, rest) = if let Some(rest) = line.strip_prefix("not ok ") {
            (false, rest)
        } else if let Some(rest) = line.strip_prefix("ok ") {
            (true, rest)
        } else {
            continue;
        };
        let (description, directive) = match rest.split_once('#') {
            Some((d, dir)) => (d, dir.trim().to_ascii_uppercase()),
            None => (rest, String::new()),
        };
        let description = description.trim();
        let (number, name) = match description.split_once(char::is_whitespace) {
            Some((n, name)) if n.chars().all(|c| c.is_ascii_digit()) => {
                (n, name.trim().trim_start_matches("- ").trim())
            }
            _ if description.chars().all(|c| c.is_ascii_digit()) => (description, ""),
            _ => ("", description),
        };
        let status = if directive.starts_with("SKIP") {
            Status::Skip
        } else if ok || directive.starts_with("TODO") {
            Status::Pass
        } else {
            Status::Fail
        };
        let name = if name.is_empty() {
            format!("test {number}")
        } else {
            name.to_string()
        };
        subtests.push(Subtest { name, status });
    }
    subtests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_lines_become_subtests() {
        let out = "TAP version 13\n1..4\nok 1 - first\nnot ok 2 - second\nok 3 # SKIP no disk\nnot ok 4 flaky # TODO fix\n";
        let subs = parse(out);
        let got: Vec<_> = subs.iter().map(|s| (s.name.as_str(), s.status)).collect();
        assert_eq!(
            got,
            [
                ("first", Status::Pass),
                ("second", Status::Fail),
                ("test 3", Status::Skip),
                ("flaky", Status::Pass)
            ]
        );
    }

    #[test]
    fn ktap_nested_lines_are_left_to_the_parent_and_plain_output_is_not_tap() {
        let out = "KTAP version 1\n1..1\n    KTAP version 1\n    ok 1 inner\nok 1 example\n";
        assert_eq!(
            parse(out),
            [Subtest {
                name: "example".into(),
                status: Status::Pass
            }]
        );
        assert!(parse("hello\nall good\n").is_empty());
    }
}
