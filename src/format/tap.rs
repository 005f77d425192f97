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
/// (nested KTAP subtests) are left to their parent's result line. Each subtest has a
/// name: its description, else `test N` with its number (or, unnumbered, its position).
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
        let (description, directive) = split_directive(rest);
        let directive = directive.trim().to_ascii_uppercase();
        let description = description.trim();
        let (number, name) = match description.split_once(char::is_whitespace) {
            Some((n, name)) if n.chars().all(|c| c.is_ascii_digit()) => (n, name),
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
        let name = without_separator(name);
        let name = match (name.is_empty(), number.is_empty()) {
            (false, _) => name.to_string(),
            (true, false) => format!("test {number}"),
            (true, true) => format!("test {}", subtests.len() + 1),
        };
        subtests.push(Subtest { name, status });
    }
    subtests
}

/// Splits a test line after `ok ` at its first unescaped `#`: the description (with the
/// escapes `\#` and `\\` undone) and the directive.
fn split_directive(rest: &str) -> (String, &str) {
    let mut description = String::with_capacity(rest.len());
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '#' => return (description, &rest[i + 1..]),
            '\\' => match rest[i + 1..].chars().next() {
                Some(e @ ('#' | '\\')) => {
                    description.push(e);
                    chars.next();
                }
                _ => description.push(c),
            },
            c => description.push(c),
        }
    }
    (description, "")
}

