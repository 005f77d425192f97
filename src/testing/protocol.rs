//! The host side of the guest agent's line protocol (docs/guest-protocol.md).
//! Guest to host, one message per line:
//! `VMBUILD READY <release>`, `VMBUILD NEXT`, `VMBUILD BEGIN <test>`,
//! `VMBUILD LOG <test> <line>`, `VMBUILD END <test> <exit-code|timeout>`, `VMBUILD DONE`.
//! `VMBUILD HELD <port>` (kept alive for the user after `HOLD`).
//! `VMBUILD TRUNCATED <test> <bytes>` (the test wrote `<bytes>`; the agent relayed less).
//! Host to guest, in answer to NEXT: `RUN <test> <timeout-seconds> <path>`, `STOP`, or
//! `HOLD` (`--keep-alive` after a failure: start a shell on the third serial port).

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exit(i32),
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ready {
        release: String,
    },
    Next,
    Begin {
        test: String,
    },
    Log {
        test: String,
        line: String,
    },
    End {
        test: String,
        end: End,
    },
    Done,
    /// The agent is holding the VM for the user (`--keep-alive`), with a shell on `port`.
    Held {
        port: String,
    },
    /// The test's output (`bytes` long) was cut: the agent relayed only its start.
    Truncated {
        test: String,
        bytes: u64,
    },
}

/// Parses one line from the agent; `None` for anything else (noise on the port).
pub fn parse(line: &str) -> Option<Message> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line.strip_prefix("VMBUILD ")?;
    let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(match word {
        "READY" => Message::Ready {
            release: args.to_string(),
        },
        "NEXT" => Message::Next,
        "DONE" => Message::Done,
        "HELD" => Message::Held {
            port: args.to_string(),
        },
        "BEGIN" => Message::Begin {
            test: args.to_string(),
        },
        "LOG" => {
            let (test, line) = args.split_once(' ').unwrap_or((args, ""));
            Message::Log {
                test: test.to_string(),
                line: line.to_string(),
            }
        }
        "TRUNCATED" => {
            let (test, bytes) = args.split_once(' ')?;
            Message::Truncated {
                test: test.to_string(),
                bytes: bytes.trim().parse().ok()?,
            }
        }
        "END" => {
            let (test, status) = args.split_once(' ')?;
            let end = match status.trim() {
                "timeout" => End::Timeout,
                code => End::Exit(code.parse().ok()?),
            };
            Message::End {
                test: test.to_string(),
                end,
            }
        }
        _ => return None,
    })
}

pub fn run_command(test: &str, timeout_secs: u64, path: &str) -> String {
    format!("RUN {test} {timeout_secs} {path}\n")
}

