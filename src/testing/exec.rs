//! One command in a VM instead of tests (`vmbuild run`): boots the artifacts with the
//! guest agent, answers its first `NEXT` with `EXEC` and the command's arguments, hands
//! the command's output on as the agent relays it, and returns the command's exit code.
//! The kernel console goes to a file. Nothing is stored: a command's outcome is not a
//! build output.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::Instant;

use super::agent;
use super::capture::{CappedWriter, MAX_LOG};
use super::media::{self, scratch_disks, BootMedia};
use super::protocol::{self, Message, Stream};
use super::runner::{Artifacts, TestError};
use super::session::{is_kernel_crash, said, Event, Session};
use super::warm::{Start, Warm};
use crate::format::guest;
use crate::fsio::io_err;
use crate::recipe::VmSpec;
use crate::store::Store;
use crate::vm::{self, Accel, Backend, Wiring};

pub struct Exec<'a> {
    pub vm: &'a VmSpec,
    pub artifacts: &'a Artifacts<'a>,
    pub accel: Accel,
    /// The command and its arguments, passed to the guest byte for byte.
    pub argv: &'a [OsString],
    /// Scratch folder (initramfs, disks, the agent's socket), removed by the caller; its
    /// path must be short enough for a unix socket.
    pub work: &'a Path,
    /// Where the kernel console goes; replaced at the end of the run.
    pub console: &'a Path,
    /// Receives the command's output as it comes, byte for byte, stream by stream. An
    /// error (the reader went away) ends the VM.
    pub on_output: &'a mut dyn FnMut(Stream, &[u8]) -> std::io::Result<()>,
    /// Receives each kernel console line as it comes.
    pub on_console: &'a dyn Fn(&str),
    /// Receives verbose details (the VM's command line).
    pub detail: &'a dyn Fn(&str),
    /// The store holding the environment's snapshot the VM starts from (made now if
    /// missing, as `env-<name>`); `None` boots in full.
    pub store: Option<&'a Store>,
    pub name: &'a str,
    /// Receives what the user should know now (a snapshot being made or replaced).
    pub notice: &'a (dyn Fn(&str) + Sync),
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with this code.
    Exited(i32),
    /// Its output could not be handed on (the reader went away): the VM was ended.
    OutputClosed,
}

enum End {
    /// The backend could not run the VM again after saving it.
    Unresumed(String),
    Exit(i32),
    OutputClosed,
    Exited,
    Deadline,
    KernelCrash(String),
}

/// Boots the VM (or starts it from the environment's snapshot), runs `argv` in it, and
/// ends the VM as soon as the command exits.
pub fn exec(mut e: Exec) -> Result<Outcome, TestError> {
    let backend = vm::backend(e.vm, e.accel).map_err(TestError::Infra)?;
    let media = media::prepare(e.artifacts, e.vm, backend.as_ref(), 1, e.work)?;
    let warm = Warm::open_for(
        e.store,
        backend.as_ref(),
        e.vm,
        e.artifacts,
        e.accel,
        e.name,
        e.notice,
    );
    loop {
        if let Some(outcome) = exec_once(&mut e, backend.as_ref(), &media, warm.as_ref())? {
            return Ok(outcome);
        }
    }
}