/// The description without TAP's optional ` - ` between number and name.
fn without_separator(name: &str) -> &str {
    let name = name.trim();
    match name.strip_prefix('-') {
        Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => rest.trim(),
        _ => name,
    }
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

    #[test]
    fn separators_escapes_and_missing_names() {
        let out = "ok - unnumbered\nok # SKIP nothing to name\nnot ok 3 -\n\
                   ok 4 - issue \\#12 \\\\o/ # TODO later\nok -\n";
        let got: Vec<_> = parse(out).into_iter().map(|s| (s.name, s.status)).collect();
        assert_eq!(
            got,
            [
                ("unnumbered".to_string(), Status::Pass),
                ("test 2".to_string(), Status::Skip),
                ("test 3".to_string(), Status::Fail),
                ("issue #12 \\o/".to_string(), Status::Pass),
                ("test 5".to_string(), Status::Pass),
            ]
        );
    }

    /// The kernel selftests' runner (`run_kselftest.sh`) prints a KTAP document per
    /// collection, with each selftest's own output commented out (`# `) under it.
    #[test]
    fn the_kselftest_runner_gives_one_subtest_per_selftest() {
        let out = "TAP version 13\n1..1\n# selftests: size: get_size\n# TAP version 13\n\
                   # ok 1 get runtime memory use\n# 1..1\nok 1 selftests: size: get_size\n\
                   TAP version 13\n1..2\n# selftests: breakpoints: breakpoint_test\n\
                   ok 1 selftests: breakpoints: breakpoint_test\n\
                   not ok 2 selftests: breakpoints: step_after_suspend_test # exit=1\n\
                   TAP version 13\n1..1\nok 1 selftests: timers: rtcpie # SKIP\n";
        let got: Vec<_> = parse(out).into_iter().map(|s| (s.name, s.status)).collect();
        assert_eq!(
            got,
            [
                ("selftests: size: get_size".to_string(), Status::Pass),
                (
                    "selftests: breakpoints: breakpoint_test".to_string(),
                    Status::Pass
                ),
                (
                    "selftests: breakpoints: step_after_suspend_test".to_string(),
                    Status::Fail
                ),
                ("selftests: timers: rtcpie".to_string(), Status::Skip),
            ]
        );
    }

    use proptest::prelude::*;

    /// One test line to write: `ok`/`not ok`, maybe its number, maybe ` - `, maybe a name,
    /// maybe a directive.
    #[derive(Debug, Clone)]
    struct Point {
        ok: bool,
        number: bool,
        dash: bool,
        name: Option<String>,
        /// `SKIP` or `TODO` in any case, and its reason.
        directive: Option<(String, String)>,
    }

    impl Point {
        fn line(&self, position: usize) -> String {
            let mut line = String::from(if self.ok { "ok" } else { "not ok" });
            if self.number {
                line.push_str(&format!(" {position}"));
            }
            if self.dash {
                line.push_str(" -");
            }
            if let Some(name) = &self.name {
                line.push(' ');
                line.push_str(&name.replace('\\', "\\\\").replace('#', "\\#"));
            }
            if let Some((word, reason)) = &self.directive {
                line.push_str(&format!(" # {word}{reason}"));
            }
            line
        }

        fn expected(&self, position: usize) -> (String, Status) {
            let skip = self
                .directive
                .as_ref()
                .is_some_and(|(w, _)| w.eq_ignore_ascii_case("skip"));
            let todo = self.directive.is_some() && !skip;
            let status = match (skip, self.ok || todo) {
                (true, _) => Status::Skip,
                (false, true) => Status::Pass,
                (false, false) => Status::Fail,
            };
            let name = self.name.clone().unwrap_or(format!("test {position}"));
            (name, status)
        }
    }

    fn point() -> impl Strategy<Value = Point> {
        // Unnumbered names must not start with a digit: TAP would read it as the number.
        let name =
            "[A-Za-z_(][A-Za-z0-9 _#\\\\.:()/-]{0,30}".prop_map(|n| n.trim_end().to_string());
        let word = prop::sample::select(vec!["SKIP", "skip", "Skip", "TODO", "todo"]);
        let directive = (word, "( [A-Za-z ]{0,20})?").prop_map(|(w, r)| (w.to_string(), r));
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(name),
            prop::option::of(directive),
        )
            .prop_map(|(ok, number, dash, name, directive)| Point {
                ok,
                // A bare `ok` is not read as a test line (too many plain tests print it).
                number: number || (!dash && name.is_none() && directive.is_none()),
                dash,
                name,
                directive,
            })
    }

    /// Lines that are not top-level test lines: headers, plans, comments, nested KTAP,
    /// and plain output.
    fn noise() -> impl Strategy<Value = String> {
        let fixed = prop::sample::select(vec![
            "TAP version 13",
            "KTAP version 1",
            "1..3",
            "# ok 1 - a comment",
            "    ok 1 nested",
            "\tnot ok 2 nested # SKIP",
            "Bail out! gone",
            "",
            "ok",
            "okay",
            "not okay",
        ])
        .prop_map(str::to_string);
        let plain = "[a-z][a-z0-9 ]{0,20}".prop_filter("not a test line", |l| {
            !l.starts_with("ok ") && !l.starts_with("not ok ")
        });
        prop_oneof![fixed, plain]
    }

    /// Fragments that make lines close to test lines, for the never-panics property.
    fn tap_ish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            prop::sample::select(vec![
                "ok ", "not ok ", "1", " - ", "-", "#", " # SKIP", "# todo", "\\", "\\#", "\\\\",
                " ", "\t", "\r", "\n", "\u{a0}", "é",
            ])
            .prop_map(str::to_string),
            any::<String>(),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
    }

    proptest! {
        #![proptest_config(crate::proptest_config(1024))]

        #[test]
        fn the_tap_parser_never_panics_and_names_every_subtest(
            output in prop_oneof![any::<String>(), tap_ish()],
        ) {
            let subtests = parse(&output);
            let test_lines = output
                .lines()
                .filter(|l| l.starts_with("ok ") || l.starts_with("not ok "))
                .count();
            prop_assert_eq!(subtests.len(), test_lines);
            prop_assert!(subtests.len() <= output.lines().count());
            for s in &subtests {
                prop_assert!(!s.name.is_empty(), "{:?}", subtests);
                prop_assert_eq!(s.name.trim(), s.name.as_str());
                prop_assert!(!s.name.contains('\n'));
            }
        }

        #[test]
        fn written_tap_parses_back_to_its_points(
            doc in prop::collection::vec(
                (point(), prop::collection::vec(noise(), 0..3)),
                0..12,
            ),
        ) {
            let mut text = String::new();
            let mut expected = Vec::new();
            for (i, (point, noise)) in doc.iter().enumerate() {
                for line in noise {
                    text.push_str(line);
                    text.push('\n');
                }
                text.push_str(&point.line(i + 1));
                text.push('\n');
                expected.push(point.expected(i + 1));
            }
            let got: Vec<_> = parse(&text).into_iter().map(|s| (s.name, s.status)).collect();
            prop_assert_eq!(got, expected, "{}", text);
        }
    }
}
