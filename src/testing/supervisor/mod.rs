//! The VM supervisor: one boot of one VM serving tests from the shared queue (only one
//! test when the VM has scratch disks the recipe does not share: each test gets fresh
//! ones, so each gets its own boot). It watches
//! the boot deadline, each test's deadline (plus a grace period: a hung guest), the agent's
//! silence between tests, and the kernel console for panics, BUG and Oops; it writes the
//! console and each test's log into the results entry.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

mod record;

use super::agent;
use super::capture::{CappedText, CappedWriter, MAX_LOG};
use super::media::{remove_disks, scratch_disks, stage1_failure, BootMedia};
use super::outcome::ended;
use super::protocol::{self, Message};
use super::queue::{Planned, Shared};
use super::runner::{Artifacts, RunOptions, TestError};
use super::session::{is_kernel_crash, said, Event, Session};
use super::warm::Start;
use super::Status;
use crate::fsio::io_err;
use crate::vm::Wiring;

/// Time a hung test gets past its own timeout before the host kills its VM.
const HOST_GRACE: Duration = Duration::from_secs(15);
/// Why a test whose END never came, while the agent went on, is a crash.
const LOST_END: &str = "the agent went on before the test's END arrived \
    (did the test write to the agent's serial port?)";
/// How long the agent may stay silent between tests.
const AGENT_IDLE: Duration = Duration::from_secs(60);
/// How long the agent may stay silent while a test runs (it says ALIVE every 2 s):
/// then the VM is taken for dead, replaced, and the test requeued.
const LIVENESS: Duration = Duration::from_secs(30);

