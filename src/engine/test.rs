//! The test phase's ordering: cached all-pass results first (no artifacts needed), then
//! the artifacts the rest need, then each test recipe in `after` order, handed to
//! `testing::phase`, which reuses or runs and publishes its results.

use std::collections::BTreeMap;

use super::{Engine, Error, Force, Plan, Result, Tested};
use crate::recipe::{Arch, Spec, StartMode, TestSpec};
use crate::report::Event;
use crate::store::Entry;
use crate::testing::phase::{self, Hooks, Job};
use crate::testing::runner::{Artifacts, Listed, ListedTests, Policy};
use crate::testing::shards;
use crate::testing::warm;
use crate::testing::{Status as TestStatus, TestResult};
use crate::vm;

/// How `vmbuild test` runs.
pub struct TestOptions {
    /// Which entries to redo although cached (`-f`, `-ff`).
    pub force: Force,
    /// Keep the VM of the first failed test running for the user (`--keep-alive`).
    pub keep_alive: bool,
    /// Boot every VM in full, not from the environment's snapshot (`--cold`).
    pub cold: bool,
    /// Which tests run, in which order, and how failures are retried.
    pub policy: Policy,
    /// VMs that test recipes running at once may use together (`-j`): independent
    /// recipes (none `after` the other) run side by side while their `vms` fit.
    pub vm_budget: usize,
}

/// The test recipes of the plan (those named and those they come `after`); a named
/// recipe of another kind is a usage error.
fn test_nodes(plan: &Plan) -> Result<Vec<usize>> {
    for &root in &plan.graph.roots {
        let recipe = &plan.graph.nodes[root].recipe;
        if !matches!(recipe.spec, Spec::Test(_)) {
            return Err(Error::Usage(format!(
                "`{}` is a {} recipe, not a test: build it with `vmbuild build {}`",
                recipe.name,
                recipe.kind(),
                recipe.name
            )));
        }
    }
    Ok((0..plan.graph.nodes.len())
        .filter(|&i| matches!(plan.graph.nodes[i].recipe.spec, Spec::Test(_)))
        .collect())
}

