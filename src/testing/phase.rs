//! The test phase of one test recipe, as a store entry: its passing results are reused,
//! else its tests run and their results are published, all through
//! `Store::get_or_build`, so one lock per key covers the whole run: a second vmbuild
//! testing the same recipe waits, then reuses the first one's passing results without
//! booting. A run with failures is published with `Status::Failed` (kept for
//! `vmbuild results`, never a hit); an infrastructure failure publishes nothing.

use std::path::Path;
use std::time::Instant;

use super::cases::Cases;
use super::results::{read_results, write_results};
use super::runner::{self, Artifacts, ListedTests, Policy, RunOptions, TestError};
use super::select::Selection;
use super::shards;
use super::warm::Warm;
use super::{RunResults, Status as TestStatus, TestResult};
use crate::fsio::io_err;
use crate::recipe::TestSpec;
use crate::store::{Build, Entry, Manifest, Status, Store, StoreError};
use crate::vm::Accel;

/// One test recipe to run, with everything its entry needs.
pub(crate) struct Job<'a> {
    pub name: &'a str,
    pub key: &'a str,
    /// The key's inputs, kept in the manifest for `vmbuild explain`.
    pub inputs: &'a serde_json::Value,
    pub spec: &'a TestSpec,
    pub artifacts: &'a Artifacts<'a>,
    pub accel: Accel,
    /// Rerun even when passing results are stored (`-f`).
    pub force: bool,
    /// Keep the VM of the first failed test running for the user (`--keep-alive`).
    pub keep_alive: bool,
    /// Boot every VM in full, whatever the recipe's `[vm] start` (`--cold`).
    pub cold: bool,
    /// Which tests run and how failures are retried.
    pub policy: &'a Policy,
}

/// How the phase tells its caller what happens (the engine turns these into events).
pub(crate) struct Hooks<'a> {
    /// Another vmbuild holds this recipe's lock: we wait for it.
    pub waiting: &'a dyn Fn(),
    /// VMs are about to boot (not called when every result is reused).
    pub booting: &'a (dyn Fn() + Sync),
    /// A test finished (or, `true`, was found in stored results).
    pub on_result: &'a (dyn Fn(&TestResult, bool) + Sync),
    /// Verbose details (qemu command lines).
    pub detail: &'a (dyn Fn(&str) + Sync),
    /// Things the user must see now.
    pub notice: &'a (dyn Fn(&str) + Sync),
}

/// The results of one test recipe and the entry holding them.
pub(crate) struct Tested {
    pub results: RunResults,
    /// The results entry; `None` for a run of some of the tests (`--filter`,
    /// `--iterate`), whose results stay in `folder`.
    pub entry: Option<Entry>,
    /// Where the results' logs are: the entry, or a folder in `<cache>/logs`.
    pub folder: std::path::PathBuf,
    /// Reused from the store, nothing booted.
    pub cached: bool,
}

/// The entry a run of test recipe `name` (key `key`) publishes its results as, by key and
/// name: the recipe's own; a shard's (`<name>.shard-K-of-N`, keyed by the recipe's key,
/// the shard and the durations `previous` gives, which decide its tests); none for a run
/// of some tests or repeated ones (`--filter`, `--exclude`, `--iterate`), whose tests'
/// results are stored one by one.
pub(crate) fn results_entry(
    key: &str,
    name: &str,
    selection: &Selection,
    previous: Option<&RunResults>,
) -> Option<(String, String)> {
    if selection.is_partial() {
        return None;
    }
    Some(match selection.shard {
        None => (key.to_string(), name.to_string()),
        Some(shard) => shards::entry_of(key, name, shard, previous),
    })
}

/// The last results of test recipe `name`, whatever their key: their durations order the
/// queue and cut the shards.
pub(crate) fn previous(store: &Store, name: &str) -> Result<Option<RunResults>, StoreError> {
    Ok(store.latest(name)?.and_then(|e| read_results(&e).ok()))
}

/// Passing results stored for `job`'s run, if any: a hit needs no artifacts at all.
pub(crate) fn lookup(
    store: &Store,
    key: &str,
    name: &str,
    policy: &Policy,
) -> Result<Option<Tested>, StoreError> {
    let previous = match policy.selection.shard {
        Some(_) => previous(store, name)?,
        None => None,
    };
    let Some((key, name)) = results_entry(key, name, &policy.selection, previous.as_ref()) else {
        return Ok(None);
    };
    let Some(entry) = store.lookup(&key, &name, "test")? else {
        return Ok(None);
    };
    let results = read_results(&entry)?;
    if policy.flaky_fails && results.tests.iter().any(|t| t.status == TestStatus::Flaky) {
        return Ok(None);
    }
    Ok(Some(Tested {
        results,
        folder: entry.path.clone(),
        entry: Some(entry),
        cached: true,
    }))
}

/// The tests' own result entries of `job`; none for repeated runs (`--iterate`), which
/// are not the tests' results: nothing of them is stored or reused.
fn cases_of<'a>(store: &'a Store, job: &'a Job) -> Option<Cases<'a>> {
    (job.policy.selection.iterate <= 1).then(|| {
        Cases::new(
            store,
            job.name,
            job.key,
            job.inputs,
            &job.artifacts.bundles,
            job.policy.flaky_fails,
        )
    })
}

