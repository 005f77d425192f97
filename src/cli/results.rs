//! `vmbuild results RECIPE`: the last results, cached or failed, without running anything.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::testing::read_results;

#[derive(Args)]
pub struct ResultsArgs {
    /// A test recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
    /// Print results.json instead of test lines
    #[arg(long)]
    json: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: ResultsArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let name = engine.project.locate(&args.recipe)?.name;
    // Prefer the entry for the current key; else the most recent one.
    let current = engine
        .plan(std::slice::from_ref(&args.recipe))
        .ok()
        .and_then(|plan| {
            let root = *plan.graph.roots.first()?;
            engine.store.get(&plan.keys[root], &name).ok().flatten()
        });
    let (entry, stale) = match current {
        Some(e) => (e, false),
        None => match engine.store.latest(&name)? {
            Some(e) => (e, true),
            None => {
                return Err(Error::Usage(format!(
                    "no results for `{name}` yet: run `vmbuild test {name}`"
                )))
            }
        },
    };
    let results = read_results(&entry)?;
    if args.json {
        // results.json, plus where it lives and whether it is for the current inputs.
        let mut value = serde_json::to_value(&results).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("path".into(), serde_json::json!(entry.path));
            object.insert("current".into(), serde_json::json!(!stale));
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        for t in &results.tests {
            reporter.test_line(&name, t, false);
        }
        println!("{}", results.summary().line());
        eprintln!("results in {}", entry.path.display());
        if stale {
            eprintln!("note: these results are for an older version of the inputs (`vmbuild explain {name}` shows what changed)");
        }
    }
    Ok(if results.all_passed() { 0 } else { 1 })
}
