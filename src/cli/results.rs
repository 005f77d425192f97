//! `vmbuild results RECIPE`: the last results, cached or failed, without running anything.

use std::io::IsTerminal;

use clap::Args;

use super::{durations, open_engine, render::Renderer, Global};
use crate::engine::{Engine, Error};
use crate::store::Entry;
use crate::testing::results::{junit_xml, read_log};
use crate::testing::{read_results, RunResults};

/// The longest bar of the duration histogram, in characters.
pub(super) const HISTOGRAM_WIDTH: usize = 40;

#[derive(Args)]
pub struct ResultsArgs {
    /// A test recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
    /// Print results.json instead of test lines
    #[arg(long)]
    json: bool,
    /// After the test lines, a table of the N slowest tests
    #[arg(long, value_name = "N", conflicts_with = "json")]
    print_slowest: Option<usize>,
    /// Join the results of the recipe's shards (`vmbuild test --shard K/N`) for its current
    /// inputs into one report; every part must be in the store
    #[arg(long)]
    merge: bool,
    /// With --merge: the N of the `--shard K/N` runs, so that parts the local store lacks
    /// are pulled from the remote cache (the shard jobs of a CI matrix each upload theirs;
    /// only all-pass parts are uploaded)
    #[arg(long, value_name = "N", requires = "merge", value_parser = clap::value_parser!(u32).range(1..=1000))]
    shards: Option<u32>,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<std::path::PathBuf>,
}

/// The results `results` shows and `record` names.
pub(super) struct Latest {
    pub entry: Entry,
    pub results: RunResults,
    /// The entry is not for the recipe's current inputs (it is the most recent one).
    pub stale: bool,
}

/// A test recipe's results: the entry for its current key when there is one, else its
/// most recent entry.
pub(super) fn latest_results(engine: &Engine, recipe: &str) -> Result<Latest, Error> {
    let name = engine.project.locate(recipe)?.name;
    // Prefer the entry for the current key; else the most recent one.
    let current = engine.plan(&[recipe.to_string()]).ok().and_then(|plan| {
        let root = *plan.graph.roots.first()?;
        let (key, kind) = (&plan.keys[root], plan.graph.nodes[root].recipe.kind());
        (engine.store.get(key, &name).ok().flatten())
            .or_else(|| engine.store.lookup(key, &name, kind).ok().flatten())
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
    Ok(Latest {
        entry,
        results,
        stale,
    })
}

/// `--merge`: the shards' results joined, and the recipe's results entry holding them.
fn merged(
    engine: &Engine,
    recipe: &str,
    shards: Option<u32>,
) -> Result<(RunResults, Entry), Error> {
    let plan = engine.plan(&[recipe.to_string()])?;
    let root = plan.graph.roots[0];
    engine.merged_shards(&plan, root, shards)
}

pub fn run(global: &Global, reporter: &Renderer, args: ResultsArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let (entry, results, stale) = match args.merge {
        true => {
            let (results, entry) = merged(&engine, &args.recipe, args.shards)?;
            (entry, results, false)
        }
        false => {
            let latest = latest_results(&engine, &args.recipe)?;
            (latest.entry, latest.results, latest.stale)
        }
    };
    if let Some(path) = &args.junit {
        let logs = |_: &str, test: &str| read_log(&entry.path, test);
        fs_err::write(path, junit_xml(&[&results], &logs))
            .map_err(|e| Error::Usage(format!("write the JUnit report: {e}")))?;
    }
    let name = &results.recipe;
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
            reporter.test_line(name, t, false);
        }
        if let Some(n) = args.print_slowest {
            print!("{}", durations::slowest(&[&results], n));
        }
        println!("{}", results.summary().line());
        if results.tests.len() >= 2 && std::io::stderr().is_terminal() {
            eprint!("{}", durations::histogram(&[&results], HISTOGRAM_WIDTH));
        }
        eprintln!("results in {}", entry.path.display());
        if stale {
            eprintln!("note: these results are for an older version of the inputs (`vmbuild explain {name}` shows what changed)");
        }
    }
    Ok(if results.all_passed() { 0 } else { 1 })
}
