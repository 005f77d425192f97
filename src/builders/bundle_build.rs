//! Bundles that compile: a bundle's `[build]` command, run in an empty working folder
//! with a clean environment; the folder it writes (`$VMBUILD_OUT`) is the bundle.
//!
//! The build's scratch folder (`<store>/tmp/<key>-<name>.<pid>.work/`, removed after):
//!
//! ```text
//! build/        the command's current folder: each input copied in under its file name
//! home/         $HOME
//! tmp/          $TMPDIR
//! debs/<pkg>/   each Debian package, unpacked ($VMBUILD_DEB_<PKG>)
//! out/          $VMBUILD_OUT: the bundle
//! ```
//!
//! The environment is only: PATH (vmbuild's own, where the keyed gcc and make were
//! found), HOME, TMPDIR, LC_ALL=C, TZ=UTC, SOURCE_DATE_EPOCH=0, VMBUILD_OUT, VMBUILD_JOBS
//! (the host's CPU count, for `make -j`), and a variable per input recipe and package:
//! `VMBUILD_INPUT_<NAME>` (that recipe's entry folder, read-only by convention) and
//! `VMBUILD_DEB_<NAME>` (name uppercased, other characters than letters and digits as `_`).
//! Everything the command is given is in the key; nothing of the project (the recipe's
//! folder, files beside the inputs) is in its folder or its environment. vmbuild does not
//! sandbox it: a command that names an absolute path reads it, unkeyed.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::buildlog::{BuildLog, Tail};
use super::{copy_tree, io_err, unpack_deb, BuildContext, BuildError};
use crate::graph::{build_input_content, hash_path};
use crate::process::ProcessError;
use crate::recipe::{build_env_var, BundleBuild};

/// `SOURCE_DATE_EPOCH`: the time tools that honour it write instead of now (1970-01-01).
const SOURCE_DATE_EPOCH: &str = "0";
/// PATH when vmbuild itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs the command; returns the folder it wrote and the build's log (still to be moved
/// into the entry).
pub(crate) fn run<'a>(
    build: &BundleBuild,
    ctx: &'a BuildContext,
) -> Result<(PathBuf, BuildLog<'a>), BuildError> {
    let dir = |name: &str| -> Result<PathBuf, BuildError> {
        let path = ctx.work.join(name);
        fs_err::create_dir_all(&path).map_err(io_err("create", &path))?;
        Ok(path)
    };
    let (cwd, home, tmp, out) = (dir("build")?, dir("home")?, dir("tmp")?, dir("out")?);
    copy_inputs(build, &cwd, ctx)?;

    let program = &build.command[0];
    // A relative path (`./build.sh`) is the working folder's; a bare name is PATH's.
    let mut cmd = if program.contains('/') {
        Command::new(cwd.join(program))
    } else {
        Command::new(program)
    };
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    cmd.args(&build.command[1..])
        .current_dir(&cwd)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        )
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .env("SOURCE_DATE_EPOCH", SOURCE_DATE_EPOCH)
        .env("VMBUILD_OUT", &out)
        .env("VMBUILD_JOBS", jobs.to_string());
    for recipe in &build.recipes {
        let entry = ctx.dep(&recipe.name)?;
        cmd.env(build_env_var("VMBUILD_INPUT_", &recipe.name), &entry.path);
    }
    for package in &build.debs {
        let pin = ctx
            .lock
            .pin_for(package, crate::recipe::Arch::host(), false)?;
        let unpacked = dir(&format!("debs/{package}"))?;
        unpack_deb(&pin, &unpacked, ctx)?;
        cmd.env(build_env_var("VMBUILD_DEB_", package), unpacked);
    }

    let mut log = BuildLog::create(ctx, Tail::Output)?;
    (ctx.progress)(&format!("running {}", crate::process::describe(&cmd)));
    match log.run(&mut cmd) {
        // Not the host's missing tool (exit 4): the recipe names a program that is not
        // there (an input it did not declare, a typo).
        Err(BuildError::Process(ProcessError::Missing { .. })) => {
            Err(BuildError::Invalid(format!(
                "the [build] command's program `{program}` (or its #! interpreter) was not \
                 found: a path is looked up in the working folder (it holds only the inputs), \
                 a bare name on PATH"
            )))
        }
        Err(e) => Err(e),
        Ok(()) => Ok((out, log)),
    }
}

/// Copies each input into the working folder, and checks that the copy is what the key
/// holds: an input edited since vmbuild keyed it would be stored under a key that does
/// not describe it.
fn copy_inputs(build: &BundleBuild, cwd: &Path, ctx: &BuildContext) -> Result<(), BuildError> {
    for input in &build.inputs {
        let copy = cwd.join(&input.name);
        copy_tree(&input.path, &copy)?;
        let copied = hash_path(&copy)
            .map_err(|e| BuildError::Invalid(format!("hash {}: {e}", copy.display())))?;
        if build_input_content(ctx.inputs, &input.name) != Some(&copied) {
            return Err(BuildError::Invalid(format!(
                "the input {} changed while vmbuild built the bundle: nothing is stored; run again",
                input.path.display()
            )));
        }
    }
    Ok(())
}
