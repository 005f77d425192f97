//! Runs the tests of one test recipe: plans the queue (`queue`), prepares the VM's boot
//! media (`media`), boots `vms` VMs that pull tests from the one shared queue, each
//! supervised (`supervisor`); a VM that died is replaced and the rest of the queue carries
//! on. Infrastructure failures (qemu missing or dying, a guest that never boots) are
//! errors, never results.

use std::collections::BTreeMap;
use std::path::Path;

use super::cases::Cases;
use super::media;
use super::queue::{self, bundle_tests, Offer, Plan, Planned, Round, Shared};
use super::select::Selection;
use super::supervisor::VmRun;
use super::warm::Warm;
use super::{RunResults, TestResult};
use crate::format::bundle::TestMeta;
use crate::format::kconfig::read_config;
use crate::format::modules::ModulesError;
use crate::fsio::{io_err, IoError};
use crate::process::ProcessError;
use crate::recipe::TestSpec;
use crate::store::{Entry, StoreError};
use crate::vm::{self, Accel, Backend};

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// qemu missing, crashed, or a guest that never came up: exit code 4.
    #[error("{0}")]
    Infra(String),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The recipe asks for something the test phase cannot do: exit code 2.
    #[error("{0}")]
    Unsupported(String),
}

impl From<ModulesError> for TestError {
    fn from(e: ModulesError) -> TestError {
        match e {
            ModulesError::Compressed(why) => TestError::Unsupported(why),
            ModulesError::Io(e) => TestError::Io(e),
        }
    }
}

impl From<vm::Unsupported> for TestError {
    fn from(e: vm::Unsupported) -> TestError {
        TestError::Unsupported(e.0)
    }
}

/// The artifacts a test run uses, all published store entries.
pub struct Artifacts<'a> {
    pub kernel: &'a Entry,
    pub rootfs: &'a Entry,
    pub bundles: Vec<(&'a str, &'a Entry)>,
}

/// How a test run treats its tests: which run and how failures are retried.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub selection: Selection,
    /// Tries a failed test gets again, each in a fresh VM (`--retries`).
    pub retries: u32,
    /// A test that passed only when retried is a failure (`--flaky-fails`).
    pub flaky_fails: bool,
    /// VMs a test may take down (dying or going silent under it) before it is a crash;
    /// each time its VM is replaced and the test requeued (`--max-vm-restarts`).
    pub max_vm_restarts: u32,
    /// Start VMs whose memory together exceeds what the host has available
    /// (`--allow-overcommit`).
    pub allow_overcommit: bool,
}

pub struct RunOptions<'a> {
    pub recipe: &'a str,
    pub key: &'a str,
    pub spec: &'a TestSpec,
    /// What boots the VMs (the recipe's backend, on this host).
    pub backend: &'a dyn Backend,
    pub accel: Accel,
    /// Scratch folder, removed after the run.
    pub work: &'a Path,
    /// Where results, logs and console output go (the staged results entry).
    pub out: &'a Path,
    /// Where the console of a VM that failed is kept, since a failed run's staged entry
    /// is removed (`<cache>/logs`).
    pub logs: &'a Path,
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
    /// The environment's snapshot VMs start from (made by the first, if missing);
    /// `None`: every VM boots in full.
    pub(crate) warm: Option<&'a Warm<'a>>,
    /// Called once, before the first VM starts (not at all when every result is reused).
    pub booting: &'a (dyn Fn() + Sync),
    /// Which tests run and how failures are retried.
    pub policy: &'a Policy,
    /// Each test's own result entry (`None`: results are not stored per test).
    pub(crate) cases: Option<&'a Cases<'a>>,
    /// Run every test, even those with a stored passing result (`-f`).
    pub force: bool,
}

