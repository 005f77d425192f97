//! `vmbuild gc`: remove entries no recipe in `recipes/` reaches, or older than an age,
//! and the kept logs and source-tree listings that only removed entries named.

use std::collections::BTreeSet;

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::builders::kernel_source::local_build_dir_name;
use crate::engine::Error;
use crate::graph::tree_digest;
use crate::hashing::stat_cache_name;
use crate::recipe::units;
use crate::recipe::{Fetch, KernelSpec, Spec};
use crate::store::Entry;
use crate::testing::shards::RECIPE_KEY;

#[derive(Args)]
pub struct GcArgs {
    /// Also remove entries older than this (e.g. 7d, 12h), reachable or not
    #[arg(long, value_name = "AGE")]
    older_than: Option<String>,
    /// Keep unreachable entries; only apply --older-than
    #[arg(long)]
    keep_unreachable: bool,
}

/// A shard's results entry (`--shard`) of a recipe whose key is kept.
fn is_shard_of_kept(entry: &Entry, keep: &BTreeSet<String>) -> bool {
    entry.manifest.kind == "test"
        && entry
            .manifest
            .details
            .get(RECIPE_KEY)
            .and_then(|k| k.as_str())
            .is_some_and(|k| keep.contains(k))
}

pub fn run(global: &Global, reporter: &Renderer, args: GcArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let max_age = args
        .older_than
        .as_deref()
        .map(|age| units::AGE.parse(age))
        .transpose()
        .map_err(Error::Usage)?;
    let plan = if args.keep_unreachable {
        None
    } else {
        Some(engine.plan(&engine.project.recipe_names())?)
    };
    let keep = plan
        .as_ref()
        .map(|plan| -> Result<BTreeSet<String>, Error> {
            let mut keep: BTreeSet<String> = plan.keys.iter().cloned().collect();
            // The booted environments the test recipes start from, and the tests' own
            // results their next runs would reuse.
            keep.extend(engine.environment_keys(plan));
            keep.extend(engine.test_case_keys(plan)?);
            let entries = engine.store.entries()?;
            // The shards of the current test recipes.
            for entry in &entries {
                if is_shard_of_kept(entry, &keep) {
                    keep.insert(entry.manifest.key.clone());
                }
            }
            // Unpacked kernel sources are kept while any kernel recipe still builds from them.
            for entry in entries {
                if entry.manifest.kind == "source" {
                    keep.insert(entry.manifest.key);
                }
            }
            Ok(keep)
        });
    let keep = keep.transpose()?;
    let removed = engine.store.gc(keep.as_ref(), max_age)?;
    for entry in &removed {
        println!("removed {}", entry.path.display());
    }
    println!("{} entries removed", removed.len());
    if let Some(plan) = &plan {
        // Logs and tree listings go with the last entry or recipe that names them.
        let trees: BTreeSet<String> = plan
            .inputs
            .iter()
            .filter_map(|i| tree_digest(&i.to_value()).map(str::to_string))
            .collect();
        let keys: BTreeSet<String> = plan.keys.iter().cloned().collect();
        let mut files = engine.store.gc_side_files(&keys, &trees)?;
        // Build folders and stat caches of local kernel trees no recipe builds from.
        let local_trees: BTreeSet<String> = plan
            .graph
            .nodes
            .iter()
            .filter_map(|n| match &n.recipe.spec {
                Spec::Kernel(KernelSpec::FromSource {
                    source: Fetch::Path(tree),
                    ..
                }) => Some([
                    local_build_dir_name(tree, n.recipe.arch),
                    stat_cache_name(tree),
                ]),
                _ => None,
            })
            .flatten()
            .collect();
        files += engine.store.gc_tree_caches(&local_trees)?;
        if files > 0 {
            println!("{files} kept logs, tree listings and local build folders removed");
        }
    }
    Ok(0)
}
