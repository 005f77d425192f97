//! The VM supervisor: one boot of one VM serving tests from the shared queue. It watches
//! the boot deadline, each test's deadline (plus a grace period: a hung guest), the agent's
//! silence between tests, and the kernel console for panics, BUG and Oops; it writes the
//! console and each test's log into the results entry.

use std::io::{BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use super::agent::AGENT_PATH;
use super::capture::{self, CappedText, CappedWriter, MAX_LINE, MAX_LOG};
use super::protocol::{self, End, Message};
use super::queue::{Planned, Shared};
use super::runner::{vm_net, RunOptions, TestError};
use super::{Status, TestResult};
use crate::format::tap;
use crate::fsio::io_err;
use crate::process::GroupGuard;
use crate::vm::{self, qemu::Qemu, Backend, Launch, Wiring};

/// Time a hung test gets past its own timeout before the host kills its VM.
const HOST_GRACE: Duration = Duration::from_secs(15);
/// How long the agent may stay silent between tests.
const AGENT_IDLE: Duration = Duration::from_secs(60);

/// Lines read ahead of the supervisor at most (each at most `MAX_LINE` bytes).
const EVENTS_IN_FLIGHT: usize = 256;

enum Event {
    Console(String),
    ConsoleClosed,
    Agent(Message),
    AgentConnected(UnixStream),
    AgentClosed,
    /// The next `LOG` line of `test` was longer than `MAX_LINE`: its end was dropped.
    LineCut {
        test: String,
    },
}

/// Lines on the kernel console that mean the kernel is dead or dying.
fn is_kernel_crash(line: &str) -> bool {
    [
        "Kernel panic - not syncing",
        "BUG:",
        "Oops:",
        "general protection fault",
        "kernel BUG at",
    ]
    .iter()
    .any(|p| line.contains(p))
}

/// One boot of one VM, serving tests from the shared queue until the agent stops,
/// the VM dies, or a deadline passes.
pub(crate) struct VmRun<'a> {
    pub opts: &'a RunOptions<'a>,
    pub worker: usize,
    pub boot: usize,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub socket_dir: &'a Path,
    pub shared: &'a Shared,
}

/// The test a VM is running now.
struct Running {
    test: Planned,
    started: Instant,
    output: CappedText,
}

