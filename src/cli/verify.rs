//! `vmbuild verify`: rehash every entry against its manifest.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;

#[derive(Args)]
pub struct VerifyArgs {
    /// Remove entries that fail verification (they are rebuilt when next needed)
    #[arg(long)]
    delete: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: VerifyArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let mut bad = 0;
    let entries = engine.store.entries()?;
    for entry in &entries {
        let problems = engine.store.verify(entry);
        if problems.is_empty() {
            continue;
        }
        bad += 1;
        println!("corrupt: {}", entry.path.display());
        for p in &problems {
            println!("  {p}");
        }
        if args.delete {
            engine.store.remove(entry)?;
            println!("  removed");
        }
    }
    println!("{} entries checked, {bad} corrupt", entries.len());
    Ok(if bad > 0 && !args.delete { 3 } else { 0 })
}
