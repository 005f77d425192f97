//! The host side of the guest agent's line protocol (docs/guest-protocol.md).
//! Guest to host, one message per line:
//! `VMBUILD READY <release>`, `VMBUILD NEXT`, `VMBUILD BEGIN <test>`,
//! `VMBUILD LOG <test> <line>`, `VMBUILD END <test> <exit-code|timeout>`, `VMBUILD DONE`.
//! `VMBUILD HELD <port>` (kept alive for the user after `HOLD`).
//! `VMBUILD TRUNCATED <test> <bytes>` (the test wrote `<bytes>`; the agent relayed less).
//! For a command (`vmbuild run`): `VMBUILD OUT <1|2> <text>` (a line of its stdout or
//! stderr), `VMBUILD PART <1|2> <text>` (output without a line end), `VMBUILD EXIT <code>`.
//! Host to guest, once after READY (at once for a VM restored from a state saved while
//! its agent waited there): `WAKE <seed> <unix-seconds>`, host randomness (hex) for the
//! guest's random pool and the time to set its clock to. Then, in answer to NEXT: `RUN <test> <timeout-seconds> <path>`, `STOP`,
//! `HOLD` (`--keep-alive` after a failure: start a shell on the third serial port),
//! `SHELL` (`vmbuild shell`: a login shell on the console, then power off), or
//! `EXEC <argc>` followed by one line per argument, each byte as three octal digits.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Exit(i32),
    Timeout,
}

/// Which of a command's output streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
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
    /// The agent's heartbeat while a test runs: the guest is alive.
    Alive,
    /// The agent is holding the VM for the user (`--keep-alive`), with a shell on `port`.
    Held {
        port: String,
    },
    /// The test's output (`bytes` long) was cut: the agent relayed only its start.
    Truncated {
        test: String,
        bytes: u64,
    },
    /// Output of the command `EXEC` started: `text` exactly as it wrote it, followed by a
    /// line end when `newline`.
    Out {
        stream: Stream,
        text: Vec<u8>,
        newline: bool,
    },
    /// The command `EXEC` started exited with `code` (a shell's `$?`: 127 not found,
    /// 128 + N killed by signal N); all its output came before.
    Exit {
        code: i32,
    },
}

/// Parses one line from the agent (without its `\n`); `None` for anything else (noise
/// on the port). Command output is kept as bytes; everything else is text.
pub fn parse(line: &[u8]) -> Option<Message> {
    let rest = line.strip_prefix(b"VMBUILD ")?;
    for (word, newline) in [(&b"OUT "[..], true), (&b"PART "[..], false)] {
        if let Some(out) = rest.strip_prefix(word) {
            let (stream, text) = match out {
                [b'1', b' ', text @ ..] => (Stream::Stdout, text),
                [b'2', b' ', text @ ..] => (Stream::Stderr, text),
                _ => return None,
            };
            return Some(Message::Out {
                stream,
                text: text.to_vec(),
                newline,
            });
        }
    }
    let rest = String::from_utf8_lossy(rest);
    let rest = rest.trim_end_matches(['\r', '\n']);
    let (word, args) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(match word {
        "READY" => Message::Ready {
            release: args.to_string(),
        },
        "NEXT" => Message::Next,
        "DONE" => Message::Done,
        "ALIVE" => Message::Alive,
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
        "EXIT" => Message::Exit {
            code: args.trim().parse().ok()?,
        },
        _ => return None,
    })
}

pub fn run_command(test: &str, timeout_secs: u64, path: &str) -> String {
    format!("RUN {test} {timeout_secs} {path}\n")
}

/// The answer that runs a command: `EXEC <argc>`, then each argument on a line of its
/// own as three octal digits per byte, so that any byte (spaces, quotes, `$`, newlines,
/// non-UTF-8) reaches the guest unchanged and the line protocol stays intact. An empty
/// line is an empty argument.
pub(crate) fn exec_command(argv: &[OsString]) -> String {
    let mut out = format!("EXEC {}\n", argv.len());
    for arg in argv {
        for byte in arg.as_bytes() {
            out.push_str(&format!("{byte:03o}"));
        }
        out.push('\n');
    }
    out
}

pub const STOP: &str = "STOP\n";

