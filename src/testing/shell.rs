//! `vmbuild shell`'s VM: a test's artifacts started (from the environment's snapshot, as
//! a test VM) with the console on the user's terminal, and the agent asked for a login
//! shell there instead of tests.
//!
//! The console passes through vmbuild: the backend's stdout is a pipe vmbuild copies on
//! as it comes, while its stdin stays the terminal (so the backend still sets the
//! terminal's mode, and its escape keys work). That is how a guest that halts ends the
//! session: `halt -f`, or `poweroff -f` on a machine without ACPI (a tinyconfig kernel),
//! stops the guest's CPUs but leaves the VM process running forever; the kernel's last
//! console line says so, and vmbuild then stops the VM.

use std::io::{BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use super::agent;
use super::capture::{self, MAX_LINE};
use super::media::{self, scratch_disks, BootMedia};
use super::protocol::{self, Message};
use super::runner::{Artifacts, TestError};
use super::warm::{Start, Warm};
use crate::format::guest;
use crate::fsio::io_err;
use crate::recipe::VmSpec;
use crate::store::Store;
use crate::vm::{self, Accel, Backend, Wiring};

/// How long a halted guest's VM gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How a shell session ended.
#[derive(Debug)]
pub struct ShellEnd {
    /// The VM's exit status, when it exited by itself.
    pub status: Option<ExitStatus>,
    /// The guest halted or powered off, and vmbuild stopped the VM.
    pub halted: bool,
}

/// What `vmbuild shell` boots, and where it reports.
pub struct Shell<'a> {
    pub vm: &'a VmSpec,
    pub artifacts: &'a Artifacts<'a>,
    pub accel: Accel,
    /// Scratch folder (initramfs, disks, sockets), removed by the caller.
    pub work: &'a Path,
    /// Receives what the guest prints on its console, as it comes.
    pub console: &'a (dyn Fn(&[u8]) + Sync),
    /// The store holding the environment's snapshot the VM starts from (made now if
    /// missing, as `env-<name>`); `None` boots in full.
    pub store: Option<&'a Store>,
    pub name: &'a str,
    /// Receives what the user should know now (a snapshot being made or replaced).
    pub notice: &'a (dyn Fn(&str) + Sync),
}

/// Starts the VM (from the environment's snapshot where there is one) with its console on
/// the terminal, asks the agent for a login shell there, and returns when the VM exits or
/// the guest halts.
pub fn shell(s: &Shell) -> Result<ShellEnd, TestError> {
    let backend = vm::backend(s.vm, s.accel).map_err(TestError::Infra)?;
    let media = media::prepare(s.artifacts, s.vm, backend.as_ref(), 1, s.work)?;
    let warm = Warm::open_for(
        s.store,
        backend.as_ref(),
        s.vm,
        s.artifacts,
        s.accel,
        s.name,
        s.notice,
    );
    loop {
        if let Some(end) = shell_once(s, backend.as_ref(), &media, warm.as_ref())? {
            return Ok(end);
        }
    }
}

