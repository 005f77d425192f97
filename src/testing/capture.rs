//! Bounded capture of what a guest sends: a guest that floods its console or the agent's
//! channel must not make the host use unbounded memory or disk. Lines are read at most
//! `MAX_LINE` bytes at a time (the rest of a longer line is dropped), and a test's log and
//! a VM's console keep their first `MAX_LOG` bytes, then one
//! `[vmbuild: output truncated after N bytes]` line; what follows is read and dropped.

use std::io::{self, BufRead, Read, Write};

pub(crate) use crate::format::guest::{MAX_LINE, MAX_LOG};
/// How much of qemu's own stderr is kept (its tail goes into error messages).
const MAX_STDERR: usize = 64 << 10;

/// The line that ends a cut log or console.
pub(crate) fn truncation_line(kept: usize) -> String {
    format!("[vmbuild: output truncated after {kept} bytes]")
}

/// Reads one line into `line` (cleared first, without its `\n`), keeping at most `max`
/// bytes of it. Returns `None` at the end of input, else how many bytes were dropped.
pub(crate) fn read_line(
    reader: &mut impl BufRead,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<usize>> {
    line.clear();
    let mut dropped = 0;
    let mut any = false;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(dropped));
        }
        any = true;
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(at) => (&buf[..at], at + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(line.len()).min(chunk.len());
        line.extend_from_slice(&chunk[..room]);
        dropped += chunk.len() - room;
        reader.consume(used);
        if done {
            return Ok(Some(dropped));
        }
    }
}

/// Text kept up to a limit (a test's log).
pub(crate) struct CappedText {
    text: String,
    limit: usize,
    truncated: bool,
}

impl CappedText {
    pub(crate) fn new(limit: usize) -> CappedText {
        CappedText {
            text: String::new(),
            limit,
            truncated: false,
        }
    }

    pub(crate) fn push_line(&mut self, line: &str) {
        if self.truncated || self.text.len() + line.len() + 1 > self.limit {
            self.truncated = true;
            return;
        }
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// Marks the text cut (the sender dropped part of it).
    pub(crate) fn mark_truncated(&mut self) {
        self.truncated = true;
    }

    /// The kept text (ending with the truncation line when cut) and whether it was cut.
    pub(crate) fn finish(mut self) -> (String, bool) {
        if self.truncated {
            let line = truncation_line(self.text.len());
            self.text.push_str(&line);
            self.text.push('\n');
        }
        (self.text, self.truncated)
    }
}

/// Lines written to `out` up to a limit (a VM's console file); past it, one truncation
/// line, then nothing.
pub(crate) struct CappedWriter<W: Write> {
    out: W,
    written: usize,
    limit: usize,
    truncated: bool,
}

impl<W: Write> CappedWriter<W> {
    pub(crate) fn new(out: W, limit: usize) -> CappedWriter<W> {
        CappedWriter {
            out,
            written: 0,
            limit,
            truncated: false,
        }
    }

    pub(crate) fn write_line(&mut self, line: &str) -> io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        if self.written + line.len() + 1 > self.limit {
            self.truncated = true;
            return writeln!(self.out, "{}", truncation_line(self.written));
        }
        self.written += line.len() + 1;
        writeln!(self.out, "{line}")
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }
}

/// Reads `reader` to its end, keeping only the last `MAX_STDERR` bytes.
pub(crate) fn read_tail(mut reader: impl Read) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * MAX_STDERR {
                    kept.drain(..kept.len() - MAX_STDERR);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let start = kept.len().saturating_sub(MAX_STDERR);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader of `n` bytes of `x` without a newline, made on the fly: a flood.
    fn flood(n: u64) -> impl BufRead {
        io::BufReader::new(io::repeat(b'x').take(n))
    }

    #[test]
    fn a_line_without_end_is_read_in_bounded_memory() {
        let mut reader = flood(64 << 20).chain(&b"\nnext\n"[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut line, MAX_LINE).unwrap(),
            Some((64 << 20) - MAX_LINE)
        );
        assert_eq!(line.len(), MAX_LINE);
        assert!(line.capacity() < 2 * MAX_LINE);
        assert_eq!(
            read_line(&mut reader, &mut line, MAX_LINE).unwrap(),
            Some(0)
        );
        assert_eq!(line, b"next");
        assert_eq!(read_line(&mut reader, &mut line, MAX_LINE).unwrap(), None);
        // A last line without `\n` still counts.
        let mut reader = &b"a\nb"[..];
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), Some(0));
        assert_eq!(read_line(&mut reader, &mut line, 10).unwrap(), Some(0));
        assert_eq!(line, b"b");
    }

    #[test]
    fn a_test_log_keeps_its_start_and_says_it_was_cut() {
        let mut log = CappedText::new(MAX_LOG);
        let line = "y".repeat(1000);
        for _ in 0..20_000 {
            log.push_line(&line);
        }
        let (text, truncated) = log.finish();
        assert!(truncated);
        assert!(text.len() <= MAX_LOG + 100, "{}", text.len());
        let kept = (MAX_LOG / 1001) * 1001;
        assert!(
            text.ends_with(&format!(
                "\n[vmbuild: output truncated after {kept} bytes]\n"
            )),
            "{}",
            &text[text.len() - 80..]
        );
        let mut short = CappedText::new(MAX_LOG);
        short.push_line("fine");
        assert_eq!(short.finish(), ("fine\n".to_string(), false));
    }

    #[test]
    fn a_flooded_console_file_stops_at_the_limit() {
        let mut console = CappedWriter::new(Vec::new(), 100);
        for _ in 0..1000 {
            console.write_line("0123456789").unwrap();
        }
        assert!(console.truncated());
        let text = String::from_utf8(console.out).unwrap();
        assert_eq!(text.lines().count(), 10);
        assert!(text.ends_with("[vmbuild: output truncated after 99 bytes]\n"));
    }

    #[test]
    fn only_the_tail_of_a_long_stderr_is_kept() {
        let mut input = vec![b'a'; 1 << 20];
        input.extend_from_slice(b"the end");
        let tail = read_tail(&input[..]);
        assert_eq!(tail.len(), MAX_STDERR);
        assert!(tail.ends_with("the end"));
    }
}
