//! `vmbuild test RECIPE...`

use std::path::PathBuf;

use clap::Args;

use super::{open_engine, render::Renderer, ForceArg, Global};
use crate::engine::{Error, TestOptions};
use crate::testing::{results::junit_xml, Summary};

#[derive(Args)]
pub struct TestArgs {
    /// Test recipe names (recipes/NAME.toml) or paths to .toml files
    #[arg(required = true, value_name = "RECIPE")]
    recipes: Vec<String>,
    #[command(flatten)]
    force: ForceArg,
    /// Also write the results as JUnit XML to FILE
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Print the results as one JSON object per test recipe instead of test lines
    #[arg(long)]
    json: bool,
    /// When a test fails, keep its VM running with a shell on a third serial port, and
    /// print how to attach to it and how to end it
    #[arg(long)]
    keep_alive: bool,
    /// Boot every VM in full this run, instead of starting it from the environment's
    /// snapshot (the default `[vm] start = "snapshot"`); the snapshot is left as it is
    #[arg(long)]
    cold: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: TestArgs) -> Result<i32, Error> {
    if args.json {
        reporter.tests_to_stderr();
    }
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(&args.recipes)?;
    let tested = engine.test(
        &plan,
        &TestOptions {
            force: args.force.level(),
            keep_alive: args.keep_alive,
            cold: args.cold,
        },
    )?;
    let mut total = Summary::default();
    for t in &tested {
        let s = t.results.summary();
        total.add(s);
        if args.json {
            let line = serde_json::json!({
                "name": t.name,
                "key": t.entry.as_ref().map(|e| &e.manifest.key),
                "path": t.entry.as_ref().map(|e| &e.path),
                "cached": t.cached,
                "accel": t.results.accel,
                "summary": s,
                "tests": t.results.tests,
            });
            println!("{line}");
        }
    }
    if let Some(path) = &args.junit {
        let runs: Vec<_> = tested.iter().map(|t| &t.results).collect();
        let logs = |recipe: &str, test: &str| {
            tested
                .iter()
                .find(|t| t.name == recipe)
                .and_then(|t| t.entry.as_ref())
                .map(|e| crate::testing::results::read_log(&e.path, test))
                .unwrap_or_default()
        };
        fs_err::write(path, junit_xml(&runs, &logs))
            .map_err(|e| Error::Usage(format!("write the JUnit report: {e}")))?;
    }
    if !args.json {
        for t in tested
            .iter()
            .filter(|t| !t.cached || t.results.summary().failed > 0)
        {
            match &t.entry {
                Some(entry) => eprintln!("{}: results in {}", t.name, entry.path.display()),
                None => eprintln!("{}: not run, nothing stored", t.name),
            }
        }
        let cached = tested.iter().all(|t| t.cached);
        println!("{}", total.line());
        if cached {
            eprintln!("(all results cached; -f reruns)");
        }
    }
    Ok(if total.failed > 0 || total.not_run > 0 {
        1
    } else {
        0
    })
}
