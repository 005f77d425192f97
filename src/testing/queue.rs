//! The queue of one test run: which tests run (a test is skipped when the kernel or the
//! VM lacks what its header asks for), in which order (slowest first, from the last
//! run's durations), and the state the VMs share while they pull tests from it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::runner::{Artifacts, TestError};
use super::{RunResults, Status, TestResult};
use crate::format::bundle::{TestMeta, TESTS_JSON};
use crate::fsio::io_err;

/// One test waiting in the queue.
#[derive(Clone)]
pub(crate) struct Planned {
    pub name: String,
    pub guest_path: String,
    pub timeout: Duration,
}

/// The tests of a run: every name in report order, those skipped, those to run.
pub(crate) struct Plan {
    pub order: Vec<String>,
    pub skipped: Vec<TestResult>,
    pub queue: Vec<Planned>,
}

/// Every test of the run's bundles, with the bundle it comes from, in bundle order.
pub(crate) fn bundle_tests<'a>(
    artifacts: &Artifacts<'a>,
) -> Result<Vec<(&'a str, TestMeta)>, TestError> {
    let mut tests: Vec<(&str, TestMeta)> = Vec::new();
    for (bundle, entry) in &artifacts.bundles {
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

/// Skips what the VM cannot run and queues the rest, slowest first by `previous`.
pub(crate) fn plan(
    tests: Vec<(&str, TestMeta)>,
    offer: &Offer,
    previous: Option<&RunResults>,
) -> Plan {
    let mut plan = Plan {
        order: Vec::new(),
        skipped: Vec::new(),
        queue: Vec::new(),
    };
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
        plan.queue.push(Planned {
            guest_path: format!("/vmbuild/bundles/{bundle}/{}", meta.name),
            name: meta.name,
            timeout,
        });
    }
    let last: BTreeMap<&str, f64> = previous
        .map(|p| {
            p.tests
                .iter()
                .map(|t| (t.name.as_str(), t.duration))
                .collect()
        })
        .unwrap_or_default();
    plan.queue.sort_by(|a, b| {
        let (da, db) = (
            last.get(a.name.as_str()).copied().unwrap_or(f64::MAX),
            last.get(b.name.as_str()).copied().unwrap_or(f64::MAX),
        );
        db.total_cmp(&da)
    });
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

/// What the VMs of one run share: the queue, the results, the first infrastructure error.
pub(crate) struct Shared {
    pub queue: Mutex<VecDeque<Planned>>,
    pub results: Mutex<Vec<TestResult>>,
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
    /// The run of `queue`, with at most `run_limit` VMs running a test at once.
    pub(crate) fn new(queue: Vec<Planned>, run_limit: usize) -> Shared {
        Shared {
            queue: Mutex::new(queue.into()),
            results: Mutex::new(Vec::new()),
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

    /// The results of the run (and whether a console was cut), or its first
    /// infrastructure error.
    pub(crate) fn into_results(self) -> Result<(Vec<TestResult>, bool), TestError> {
        if let Some(e) = self.infra.into_inner().unwrap_or_else(|e| e.into_inner()) {
            return Err(e);
        }
        Ok((
            self.results.into_inner().unwrap_or_else(|e| e.into_inner()),
            self.console_truncated.into_inner(),
        ))
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
