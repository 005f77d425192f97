//! What the commands that boot a VM outside a test run (`run`, `shell`) boot: a test
//! recipe's kernel, rootfs, bundles and `[vm]` settings, or a kernel and a rootfs recipe
//! with the default VM settings. Everything is built (or found in the store) first.

use std::collections::BTreeMap;

use crate::engine::{Engine, Error, Force};
use crate::recipe::{Arch, Spec, VmSpec};
use crate::report::{Event, Reporter};
use crate::store::Entry;
use crate::testing::runner::Artifacts;
use crate::vm::{self, Accel};

/// A VM to boot, its artifacts built.
pub(super) struct BootEnv {
    /// The test recipe, or `<kernel>-<rootfs>`: names the console log.
    pub name: String,
    pub vm: VmSpec,
    kernel: String,
    rootfs: String,
    bundles: Vec<String>,
    entries: BTreeMap<String, Entry>,
}

impl BootEnv {
    /// A test recipe's VM; `command` names the subcommand for the error about other kinds.
    pub(super) fn test(engine: &Engine, recipe: &str, command: &str) -> Result<BootEnv, Error> {
        let plan = engine.plan(&[recipe.to_string()])?;
        let root = plan.graph.roots[0];
        let recipe = &plan.graph.nodes[root].recipe;
        let Spec::Test(spec) = &recipe.spec else {
            return Err(Error::Usage(format!(
                "`{}` is a {} recipe, not a test: `vmbuild {command}` boots a test recipe's VM{}",
                recipe.name,
                recipe.kind(),
                if command == "run" {
                    ", or --kernel KERNEL --rootfs ROOTFS"
                } else {
                    ""
                }
            )));
        };
        Ok(BootEnv {
            name: recipe.name.clone(),
            vm: spec.vm.clone(),
            kernel: spec.kernel.name.clone(),
            rootfs: spec.rootfs.name.clone(),
            bundles: spec.bundles.iter().map(|b| b.name.clone()).collect(),
            entries: engine.artifacts(&plan, root)?,
        })
    }

    /// A kernel and a rootfs recipe, with the default VM settings and no bundles.
    pub(super) fn parts(engine: &Engine, kernel: &str, rootfs: &str) -> Result<BootEnv, Error> {
        let plan = engine.plan(&[kernel.to_string(), rootfs.to_string()])?;
        for (&root, (flag, kinds, wanted)) in plan.graph.roots.iter().zip([
            ("--kernel", &["kernel"][..], "a kernel"),
            ("--rootfs", &["rootfs", "disk"][..], "a rootfs or disk"),
        ]) {
            let recipe = &plan.graph.nodes[root].recipe;
            if !kinds.contains(&recipe.kind()) {
                return Err(Error::Usage(format!(
                    "{flag} `{}` is a {} recipe; {flag} takes {} recipe",
                    recipe.name,
                    recipe.kind(),
                    wanted
                )));
            }
        }
        let [kernel_arch, rootfs_arch] =
            [0, 1].map(|i| plan.graph.nodes[plan.graph.roots[i]].recipe.arch);
        if kernel_arch != rootfs_arch {
            return Err(Error::Usage(format!(
                "--kernel `{kernel}` is for {} and --rootfs `{rootfs}` for {}: boot a kernel \
                 and a root of one arch",
                kernel_arch.name(),
                rootfs_arch.name()
            )));
        }
        let built = engine.build(&plan, Force::None)?;
        let [kernel, rootfs] =
            [0, 1].map(|i| plan.graph.nodes[plan.graph.roots[i]].recipe.name.clone());
        Ok(BootEnv {
            name: format!("{kernel}-{rootfs}"),
            vm: VmSpec::for_arch(kernel_arch),
            kernel,
            rootfs,
            bundles: vec![],
            entries: built.into_iter().map(|b| (b.name, b.entry)).collect(),
        })
    }

    pub(super) fn artifacts(&self) -> Artifacts<'_> {
        Artifacts {
            kernel: &self.entries[&self.kernel],
            rootfs: &self.entries[&self.rootfs],
            bundles: self
                .bundles
                .iter()
                .map(|b| (b.as_str(), &self.entries[b]))
                .collect(),
        }
    }
}

/// KVM if it works for `vm`'s guest, else TCG, said once.
pub(super) fn accel(engine: &Engine, reporter: &dyn Reporter, vm: &VmSpec) -> Accel {
    if vm.arch != Arch::host() {
        reporter.event(Event::Notice(&vm::foreign_guest_notice(vm.arch)));
        return Accel::Tcg;
    }
    let (accel, reason) = vm::detect_accel(engine.store.root());
    if let Some(reason) = reason {
        reporter.event(Event::Notice(&format!(
            "KVM is not usable ({reason}): using TCG"
        )));
    }
    accel
}
