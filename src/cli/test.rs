//! `vmbuild test RECIPE...`

use std::path::PathBuf;

use clap::Args;

use std::io::IsTerminal;

use super::render::printable;
use super::results::HISTOGRAM_WIDTH;
use super::{durations, open_engine, render::Renderer, ForceArg, Global};
use crate::engine::{Error, TestOptions};
use crate::testing::runner::{Listed, ListedTests, Policy};
use crate::testing::select::{Order, Selection, Shard};
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
    /// Run a failed test again up to N times, each in a fresh VM; one that then passes is
    /// `flaky` (counted as passed, listed apart)
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: u32,
    /// Count a flaky test (failed, then passed when retried) as a failure
    #[arg(long)]
    flaky_fails: bool,
    /// Replace a VM that dies or goes silent under a test and run the test again, at most
    /// N times per test; then the test is a `crash`
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100))]
    max_vm_restarts: u32,
    /// Run only the tests whose name matches GLOB (`*`, `?`, `[..]`, `{a,b}`; repeatable).
    /// Such a run stores each test's result, not the recipe's
    #[arg(long, value_name = "GLOB")]
    filter: Vec<String>,
    /// Leave out the tests whose name matches GLOB (repeatable)
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Run each test N times (as NAME, NAME#2, ...); nothing of such a run is stored or
    /// reused
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    iterate: u32,
    /// The order VMs take tests in: slowest (by the last durations, new tests first),
    /// name, or random (the seed is printed; --seed repeats it)
    #[arg(long, value_name = "ORDER", default_value = "slowest", value_parser = Order::parse)]
    order: Order,
    /// The seed of --order random
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Run part K of N of the tests (deterministic, balanced by the last durations):
    /// for a CI matrix; `vmbuild results --merge RECIPE` joins the parts
    #[arg(long, value_name = "K/N", value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// Run independent test recipes (neither `after` the other) at once while their VMs
    /// (`[vm] vms` each) come to at most N; 1 runs one recipe at a time
    #[arg(short = 'j', long = "jobs", value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    jobs: u16,
    /// Start VMs even when their memory together exceeds what the host has available
    #[arg(long)]
    allow_overcommit: bool,
    /// Print what a run would do with each test (run it, reuse its stored result, skip
    /// it), building what the tests need but starting no VM
    #[arg(long)]
    list: bool,
    /// After the results, print the N slowest tests
    #[arg(long, value_name = "N", conflicts_with = "json")]
    print_slowest: Option<usize>,
}

pub fn run(global: &Global, reporter: &Renderer, args: TestArgs) -> Result<i32, Error> {
    if args.json {
        reporter.tests_to_stderr();
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    if args.order == Order::Random {
        eprintln!("order: random, seed {seed} (--seed {seed} repeats it)");
    } else if args.seed.is_some() {
        eprintln!("note: --seed only matters with --order random");
    }
    let selection = Selection {
        include: Selection::globs(&args.filter).map_err(Error::Usage)?,
        exclude: Selection::globs(&args.exclude).map_err(Error::Usage)?,
        shard: args.shard,
        order: args.order,
        seed,
        iterate: args.iterate,
    };
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(&args.recipes)?;
    let options = TestOptions {
        force: args.force.level(),
        keep_alive: args.keep_alive,
        cold: args.cold,
        vm_budget: args.jobs.into(),
        policy: Policy {
            selection,
            retries: args.retries,
            flaky_fails: args.flaky_fails,
            max_vm_restarts: args.max_vm_restarts,
            allow_overcommit: args.allow_overcommit,
        },
    };
    if args.list {
        print_list(&engine.list_tests(&plan, &options)?, args.json);
        return Ok(0);
    }
    let tested = engine.test(&plan, &options)?;
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
                .and_then(|t| t.folder.as_ref())
                .map(|folder| crate::testing::results::read_log(folder, test))
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
            match (&t.entry, &t.folder) {
                (Some(entry), _) => eprintln!("{}: results in {}", t.name, entry.path.display()),
                (None, Some(folder)) => eprintln!(
                    "{}: results in {} (not all of the tests, or repeated: the recipe's results are not stored)",
                    t.name,
                    folder.display()
                ),
                (None, None) => eprintln!("{}: not run, nothing stored", t.name),
            }
        }
        let cached = tested.iter().all(|t| t.cached);
        let runs: Vec<_> = tested.iter().map(|t| &t.results).collect();
        if let Some(n) = args.print_slowest {
            print!("{}", durations::slowest(&runs, n));
        }
        if runs.iter().map(|r| r.tests.len()).sum::<usize>() >= 2 && std::io::stderr().is_terminal()
        {
            eprint!("{}", durations::histogram(&runs, HISTOGRAM_WIDTH));
        }
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

/// `--list`: one line per test (`RUN`, `CACHED`, `SKIP` and why), then the counts; or one
/// JSON object per recipe.
fn print_list(listed: &[(String, ListedTests)], json: bool) {
    let (mut run, mut cached, mut skipped) = (0, 0, 0);
    for (recipe, tests) in listed {
        if json {
            let tests: Vec<_> = tests
                .iter()
                .map(|(name, what)| match what {
                    Listed::Run => serde_json::json!({ "name": name, "will": "run" }),
                    Listed::Cached => serde_json::json!({ "name": name, "will": "reuse" }),
                    Listed::Skip(why) => {
                        serde_json::json!({ "name": name, "will": "skip", "reason": why })
                    }
                })
                .collect();
            println!("{}", serde_json::json!({ "name": recipe, "tests": tests }));
            continue;
        }
        for (name, what) in tests {
            let (word, why) = match what {
                Listed::Run => ("RUN", String::new()),
                Listed::Cached => ("CACHED", String::new()),
                Listed::Skip(why) => ("SKIP", format!(": {}", printable(why))),
            };
            println!("{word:<7} {recipe}/{}{why}", printable(name));
        }
    }
    for (_, tests) in listed {
        for (_, what) in tests {
            match what {
                Listed::Run => run += 1,
                Listed::Cached => cached += 1,
                Listed::Skip(_) => skipped += 1,
            }
        }
    }
    if !json {
        println!("{run} to run, {cached} cached, {skipped} skipped");
    }
}