/// The answer to READY: `seed` for the guest's random pool, `now` (seconds since the
/// epoch) for its clock.
pub fn wake(seed: &[u8], now: u64) -> String {
    format!("WAKE {} {now}\n", hex::encode(seed))
}
/// Give the user a login shell on the console (`vmbuild shell`), then power off.
pub const SHELL: &str = "SHELL\n";
/// Keep the VM for the user after a failure (`--keep-alive`).
pub const HOLD: &str = "HOLD\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_message() {
        assert_eq!(
            parse(b"VMBUILD READY 6.1.0\r"),
            Some(Message::Ready {
                release: "6.1.0".into()
            })
        );
        assert_eq!(parse(b"VMBUILD NEXT"), Some(Message::Next));
        assert_eq!(
            parse(b"VMBUILD BEGIN t1"),
            Some(Message::Begin { test: "t1".into() })
        );
        assert_eq!(
            parse(b"VMBUILD LOG t1 hello  world"),
            Some(Message::Log {
                test: "t1".into(),
                line: "hello  world".into()
            })
        );
        assert_eq!(
            parse(b"VMBUILD LOG t1"),
            Some(Message::Log {
                test: "t1".into(),
                line: String::new()
            })
        );
        assert_eq!(
            parse(b"VMBUILD END t1 77"),
            Some(Message::End {
                test: "t1".into(),
                end: End::Exit(77)
            })
        );
        assert_eq!(
            parse(b"VMBUILD END t1 timeout"),
            Some(Message::End {
                test: "t1".into(),
                end: End::Timeout
            })
        );
        assert_eq!(parse(b"VMBUILD DONE"), Some(Message::Done));
        assert_eq!(
            parse(b"VMBUILD HELD ttyS2"),
            Some(Message::Held {
                port: "ttyS2".into()
            })
        );
        assert_eq!(
            parse(b"VMBUILD TRUNCATED t1 67108864"),
            Some(Message::Truncated {
                test: "t1".into(),
                bytes: 67108864
            })
        );
        assert_eq!(parse(b"VMBUILD TRUNCATED t1 lots"), None);
        assert_eq!(parse(b"random noise"), None);
        assert_eq!(
            parse(b"VMBUILD EXIT 127"),
            Some(Message::Exit { code: 127 })
        );
        assert_eq!(parse(b"VMBUILD EXIT"), None);
        assert_eq!(parse(b"VMBUILD END t1 what"), None);
    }

    #[test]
    fn command_output_is_kept_byte_for_byte() {
        assert_eq!(
            parse(b"VMBUILD OUT 1  two  spaces\r"),
            Some(Message::Out {
                stream: Stream::Stdout,
                text: b" two  spaces\r".to_vec(),
                newline: true
            })
        );
        assert_eq!(
            parse(b"VMBUILD PART 2 \xff$ "),
            Some(Message::Out {
                stream: Stream::Stderr,
                text: b"\xff$ ".to_vec(),
                newline: false
            })
        );
        assert_eq!(
            parse(b"VMBUILD OUT 1 "),
            Some(Message::Out {
                stream: Stream::Stdout,
                text: vec![],
                newline: true
            })
        );
        assert_eq!(parse(b"VMBUILD OUT 3 x"), None);
        assert_eq!(parse(b"VMBUILD OUT 1"), None);
    }

    #[test]
    fn exec_arguments_are_octal_one_per_line() {
        use std::os::unix::ffi::OsStringExt;
        let argv: Vec<OsString> = vec![
            "printf".into(),
            "a b\n".into(),
            "".into(),
            OsString::from_vec(vec![b'\'', 0xff]),
        ];
        assert_eq!(
            exec_command(&argv),
            "EXEC 4\n160162151156164146\n141040142012\n\n047377\n"
        );
    }

    /// A message as `modules/guest-agent/agent.sh` writes it (its `say` and its `LOG` awk).
    fn agent_line(message: &Message) -> String {
        let line = match message {
            Message::Ready { release } => format!("VMBUILD READY {release}"),
            Message::Next => "VMBUILD NEXT".into(),
            Message::Alive => "VMBUILD ALIVE".into(),
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
            Message::Out {
                stream,
                text,
                newline,
            } => format!(
                "VMBUILD {} {} {}",
                if *newline { "OUT" } else { "PART" },
                match stream {
                    Stream::Stdout => 1,
                    Stream::Stderr => 2,
                },
                String::from_utf8_lossy(text)
            ),
            Message::Exit { code } => format!("VMBUILD EXIT {code}"),
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
            Just(Message::Alive),
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
            (any::<bool>(), any::<bool>(), "[^\n]{0,60}").prop_map(|(out, newline, text)| {
                Message::Out {
                    stream: if out { Stream::Stdout } else { Stream::Stderr },
                    text: text.into_bytes(),
                    newline,
                }
            }),
            any::<i32>().prop_map(|code| Message::Exit { code }),
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
            let parsed = parse(line.as_bytes());
            // Only the agent's prefix makes a message; line endings change nothing (but
            // in command output, which is kept byte for byte).
            prop_assert!(parsed.is_none() || line.starts_with("VMBUILD "));
            if !matches!(parsed, Some(Message::Out { .. })) {
                prop_assert_eq!(&parse(format!("{line}\r\n").as_bytes()), &parsed);
            }
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
            let line = line.strip_suffix('\n').unwrap_or(&line);
            prop_assert_eq!(parse(line.as_bytes()), Some(message));
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

    #[test]
    fn every_message_is_in_the_protocol_document() {
        let doc = include_str!("../../docs/guest-protocol.md");
        let guest = [
            "READY",
            "NEXT",
            "ALIVE",
            "BEGIN",
            "LOG",
            "END",
            "TRUNCATED",
            "DONE",
            "HELD",
            "OUT",
            "PART",
            "EXIT",
        ];
        for word in guest {
            let line = format!("VMBUILD {word}");
            let message = parse(format!("{line} t 1").as_bytes())
                .or_else(|| parse(format!("{line} 1 t").as_bytes()))
                .or_else(|| parse(format!("{line} 1").as_bytes()))
                .or_else(|| parse(line.as_bytes()));
            assert!(message.is_some(), "the host does not read `{line}`");
            assert!(
                doc.contains(&format!("| `{line}")),
                "`{line}` is not documented"
            );
        }
        for sent in [STOP, SHELL, HOLD, "RUN ", "WAKE ", "EXEC "] {
            let word = sent.trim_end();
            assert!(
                doc.contains(&format!("| `{word}")),
                "`{word}` is not documented"
            );
        }
    }
}