impl VmRun<'_> {
    fn console_name(&self) -> String {
        if self.worker == 0 && self.boot == 0 {
            "console.log".to_string()
        } else {
            format!("console.vm{}.boot{}.log", self.worker, self.boot)
        }
    }

    pub(crate) fn run(&self) -> Result<(), TestError> {
        let spec = self.opts.spec;
        let socket = self
            .socket_dir
            .join(format!("agent{}-{}.sock", self.worker, self.boot));
        let listener = UnixListener::bind(&socket).map_err(io_err("listen on", &socket))?;
        let shell_socket = self
            .socket_dir
            .join(format!("shell{}-{}.sock", self.worker, self.boot));
        let mut disks = Vec::new();
        for disk in &spec.vm.disks {
            let path = self
                .opts
                .work
                .join(format!("disk-vm{}-{}.img", self.worker, disk.name));
            let file = fs_err::File::create(&path).map_err(io_err("create", &path))?;
            file.set_len(disk.size).map_err(io_err("size", &path))?;
            disks.push(path);
        }
        // The agent relays at most this much of a test's output (docs/guest-protocol.md);
        // the host enforces the same limits whatever the guest does.
        let mut cmdline = format!(
            "{} vmbuild.maxlog={MAX_LOG} vmbuild.maxline={MAX_LINE}",
            vm::base_cmdline(AGENT_PATH)
        );
        if !spec.vm.cmdline.is_empty() {
            cmdline = format!("{cmdline} {}", spec.vm.cmdline);
        }
        let launch = Launch {
            kernel: self.kernel.to_path_buf(),
            initrd: self.initrd.to_path_buf(),
            cmdline,
            machine: spec.vm.machine.clone(),
            memory_mb: spec.vm.memory_mb,
            cpus: spec.vm.cpus,
            disks,
            net: vm_net(spec.vm.net),
            wiring: Wiring::Agent {
                socket: socket.clone(),
                shell: self.opts.keep_alive.then(|| shell_socket.clone()),
            },
        };
        let mut cmd = Qemu {
            accel: self.opts.accel,
        }
        .command(&launch)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (self.opts.detail)(&format!("boot: {}", crate::process::describe(&cmd)));
        let mut vm = GroupGuard::spawn(&mut cmd, Duration::from_secs(2))?;

        // Bounded: a reader that gets ahead of us waits, so a flood stays in the pipes.
        let (tx, rx) = mpsc::sync_channel::<Event>(EVENTS_IN_FLIGHT);
        let console_path = self.opts.out.join(self.console_name());
        let console_file =
            fs_err::File::create(&console_path).map_err(io_err("create", &console_path))?;
        let mut console = CappedWriter::new(console_file, MAX_LOG);
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
        let stderr_thread = std::thread::spawn(move || capture::read_tail(stderr));
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
                let line = String::from_utf8_lossy(&buf);
                if let Some(msg) = protocol::parse(&line) {
                    if dropped > 0 {
                        if let Message::Log { test, .. } = &msg {
                            let cut = Event::LineCut { test: test.clone() };
                            if agent_tx.send(cut).is_err() {
                                return;
                            }
                        }
                    }
                    if agent_tx.send(Event::Agent(msg)).is_err() {
                        return;
                    }
                }
            }
            let _ = agent_tx.send(Event::AgentClosed);
        });

        let boot_started = Instant::now();
        let mut agent: Option<UnixStream> = None;
        let mut ready = false;
        let mut running: Option<Running> = None;
        let mut last_event = Instant::now();
        let mut failed_here = false;
        let mut holding = false;
        let outcome = loop {
            let deadline = match &running {
                // Held for the user: no deadline; they end it (or Ctrl-C does).
                _ if holding => Instant::now() + Duration::from_secs(3600 * 24 * 365),
                _ if !ready => boot_started + spec.vm.boot_timeout,
                Some(r) => r.started + r.test.timeout + HOST_GRACE,
                None => last_event + AGENT_IDLE,
            };
            let event = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => break VmEnd::Deadline,
                Err(RecvTimeoutError::Disconnected) => break VmEnd::Exited,
            };
            last_event = Instant::now();
            match event {
                Event::Console(line) => {
                    let _ = console.write_line(&line);
                    if is_kernel_crash(&line) {
                        break VmEnd::KernelCrash(line);
                    }
                }
                Event::ConsoleClosed => break VmEnd::Exited,
                Event::AgentConnected(stream) => agent = Some(stream),
                Event::AgentClosed => {}
                Event::Agent(Message::Ready { .. }) => ready = true,
                Event::Agent(Message::Next) => {
                    let hold = self.opts.keep_alive
                        && failed_here
                        && !self
                            .shared
                            .held
                            .swap(true, std::sync::atomic::Ordering::SeqCst);
                    let next = if hold { None } else { self.shared.next() };
                    let reply = match next {
                        _ if hold => protocol::HOLD.to_string(),
                        Some(test) => {
                            let secs = test.timeout.as_secs_f64().ceil().max(1.0) as u64;
                            let line = protocol::run_command(&test.name, secs, &test.guest_path);
                            running = Some(Running {
                                test,
                                started: Instant::now(),
                                output: CappedText::new(MAX_LOG),
                            });
                            line
                        }
                        None => protocol::STOP.to_string(),
                    };
                    if let Some(stream) = agent.as_mut() {
                        if stream.write_all(reply.as_bytes()).is_err() {
                            break VmEnd::Exited;
                        }
                    }
                }
                Event::Agent(Message::Begin { .. }) => {
                    if let Some(r) = running.as_mut() {
                        r.started = Instant::now();
                    }
                }
                Event::Agent(Message::Log { test, line }) => {
                    if let Some(r) = running.as_mut().filter(|r| r.test.name == test) {
                        r.output.push_line(&line);
                    }
                }
                Event::LineCut { test } | Event::Agent(Message::Truncated { test, .. }) => {
                    if let Some(r) = running.as_mut().filter(|r| r.test.name == test) {
                        r.output.mark_truncated();
                    }
                }
                Event::Agent(Message::End { test, end }) => {
                    if let Some(r) = running.take_if(|r| r.test.name == test) {
                        let (status, exit_code, reason) = match end {
                            End::Exit(0) => (Status::Pass, Some(0), None),
                            End::Exit(77) => (
                                Status::Skip,
                                Some(77),
                                Some("the test exited 77 (skip)".to_string()),
                            ),
                            End::Exit(code) => (Status::Fail, Some(code), None),
                            End::Timeout => (
                                Status::Timeout,
                                None,
                                Some(format!("killed after {:?}", r.test.timeout)),
                            ),
                        };
                        failed_here |= status.is_failure();
                        self.finish(r, status, exit_code, reason)?;
                    }
                }
                Event::Agent(Message::Held { port }) => {
                    holding = true;
                    (self.opts.notice)(&format!(
                        "a test failed and --keep-alive holds its VM (qemu pid {}), with a shell on its {port}:\n  \
                         attach:  socat -,raw,echo=0 UNIX-CONNECT:{}\n  \
                         console: {}\n  \
                         end it:  `exit` in that shell, or Ctrl-C here",
                        vm.id(),
                        shell_socket.display(),
                        console_path.display()
                    ));
                }
                Event::Agent(Message::Done) => break VmEnd::Done,
            }
        };

        // Whatever happened, the VM goes now; a finished guest is already on its way out.
        if matches!(outcome, VmEnd::Done) && vm.wait_timeout(Duration::from_secs(10)).is_some() {
        } else {
            vm.terminate();
        }
        // Wake the agent thread if qemu never connected.
        if agent.is_none() {
            let _ = UnixStream::connect(&socket);
        }
        for event in rx.try_iter() {
            if let Event::Console(line) = event {
                let _ = console.write_line(&line);
            }
        }
        if console.truncated() {
            self.shared.console_truncated.store(true, Ordering::Relaxed);
        }
        let stderr_text = stderr_thread.join().unwrap_or_default();
        let _ = fs_err::remove_file(&socket);

        match outcome {
            VmEnd::Done => Ok(()),
            _ if !ready => {
                let what = match &outcome {
                    VmEnd::Deadline => {
                        format!("the guest did not boot within {:?}", spec.vm.boot_timeout)
                    }
                    VmEnd::KernelCrash(line) => format!("the kernel crashed while booting: {line}"),
                    _ => "qemu exited before the guest agent started".to_string(),
                };
                let tail: Vec<&str> = stderr_text
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(TestError::Infra(format!(
                    "VM failed: {what}\n  console: {}{}",
                    self.keep_console(&console_path),
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("\n  qemu said:\n    {}", tail.join("\n    "))
                    }
                )))
            }
            VmEnd::KernelCrash(line) => {
                if let Some(r) = running {
                    self.finish(
                        r,
                        Status::Crash,
                        None,
                        Some(format!("kernel crashed: {line}")),
                    )?;
                }
                Ok(())
            }
            VmEnd::Deadline => match running {
                Some(r) => {
                    let reason = format!(
                        "the guest stopped answering; killed {HOST_GRACE:?} after the {:?} timeout",
                        r.test.timeout
                    );
                    self.finish(r, Status::Timeout, None, Some(reason))
                }
                None => Err(TestError::Infra(format!(
                    "the guest agent went silent for {AGENT_IDLE:?} between tests\n  console: {}",
                    self.keep_console(&console_path)
                ))),
            },
            VmEnd::Exited => match running {
                Some(r) => self.finish(
                    r,
                    Status::Crash,
                    None,
                    Some("the VM exited while the test ran".into()),
                ),
                None => Err(TestError::Infra(format!(
                    "qemu exited unexpectedly between tests\n  console: {}\n  qemu said: {}",
                    self.keep_console(&console_path),
                    stderr_text.trim()
                ))),
            },
        }
    }

    /// Copies the console of a VM that failed out of the staged entry (removed with the
    /// failed run) to `<cache>/logs/`, and says where it is. One file per recipe, key and
    /// VM boot: the key's lock makes the name ours, and a rerun replaces it.
    fn keep_console(&self, console: &Path) -> String {
        let key = self.opts.key.get(..16).unwrap_or(self.opts.key);
        let kept = self.opts.logs.join(format!(
            "{}-{key}.{}",
            self.opts.recipe,
            self.console_name()
        ));
        let copied =
            fs_err::create_dir_all(self.opts.logs).and_then(|()| fs_err::copy(console, &kept));
        match copied {
            Ok(_) => kept.display().to_string(),
            Err(e) => format!("not kept ({e})"),
        }
    }

    fn finish(
        &self,
        r: Running,
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) -> Result<(), TestError> {
        let log = format!("tests/{}.log", r.test.name);
        let path = self.opts.out.join(&log);
        let (output, truncated) = r.output.finish();
        fs_err::write(&path, &output).map_err(io_err("write", &path))?;
        let result = TestResult {
            subtests: tap::parse(&output),
            name: r.test.name,
            status,
            duration: r.started.elapsed().as_secs_f64(),
            log,
            exit_code,
            reason,
            truncated,
        };
        (self.opts.on_result)(&result);
        if let Ok(mut results) = self.shared.results.lock() {
            results.push(result);
        }
        Ok(())
    }
}

enum VmEnd {
    Done,
    Exited,
    Deadline,
    KernelCrash(String),
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
    }
}
