//! `vmbuild test RECIPE...`

use std::path::PathBuf;

use clap::Args;

use super::{open_engine, render::Renderer, ForceArg, Global};
use crate::engine::Error;
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
}

pub fn run(global: &Global, reporter: &Renderer, args: TestArgs) -> Result<i32, Error> {
    if args.json {
        reporter.tests_to_stderr();
    }
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(&args.recipes)?;
    let tested = engine.test(&plan, args.force.level(), args.keep_alive)?;
    let mut total = Summary::default();
    for t in &tested {
        let s = t.results.summary();
        total.passed += s.passed;
        total.failed += s.failed;
        total.skipped += s.skipped;
        if args.json {
            let line = serde_json::json!({
                "name": t.name,
                "key": t.entry.manifest.key,
                "path": t.entry.path,
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
                .map(|t| crate::testing::results::read_log(&t.entry.path, test))
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
            eprintln!("{}: results in {}", t.name, t.entry.path.display());
        }
        let cached = tested.iter().all(|t| t.cached);
        let mut line = format!("{} passed, {} failed", total.passed, total.failed);
        if total.skipped > 0 {
            line.push_str(&format!(", {} skipped", total.skipped));
        }
        println!("{line}");
        if cached {
            eprintln!("(all results cached; -f reruns)");
        }
    }
    Ok(if total.failed > 0 { 1 } else { 0 })
}
