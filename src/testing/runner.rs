//! Runs the tests of one test recipe: builds the VM's initramfs (rootfs + bundles + agent),
//! boots `vms` VMs that pull tests from one shared queue (slowest first, from the last
//! recorded durations), supervises each VM (boot deadline, per-test deadline with a grace
//! period, kernel panic/BUG/Oops on the console), replaces a VM that died and carries on
//! with the rest of the queue. Infrastructure failures (qemu missing or dying, a guest
//! that never boots) are errors, never results.

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::agent::{AGENT, AGENT_PATH};
use super::protocol::{self, End, Message};
use super::{RunResults, Status, TestResult};
use crate::format::bundle::{TestMeta, BUNDLE_CPIO, TESTS_JSON};
use crate::format::cpio::CpioWriter;
use crate::format::kconfig::read_config;
use crate::format::tap;
use crate::fsio::{io_err, IoError};
use crate::process::{GroupGuard, ProcessError};
use crate::recipe::{BackendKind, TestSpec};
use crate::store::Entry;
use crate::vm::{self, qemu::Qemu, Accel, Backend, Launch, Wiring};

/// Time a hung test gets past its own timeout before the host kills its VM.
const HOST_GRACE: Duration = Duration::from_secs(15);
/// How long the agent may stay silent between tests.
const AGENT_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// qemu missing, crashed, or a guest that never came up: exit code 4.
    #[error("{0}")]
    Infra(String),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Io(#[from] IoError),
    /// The recipe asks for something the test phase cannot do: exit code 2.
    #[error("{0}")]
    Unsupported(String),
}

/// The artifacts a test run uses, all published store entries.
pub struct Artifacts<'a> {
    pub kernel: &'a Entry,
    pub rootfs: &'a Entry,
    pub bundles: Vec<(&'a str, &'a Entry)>,
}

pub struct RunOptions<'a> {
    pub recipe: &'a str,
    pub key: &'a str,
    pub spec: &'a TestSpec,
    pub accel: Accel,
    /// Scratch folder, removed after the run.
    pub work: &'a Path,
    /// Where results, logs and console output go (the staged results entry).
    pub out: &'a Path,
    /// Durations from the last run, for slowest-first ordering.
    pub previous: Option<&'a RunResults>,
    /// Called as each test finishes.
    pub on_result: &'a (dyn Fn(&TestResult) + Sync),
    /// Receives verbose details (qemu command lines).
    pub detail: &'a (dyn Fn(&str) + Sync),
    /// Receives things the user must see now (how to attach to a kept-alive VM).
    pub notice: &'a (dyn Fn(&str) + Sync),
    /// Keep the VM of the first failed test running for the user (`--keep-alive`).
    pub keep_alive: bool,
}

/// One test waiting in the queue.
#[derive(Clone)]
struct Planned {
    name: String,
    guest_path: String,
    timeout: Duration,
}

