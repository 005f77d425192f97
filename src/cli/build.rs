//! `vmbuild build RECIPE...`

use clap::Args;

use super::{open_engine, render::Renderer, ForceArg, Global};
use crate::engine::Error;

#[derive(Args)]
pub struct BuildArgs {
    /// Recipe names (recipes/NAME.toml) or paths to .toml files
    #[arg(required = true, value_name = "RECIPE")]
    recipes: Vec<String>,
    #[command(flatten)]
    force: ForceArg,
    /// Print one JSON object per requested recipe: {"name","kind","key","path","cached"}
    #[arg(long)]
    json: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: BuildArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(&args.recipes)?;
    let built = engine.build(&plan, args.force.level())?;
    for b in built {
        if args.json {
            let line = serde_json::json!({
                "name": b.name,
                "kind": b.kind,
                "key": b.entry.manifest.key,
                "path": b.entry.path,
                "cached": b.cached,
            });
            println!("{line}");
        } else {
            println!("{}", b.entry.path.display());
        }
    }
    Ok(0)
}
