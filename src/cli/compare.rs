//! `vmbuild compare A B`: what changed between two records (`vmbuild record`): tests that
//! changed status, came or went, the largest changes of duration, and a summary line.
//! Exits 1 when a test went from passing to failing. `testing::compare` does the
//! comparing; this file prints it.

use clap::Args;

use super::render::printable;
use super::{open_engine, record, render::Renderer, Global};
use crate::engine::Error;
use crate::testing::compare::{Change, Comparison, DurationChange};

#[derive(Args)]
pub struct CompareArgs {
    /// The earlier record's label
    #[arg(value_name = "A")]
    a: String,
    /// The later record's label
    #[arg(value_name = "B")]
    b: String,
    /// How many of the largest duration changes to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Print the comparison as JSON
    #[arg(long)]
    json: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: CompareArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let a = record::read(&engine.store, &args.a)?;
    let b = record::read(&engine.store, &args.b)?;
    let mut comparison = Comparison::between(&a.results, &b.results);
    comparison.durations.truncate(args.top);
    if args.json {
        let side = |r: &record::Record| {
            serde_json::json!({
                "label": r.label,
                "recipe": r.recipe,
                "key": r.key,
                "recorded_at": r.recorded_at,
            })
        };
        let mut value = serde_json::to_value(&comparison).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("a".into(), side(&a));
            object.insert("b".into(), side(&b));
            object.insert("regressed".into(), comparison.regressed().into());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        println!(
            "{} ({}, {} tests) -> {} ({}, {} tests)",
            a.label,
            a.recipe,
            a.results.tests.len(),
            b.label,
            b.recipe,
            b.results.tests.len()
        );
        print!("{}", status_changes(&comparison.changes));
        print!("{}", duration_changes(&comparison.durations));
        println!("{}", summary(&comparison));
    }
    if a.recipe != b.recipe {
        eprintln!(
            "note: `{}` is of `{}`, `{}` of `{}`: tests are matched by name",
            a.label, a.recipe, b.label, b.recipe
        );
    }
    Ok(i32::from(comparison.regressed()))
}

/// `pass -> fail  NAME`, `added (pass)  NAME`, `removed (fail)  NAME`, one a line.
fn status_changes(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no status changes\n".into();
    }
    let what: Vec<String> = changes
        .iter()
        .map(|c| match (c.before, c.after) {
            (Some(before), Some(after)) => format!("{} -> {}", before.name(), after.name()),
            (None, Some(after)) => format!("added ({})", after.name()),
            (Some(before), None) => format!("removed ({})", before.name()),
            (None, None) => String::new(),
        })
        .collect();
    let width = what.iter().map(String::len).max().unwrap_or(0);
    let mut text = String::from("status changes:\n");
    for (what, c) in what.iter().zip(changes) {
        let mark = if c.regressed { "  [regressed]" } else { "" };
        text.push_str(&format!("  {what:<width$}  {}{mark}\n", printable(&c.name)));
    }
    text
}

/// `+12.30s  +300%  4.10s -> 16.40s  NAME`, one a line, under a header; empty when none.
fn duration_changes(durations: &[DurationChange]) -> String {
    if durations.is_empty() {
        return String::new();
    }
    let mut text = String::from("largest duration changes:\n");
    for d in durations {
        let percent = match d.percent() {
            Some(p) => format!("{p:+.0}%"),
            None => "-".into(),
        };
        text.push_str(&format!(
            "  {:>+9.2}s  {percent:>6}  {:>8.2}s -> {:>8.2}s  {}\n",
            d.delta(),
            d.before,
            d.after,
            printable(&d.name)
        ));
    }
    text
}

/// `N regressed, N fixed, ..., N unchanged; 40.1s -> 52.3s in all`.
fn summary(c: &Comparison) -> String {
    let count = |f: &dyn Fn(&Change) -> bool| c.changes.iter().filter(|x| f(x)).count();
    let regressed = count(&|x| x.regressed);
    let fixed = count(&Change::fixed);
    let added = count(&|x| x.before.is_none());
    let removed = count(&|x| x.after.is_none());
    let other = c.changes.len() - regressed - fixed - added - removed;
    let mut parts = vec![format!("{regressed} regressed")];
    for (n, what) in [
        (fixed, "fixed"),
        (other, "changed status otherwise"),
        (added, "added"),
        (removed, "removed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.push(format!("{} unchanged", c.unchanged));
    format!(
        "{}; {:.1}s -> {:.1}s in all",
        parts.join(", "),
        c.before_seconds,
        c.after_seconds
    )
}
