//! The queue of one test run: which tests run (a test is skipped when the kernel or the
//! VM lacks what its header asks for), in which order (slowest first, from the last
//! run's durations), and the state the VMs share while they pull tests from it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::cases::CaseKey;
use super::runner::TestError;
use super::select::{order, shard_of, Selection};
use super::{Attempt, RunResults, Status, TestResult};
use crate::format::bundle::{TestMeta, TESTS_JSON};
use crate::fsio::io_err;
use crate::store::Entry;

/// One test waiting in the queue.
#[derive(Clone)]
pub(crate) struct Planned {
    /// Its name in results (`<test>#<n>` for the nth run under `--iterate`).
    pub name: String,
    pub guest_path: String,
    pub timeout: Duration,
    /// Its own result entry, when results are stored per test (not under `--iterate`).
    pub case: Option<CaseKey>,
    /// Its failed tries so far (`--retries`).
    pub earlier: Vec<Attempt>,
    /// VMs that died under it so far (`--max-vm-restarts`).
    pub vm_restarts: u32,
}

/// The tests of a run: every name in report order, those skipped, those to run.
pub(crate) struct Plan {
    pub order: Vec<String>,
    pub skipped: Vec<TestResult>,
    pub queue: Vec<Planned>,
}

/// Every test of the run's bundles, with the bundle it comes from, in bundle order.
pub(crate) fn bundle_tests<'a>(
    bundles: &[(&'a str, &'a Entry)],
) -> Result<Vec<(&'a str, TestMeta)>, TestError> {
    let mut tests: Vec<(&str, TestMeta)> = Vec::new();
    for &(bundle, entry) in bundles {
        let tests_json = entry.path.join(TESTS_JSON);
        let bytes = fs_err::read(&tests_json).map_err(io_err("read", &tests_json))?;
        let metas: Vec<TestMeta> = serde_json::from_slice(&bytes)
            .map_err(|e| io_err("parse", &tests_json)(std::io::Error::other(e)))?;
        for meta in metas {
            if tests.iter().any(|(_, t)| t.name == meta.name) {
                return Err(TestError::Unsupported(format!(
                    "two bundles hold a test named `{}`; test names must be unique in a test recipe",
                    meta.name
                )));
            }
            tests.push((bundle, meta));
        }
    }
    Ok(tests)
}

/// What the VM offers the tests, to decide skips.
pub(crate) struct Offer<'a> {
    pub kernel_config: Option<&'a BTreeMap<String, String>>,
    pub disks: usize,
    /// The recipe's per-test timeout, for tests whose header sets none.
    pub timeout: Duration,
}