pub fn run(opts: &RunOptions, artifacts: &Artifacts) -> Result<RunResults, TestError> {
    let kernel_config = read_config(&artifacts.kernel.path.join("config")).ok();
    let kernel_release = artifacts
        .kernel
        .manifest
        .details
        .get("release")
        .and_then(|r| r.as_str())
        .unwrap_or("")
        .to_string();

    let Plan {
        order,
        skipped,
        queue,
    } = plan_tests(
        opts.recipe,
        opts.spec,
        artifacts,
        kernel_config.as_ref(),
        opts.policy,
        opts.cases,
        opts.previous,
    )?;
    for s in &skipped {
        (opts.on_result)(s);
    }

    let tests_dir = opts.out.join("tests");
    fs_err::create_dir_all(&tests_dir).map_err(io_err("create", &tests_dir))?;
    let mut results = skipped;
    // Passing results of tests whose key is unchanged come from their own entries.
    let mut queue_now = Vec::new();
    for test in queue {
        let reused = match (&test.case, opts.cases) {
            (Some(key), Some(cases)) if !opts.force => cases.reuse(key, opts.out, opts.notice),
            _ => None,
        };
        match reused {
            Some(result) => {
                (opts.on_result)(&result);
                results.push(result);
            }
            None => queue_now.push(test),
        }
    }
    let mut console_truncated = false;
    let planned: Vec<String> = queue_now.iter().map(|t| t.name.clone()).collect();
    let mut round = 0;
    while !queue_now.is_empty() {
        if round == 0 {
            (opts.booting)();
        }
        // A retry runs in a fresh VM: one test per VM.
        let one_test = round > 0 || opts.spec.vm.vm_per_test();
        let done = run_round(opts, artifacts, queue_now, one_test, round)?;
        results.extend(done.results);
        console_truncated |= done.console_truncated;
        queue_now = done.retry;
        round += 1;
    }
    // Every test queued has a result: one the VMs never reported is a crash.
    for name in planned {
        if !results.iter().any(|r| r.name == name) {
            let result = TestResult::without_output(
                name,
                super::Status::Crash,
                Some("no result came back from the guest for this test".into()),
            );
            (opts.on_result)(&result);
            results.push(result);
        }
    }
    results.sort_by_key(|r| order.iter().position(|n| *n == r.name));
    Ok(RunResults {
        recipe: opts.recipe.to_string(),
        key: opts.key.to_string(),
        accel: opts.accel.name().to_string(),
        kernel_release,
        tests: results,
        console_truncated,
    })
}

/// The tests a run takes of `recipe` (skipped, queued, in order), each with its own result
/// entry when `cases` stores them.
fn plan_tests(
    recipe: &str,
    spec: &TestSpec,
    artifacts: &Artifacts,
    kernel_config: Option<&BTreeMap<String, String>>,
    policy: &Policy,
    cases: Option<&Cases>,
    previous: Option<&RunResults>,
) -> Result<Plan, TestError> {
    let offer = Offer {
        kernel_config,
        disks: spec.vm.disks.len(),
        timeout: spec.timeout,
    };
    let case = |bundle: &str, meta: &TestMeta| cases.map(|c| c.key(bundle, meta));
    let plan = queue::plan(
        bundle_tests(&artifacts.bundles)?,
        &offer,
        previous,
        &policy.selection,
        &case,
    );
    let selection = &policy.selection;
    if plan.order.is_empty() && !(selection.include.is_empty() && selection.exclude.is_empty()) {
        return Err(TestError::Unsupported(format!(
            "no test of `{recipe}` is left by --filter and --exclude"
        )));
    }
    Ok(plan)
}

/// What a run would do with a test (`vmbuild test --list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// It runs in a VM.
    Run,
    /// Its stored result is reused.
    Cached,
    /// It is skipped, for this reason.
    Skip(String),
}

/// Each test's name and what a run would do with it.
pub type ListedTests = Vec<(String, Listed)>;

