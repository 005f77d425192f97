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
    /// Print one JSON object per requested recipe: {"name","kind","key","path","cached"};
    /// a disk adds "image", "size" and "partitions" (number, name, type, uuid, start and
    /// size in bytes)
    #[arg(long)]
    json: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: BuildArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let plan = engine.plan(&args.recipes)?;
    let built = engine.build(&plan, args.force.level())?;
    for b in built {
        // A disk's output is its image file: the path a user hands to qemu or dd.
        let details = &b.entry.manifest.details;
        let image = details
            .get("image")
            .and_then(|i| i.as_str())
            .filter(|_| b.kind == crate::format::disk::KIND)
            .map(|i| b.entry.path.join(i));
        if args.json {
            let mut line = serde_json::json!({
                "name": b.name,
                "kind": b.kind,
                "key": b.entry.manifest.key,
                "path": b.entry.path,
                "cached": b.cached,
            });
            if let Some(image) = &image {
                line["image"] = serde_json::json!(image);
                line["size"] = details.get("size").cloned().unwrap_or_default();
                line["partitions"] = details.get("partitions").cloned().unwrap_or_default();
            }
            println!("{line}");
        } else {
            println!("{}", image.as_ref().unwrap_or(&b.entry.path).display());
        }
    }
    Ok(0)
}
