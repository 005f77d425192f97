//! `vmbuild shell RECIPE`: boot a test recipe's VM with the console on this terminal.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::recipe::Spec;
use crate::report::{Event, Reporter};
use crate::testing::runner::{self, Artifacts};
use crate::vm;

#[derive(Args)]
pub struct ShellArgs {
    /// A test recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
}

pub fn run(global: &Global, reporter: &Renderer, args: ShellArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(std::slice::from_ref(&args.recipe))?;
    let root = plan.graph.roots[0];
    let recipe = &plan.graph.nodes[root].recipe;
    let Spec::Test(spec) = &recipe.spec else {
        return Err(Error::Usage(format!(
            "`{}` is not a test recipe; `vmbuild shell` boots a test's VM",
            recipe.name
        )));
    };
    let built = engine.artifacts(&plan, root)?;
    let entry = |name: &str| &built[name];
    let arts = Artifacts {
        kernel: entry(&spec.kernel.name),
        rootfs: entry(&spec.rootfs.name),
        bundles: spec
            .bundles
            .iter()
            .map(|b| (b.name.as_str(), entry(&b.name)))
            .collect(),
    };
    let (accel, reason) = vm::detect_accel(engine.store.root());
    if let Some(reason) = reason {
        reporter.event(Event::Notice(&format!(
            "KVM is not usable ({reason}): using TCG"
        )));
    }
    reporter.finish();
    eprintln!(
        "booting {}: tests are in /vmbuild/bundles; `exit` powers the VM off (Ctrl-A X quits qemu)",
        recipe.name
    );
    let work =
        tempfile::tempdir().map_err(|e| Error::Usage(format!("create a temp folder: {e}")))?;
    let status = runner::shell(spec, &arts, accel, work.path()).map_err(|source| Error::Test {
        name: recipe.name.clone(),
        source,
    })?;
    Ok(if status.success() { 0 } else { 4 })
}
