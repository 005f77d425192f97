//! `vmbuild lock`: resolve every Debian package the recipes use anew and rewrite vmbuild.lock.

use clap::Args;

use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;

#[derive(Args)]
pub struct LockArgs {}

pub fn run(global: &Global, reporter: &Renderer, _args: LockArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, true)?;
    let names = engine.project.recipe_names();
    engine.plan(&names)?;
    engine.lock.finish_refresh().map_err(|e| Error::Key {
        name: crate::fetch::lock::LOCK_FILE.into(),
        source: e.into(),
    })?;
    for pin in engine.lock.pins() {
        println!(
            "{} = {} {} (sha256 {})",
            pin.name, pin.package, pin.version, pin.sha256
        );
    }
    Ok(0)
}