pub const STOP: &str = "STOP\n";
/// Keep the VM for the user after a failure (`--keep-alive`).
pub const HOLD: &str = "HOLD\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message() {
        assert_eq!(
            parse("VMBUILD READY 6.1.0\r"),
            Some(Message::Ready {
                release: "6.1.0".into()
            })
        );
        assert_eq!(parse("VMBUILD NEXT"), Some(Message::Next));
        assert_eq!(
            parse("VMBUILD BEGIN t1"),
            Some(Message::Begin { test: "t1".into() })
        );
        assert_eq!(
            parse("VMBUILD LOG t1 hello  world"),
            Some(Message::Log {
                test: "t1".into(),
                line: "hello  world".into()
            })
        );
        assert_eq!(
            parse("VMBUILD LOG t1"),
            Some(Message::Log {
                test: "t1".into(),
                line: String::new()
            })
        );
        assert_eq!(
            parse("VMBUILD END t1 77"),
            Some(Message::End {
                test: "t1".into(),
                end: End::Exit(77)
            })
        );
        assert_eq!(
            parse("VMBUILD END t1 timeout"),
            Some(Message::End {
                test: "t1".into(),
                end: End::Timeout
            })
        );
        assert_eq!(parse("VMBUILD DONE"), Some(Message::Done));
        assert_eq!(
            parse("VMBUILD HELD ttyS2"),
            Some(Message::Held {
                port: "ttyS2".into()
            })
        );
        assert_eq!(
            parse("VMBUILD TRUNCATED t1 67108864"),
            Some(Message::Truncated {
                test: "t1".into(),
                bytes: 67108864
            })
        );
        assert_eq!(parse("VMBUILD TRUNCATED t1 lots"), None);
        assert_eq!(parse("random noise"), None);
        assert_eq!(parse("VMBUILD END t1 what"), None);
    }

    /// A message as `modules/guest-agent/agent.sh` writes it (its `say` and its `LOG` awk).
    fn agent_line(message: &Message) -> String {
        let line = match message {
            Message::Ready { release } => format!("VMBUILD READY {release}"),
            Message::Next => "VMBUILD NEXT".into(),
            Message::Begin { test } => format!("VMBUILD BEGIN {test}"),
            Message::Log { test, line } => format!("VMBUILD LOG {test} {line}"),
            Message::End {
                test,
                end: End::Exit(code),
            } => format!("VMBUILD END {test} {code}"),
            Message::End {
                test,
                end: End::Timeout,
            } => format!("VMBUILD END {test} timeout"),
            Message::Done => "VMBUILD DONE".into(),
            Message::Held { port } => format!("VMBUILD HELD {port}"),
            Message::Truncated { test, bytes } => format!("VMBUILD TRUNCATED {test} {bytes}"),
        };
        format!("{line}\n")
    }

    /// The fields `IFS=' ' read -r cmd name limit path` gives the agent: split at runs of
    /// spaces, the last field taking the rest of the line.
    fn sh_read(line: &str, fields: usize) -> Vec<String> {
        let mut rest = line.strip_suffix('\n').unwrap_or(line).trim_matches(' ');
        let mut out = Vec::new();
        while out.len() + 1 < fields {
            let (field, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push(field.to_string());
            rest = tail.trim_start_matches(' ');
        }
        out.push(rest.to_string());
        out
    }

    use proptest::prelude::*;

    /// Test names as bundles allow them (`format::bundle::valid_name`).
    const TEST_NAME: &str = "[A-Za-z0-9._+-]{1,40}";

    /// Any message the agent can send: names from the bundle grammar, output lines without
    /// a newline (they are lines) or a trailing CR (dropped with the line ending).
    fn message() -> impl Strategy<Value = Message> {
        let text = || "[^\\n]{0,60}".prop_map(|s| s.trim_end_matches('\r').to_string());
        prop_oneof![
            text().prop_map(|release| Message::Ready { release }),
            Just(Message::Next),
            TEST_NAME.prop_map(|test| Message::Begin { test }),
            (TEST_NAME, text()).prop_map(|(test, line)| Message::Log { test, line }),
            (TEST_NAME, any::<i32>()).prop_map(|(test, code)| Message::End {
                test,
                end: End::Exit(code)
            }),
            TEST_NAME.prop_map(|test| Message::End {
                test,
                end: End::Timeout
            }),
            Just(Message::Done),
            "ttyS[0-9]{1,2}".prop_map(|port| Message::Held { port }),
            (TEST_NAME, any::<u64>()).prop_map(|(test, bytes)| Message::Truncated { test, bytes }),
        ]
    }

    /// Lines that look like protocol lines but are not quite: a known word, then noise.
    fn near_miss() -> impl Strategy<Value = String> {
        let word = prop::sample::select(vec![
            "READY",
            "NEXT",
            "BEGIN",
            "LOG",
            "END",
            "DONE",
            "HELD",
            "TRUNCATED",
            "",
        ]);
        (word, any::<String>()).prop_map(|(w, rest)| format!("VMBUILD {w}{rest}"))
    }

    proptest! {
        #![proptest_config(crate::proptest_config(1024))]

        #[test]
        fn the_protocol_parser_never_panics(
            line in prop_oneof![any::<String>(), near_miss()],
        ) {
            let parsed = parse(&line);
            // Only the agent's prefix makes a message; line endings change nothing.
            prop_assert!(parsed.is_none() || line.starts_with("VMBUILD "));
            prop_assert_eq!(&parse(&format!("{line}\r\n")), &parsed);
            // Names the host matches a running test against never hold a space.
            if let Some(
                Message::Log { test, .. }
                | Message::End { test, .. }
                | Message::Truncated { test, .. },
            ) = &parsed
            {
                prop_assert!(!test.contains(' '));
            }
        }

        #[test]
        fn every_agent_message_parses_back_to_itself(message in message()) {
            let line = agent_line(&message);
            prop_assert_eq!(line.matches('\n').count(), 1);
            prop_assert_eq!(parse(&line), Some(message));
        }

        #[test]
        fn the_hosts_run_line_reads_back_as_its_fields_in_the_agent(
            test in TEST_NAME,
            bundle in "[A-Za-z0-9][A-Za-z0-9._+-]{0,40}",
            secs in 1u64..=7 * 86400,
        ) {
            let path = format!("/vmbuild/bundles/{bundle}/{test}");
            let line = run_command(&test, secs, &path);
            prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
            let secs = secs.to_string();
            let fields = ["RUN", test.as_str(), secs.as_str(), path.as_str()];
            prop_assert_eq!(sh_read(&line, 4), fields);
        }
    }
}