impl Engine<'_> {
    /// `vmbuild test`: builds what the tests need, then runs each test recipe (those named
    /// and those they come `after`), reusing all-pass results from the store.
    pub fn test(&self, plan: &Plan, options: &TestOptions) -> Result<Vec<Tested>> {
        let force = options.force;
        let test_nodes = test_nodes(plan)?;
        // Cached all-pass results need no artifacts at all: look them up first.
        let mut outcomes: BTreeMap<usize, Tested> = BTreeMap::new();
        for &i in &test_nodes {
            if self.forced(plan, i, force) {
                continue;
            }
            let name = &plan.graph.nodes[i].recipe.name;
            if let Some(hit) = phase::lookup(&self.store, &plan.keys[i], name, &options.policy)? {
                for result in &hit.results.tests {
                    self.reporter.event(Event::TestFinished {
                        recipe: name,
                        result,
                        cached: true,
                    });
                }
                outcomes.insert(
                    i,
                    Tested {
                        name: name.clone(),
                        results: hit.results,
                        folder: Some(hit.folder),
                        entry: hit.entry,
                        cached: true,
                    },
                );
            }
        }
        self.report_notices();
        let to_run: Vec<usize> = test_nodes
            .iter()
            .copied()
            .filter(|i| !outcomes.contains_key(i))
            .collect();
        if to_run.is_empty() {
            return Ok(plan
                .graph
                .roots
                .iter()
                .filter_map(|r| outcomes.remove(r))
                .collect());
        }
        // A test whose qemu this host lacks says so before anything is built for it (its
        // key holds that qemu as absent when it is another arch's).
        for &i in &to_run {
            let recipe = &plan.graph.nodes[i].recipe;
            let Spec::Test(t) = &recipe.spec else {
                continue;
            };
            if let Err(missing) = vm::hypervisor_present(&t.vm) {
                return Err(Error::Test {
                    name: recipe.name.clone(),
                    source: missing.into(),
                });
            }
        }
        let artifacts = self.build_closure(plan, &to_run, force)?;
        let (accel, reason) = vm::detect_accel(self.store.root());
        // Said once per arch among the recipes to run.
        let arches: std::collections::BTreeSet<Arch> = to_run
            .iter()
            .filter_map(|&i| match &plan.graph.nodes[i].recipe.spec {
                Spec::Test(t) => Some(t.vm.arch),
                _ => None,
            })
            .collect();
        for arch in arches {
            if arch != Arch::host() {
                self.reporter
                    .event(Event::Notice(&vm::foreign_guest_notice(arch)));
            } else if let Some(reason) = &reason {
                self.reporter.event(Event::Notice(&format!(
                    "KVM is not usable ({reason}): using TCG, which is much slower"
                )));
            }
        }
        let artifacts = &artifacts;
        let mut pending = to_run;
        let mut failure: Option<Error> = None;
        std::thread::scope(|scope| {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let (mut vms_in_use, mut memory_in_use, mut running) = (0, 0, 0);
            // Recipes run side by side only while their VMs fit in memory together too.
            let memory = match options.policy.allow_overcommit {
                true => None,
                false => crate::testing::runner::available_mb(),
            };
            loop {
                // Start each recipe whose `after` recipes are settled, while the VM budget
                // lasts (one always may start when none runs).
                let mut next = 0;
                while failure.is_none() && next < pending.len() {
                    let i = pending[next];
                    let Spec::Test(spec) = &plan.graph.nodes[i].recipe.spec else {
                        pending.remove(next);
                        continue;
                    };
                    let settled = spec.after.iter().all(|a| {
                        plan.graph
                            .index_of(&a.name)
                            .is_none_or(|x| outcomes.contains_key(&x))
                    });
                    // A VM per test from the snapshot has a spare VM starting beside each.
                    let spares = spec.vm.vm_per_test()
                        && spec.vm.start == StartMode::Snapshot
                        && !options.cold;
                    let vms = (spec.vm.vms as usize * if spares { 2 } else { 1 })
                        .clamp(1, options.vm_budget.max(1));
                    let needs = vms as u64 * spec.vm.memory_mb;
                    let fits = vms_in_use + vms <= options.vm_budget
                        && memory.is_none_or(|m| memory_in_use + needs <= m);
                    if !settled || (running > 0 && !fits) {
                        next += 1;
                        continue;
                    }
                    pending.remove(next);
                    let blocked: Vec<String> = spec
                        .after
                        .iter()
                        .filter(|a| {
                            let idx = plan.graph.index_of(&a.name);
                            !idx.and_then(|x| outcomes.get(&x))
                                .is_some_and(|t| t.results.all_passed())
                        })
                        .map(|a| a.name.clone())
                        .collect();
                    vms_in_use += vms;
                    memory_in_use += needs;
                    running += 1;
                    let done_tx = done_tx.clone();
                    scope.spawn(move || {
                        // A panic is an error like any other: the loop waits for every
                        // recipe it started.
                        let tested = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            self.test_recipe(plan, i, artifacts, accel, &blocked, options)
                        }))
                        .unwrap_or_else(|_| {
                            Err(Error::Usage(format!(
                                "the thread running `{}` panicked",
                                plan.graph.nodes[i].recipe.name
                            )))
                        });
                        let _ = done_tx.send((i, vms, needs, tested));
                    });
                }
                if running == 0 {
                    break;
                }
                let Ok((i, vms, needs, tested)) = done_rx.recv() else {
                    break;
                };
                running -= 1;
                vms_in_use -= vms;
                memory_in_use -= needs;
                match tested {
                    Ok(tested) => {
                        outcomes.insert(i, tested);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            }
        });
        if let Some(e) = failure {
            if !pending.is_empty() {
                let names: Vec<&str> = pending
                    .iter()
                    .map(|&i| plan.graph.nodes[i].recipe.name.as_str())
                    .collect();
                self.reporter.event(Event::Notice(&format!(
                    "not started after the error: {}",
                    names.join(", ")
                )));
            }
            return Err(e);
        }
        Ok(plan
            .graph
            .roots
            .iter()
            .filter_map(|r| outcomes.remove(r))
            .collect())
    }

    /// Runs test recipe `i` (or reports its tests `not run`, when the `after` recipes
    /// `blocked` did not pass) and reuses or publishes its results.
    fn test_recipe(
        &self,
        plan: &Plan,
        i: usize,
        artifacts: &BTreeMap<usize, (Entry, bool)>,
        accel: vm::Accel,
        blocked: &[String],
        options: &TestOptions,
    ) -> Result<Tested> {
        self.with_job(plan, i, artifacts, accel, options, |job, spec| {
            let name = job.name;
            let test_err = |source| Error::Test {
                name: name.to_string(),
                source,
            };
            let on_result = |result: &TestResult, cached: bool| {
                self.reporter.event(Event::TestFinished {
                    recipe: name,
                    result,
                    cached,
                })
            };
            if !blocked.is_empty() {
                // Reported, never stored: the next run tries again.
                let reason = format!("comes after {} which did not pass", blocked.join(", "));
                let results = phase::not_run(name, job.key, job.artifacts, &reason, &on_result)
                    .map_err(test_err)?;
                return Ok(Tested {
                    name: name.to_string(),
                    results,
                    entry: None,
                    folder: None,
                    cached: false,
                });
            }
            let hooks = Hooks {
                waiting: &|| self.reporter.event(Event::Waiting { name }),
                booting: &|| {
                    self.reporter.event(Event::Booting {
                        recipe: name,
                        accel: job.accel.name(),
                        vms: spec.vm.vms,
                    })
                },
                on_result: &on_result,
                detail: &|line: &str| self.reporter.event(Event::Detail(line)),
                notice: &|line: &str| self.reporter.event(Event::Notice(line)),
            };
            let tested = phase::run(&self.store, job, &hooks).map_err(test_err)?;
            Ok(Tested {
                name: name.to_string(),
                results: tested.results,
                entry: tested.entry,
                folder: Some(tested.folder),
                cached: tested.cached,
            })
        })
    }

    /// Calls `f` with the job of test recipe `i`: its artifacts, key and options.
    fn with_job<R>(
        &self,
        plan: &Plan,
        i: usize,
        artifacts: &BTreeMap<usize, (Entry, bool)>,
        accel: vm::Accel,
        options: &TestOptions,
        f: impl FnOnce(&Job, &TestSpec) -> Result<R>,
    ) -> Result<R> {
        let node = &plan.graph.nodes[i];
        let Spec::Test(spec) = &node.recipe.spec else {
            return Err(Error::Usage(format!(
                "`{}` is not a test recipe",
                node.recipe.name
            )));
        };
        let entry_of = |r: &crate::recipe::RecipeRef| -> &Entry {
            let idx = plan
                .graph
                .index_of(&r.name)
                .expect("dependencies are in the graph");
            &artifacts[&idx].0
        };
        let arts = Artifacts {
            kernel: entry_of(&spec.kernel),
            rootfs: entry_of(&spec.rootfs),
            bundles: spec
                .bundles
                .iter()
                .map(|b| (b.name.as_str(), entry_of(b)))
                .collect(),
        };
        let inputs = plan.inputs[i].to_value();
        let job = Job {
            name: &node.recipe.name,
            key: &plan.keys[i],
            inputs: &inputs,
            spec,
            artifacts: &arts,
            accel: accel.for_guest(spec.vm.arch),
            force: self.forced(plan, i, options.force),
            keep_alive: options.keep_alive,
            cold: options.cold,
            policy: &options.policy,
        };
        f(&job, spec)
    }

    /// `vmbuild test --list`: what a run would do with each test of the test recipes
    /// (run it, reuse its result, skip it), building what they need but starting no VM.
    pub fn list_tests(
        &self,
        plan: &Plan,
        options: &TestOptions,
    ) -> Result<Vec<(String, ListedTests)>> {
        let test_nodes = test_nodes(plan)?;
        let mut listed = Vec::new();
        let mut to_list = Vec::new();
        for &i in &test_nodes {
            let name = &plan.graph.nodes[i].recipe.name;
            let hit = match self.forced(plan, i, options.force) {
                true => None,
                false => phase::lookup(&self.store, &plan.keys[i], name, &options.policy)?,
            };
            match hit {
                Some(hit) => listed.push((
                    name.clone(),
                    hit.results
                        .tests
                        .into_iter()
                        .map(|t| match t.status {
                            TestStatus::Skip => {
                                (t.name, Listed::Skip(t.reason.unwrap_or_default()))
                            }
                            _ => (t.name, Listed::Cached),
                        })
                        .collect(),
                )),
                None => to_list.push(i),
            }
        }
        let artifacts = self.build_closure(plan, &to_list, options.force)?;
        // The accelerator is not part of any key: either gives the same answer.
        for i in to_list {
            let tests = self.with_job(plan, i, &artifacts, vm::Accel::Tcg, options, |job, _| {
                phase::list(&self.store, job).map_err(|source| Error::Test {
                    name: job.name.to_string(),
                    source,
                })
            })?;
            listed.push((plan.graph.nodes[i].recipe.name.clone(), tests));
        }
        Ok(listed)
    }

    /// The results of test recipe `node` joined from the newest complete set of its
    /// shards' entries (`--shard`) for the current inputs, published as the recipe's
    /// results entry (unless a passing one is there), which is returned with them.
    /// With `count`, the N of the shards, parts the store lacks are looked up (so pulled
    /// from a remote cache) first.
    pub fn merged_shards(
        &self,
        plan: &Plan,
        node: usize,
        count: Option<u32>,
    ) -> Result<(crate::testing::RunResults, Entry)> {
        let name = &plan.graph.nodes[node].recipe.name;
        if let Some(count) = count {
            shards::look_up_parts(&self.store, &plan.keys[node], name, count)?;
            self.report_notices();
        }
        let mut folders = BTreeMap::new();
        let mut parts = Vec::new();
        for part in shards::newest_set(&self.store, &plan.keys[node])? {
            for test in &part.results.tests {
                folders.insert(test.name.clone(), part.entry.path.clone());
            }
            parts.push((part.shard, part.results, part.all));
        }
        let merged =
            shards::merge(parts).map_err(|why| Error::Usage(format!("`{name}`: {why}")))?;
        let inputs = plan.inputs[node].to_value();
        let entry = shards::publish_joined(
            &self.store,
            &plan.keys[node],
            name,
            &inputs,
            &merged,
            &folders,
        )
        .map_err(|source| Error::Test {
            name: name.clone(),
            source,
        })?;
        Ok((merged, entry))
    }

    /// The key inputs of the booted environment (VM snapshot) test recipe `node` starts
    /// from under `accel`; `None` for another kind, a recipe whose VMs boot in full, or
    /// a backend or qemu not here.
    pub fn environment_inputs(
        &self,
        plan: &Plan,
        node: usize,
        accel: vm::Accel,
    ) -> Option<crate::graph::KeyInputs> {
        let Spec::Test(spec) = &plan.graph.nodes[node].recipe.spec else {
            return None;
        };
        let key_of = |r: &crate::recipe::RecipeRef| {
            plan.graph
                .index_of(&r.name)
                .map_or("", |idx| plan.keys[idx].as_str())
        };
        let accel = accel.for_guest(spec.vm.arch);
        let backend = vm::backend(&spec.vm, accel).ok()?;
        let bundles = spec
            .bundles
            .iter()
            .map(|b| (b.name.as_str(), key_of(b)))
            .collect();
        let through_firmware = plan
            .graph
            .index_of(&spec.rootfs.name)
            .is_some_and(|idx| plan.graph.nodes[idx].recipe.kind() == crate::format::disk::KIND);
        warm::environment_inputs(
            &spec.vm,
            warm::Booted {
                kernel: key_of(&spec.kernel),
                rootfs: key_of(&spec.rootfs),
                bundles,
                through_firmware,
            },
            backend.as_ref(),
            accel,
            &self.tools,
        )
        .ok()
        .flatten()
    }
}