/// The selected tests: skips what the VM cannot run and queues the rest, in the
/// selection's order (slowest first by `previous`, by default). `case` gives a test's
/// own result entry, when the run stores results per test.
pub(crate) fn plan(
    tests: Vec<(&str, TestMeta)>,
    offer: &Offer,
    previous: Option<&RunResults>,
    selection: &Selection,
    case: &dyn Fn(&str, &TestMeta) -> Option<CaseKey>,
) -> Plan {
    let mut plan = Plan {
        order: Vec::new(),
        skipped: Vec::new(),
        queue: Vec::new(),
    };
    let last: BTreeMap<String, f64> = previous
        .map(|p| {
            p.tests
                .iter()
                .map(|t| (t.name.clone(), t.duration))
                .collect()
        })
        .unwrap_or_default();
    let mut tests: Vec<(&str, TestMeta)> = tests
        .into_iter()
        .filter(|(_, meta)| selection.wants(&meta.name))
        .collect();
    if let Some(shard) = selection.shard {
        let names: Vec<String> = tests.iter().map(|(_, m)| m.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mine: BTreeSet<&str> = shard_of(&refs, &last, shard).into_iter().collect();
        tests.retain(|(_, meta)| mine.contains(meta.name.as_str()));
    }
    for (bundle, meta) in tests {
        plan.order.push(meta.name.clone());
        if let Some(reason) = skip_reason(&meta, offer.kernel_config, offer.disks) {
            plan.skipped.push(TestResult::without_output(
                meta.name.clone(),
                Status::Skip,
                Some(reason),
            ));
            continue;
        }
        let timeout = meta
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(offer.timeout);
        let guest_path = format!("/vmbuild/bundles/{bundle}/{}", meta.name);
        let runs = selection.iterate.max(1);
        for run in 1..=runs {
            let name = match run {
                1 => meta.name.clone(),
                n => format!("{}#{n}", meta.name),
            };
            if run > 1 {
                plan.order.push(name.clone());
            }
            plan.queue.push(Planned {
                name,
                guest_path: guest_path.clone(),
                timeout,
                // Repeated runs are not the test's result: nothing of them is stored.
                case: (runs == 1).then(|| case(bundle, &meta)).flatten(),
                earlier: Vec::new(),
                vm_restarts: 0,
            });
        }
    }
    let mut names: Vec<String> = plan.queue.iter().map(|t| t.name.clone()).collect();
    // Every run of a test lasts as long as its first did.
    let base = |name: &str| name.split('#').next().unwrap_or(name).to_string();
    let durations: BTreeMap<String, f64> = names
        .iter()
        .filter_map(|n| last.get(&base(n)).map(|d| (n.clone(), *d)))
        .collect();
    order(&mut names, &durations, selection.order, selection.seed);
    plan.queue
        .sort_by_key(|t| names.iter().position(|n| *n == t.name));
    plan
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

/// What the VMs of one round of a run share: the queue, the results, the first
/// infrastructure error, the failed tests to retry next round.
pub(crate) struct Shared {
    pub queue: Mutex<VecDeque<Planned>>,
    pub results: Mutex<Vec<TestResult>>,
    /// Failed tests with tries left (`--retries`): each runs again, in a fresh VM.
    pub retry: Mutex<Vec<Planned>>,
    /// Each VM runs one test: for isolation, fresh scratch disks, or a retry.
    pub one_test: bool,
    pub infra: Mutex<Option<TestError>>,
    /// Whether a VM has been kept alive already (`--keep-alive` holds only the first).
    pub held: AtomicBool,
    /// A VM's console was longer than vmbuild keeps.
    pub console_truncated: AtomicBool,
    /// How many VMs run a test now, at most `run_limit`.
    running: Mutex<usize>,
    run_limit: usize,
    run_freed: Condvar,
}

/// What one round of VMs did.
pub(crate) struct Round {
    pub results: Vec<TestResult>,
    pub retry: Vec<Planned>,
    pub console_truncated: bool,
}

/// Leave for a VM to run a test (`Shared::run_permit`), given back when dropped.
pub(crate) struct RunPermit<'a>(&'a Shared);

impl Drop for RunPermit<'_> {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        *running -= 1;
        self.0.run_freed.notify_one();
    }
}

impl Shared {
    /// The round of `queue`, with at most `run_limit` VMs running a test at once.
    pub(crate) fn new(queue: Vec<Planned>, run_limit: usize, one_test: bool) -> Shared {
        Shared {
            queue: Mutex::new(queue.into()),
            results: Mutex::new(Vec::new()),
            retry: Mutex::new(Vec::new()),
            one_test,
            infra: Mutex::new(None),
            held: AtomicBool::new(false),
            console_truncated: AtomicBool::new(false),
            running: Mutex::new(0),
            run_limit: run_limit.max(1),
            run_freed: Condvar::new(),
        }
    }

    /// Waits until fewer than `run_limit` VMs run a test, and counts this one.
    pub(crate) fn run_permit(&self) -> RunPermit<'_> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= self.run_limit {
            running = self
                .run_freed
                .wait(running)
                .unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
        RunPermit(self)
    }

    /// The results of the round, the tests to retry, and whether a console was cut; or
    /// its first infrastructure error.
    pub(crate) fn into_results(self) -> Result<Round, TestError> {
        if let Some(e) = self.infra.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok(Round {
            results: self.results.into_inner().unwrap_or_else(|e| e.into_inner()),
            retry: self.retry.into_inner().unwrap_or_else(|e| e.into_inner()),
            console_truncated: self.console_truncated.into_inner(),
        })
    }

    pub(crate) fn finished(&self) -> bool {
        self.infra.lock().map(|i| i.is_some()).unwrap_or(true)
            || self.queue.lock().map(|q| q.is_empty()).unwrap_or(true)
    }

    pub(crate) fn fail(&self, e: TestError) {
        if let Ok(mut slot) = self.infra.lock() {
            slot.get_or_insert(e);
        }
        // Stop the other VMs from taking more tests.
        if let Ok(mut q) = self.queue.lock() {
            q.clear();
        }
    }

    pub(crate) fn next(&self) -> Option<Planned> {
        self.queue.lock().ok()?.pop_front()
    }

    /// Puts back a test `next` gave a VM that never ran it: it comes next.
    pub(crate) fn requeue(&self, test: Planned) {
        if let Ok(mut q) = self.queue.lock() {
            q.push_front(test);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_are_skipped_when_the_kernel_or_vm_lacks_what_they_need() {
        let meta = TestMeta {
            name: "t".into(),
            timeout_ms: None,
            kconfig: vec!["EXT4_FS".into()],
            disks: 0,
            sha256: None,
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
