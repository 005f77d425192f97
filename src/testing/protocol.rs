//! The host side of the guest agent's line protocol (docs/guest-protocol.md).
//! Guest to host, one message per line:
//! `VMBUILD READY <release>`, `VMBUILD NEXT`, `VMBUILD BEGIN <test>`,
//! `VMBUILD LOG <test> <line>`, `VMBUILD END <test> <exit-code|timeout>`, `VMBUILD DONE`.
//! `VMBUILD HELD <port>` (kept alive for the user after `HOLD`).
//! `VMBUILD TRUNCATED <test> <bytes>` (the test wrote `<bytes>`; the agent relayed less).
//! For a command (`vmbuild run`): `VMBUILD OUT <1|2> <text>` (a line of its stdout or
//! stderr), `VMBUILD PART <1|2> <text>` (output without a line end), `VMBUILD EXIT <code>`.
//! Host to guest, in answer to NEXT: `RUN <test> <timeout-seconds> <path>`, `STOP`,
//! `HOLD` (`--keep-alive` after a failure: start a shell on the third serial port), or
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
}
