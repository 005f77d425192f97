//! `vmbuild verify`: rehash every entry against its manifest.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::store::Scanned;

#[derive(Args)]
pub struct VerifyArgs {
    /// Remove entries that fail verification (they are rebuilt when next needed)
    #[arg(long)]
    delete: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: VerifyArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let mut bad = 0;
    let scanned = engine.store.scan()?;
    // Every folder is checked and reported, readable or not; none stops the others.
    for item in &scanned {
        let problems = match item {
            Scanned::Entry(entry) => engine.store.verify(entry),
            Scanned::Bad { problem, .. } => vec![problem.clone()],
        };
        if problems.is_empty() {
            continue;
        }
        bad += 1;
        println!("corrupt: {}", item.path().display());
        for p in &problems {
            println!("  {p}");
        }
        if args.delete {
            match engine.store.remove_folder(item.path()) {
                Ok(()) => println!("  removed"),
                Err(e) => println!("  not removed: {e}"),
            }
        }
    }
    println!("{} entries checked, {bad} corrupt", scanned.len());
    Ok(if bad > 0 && !args.delete { 3 } else { 0 })
}
