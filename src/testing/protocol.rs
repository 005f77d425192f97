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

/// Parses one line from the agent (without its `\n`); `None` for anything else (noise
/// on the port).
pub fn parse(line: &[u8]) -> Option<Message> {
    let rest = line.strip_prefix(b"VMBUILD ")?;
    let rest = String::from_utf8_lossy(rest);
    let rest = rest.trim_end_matches(['\r', '\n']);
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
        assert_eq!(parse(b"VMBUILD END t1 what"), None);
    }
}