/// What a run of `spec` would do with each of its tests, in the order VMs would take
/// them (skips first), without starting a VM.
pub(crate) fn list(
    recipe: &str,
    spec: &TestSpec,
    artifacts: &Artifacts,
    policy: &Policy,
    cases: Option<&Cases>,
    previous: Option<&RunResults>,
    force: bool,
) -> Result<ListedTests, TestError> {
    let kernel_config = read_config(&artifacts.kernel.path.join("config")).ok();
    let plan = plan_tests(
        recipe,
        spec,
        artifacts,
        kernel_config.as_ref(),
        policy,
        cases,
        previous,
    )?;
    let mut listed: Vec<(String, Listed)> = plan
        .skipped
        .into_iter()
        .map(|s| (s.name, Listed::Skip(s.reason.unwrap_or_default())))
        .collect();
    for test in plan.queue {
        let cached =
            !force && matches!((&test.case, cases), (Some(case), Some(cases)) if cases.has(case));
        listed.push((test.name, if cached { Listed::Cached } else { Listed::Run }));
    }
    Ok(listed)
}

/// Boots VMs that pull `queue` until it is empty (a VM that died is replaced).
fn run_round(
    opts: &RunOptions,
    artifacts: &Artifacts,
    queue: Vec<Planned>,
    one_test: bool,
    round: usize,
) -> Result<Round, TestError> {
    let tests = queue.len();
    let running = (opts.spec.vm.vms as usize).min(tests).max(1);
    let shared = Shared::new(queue, running, one_test);
    // --keep-alive holds the first failed test's VM, which can only be in the first
    // round (retries follow failures).
    shared
        .held
        .store(round > 0, std::sync::atomic::Ordering::SeqCst);
    // A VM per test, started from the snapshot: each VM that runs a test has the next
    // one starting beside it (the restore overlaps the test), so twice as many VMs
    // live at once as run tests, where the host holds their scratch disks.
    let spares = (running * 2).min(tests);
    let vms = match opts.warm.is_some()
        && one_test
        && media::disks_fit(&opts.spec.vm.disks, spares, opts.work)
        && memory_fits(spares, opts.spec.vm.memory_mb)
    {
        true => spares,
        false => running,
    };
    check_memory(vms, opts.spec.vm.memory_mb, opts.policy.allow_overcommit)?;
    let media = media::prepare(artifacts, &opts.spec.vm, opts.backend, vms, opts.work)?;
    let socket_dir = tempfile::Builder::new()
        .prefix("vmbuild-")
        .tempdir()
        .map_err(io_err("create a temp folder in", &std::env::temp_dir()))?;
    std::thread::scope(|scope| {
        for worker in 0..vms {
            let shared = &shared;
            let media = &media;
            let socket_dir = socket_dir.path();
            scope.spawn(move || {
                let mut boots = 0;
                while !shared.finished() {
                    let vm = VmRun {
                        opts,
                        artifacts,
                        worker,
                        boot: boots,
                        round,
                        media,
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
    shared.into_results()
}

/// Refuses `vms` VMs of `memory_mb` each when together they need more than the host has
/// available (MemAvailable), unless allowed: an overcommitted host swaps or kills guests.
fn check_memory(vms: usize, memory_mb: u64, allowed: bool) -> Result<(), TestError> {
    let needed = vms as u64 * memory_mb;
    match available_mb() {
        Some(available) if !memory_fits(vms, memory_mb) && !allowed => {
            Err(TestError::Infra(format!(
            "{vms} VM(s) of {memory_mb} MiB need {needed} MiB, and this host has {available} MiB \
             available: lower `[vm] vms` or `memory`, or pass --allow-overcommit"
        )))
        }
        _ => Ok(()),
    }
}

/// Whether `vms` VMs of `memory_mb` each fit in the host's available memory (yes when
/// it cannot be read).
fn memory_fits(vms: usize, memory_mb: u64) -> bool {
    available_mb().is_none_or(|available| vms as u64 * memory_mb <= available)
}

/// The host's available memory in MiB (`MemAvailable` in /proc/meminfo).
pub(crate) fn available_mb() -> Option<u64> {
    let text = fs_err::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Every test of the run's bundles (for results of tests that do not run).
pub(crate) fn bundle_test_names(artifacts: &Artifacts) -> Result<Vec<String>, TestError> {
    Ok(bundle_tests(&artifacts.bundles)?
        .into_iter()
        .map(|(_, meta)| meta.name)
        .collect())
}