/// One boot of one VM, serving tests from the shared queue until the agent stops,
/// the VM dies, or a deadline passes.
pub(crate) struct VmRun<'a> {
    pub opts: &'a RunOptions<'a>,
    pub artifacts: &'a Artifacts<'a>,
    pub worker: usize,
    pub boot: usize,
    /// 0 for the run's queue, N for its Nth round of retries.
    pub round: usize,
    pub media: &'a BootMedia,
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
    /// `console.log` for the run's first VM; `console[.retry<R>].vm<W>.boot<B>[.cold<N>].log`
    /// for the others: round R (of retries), worker W's Bth VM, and its Nth start in
    /// full after a restore failed.
    fn console_name(&self, cold_again: usize) -> String {
        let first = self.worker == 0 && self.boot == 0 && self.round == 0 && cold_again == 0;
        if first {
            return "console.log".to_string();
        }
        let mut name = "console".to_string();
        if self.round > 0 {
            name.push_str(&format!(".retry{}", self.round));
        }
        name.push_str(&format!(".vm{}.boot{}", self.worker, self.boot));
        if cold_again > 0 {
            name.push_str(&format!(".cold{cold_again}"));
        }
        name + ".log"
    }

    /// Starts the VM (restored from the environment's snapshot where there is one),
    /// serves tests until it ends, then removes its scratch disks. A VM that could not
    /// start from the snapshot starts again in full.
    pub(crate) fn run(&self) -> Result<(), TestError> {
        let spec = self.opts.spec;
        // Fresh disks for each test, or a fresh VM: one test per boot, taken from the
        // queue before the VM starts (so that no VM starts for nothing).
        let one_test = self.shared.one_test;
        for cold_again in 0.. {
            let reserved = match one_test {
                true => match self.shared.next() {
                    Some(test) => Some(test),
                    None => return Ok(()),
                },
                false => None,
            };
            let disks = scratch_disks(
                &spec.vm.disks,
                self.opts.work,
                &format!("vm{}", self.worker),
            )?;
            let result = self.serve(disks.clone(), one_test, reserved, cold_again);
            remove_disks(&disks);
            match result? {
                Served::Done => return Ok(()),
                Served::NotRestored(reserved) => {
                    if let Some(test) = reserved {
                        self.shared.requeue(test);
                    }
                }
            }
        }
        Ok(())
    }

    /// One VM: serves `reserved` only when `one_test`, else tests from the queue.
    fn serve(
        &self,
        disks: Vec<crate::vm::Disk>,
        one_test: bool,
        mut reserved: Option<Planned>,
        cold_again: usize,
    ) -> Result<Served, TestError> {
        let spec = self.opts.spec;
        let name = |what: &str, ext: &str| {
            self.socket_dir
                .join(format!("{what}{}-{}.{ext}", self.worker, self.boot))
        };
        let socket = name("agent", "sock");
        let shell_socket = name("shell", "sock");
        let control = name("control", "sock");
        let start = match self.opts.warm {
            Some(warm) => warm.start(
                self.opts.work,
                &format!("vm{}-{}", self.worker, self.boot),
                self.media.root_image(),
            ),
            None => Start::Cold,
        };
        let mut launch = self.media.launch(
            self.artifacts,
            &spec.vm,
            crate::format::guest::cmdline(
                self.opts.backend.guest_ports(),
                self.media.init,
                &spec.vm.cmdline,
            ),
            disks,
            Wiring::Agent {
                socket: socket.clone(),
                shell: self.opts.keep_alive.then(|| shell_socket.clone()),
            },
        );
        start.configure(&mut launch, &control);
        let console_path = self.opts.out.join(self.console_name(cold_again));
        let console_file =
            fs_err::File::create(&console_path).map_err(io_err("create", &console_path))?;
        let mut console = CappedWriter::new(console_file, MAX_LOG);
        let session = Session::start(self.opts.backend, &launch, &socket, self.opts.detail)?;

        let boot_started = Instant::now();
        let mut agent: Option<UnixStream> = None;
        let mut ready = false;
        // The agent waits for WAKE: after READY, or at once when restored.
        let mut wake_due = false;
        let mut saving = None;
        match (start, self.opts.warm) {
            (Start::Restore(restore), Some(warm)) => {
                restore.write_boot_console(&mut console);
                if let Err(not_loaded) =
                    warm.resume_restored(&restore, &control, spec.vm.boot_timeout)
                {
                    let stderr = session.end(None, &mut console);
                    let why = not_loaded.why(self.opts.backend.name(), &stderr);
                    warm.restore_failed(&restore, &why);
                    return Ok(Served::NotRestored(reserved));
                }
                (self.opts.detail)(&format!(
                    "vm{}: started from the snapshot in {:.2} s",
                    self.worker,
                    boot_started.elapsed().as_secs_f64()
                ));
                ready = true;
                wake_due = true;
            }
            (Start::Save(s), _) => saving = Some(s),
            _ => {}
        }
        let mut running: Option<Running> = None;
        let mut permit = None;
        let mut last_event = Instant::now();
        // When the agent last said anything (its heartbeat, while a test runs).
        let mut last_heard = Instant::now();
        let mut failed_here = false;
        let mut holding = false;
        let outcome = loop {
            let (deadline, silent) = match &running {
                // Held for the user: no deadline; they end it (or Ctrl-C does).
                _ if holding => (Instant::now() + Duration::from_secs(3600 * 24 * 365), false),
                _ if !ready => (boot_started + spec.vm.boot_timeout, false),
                Some(r) => {
                    let (test_end, heard) = (
                        r.started + r.test.timeout + HOST_GRACE,
                        last_heard + LIVENESS,
                    );
                    (test_end.min(heard), heard < test_end)
                }
                None => (last_event + AGENT_IDLE, false),
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            let event = match session.events.recv_timeout(wait) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) if silent => break VmEnd::Silent,
                Err(RecvTimeoutError::Timeout) => break VmEnd::Deadline,
                Err(RecvTimeoutError::Disconnected) => break VmEnd::Exited,
            };
            last_event = Instant::now();
            if matches!(event, Event::AgentLine { .. }) {
                last_heard = last_event;
            }
            let (msg, dropped) = match event {
                Event::Console(line) => {
                    let _ = console.write_line(&line);
                    if is_kernel_crash(&line) {
                        break VmEnd::KernelCrash(line);
                    }
                    continue;
                }
                Event::ConsoleClosed => break VmEnd::Exited,
                Event::AgentConnected(mut stream) => {
                    if std::mem::take(&mut wake_due)
                        && stream.write_all(agent::wake().as_bytes()).is_err()
                    {
                        break VmEnd::Exited;
                    }
                    agent = Some(stream);
                    continue;
                }
                Event::AgentClosed => continue,
                Event::AgentLine { line, dropped } => match protocol::parse(&line) {
                    Some(msg) => (msg, dropped),
                    None => continue,
                },
            };
            match msg {
                Message::Ready { release } => {
                    ready = true;
                    if let (Some(saving), Some(warm)) = (saving.take(), self.opts.warm) {
                        if let Err(why) =
                            warm.save_and_resume(saving, &control, &console_path, &release)
                        {
                            break VmEnd::Unresumed(why);
                        }
                        (self.opts.detail)(&format!(
                            "vm{}: booted in {:.2} s",
                            self.worker,
                            boot_started.elapsed().as_secs_f64()
                        ));
                    }
                    let woke = agent
                        .as_mut()
                        .is_some_and(|s| s.write_all(agent::wake().as_bytes()).is_ok());
                    if !woke {
                        break VmEnd::Exited;
                    }
                }
                Message::Next => {
                    if let Some(r) = running.take() {
                        self.finish(r, Status::Crash, None, Some(LOST_END.into()))?;
                        failed_here = true;
                    }
                    let hold = self.opts.keep_alive
                        && failed_here
                        && !self.shared.held.swap(true, Ordering::SeqCst);
                    let next = match (hold, one_test) {
                        (true, _) => None,
                        (false, true) => reserved.take(),
                        (false, false) => self.shared.next(),
                    };
                    let reply = match next {
                        _ if hold => protocol::HOLD.to_string(),
                        Some(test) => {
                            // Only so many VMs run a test at once (`vms`); the others,
                            // started ahead, wait here.
                            permit = Some(self.shared.run_permit());
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
                Message::Begin { .. } => {
                    if let Some(r) = running.as_mut() {
                        r.started = Instant::now();
                    }
                }
                Message::Alive => {}
                Message::Log { test, line } => {
                    if let Some(r) = running.as_mut().filter(|r| r.test.name == test) {
                        // A line longer than the host reads whole: its end was dropped.
                        if dropped > 0 {
                            r.output.mark_truncated();
                        }
                        r.output.push_line(&line);
                    }
                }
                Message::Truncated { test, .. } => {
                    if let Some(r) = running.as_mut().filter(|r| r.test.name == test) {
                        r.output.mark_truncated();
                    }
                }
                Message::End { test, end } => {
                    if let Some(r) = running.take_if(|r| r.test.name == test) {
                        let (status, exit_code, reason) = ended(&end, r.test.timeout);
                        failed_here |= status.is_failure();
                        self.finish(r, status, exit_code, reason)?;
                        permit = None;
                        // A VM of one test has nothing left to do (nothing in it is kept):
                        // it goes now, unless --keep-alive may want it.
                        if one_test && !(self.opts.keep_alive && failed_here) {
                            break VmEnd::Finished;
                        }
                    }
                }
                Message::Held { port } => {
                    holding = true;
                    (self.opts.notice)(&format!(
                        "a test failed and --keep-alive holds its VM ({} pid {}), with a shell on its {port}:\n  \
                         attach:  socat -,raw,echo=0 UNIX-CONNECT:{}\n  \
                         console: {}\n  \
                         end it:  `exit` in that shell, or Ctrl-C here",
                        session.backend,
                        session.vm.id(),
                        shell_socket.display(),
                        console_path.display()
                    ));
                }
                Message::Done => {
                    if let Some(r) = running.take() {
                        self.finish(r, Status::Crash, None, Some(LOST_END.into()))?;
                    }
                    break VmEnd::Done;
                }
                // Messages of `vmbuild run`, not of a test run.
                Message::Out { .. } | Message::Exit { .. } => {}
            }
        };

        // Whatever happened, the VM goes now; a finished guest is already on its way out.
        let backend = session.backend;
        drop(permit);
        let exit_within = matches!(outcome, VmEnd::Done).then_some(Duration::from_secs(10));
        let stderr_text = session.end(exit_within, &mut console);
        if console.truncated() {
            self.shared.console_truncated.store(true, Ordering::Relaxed);
        }

        let ended = match outcome {
            VmEnd::Done | VmEnd::Finished => Ok(()),
            VmEnd::Unresumed(why) => Err(TestError::Infra(format!(
                "{backend} did not resume the VM after saving it: {why}\n  console: {}{}",
                self.keep_console(&console_path),
                said(backend, &stderr_text)
            ))),
            _ if !ready => {
                let kept = self.keep_console(&console_path);
                if let Some(refused) = stage1_failure(&console_path, &kept) {
                    return Err(refused);
                }
                let what = match &outcome {
                    VmEnd::Deadline => {
                        format!("the guest did not boot within {:?}", spec.vm.boot_timeout)
                    }
                    VmEnd::KernelCrash(line) => format!("the kernel crashed while booting: {line}"),
                    _ => format!("{backend} exited before the guest agent started"),
                };
                Err(TestError::Infra(format!(
                    "VM failed: {what}\n  console: {kept}{}",
                    said(backend, &stderr_text)
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
            VmEnd::Exited | VmEnd::Silent => match running {
                Some(r) => {
                    let what = match outcome {
                        VmEnd::Silent => format!("went silent for {LIVENESS:?}"),
                        _ => "exited".to_string(),
                    };
                    self.replace_vm(r, &what)
                }
                None => Err(TestError::Infra(format!(
                    "{backend} exited unexpectedly between tests\n  console: {}{}",
                    self.keep_console(&console_path),
                    said(backend, &stderr_text)
                ))),
            },
        };
        ended.map(|()| Served::Done)
    }
}

/// How a VM's service ended.
enum Served {
    /// It served tests (or failed in a way the results or an error tell).
    Done,
    /// It could not start from the snapshot: start another (with this test, taken for
    /// it).
    NotRestored(Option<Planned>),
}

enum VmEnd {
    /// The backend could not run the VM again after saving it.
    Unresumed(String),
    /// The agent is done: the VM is on its way out.
    Done,
    /// The VM ran its one test: it is stopped.
    Finished,
    Exited,
    /// The agent's heartbeat stopped while a test ran.
    Silent,
    Deadline,
    KernelCrash(String),
}
