//! How a VM's test ends are recorded: the test's log and result in the staged entry and
//! its own result entry, another try for a failure with tries left, a requeue when its VM
//! died under it, and the console of a VM that failed kept out of the staged entry.

use std::path::Path;

use super::{Running, VmRun};
use crate::format::complaint::complaint;
use crate::format::{fio, tap};
use crate::fsio::io_err;
use crate::testing::outcome::{verdict, Verdict};
use crate::testing::runner::TestError;
use crate::testing::{Attempt, Status, TestResult};

impl VmRun<'_> {
    /// Copies the console of a VM that failed out of the staged entry (removed with the
    /// failed run) to `<cache>/logs/`, and says where it is. One file per recipe, key and
    /// VM boot: the key's lock makes the name ours, and a rerun replaces it.
    pub(super) fn keep_console(&self, console: &Path) -> String {
        let key = self.opts.key.get(..16).unwrap_or(self.opts.key);
        // Named as `Store::kept_log` names them, so `gc` knows whose it is.
        let file = console.file_name().unwrap_or_default().to_string_lossy();
        let kept = self
            .opts
            .logs
            .join(format!("{key}-{}.{file}", self.opts.recipe));
        let copied =
            fs_err::create_dir_all(self.opts.logs).and_then(|()| fs_err::copy(console, &kept));
        match copied {
            Ok(_) => kept.display().to_string(),
            Err(e) => format!("not kept ({e})"),
        }
    }

    /// The VM died (or went silent) under test `r`: it is requeued for a new VM, or,
    /// when it has taken down `--max-vm-restarts` VMs already, it is a crash.
    pub(super) fn replace_vm(&self, r: Running, what: &str) -> Result<(), TestError> {
        if crate::process::interrupted() {
            return Err(TestError::Infra("interrupted".into()));
        }
        if r.test.vm_restarts >= self.opts.policy.max_vm_restarts {
            let reason = format!(
                "the VM {what} while the test ran ({} VM(s) replaced under it before; \
                 --max-vm-restarts {})",
                r.test.vm_restarts, self.opts.policy.max_vm_restarts
            );
            return self.finish(r, Status::Crash, None, Some(reason));
        }
        let mut test = r.test;
        test.vm_restarts += 1;
        (self.opts.notice)(&format!(
            "vm{}: the VM {what} while `{}` ran: a new VM runs it again ({} of at most {} restarts)",
            self.worker,
            test.name,
            test.vm_restarts,
            self.opts.policy.max_vm_restarts
        ));
        self.shared.requeue(test);
        Ok(())
    }

    pub(super) fn finish(
        &self,
        r: Running,
        status: Status,
        exit_code: Option<i32>,
        reason: Option<String>,
    ) -> Result<(), TestError> {
        // Ctrl-C stopped the VMs: what their tests did since says nothing, and the run
        // publishes nothing.
        if crate::process::interrupted() {
            return Err(TestError::Infra("interrupted".into()));
        }
        let Running {
            mut test,
            started,
            output,
        } = r;
        let log = format!("tests/{}.log", test.name);
        let path = self.opts.out.join(&log);
        let (output, truncated) = output.finish();
        fs_err::write(&path, &output).map_err(io_err("write", &path))?;
        // A failure the workload explains (fio's verify error): its words are the reason.
        let reason = match reason {
            None if status == Status::Fail => complaint(&output),
            reason => reason,
        };
        let duration = started.elapsed().as_secs_f64();
        let policy = self.opts.policy;
        let failed_before = test.earlier.len();
        let (status, reason) = match verdict(
            status,
            reason,
            failed_before,
            policy.retries,
            policy.flaky_fails,
        ) {
            Verdict::Final(status, reason) => (status, reason),
            Verdict::Retry(reason) => {
                let tries = failed_before + 1;
                // In a folder of their own: no test's name reaches them.
                let kept = format!("tests/tries/{}.{tries}.log", test.name);
                let kept_path = self.opts.out.join(&kept);
                let tries_dir = self.opts.out.join("tests/tries");
                fs_err::create_dir_all(&tries_dir).map_err(io_err("create", &tries_dir))?;
                fs_err::rename(&path, &kept_path).map_err(io_err("rename", &path))?;
                (self.opts.notice)(&format!(
                    "{}: {} on try {tries}; it runs again in a fresh VM (retry {tries} of {})",
                    test.name,
                    status.name(),
                    policy.retries
                ));
                test.earlier.push(Attempt {
                    status,
                    duration,
                    log: kept,
                    exit_code,
                    reason,
                });
                if let Ok(mut retry) = self.shared.retry.lock() {
                    retry.push(test);
                }
                return Ok(());
            }
        };
        let result = TestResult {
            subtests: tap::parse(&output),
            fio: fio::parse(&output),
            name: test.name,
            status,
            duration,
            log,
            exit_code,
            reason,
            truncated,
            key: test.case.as_ref().map(|c| c.key.clone()),
            cached: false,
            earlier: test.earlier,
            vm_restarts: test.vm_restarts,
        };
        (self.opts.on_result)(&result);
        if let (Some(cases), Some(case)) = (self.opts.cases, &test.case) {
            cases.publish(case, &result, self.opts.out)?;
        }
        if let Ok(mut results) = self.shared.results.lock() {
            results.push(result);
        }
        Ok(())
    }
}