/// One VM for `shell`; `None` when it could not start from the snapshot (the next one
/// boots in full).
fn shell_once(
    s: &Shell,
    backend: &dyn Backend,
    media: &BootMedia,
    warm: Option<&Warm>,
) -> Result<Option<ShellEnd>, TestError> {
    let socket = s.work.join("agent.sock");
    let control = s.work.join("control.sock");
    let console_log = s.work.join("console.log");
    let _ = fs_err::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(io_err("listen on", &socket))?;
    let start = match warm {
        Some(warm) => warm.start(s.work, "shell", media.root_image()),
        None => Start::Cold,
    };
    let mut launch = media.launch(
        s.artifacts,
        s.vm,
        guest::cmdline(backend.guest_ports(), media.init, &s.vm.cmdline),
        scratch_disks(&s.vm.disks, s.work, "shell")?,
        Wiring::Interactive {
            agent: socket.clone(),
        },
    );
    start.configure(&mut launch, &control);
    let mut cmd = backend.command(&launch)?;
    cmd.stdout(Stdio::piped());
    // Not in a process group of its own: the VM reads the terminal, so it must stay in
    // the terminal's foreground group.
    let mut child = crate::process::spawn(&mut cmd)?;
    let mut saving = None;
    match (start, warm) {
        (Start::Restore(restore), Some(warm)) => {
            if let Err(not_loaded) = warm.resume_restored(&restore, &control, s.vm.boot_timeout) {
                crate::process::stop(&mut child, STOP_GRACE);
                // qemu said why on the terminal already.
                warm.restore_failed(&restore, &not_loaded.why(backend.name(), ""));
                return Ok(None);
            }
        }
        (Start::Save(saving_it), _) => saving = Some(saving_it),
        _ => {}
    }
    let restored = launch.incoming.is_some();
    let mut stdout = child.stdout.take().expect("piped");
    let log = fs_err::File::create(&console_log).map_err(io_err("create", &console_log))?;
    let (halted_tx, halted_rx) = mpsc::channel::<()>();
    let vm_ended = AtomicBool::new(false);
    // Why the agent could not be served (the VM was not resumed after its save).
    let failed = std::sync::Mutex::new(None::<String>);
    std::thread::scope(|scope| {
        let halted_on_console = halted_tx.clone();
        scope.spawn(move || {
            let mut log = log;
            let mut watch = HaltWatch::default();
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        (s.console)(&buf[..n]);
                        let _ = log.write_all(&buf[..n]);
                        if watch.feed(&buf[..n]) {
                            let _ = halted_on_console.send(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        let vm_ended = &vm_ended;
        let failed = &failed;
        let console_log = &console_log;
        let control = &control;
        scope.spawn(move || {
            // The agent asks for work; its answer is a shell. A VM that cannot be run
            // again after its save ends the session like a halt.
            let asked = serve_agent(&listener, vm_ended, restored, |release| {
                match (saving.take(), warm) {
                    (Some(saving), Some(warm)) => {
                        warm.save_and_resume(saving, control, console_log, release)
                    }
                    _ => Ok(()),
                }
            });
            if let Err(why) = asked {
                *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                let _ = halted_tx.send(());
            }
        });
        // Either the guest says it halted, or the reader ends because the VM exited.
        let halted = halted_rx.recv().is_ok();
        let status = if halted {
            crate::process::stop(&mut child, STOP_GRACE);
            None
        } else {
            Some(
                child
                    .wait()
                    .map_err(io_err("wait for", Path::new(backend.name())))?,
            )
        };
        vm_ended.store(true, Ordering::SeqCst);
        // Wakes the agent's thread if the VM never connected; harmless if it did.
        let _ = UnixStream::connect(&socket);
        if let Some(why) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(TestError::Infra(format!(
                "the VM's guest agent could not be served: {why}"
            )));
        }
        Ok(Some(ShellEnd { status, halted }))
    })
}

/// The host side of the agent for a shell: waits for the VM to connect (until
/// `vm_ended`), wakes the agent (at once when `restored`, else after READY, when
/// `on_ready` runs first), and answers its first NEXT with SHELL and any other with STOP.
fn serve_agent(
    listener: &UnixListener,
    vm_ended: &AtomicBool,
    restored: bool,
    mut on_ready: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    // A VM that ended before it connected: `shell_once` connects to wake this.
    let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
    if vm_ended.load(Ordering::SeqCst) {
        return Ok(());
    }
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut send = |line: &str| writer.write_all(line.as_bytes()).map_err(|e| e.to_string());
    if restored {
        send(&agent::wake())?;
    }
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    let mut asked = false;
    while let Ok(Some(_)) = capture::read_line(&mut reader, &mut line, MAX_LINE) {
        match protocol::parse(&line) {
            Some(Message::Ready { release }) => {
                on_ready(&release)?;
                send(&agent::wake())?;
            }
            Some(Message::Next) => {
                send(if std::mem::replace(&mut asked, true) {
                    protocol::STOP
                } else {
                    protocol::SHELL
                })?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Watches console output for the kernel's last words before it stops the CPUs.
#[derive(Default)]
struct HaltWatch {
    line: Vec<u8>,
    /// The current line is too long to be one of the kernel's: ignored to its end.
    long: bool,
}

/// Longer lines are not the kernel's halt lines.
const HALT_LINE_MAX: usize = 256;

impl HaltWatch {
    /// Feeds console bytes; true when a line in them says the guest halted.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut halted = false;
        for &b in bytes {
            if b == b'\n' {
                halted |= !self.long && is_halt_line(&String::from_utf8_lossy(&self.line));
                self.line.clear();
                self.long = false;
            } else if self.line.len() < HALT_LINE_MAX {
                self.line.push(b);
            } else {
                self.long = true;
            }
        }
        halted
    }
}

/// The kernel's `reboot: System halted` (`halt -f`) or `reboot: Power down`
/// (`poweroff -f`), with or without a printk timestamp.
fn is_halt_line(line: &str) -> bool {
    let line = line.trim_end_matches('\r');
    let text = match line.strip_prefix('[').and_then(|l| l.split_once("] ")) {
        Some((_, text)) => text,
        None => line,
    };
    matches!(text, "reboot: System halted" | "reboot: Power down")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_lines_are_recognised_across_reads() {
        assert!(is_halt_line("[   12.345678] reboot: System halted\r"));
        assert!(is_halt_line("reboot: Power down"));
        assert!(!is_halt_line("[    1.0] reboot: Restarting system"));
        assert!(!is_halt_line("# echo reboot: System halted"));
        let mut watch = HaltWatch::default();
        assert!(!watch.feed(b"~ # halt -f\r\n[    9.1] reboot: Sys"));
        assert!(watch.feed(b"tem halted\r\n"));
        let mut watch = HaltWatch::default();
        let mut long = vec![b'x'; 1000];
        long.extend_from_slice(b"reboot: Power down\n");
        assert!(!watch.feed(&long));
        assert!(watch.feed(b"reboot: Power down\n"));
    }
}
