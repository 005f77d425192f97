//! One running VM with the guest agent, and the threads that read it: the kernel console
//! (the backend's stdout), the backend's own stderr (its tail, for error messages) and the
//! agent's channel (a unix socket the VM connects to), all delivered as events on one
//! bounded queue. The test supervisor and `exec` (`vmbuild run`) drive it; it knows
//! nothing of tests or commands.

use std::io::BufReader;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::Duration;

use super::capture::{self, CappedWriter, MAX_LINE};
use super::runner::TestError;
use crate::fsio::io_err;
use crate::process::GroupGuard;
use crate::vm::{Backend, Launch};

/// Lines read ahead of the consumer at most (each at most `MAX_LINE` bytes): a reader that
/// gets ahead waits, so a flood stays in the pipes instead of the host's memory.
const EVENTS_IN_FLIGHT: usize = 256;

pub(crate) enum Event {
    /// One line of the kernel console, without its line end.
    Console(String),
    ConsoleClosed,
    /// The VM connected to the agent's socket: the host writes its answers here.
    AgentConnected(UnixStream),
    /// One line from the agent (without `\n`), and how many bytes of it were dropped
    /// because it was longer than `MAX_LINE`.
    AgentLine {
        line: Vec<u8>,
        dropped: usize,
    },
    AgentClosed,
}

pub(crate) struct Session {
    pub vm: GroupGuard,
    /// The backend's name, for messages ("qemu said: ...").
    pub backend: &'static str,
    pub events: Receiver<Event>,
    stderr: Option<JoinHandle<String>>,
    socket: PathBuf,
}

impl Session {
    /// Boots `launch` (whose wiring puts the agent on `socket`) and starts the readers.
    pub(crate) fn start(
        backend: &dyn Backend,
        launch: &Launch,
        socket: &Path,
        detail: &dyn Fn(&str),
    ) -> Result<Session, TestError> {
        let listener = UnixListener::bind(socket).map_err(io_err("listen on", socket))?;
        let mut cmd = backend.command(launch)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        detail(&format!("boot: {}", crate::process::describe(&cmd)));
        let mut vm = GroupGuard::spawn(&mut cmd, Duration::from_secs(2))?;

        let (tx, rx) = mpsc::sync_channel::<Event>(EVENTS_IN_FLIGHT);
        let stdout = vm.child().stdout.take().expect("piped");
        let stderr = vm.child().stderr.take().expect("piped");
        let console_tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while let Ok(Some(_)) = capture::read_line(&mut reader, &mut buf, MAX_LINE) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches('\r')
                    .to_string();
                if console_tx.send(Event::Console(line)).is_err() {
                    break;
                }
            }
            let _ = console_tx.send(Event::ConsoleClosed);
        });
        let stderr = std::thread::spawn(move || capture::read_tail(stderr));
        let agent_tx = tx;
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            if let Ok(writer) = stream.try_clone() {
                let _ = agent_tx.send(Event::AgentConnected(writer));
            }
            let mut reader = BufReader::new(stream);
            let mut buf = Vec::new();
            while let Ok(Some(dropped)) = capture::read_line(&mut reader, &mut buf, MAX_LINE) {
                let line = std::mem::take(&mut buf);
                if agent_tx.send(Event::AgentLine { line, dropped }).is_err() {
                    return;
                }
            }
            let _ = agent_tx.send(Event::AgentClosed);
        });
        Ok(Session {
            vm,
            backend: backend.name(),
            events: rx,
            stderr: Some(stderr),
            socket: socket.to_path_buf(),
        })
    }

    /// Ends the VM: waits up to `exit_within` for it to exit by itself (a guest on its
    /// way out), else stops it. Console lines still queued go to `console`. Returns the
    /// tail of the backend's stderr.
    pub(crate) fn end<W: std::io::Write>(
        mut self,
        exit_within: Option<Duration>,
        console: &mut CappedWriter<W>,
    ) -> String {
        if exit_within.is_none_or(|t| self.vm.wait_timeout(t).is_none()) {
            self.vm.terminate();
        }
        // Wakes the agent thread if the VM never connected; harmless if it did.
        let _ = UnixStream::connect(&self.socket);
        for event in self.events.try_iter() {
            if let Event::Console(line) = event {
                let _ = console.write_line(&line);
            }
        }
        let _ = fs_err::remove_file(&self.socket);
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// Lines on the kernel console that mean the kernel is dead or dying.
pub(crate) fn is_kernel_crash(line: &str) -> bool {
    // The kernel's own words start its message, after the `[    1.234567] ` stamp (and
    // an optional `CPU: 0 PID: 1 ...`-less prefix): `BUG:` inside `DEBUG:` is not one.
    let message = match line.trim_start().strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(rest, |(_, m)| m),
        None => line,
    };
    [
        "Kernel panic - not syncing",
        "general protection fault",
        "kernel BUG at",
    ]
    .iter()
    .any(|p| message.contains(p))
        || ["BUG:", "Oops:"].iter().any(|p| message.starts_with(p))
}

/// The last 10 lines of what `backend` wrote on stderr, indented for an error message
/// ("" when it wrote nothing).
pub(crate) fn said(backend: &str, stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let tail = &lines[lines.len().saturating_sub(10)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  {backend} said:\n    {}", tail.join("\n    "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_lines_are_recognised() {
        assert!(is_kernel_crash(
            "[    3.1] Kernel panic - not syncing: sysrq triggered crash"
        ));
        assert!(is_kernel_crash(
            "[    2.0] BUG: kernel NULL pointer dereference, address: 0"
        ));
        assert!(!is_kernel_crash("[    0.0] Linux version 6.1.0"));
        assert!(is_kernel_crash(
            "[   12.5] Oops: 0002 [#1] PREEMPT SMP NOPTI"
        ));
        assert!(is_kernel_crash("BUG: unable to handle page fault"));
        // A test's own words on the console are not the kernel's.
        assert!(!is_kernel_crash("[    2.5] myapp DEBUG: starting phase 2"));
        assert!(!is_kernel_crash("[    2.5] myapp: no BUG: here"));
    }
}
