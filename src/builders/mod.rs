//! Builders turn a validated recipe plus its dependencies' entries into outputs in a
//! staging folder. One file per kind; `build` dispatches. Builders never touch published
//! entries except to read them.

mod buildlog;
pub mod bundle;
mod bundle_build;
pub mod disk;
mod kbuild;
pub mod kernel;
pub mod kernel_source;
pub mod rootfs;

use std::collections::BTreeMap;
use std::path::Path;

use crate::fetch::apt::{self, Pin};
use crate::fetch::lock::Lock;
use crate::fetch::FetchError;
pub use crate::fsio::io_err;
use crate::fsio::IoError;
use crate::process::ProcessError;
use crate::recipe::{Recipe, Spec};
use crate::store::{Entry, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    /// The recipe's own files say something impossible (a test header out of range): exit 2.
    #[error("{0}")]
    BadInput(String),
    /// The host lacks what the build needs: exit 4.
    #[error("{0}")]
    HostMissing(String),
}

/// What a builder may use besides its recipe.
pub struct BuildContext<'a> {
    pub store: &'a Store,
    pub lock: &'a Lock,
    /// Published entries of this recipe's dependencies, by recipe name.
    pub deps: &'a BTreeMap<String, Entry>,
    /// Scratch space that is removed after the build.
    pub work: &'a Path,
    /// Reports what the build is doing now (one short line).
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// Tells the user something they should see even without `-v` (one line).
    pub notice: &'a (dyn Fn(&str) + Sync),
    /// The key's inputs, as hashed.
    pub inputs: &'a serde_json::Value,
    /// Build from nothing: no incremental state (`-ff`).
    pub fresh: bool,
    /// Where a build's log is written while it runs (under the store's `logs/`): kept
    /// there when the build fails, so the error can point to it; moved into the entry
    /// when it succeeds.
    pub log: &'a Path,
}

impl BuildContext<'_> {
    pub fn dep(&self, name: &str) -> Result<&Entry, BuildError> {
        self.deps
            .get(name)
            .ok_or_else(|| BuildError::Invalid(format!("dependency `{name}` was not built")))
    }
}

/// Builds `recipe` into `out`; returns facts for the manifest's details.
pub fn build(
    recipe: &Recipe,
    ctx: &BuildContext,
    out: &Path,
) -> Result<serde_json::Map<String, serde_json::Value>, BuildError> {
    match &recipe.spec {
        Spec::Kernel(spec) => kernel::build(spec, recipe.arch, ctx, out),
        Spec::Rootfs(spec) => rootfs::build(spec, recipe.arch, ctx, out),
        Spec::Bundle(spec) => bundle::build(&recipe.name, spec, ctx, out),
        Spec::Disk(spec) => disk::build(spec, ctx, out),
        Spec::Test(_) => Err(BuildError::Invalid(format!(
            "`{}` is a test: run it with `vmbuild test`",
            recipe.name
        ))),
    }
}

/// A pinned Debian package, downloaded once into the store's downloads (verified against
/// its pin) and unpacked without installing it into `dest`.
pub(crate) fn unpack_deb(pin: &Pin, dest: &Path, ctx: &BuildContext) -> Result<(), BuildError> {
    (ctx.progress)(&format!("fetching {} {}", pin.package, pin.version));
    let deb = apt::download(pin, &ctx.store.downloads())?;
    (ctx.progress)(&format!("unpacking {}", pin.package));
    apt::extract(&deb, dest)?;
    Ok(())
}

/// Copies a file or a folder tree, keeping permissions and symlinks.
pub fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    let meta = fs_err::symlink_metadata(from).map_err(io_err("read", from))?;
    if let Some(parent) = to.parent() {
        fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
    }
    if meta.file_type().is_symlink() {
        let target = fs_err::read_link(from).map_err(io_err("read", from))?;
        let _ = fs_err::remove_file(to);
        std::os::unix::fs::symlink(&target, to).map_err(io_err("create symlink", to))?;
    } else if meta.is_dir() {
        fs_err::create_dir_all(to).map_err(io_err("create", to))?;
        for entry in fs_err::read_dir(from).map_err(io_err("read", from))? {
            let entry = entry.map_err(io_err("read", from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        fs_err::set_permissions(to, meta.permissions())
            .map_err(io_err("set permissions on", to))?;
    } else {
        if to.is_symlink() {
            fs_err::remove_file(to).map_err(io_err("replace", to))?;
        }
        fs_err::copy(from, to).map_err(io_err("copy to", to))?;
    }
    Ok(())
}
