//! `vmbuild explain RECIPE`: the key's inputs, whether the entry is cached, and after a
//! change, which inputs differ from the most recent entry of the same recipe.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::graph::explain_change;
use crate::recipe::{Spec, StartMode};
use crate::store::Status;
use crate::testing::warm::entry_name;
use crate::vm::detect_accel;

#[derive(Args)]
pub struct ExplainArgs {
    /// A recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
}

pub fn run(global: &Global, reporter: &Renderer, args: ExplainArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(std::slice::from_ref(&args.recipe))?;
    let root = plan.graph.roots[0];
    let name = &plan.graph.nodes[root].recipe.name;
    let key = &plan.keys[root];
    let inputs = plan.inputs[root].to_value();
    println!(
        "recipe: {name} ({})",
        plan.graph.nodes[root].recipe.file.display()
    );
    println!("key:    {key}");
    match engine.store.get(key, name)? {
        Some(entry) => {
            println!(
                "status: in the store ({}) at {}",
                match entry.manifest.status {
                    Status::Ok => "ok: a cache hit",
                    Status::Failed => "failed: the next run reruns it",
                },
                entry.path.display()
            );
            let manifest = engine.store.manifest(&entry)?;
            if !manifest.rebuilt_because.is_empty() {
                println!("built because:");
                for line in &manifest.rebuilt_because {
                    println!("  {line}");
                }
            }
        }
        None => {
            println!("status: not in the store");
            match engine.store.latest(name)? {
                Some(previous) => {
                    println!("changed since the last entry ({}):", previous.manifest.key);
                    let previous = engine.store.manifest(&previous)?;
                    for line in explain_change(&previous.inputs, &inputs, &engine.store.trees_dir())
                    {
                        println!("  {line}");
                    }
                }
                None => println!("no earlier entry of `{name}` to compare with"),
            }
        }
    }
    if let Spec::Test(spec) = &plan.graph.nodes[root].recipe.spec {
        if spec.vm.start == StartMode::Boot {
            println!("environment: its VMs boot in full (start = \"boot\")");
        }
    }
    if let Some(env) = engine.environment_inputs(&plan, root, detect_accel(engine.store.root()).0) {
        let env_key = env.key();
        match engine.store.lookup_local(&env_key, &entry_name(name))? {
            Some(entry) => println!(
                "environment: {env_key}, its VMs start from the snapshot at {}",
                entry.path.display()
            ),
            None => {
                println!(
                    "environment: {env_key}, no snapshot yet: the next run boots once and saves it"
                );
                if let Some(previous) = engine.store.latest(&entry_name(name))? {
                    println!(
                        "  changed since the last snapshot ({}):",
                        previous.manifest.key
                    );
                    let previous = engine.store.manifest(&previous)?;
                    let now = env.to_value();
                    for line in explain_change(&previous.inputs, &now, &engine.store.trees_dir()) {
                        println!("    {line}");
                    }
                }
            }
        }
    }
    println!("inputs:");
    println!(
        "{}",
        serde_json::to_string_pretty(&inputs).unwrap_or_default()
    );
    Ok(0)
}