/// What a run of `job` would do with each of its tests (`vmbuild test --list`).
pub(crate) fn list(store: &Store, job: &Job) -> Result<ListedTests, TestError> {
    let previous = previous(store, job.name)?;
    let cases = cases_of(store, job);
    runner::list(
        job.name,
        job.spec,
        job.artifacts,
        job.policy,
        cases.as_ref(),
        previous.as_ref(),
        job.force,
    )
}

/// Reuses `job`'s passing results or runs its tests and publishes their results.
pub(crate) fn run(store: &Store, job: &Job, hooks: &Hooks) -> Result<Tested, TestError> {
    let previous = previous(store, job.name)?;
    let previous = previous.as_ref();
    let Some((key, name)) = results_entry(job.key, job.name, &job.policy.selection, previous)
    else {
        // Some of the tests, under the recipe's lock (so that a run of all of them, or
        // another of some, waits): their results stay in a folder of the cache's logs,
        // replaced by the next such run.
        let _lock = store.lock(job.key, hooks.waiting)?;
        let folder = store.kept_log(job.key, job.name, "selection");
        let _ = fs_err::remove_dir_all(&folder);
        fs_err::create_dir_all(&folder).map_err(io_err("create", &folder))?;
        let results = run_into(store, job, hooks, &folder, job.key, previous)?;
        write_results(&folder, &results)?;
        return Ok(Tested {
            results,
            entry: None,
            folder,
            cached: false,
        });
    };
    let mut fresh: Option<RunResults> = None;
    // Under --flaky-fails a stored flaky result is not a hit: the results are assembled
    // again (from the tests' own entries, running the flaky ones).
    let when = match (job.force, job.policy.flaky_fails) {
        (true, _) => Build::Forced,
        (false, true) => Build::Again,
        (false, false) => Build::IfMissing,
    };
    let (entry, reused) = store.get_or_build(&key, &name, "test", when, hooks.waiting, |out| {
        let started = Instant::now();
        let results = run_into(store, job, hooks, out, &key, previous)?;
        write_results(out, &results)?;
        let mut manifest = Manifest::new(&name, "test", &key, job.inputs.clone());
        manifest.head.status = if results.all_passed() {
            Status::Ok
        } else {
            Status::Failed
        };
        manifest.head.build_seconds = started.elapsed().as_secs_f64();
        let details = &mut manifest.head.details;
        details.insert("accel".into(), serde_json::json!(job.accel.name()));
        if let Some(shard) = job.policy.selection.shard {
            let all = runner::bundle_test_names(job.artifacts)?;
            details.extend(shards::details(job.key, shard, previous, all));
        }
        fresh = Some(results);
        Ok::<_, TestError>(manifest)
    })?;
    let results = match fresh {
        Some(results) if !reused => results,
        _ => {
            let results = read_results(&entry)?;
            for result in &results.tests {
                (hooks.on_result)(result, true);
            }
            results
        }
    };
    Ok(Tested {
        results,
        folder: entry.path.clone(),
        entry: Some(entry),
        cached: reused,
    })
}

/// Runs the tests with their logs and consoles going to `out` (the staged entry), in
/// the order `previous` gives; we hold the lock of `locked`.
fn run_into(
    store: &Store,
    job: &Job,
    hooks: &Hooks,
    out: &Path,
    locked: &str,
    previous: Option<&RunResults>,
) -> Result<RunResults, TestError> {
    // Scratch space in the store's tmp, named by the key we hold the lock of (so no other
    // vmbuild removes it as stale); removed when dropped.
    let tmp = store.root().join("tmp");
    let work = tempfile::Builder::new()
        .prefix(&format!("{locked}-{}.", job.name))
        .suffix(".work")
        .tempdir_in(&tmp)
        .map_err(io_err("create a work folder in", &tmp))?;
    let backend = crate::vm::backend(&job.spec.vm, job.accel).map_err(TestError::Infra)?;
    let warm = Warm::open_for(
        (!job.cold).then_some(store),
        backend.as_ref(),
        &job.spec.vm,
        job.artifacts,
        job.accel,
        job.name,
        hooks.notice,
    );
    let cases = cases_of(store, job);
    let on_result = |result: &TestResult| (hooks.on_result)(result, result.cached);
    let opts = RunOptions {
        recipe: job.name,
        key: job.key,
        spec: job.spec,
        backend: backend.as_ref(),
        accel: job.accel,
        work: work.path(),
        out,
        logs: &store.logs_dir(),
        previous,
        on_result: &on_result,
        detail: hooks.detail,
        notice: hooks.notice,
        keep_alive: job.keep_alive,
        warm: warm.as_ref(),
        booting: hooks.booting,
        policy: job.policy,
        cases: cases.as_ref(),
        force: job.force,
    };
    runner::run(&opts, job.artifacts)
}

/// Results for a test recipe whose tests do not run (it comes `after` one that did not
/// pass): every test of its bundles, `not run`, with `reason`. Never stored.
pub(crate) fn not_run(
    name: &str,
    key: &str,
    artifacts: &Artifacts,
    reason: &str,
    on_result: &dyn Fn(&TestResult, bool),
) -> Result<RunResults, TestError> {
    let mut tests = Vec::new();
    for test in runner::bundle_test_names(artifacts)? {
        let result =
            TestResult::without_output(test, super::Status::NotRun, Some(reason.to_string()));
        on_result(&result, false);
        tests.push(result);
    }
    Ok(RunResults {
        recipe: name.to_string(),
        key: key.to_string(),
        accel: String::new(),
        kernel_release: String::new(),
        tests,
        console_truncated: false,
    })
}