/// One VM for `exec`; `None` when it could not start from the snapshot (the next one
/// boots in full).
fn exec_once(
    e: &mut Exec,
    backend: &dyn Backend,
    media: &BootMedia,
    warm: Option<&Warm>,
) -> Result<Option<Outcome>, TestError> {
    let socket = e.work.join("agent.sock");
    let control = e.work.join("control.sock");
    let start = match warm {
        Some(warm) => warm.start(e.work, "run", media.root_image()),
        None => Start::Cold,
    };
    let mut launch = media.launch(
        e.artifacts,
        e.vm,
        guest::cmdline(backend.guest_ports(), media.init, &e.vm.cmdline),
        scratch_disks(&e.vm.disks, e.work, "run")?,
        Wiring::Agent {
            socket: socket.clone(),
            shell: None,
        },
    );
    start.configure(&mut launch, &control);
    let session = Session::start(backend, &launch, &socket, e.detail)?;
    // Written under a name of our own, then renamed: runs of one recipe at the same
    // time each leave a whole console. (Console lines wait in the session's queue.)
    let partial = e
        .console
        .with_extension(format!("{}.partial", std::process::id()));
    if let Some(dir) = e.console.parent() {
        fs_err::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let file = fs_err::File::create(&partial).map_err(io_err("create", &partial))?;
    let mut console = CappedWriter::new(file, MAX_LOG);

    let boot_deadline = Instant::now() + e.vm.boot_timeout;
    let mut agent: Option<UnixStream> = None;
    let mut ready = false;
    let mut sent = false;
    // The agent waits for WAKE: after READY, or at once when restored.
    let mut wake_due = false;
    let mut saving = None;
    match (start, warm) {
        (Start::Restore(restore), Some(warm)) => {
            restore.write_boot_console(&mut console);
            if let Err(not_loaded) = warm.resume_restored(&restore, &control, e.vm.boot_timeout) {
                let stderr = session.end(None, &mut console);
                drop(console);
                let _ = fs_err::remove_file(&partial);
                let why = not_loaded.why(backend.name(), &stderr);
                warm.restore_failed(&restore, &why);
                return Ok(None);
            }
            ready = true;
            wake_due = true;
        }
        (Start::Save(s), _) => saving = Some(s),
        _ => {}
    }
    let end = loop {
        // Once the agent is up there is no deadline: the command runs as long as it
        // does (Ctrl-C ends it).
        let event = if ready {
            session
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let wait = boot_deadline.saturating_duration_since(Instant::now());
            session.events.recv_timeout(wait)
        };
        let line = match event {
            Err(RecvTimeoutError::Timeout) => break End::Deadline,
            Err(RecvTimeoutError::Disconnected) => break End::Exited,
            Ok(Event::Console(line)) => {
                let _ = console.write_line(&line);
                (e.on_console)(&line);
                if is_kernel_crash(&line) {
                    break End::KernelCrash(line);
                }
                continue;
            }
            Ok(Event::ConsoleClosed) => break End::Exited,
            Ok(Event::AgentConnected(mut stream)) => {
                if std::mem::take(&mut wake_due)
                    && stream.write_all(agent::wake().as_bytes()).is_err()
                {
                    break End::Exited;
                }
                agent = Some(stream);
                continue;
            }
            Ok(Event::AgentClosed) => continue,
            Ok(Event::AgentLine { line, .. }) => line,
        };
        match protocol::parse(&line) {
            Some(Message::Ready { release }) => {
                ready = true;
                if let (Some(saving), Some(warm)) = (saving.take(), warm) {
                    if let Err(why) = warm.save_and_resume(saving, &control, &partial, &release) {
                        break End::Unresumed(why);
                    }
                }
                let woke = agent
                    .as_mut()
                    .is_some_and(|s| s.write_all(agent::wake().as_bytes()).is_ok());
                if !woke {
                    break End::Exited;
                }
            }
            Some(Message::Next) => {
                // One command per boot: a second NEXT (the agent could not read it) stops.
                let reply = if std::mem::replace(&mut sent, true) {
                    protocol::STOP.to_string()
                } else {
                    protocol::exec_command(e.argv)
                };
                let written = agent
                    .as_mut()
                    .is_some_and(|s| s.write_all(reply.as_bytes()).is_ok());
                if !written {
                    break End::Exited;
                }
            }
            Some(Message::Out {
                stream,
                mut text,
                newline,
            }) => {
                if newline {
                    text.push(b'\n');
                }
                if (e.on_output)(stream, &text).is_err() {
                    break End::OutputClosed;
                }
            }
            // All its output came before; nothing in the VM is kept, so it goes now.
            Some(Message::Exit { code }) => break End::Exit(code),
            Some(Message::Done) => break End::Exited,
            _ => {}
        }
    };
    let stderr = session.end(None, &mut console);
    drop(console);
    fs_err::rename(&partial, e.console).map_err(io_err("rename", &partial))?;
    let shown = e.console.display();
    let outcome = match end {
        End::Exit(code) => Outcome::Exited(code),
        End::OutputClosed => Outcome::OutputClosed,
        End::Unresumed(why) => {
            return Err(TestError::Infra(format!(
                "{} did not resume the VM after saving it: {why}\n  console: {shown}{}",
                backend.name(),
                said(backend.name(), &stderr)
            )))
        }
        _ if !ready => {
            if let Some(refused) = media::stage1_failure(e.console, &shown.to_string()) {
                return Err(refused);
            }
            let what = match &end {
                End::Deadline => format!("the guest did not boot within {:?}", e.vm.boot_timeout),
                End::KernelCrash(line) => format!("the kernel crashed while booting: {line}"),
                _ => format!("{} exited before the guest agent started", backend.name()),
            };
            return Err(TestError::Infra(format!(
                "VM failed: {what}\n  console: {shown}{}",
                said(backend.name(), &stderr)
            )));
        }
        End::KernelCrash(line) => {
            return Err(TestError::Infra(format!(
                "the kernel crashed while the command ran: {line}\n  console: {shown}"
            )))
        }
        _ => {
            return Err(TestError::Infra(format!(
                "the VM stopped before the command exited (did the guest power off?)\n  console: {shown}{}",
                said(backend.name(), &stderr)
            )))
        }
    };
    Ok(Some(outcome))
}
