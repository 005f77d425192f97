//! `vmbuild shell`'s VM: a test's artifacts booted with the console on the user's
//! terminal and the agent starting a shell instead of asking for tests.
//!
//! The console passes through vmbuild: the backend's stdout is a pipe vmbuild copies on
//! as it comes, while its stdin stays the terminal (so the backend still sets the
//! terminal's mode, and its escape keys work). That is how a guest that halts ends the
//! session: `halt -f`, or `poweroff -f` on a machine without ACPI (a tinyconfig kernel),
//! stops the guest's CPUs but leaves the VM process running forever; the kernel's last
//! console line says so, and vmbuild then stops the VM.

use std::io::Read;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::media::{self, scratch_disks};
use super::runner::{Artifacts, TestError};
use crate::fsio::io_err;
use crate::recipe::VmSpec;
use crate::vm::{self, Accel, RootLayer, Wiring};

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

/// Boots the VM with its console on the terminal, handing what it prints to `console`,
/// and returns when the VM exits or the guest halts.
pub fn shell(
    spec: &VmSpec,
    artifacts: &Artifacts,
    accel: Accel,
    work: &Path,
    console: &(dyn Fn(&[u8]) + Sync),
) -> Result<ShellEnd, TestError> {
    let backend = vm::backend(&spec.backend, accel).map_err(TestError::Infra)?;
    let media = media::prepare(artifacts, spec, 1, work)?;
    let launch = media.launch(
        artifacts,
        spec,
        format!(
            "{} vmbuild.shell=1 {}",
            vm::base_cmdline(media.init),
            spec.cmdline
        )
        .trim()
        .to_string(),
        scratch_disks(&spec.disks, work, "shell")?,
        Wiring::Interactive,
        RootLayer::Throwaway,
    );
    let mut cmd = backend.command(&launch)?;
    cmd.stdout(Stdio::piped());
    // Not in a process group of its own: the VM reads the terminal, so it must stay in
    // the terminal's foreground group.
    let mut child = crate::process::spawn(&mut cmd)?;
    let mut stdout = child.stdout.take().expect("piped");
    let (halted_tx, halted_rx) = mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut watch = HaltWatch::default();
            let mut buf = [0u8; 4096];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        console(&buf[..n]);
                        if watch.feed(&buf[..n]) {
                            let _ = halted_tx.send(());
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
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
        Ok(ShellEnd { status, halted })
    })
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
