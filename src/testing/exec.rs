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
use super::media::{self, scratch_disks};
use super::protocol::{self, Message, Stream};
use super::runner::{Artifacts, TestError};
use super::session::{is_kernel_crash, said, Event, Session};
use crate::fsio::io_err;
use crate::recipe::VmSpec;
use crate::vm::{self, Accel, RootLayer, Wiring};

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
    Exit(i32),
    OutputClosed,
    Exited,
    Deadline,
    KernelCrash(String),
}

/// Boots the VM, runs `argv` in it, and ends the VM as soon as the command exits.
pub fn exec(e: Exec) -> Result<Outcome, TestError> {
    let backend = vm::backend(&e.vm.backend, e.accel).map_err(TestError::Infra)?;
    let media = media::prepare(e.artifacts, e.vm, 1, e.work)?;
    let socket = e.work.join("agent.sock");
    let launch = media.launch(
        e.artifacts,
        e.vm,
        agent::cmdline(media.init, &e.vm.cmdline),
        scratch_disks(&e.vm.disks, e.work, "run")?,
        Wiring::Agent {
            socket: socket.clone(),
            shell: None,
        },
        RootLayer::Throwaway,
    );
    let session = Session::start(backend.as_ref(), &launch, &socket, e.detail)?;
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
            Ok(Event::AgentConnected(stream)) => {
                agent = Some(stream);
                continue;
            }
            Ok(Event::AgentClosed) => continue,
            Ok(Event::AgentLine { line, .. }) => line,
        };
        match protocol::parse(&line) {
            Some(Message::Ready { .. }) => {
                ready = true;
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
    match end {
        End::Exit(code) => Ok(Outcome::Exited(code)),
        End::OutputClosed => Ok(Outcome::OutputClosed),
        _ if !ready => {
            if let Some(refused) = media::stage1_failure(e.console, &shown.to_string()) {
                return Err(refused);
            }
            let what = match &end {
                End::Deadline => format!("the guest did not boot within {:?}", e.vm.boot_timeout),
                End::KernelCrash(line) => format!("the kernel crashed while booting: {line}"),
                _ => format!("{} exited before the guest agent started", backend.name()),
            };
            Err(TestError::Infra(format!(
                "VM failed: {what}\n  console: {shown}{}",
                said(backend.name(), &stderr)
            )))
        }
        End::KernelCrash(line) => Err(TestError::Infra(format!(
            "the kernel crashed while the command ran: {line}\n  console: {shown}"
        ))),
        _ => Err(TestError::Infra(format!(
            "the VM stopped before the command exited (did the guest power off?)\n  console: {shown}{}",
            said(backend.name(), &stderr)
        ))),
    }
}