pub fn run(opts: &RunOptions, artifacts: &Artifacts) -> Result<RunResults, TestError> {
    if opts.spec.vm.backend == BackendKind::Bhyve {
        return Err(TestError::Infra(
            "the bhyve backend needs a FreeBSD or illumos host; use backend = \"qemu\" here".into(),
        ));
    }
    let initrd_parts = initrd_parts(artifacts)?;
    let kernel_config = read_config(&artifacts.kernel.path.join("config")).ok();
    let kernel_release = artifacts
        .kernel
        .manifest
        .details
        .get("release")
        .and_then(|r| r.as_str())
        .unwrap_or("")
        .to_string();

    // Plan: skip what this kernel or VM cannot run; queue the rest, slowest first.
    let mut skipped = Vec::new();
    let mut queue = Vec::new();
    let mut order = Vec::new();
    for (bundle, entry) in &artifacts.bundles {
        let tests_json = entry.path.join(TESTS_JSON);
        let bytes = fs_err::read(&tests_json).map_err(io_err("read", &tests_json))?;
        let metas: Vec<TestMeta> = serde_json::from_slice(&bytes)
            .map_err(|e| io_err("parse", &tests_json)(std::io::Error::other(e)))?;
        for meta in metas {
            if order.contains(&meta.name) {
                return Err(TestError::Unsupported(format!(
                    "two bundles hold a test named `{}`; test names must be unique in a test recipe",
                    meta.name
                )));
            }
            order.push(meta.name.clone());
            if let Some(reason) =
                skip_reason(&meta, kernel_config.as_ref(), opts.spec.vm.disks.len())
            {
                skipped.push(TestResult {
                    name: meta.name.clone(),
                    status: Status::Skip,
                    duration: 0.0,
                    log: String::new(),
                    exit_code: None,
                    reason: Some(reason),
                    subtests: vec![],
                });
                continue;
            }
            let timeout = meta
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(opts.spec.timeout);
            queue.push(Planned {
                guest_path: format!("/vmbuild/bundles/{bundle}/{}", meta.name),
                name: meta.name,
                timeout,
            });
        }
    }
    let last: BTreeMap<&str, f64> = opts
        .previous
        .map(|p| {
            p.tests
                .iter()
                .map(|t| (t.name.as_str(), t.duration))
                .collect()
        })
        .unwrap_or_default();
    queue.sort_by(|a, b| {
        let (da, db) = (
            last.get(a.name.as_str()).copied().unwrap_or(f64::MAX),
            last.get(b.name.as_str()).copied().unwrap_or(f64::MAX),
        );
        db.total_cmp(&da)
    });
    for s in &skipped {
        (opts.on_result)(s);
    }

    let tests_dir = opts.out.join("tests");
    fs_err::create_dir_all(&tests_dir).map_err(io_err("create", &tests_dir))?;
    let mut results = skipped;
    if !queue.is_empty() {
        let initrd = opts.work.join("initrd.img");
        write_initrd(&initrd, &initrd_parts)?;
        let shared = Shared {
            queue: Mutex::new(queue.into()),
            results: Mutex::new(Vec::new()),
            infra: Mutex::new(None),
            held: std::sync::atomic::AtomicBool::new(false),
        };
        let vms = (opts.spec.vm.vms as usize)
            .min(shared.queue.lock().map(|q| q.len()).unwrap_or(1))
            .max(1);
        let socket_dir = tempfile::Builder::new()
            .prefix("vmbuild-")
            .tempdir()
            .map_err(io_err("create a temp folder in", &std::env::temp_dir()))?;
        std::thread::scope(|scope| {
            for worker in 0..vms {
                let shared = &shared;
                let initrd = &initrd;
                let socket_dir = socket_dir.path();
                let kernel = artifacts.kernel.path.join("bzImage");
                scope.spawn(move || {
                    let mut boots = 0;
                    while !shared.finished() {
                        let vm = VmRun {
                            opts,
                            worker,
                            boot: boots,
                            kernel: &kernel,
                            initrd,
                            socket_dir,
                            shared,
                        };
                        boots += 1;
                        if let Err(e) = vm.run() {
                            shared.fail(e);
                            break;
                        }
                    }
                });
            }
        });
        if let Some(e) = shared.infra.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        results.extend(
            shared
                .results
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
    results.sort_by_key(|r| order.iter().position(|n| *n == r.name));
    Ok(RunResults {
        recipe: opts.recipe.to_string(),
        key: opts.key.to_string(),
        accel: opts.accel.name().to_string(),
        kernel_release,
        tests: results,
    })
}

fn skip_reason(
    meta: &TestMeta,
    kernel_config: Option<&BTreeMap<String, String>>,
    disks: usize,
) -> Option<String> {
    if let Some(config) = kernel_config {
        for option in &meta.kconfig {
            let option = if option.starts_with("CONFIG_") {
                option.clone()
            } else {
                format!("CONFIG_{option}")
            };
            if !matches!(config.get(&option).map(String::as_str), Some("y" | "m")) {
                return Some(format!("kernel lacks {option}"));
            }
        }
    }
    if meta.disks as usize > disks {
        return Some(format!(
            "needs {} scratch disk(s), the VM has {disks}",
            meta.disks
        ));
    }
    None
}

/// The compressed cpio archives that make up the VM's initramfs, in order: the kernel
/// unpacks them one after the other, later files replacing earlier ones.
fn initrd_parts(artifacts: &Artifacts) -> Result<Vec<PathBuf>, TestError> {
    let rootfs = artifacts.rootfs.path.join("rootfs.cpio.gz");
    if !rootfs.is_file() {
        return Err(TestError::Unsupported(format!(
            "rootfs `{}` is not a cpio initramfs; the test phase boots format = \"cpio\" roots",
            artifacts.rootfs.manifest.name
        )));
    }
    let mut parts = vec![rootfs];
    parts.extend(
        artifacts
            .bundles
            .iter()
            .map(|(_, e)| e.path.join(BUNDLE_CPIO)),
    );
    Ok(parts)
}

/// Concatenates the parts and appends the agent's own archive.
fn write_initrd(path: &Path, parts: &[PathBuf]) -> Result<(), TestError> {
    let mut out = fs_err::File::create(path).map_err(io_err("create", path))?;
    for part in parts {
        let mut input = fs_err::File::open(part).map_err(io_err("read", part))?;
        std::io::copy(&mut input, &mut out).map_err(io_err("write", path))?;
    }
    let mut agent = CpioWriter::new(Vec::new());
    let write_agent = |agent: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        agent.dir("/vmbuild", 0o755)?;
        agent.file(AGENT_PATH, 0o755, AGENT.as_bytes())?;
        agent.char_device("/dev/console", 0o600, 5, 1)
    };
    write_agent(&mut agent).map_err(io_err("write", path))?;
    let bytes = agent.finish().map_err(io_err("write", path))?;
    out.write_all(&bytes).map_err(io_err("write", path))?;
    Ok(())
}

/// Boots the test's VM with its console on the user's terminal (`vmbuild shell`); the
/// agent starts a shell instead of running tests. Returns when the VM powers off.
pub fn shell(
    spec: &TestSpec,
    artifacts: &Artifacts,
    accel: Accel,
    work: &Path,
) -> Result<std::process::ExitStatus, TestError> {
    let initrd = work.join("initrd.img");
    write_initrd(&initrd, &initrd_parts(artifacts)?)?;
    let mut disks = Vec::new();
    for disk in &spec.vm.disks {
        let path = work.join(format!("disk-{}.img", disk.name));
        let file = fs_err::File::create(&path).map_err(io_err("create", &path))?;
        file.set_len(disk.size).map_err(io_err("size", &path))?;
        disks.push(path);
    }
    let launch = Launch {
        kernel: artifacts.kernel.path.join("bzImage"),
        initrd,
        cmdline: format!(
            "{} vmbuild.shell=1 {}",
            vm::base_cmdline(AGENT_PATH),
            spec.vm.cmdline
        )
        .trim()
        .to_string(),
        machine: spec.vm.machine.clone(),
        memory_mb: spec.vm.memory_mb,
        cpus: spec.vm.cpus,
        disks,
        wiring: Wiring::Interactive,
    };
    let mut cmd = Qemu { accel }.command(&launch);
    let mut child = crate::process::spawn(&mut cmd)?;
    Ok(child.wait().map_err(io_err("wait for", vm::qemu::QEMU))?)
}

struct Shared {
    queue: Mutex<VecDeque<Planned>>,
    results: Mutex<Vec<TestResult>>,
    infra: Mutex<Option<TestError>>,
    /// Whether a VM has been kept alive already (`--keep-alive` holds only the first).
    held: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn finished(&self) -> bool {
        self.infra.lock().map(|i| i.is_some()).unwrap_or(true)
            || self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    fn fail(&self, e: TestError) {
        if let Ok(mut slot) = self.infra.lock() {
            slot.get_or_insert(e);
        }
        // Stop the other VMs from taking more tests.
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }

    fn next(&self) -> Option<Planned> {
        self.queue.lock().ok()?.pop_front()
    }
}

enum Event {
    Console(String),
    ConsoleClosed,
    Agent(Message),
    AgentConnected(UnixStream),
    AgentClosed,
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
struct VmRun<'a> {
    opts: &'a RunOptions<'a>,
    worker: usize,
    boot: usize,
    kernel: &'a Path,
    initrd: &'a Path,
    socket_dir: &'a Path,
    shared: &'a Shared,
}

/// The test a VM is running now.
struct Running {
    test: Planned,
    started: Instant,
    output: String,
}

impl VmRun<'_> {
    fn console_name(&self) -> String {
        if self.worker == 0 && self.boot == 0 {
            "console.log".to_string()
        } else {
            format!("console.vm{}.boot{}.log", self.worker, self.boot)
        }
    }

    fn run(&self) -> Result<(), TestError> {
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
        let mut cmdline = vm::base_cmdline(AGENT_PATH);
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
            wiring: Wiring::Agent {
                socket: socket.clone(),
                shell: self.opts.keep_alive.then(|| shell_socket.clone()),
            },
        };
        let mut cmd = Qemu {
            accel: self.opts.accel,
        }
        .command(&launch);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        (self.opts.detail)(&format!("boot: {}", crate::process::describe(&cmd)));
        let mut vm = GroupGuard::spawn(&mut cmd, Duration::from_secs(2))?;

        let (tx, rx) = mpsc::channel::<Event>();
        let console_path = self.opts.out.join(self.console_name());
        let mut console =
            fs_err::File::create(&console_path).map_err(io_err("create", &console_path))?;
        let stdout = vm.child().stdout.take().expect("piped");
        let stderr = vm.child().stderr.take().expect("piped");
        let console_tx = tx.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            while reader
                .read_until(b'\n', &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                buf.clear();
                if console_tx.send(Event::Console(line)).is_err() {
                    break;
                }
            }
            let _ = console_tx.send(Event::ConsoleClosed);
        });
        let stderr_thread = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
            text
        });
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
            while reader
                .read_until(b'\n', &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                let line = String::from_utf8_lossy(&buf).into_owned();
                buf.clear();
                if let Some(msg) = protocol::parse(&line) {
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
                    let _ = writeln!(console, "{line}");
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
                                output: String::new(),
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
                        r.output.push_str(&line);
                        r.output.push('\n');
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
                let _ = writeln!(console, "{line}");
            }
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
                    console_path.display(),
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
            VmEnd::Deadline => {
                match running {
                    Some(r) => {
                        let reason = format!("the guest stopped answering; killed {HOST_GRACE:?} after the {:?} timeout", r.test.timeout);
                        self.finish(r, Status::Timeout, None, Some(reason))
                    }
                    None => Err(TestError::Infra(format!(
                        "the guest agent went silent for {AGENT_IDLE:?} between tests"
                    ))),
                }
            }
            VmEnd::Exited => match running {
                Some(r) => self.finish(
                    r,
                    Status::Crash,
                    None,
                    Some("the VM exited while the test ran".into()),
                ),
                None => Err(TestError::Infra(format!(
                    "qemu exited unexpectedly between tests\n  console: {}\n  qemu said: {}",
                    console_path.display(),
                    stderr_text.trim()
                ))),
            },
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
        fs_err::write(&path, &r.output).map_err(io_err("write", &path))?;
        let result = TestResult {
            subtests: tap::parse(&r.output),
            name: r.test.name,
            status,
            duration: r.started.elapsed().as_secs_f64(),
            log,
            exit_code,
            reason,
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

    #[test]
    fn tests_are_skipped_when_the_kernel_or_vm_lacks_what_they_need() {
        let meta = TestMeta {
            name: "t".into(),
            timeout_ms: None,
            kconfig: vec!["EXT4_FS".into()],
            disks: 0,
        };
        let config: BTreeMap<String, String> =
            [("CONFIG_EXT4_FS".to_string(), "m".to_string())].into();
        assert_eq!(skip_reason(&meta, Some(&config), 0), None);
        let empty = BTreeMap::new();
        assert_eq!(
            skip_reason(&meta, Some(&empty), 0).as_deref(),
            Some("kernel lacks CONFIG_EXT4_FS")
        );
        let disks = TestMeta {
            disks: 2,
            kconfig: vec![],
            ..meta
        };
        assert!(skip_reason(&disks, None, 1)
            .unwrap()
            .contains("needs 2 scratch disk(s)"));
    }
}
