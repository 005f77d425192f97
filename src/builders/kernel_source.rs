//! Kernels from source, with the kernel's own build: config base (`make tinyconfig`, ...
//! or a full `.config`), fragments merged by the kernel's `merge_config.sh`, then
//! `olddefconfig`; every option a fragment asked for is checked to have survived. Builds
//! are out of tree (`O=`) in a build folder kept per (source, arch) under
//! `<store>/kbuild/`, so the next build only recompiles what changed. That folder is a
//! cache, never an input: deleting it gives the same output.
//!
//! Sources: a Debian `linux-source-*` package or a URL tarball, each unpacked once into
//! its own store entry (`src-<package>`), or a local tree used in place.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use super::buildlog::{BuildLog, Tail, BUILD_LOG};
use super::kbuild::BuildFolder;
use super::{copy_tree, io_err, unpack_deb, BuildContext, BuildError};
use crate::fetch::http;
use crate::format::kconfig::read_config;
use crate::graph::{kbuild_flags, kernel_toolchain, tree_digest};
use crate::hashing::{self, Listing};
use crate::process;
use crate::recipe::{Arch, ConfigBase, Fetch, KernelSpec};
use crate::store::{Build, Manifest};

/// Host tools the kernel build needs, with the Debian package of each.
const BUILD_TOOLS: [(&str, &str); 7] = [
    ("gcc", "gcc"),
    ("make", "make"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("perl", "perl"),
    ("xz", "xz-utils"),
];
/// Headers the kernel build needs, with the Debian package of each.
const BUILD_HEADERS: [(&str, &str); 2] = [
    ("/usr/include/libelf.h", "libelf-dev"),
    ("/usr/include/openssl/ssl.h", "libssl-dev"),
];

pub fn build(
    spec: &KernelSpec,
    arch: Arch,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    let KernelSpec::FromSource {
        source,
        base,
        fragments,
        make_flags,
    } = spec
    else {
        return Err(BuildError::Invalid("not a kernel built from source".into()));
    };
    let make_flags = &kbuild_flags(arch, make_flags);
    check_host_tools(make_flags)?;
    let (tree, source_id) = source_tree(source, ctx)?;
    let build_dir = ctx
        .store
        .kbuild_dir()
        .join(build_dir_name(&source_id, arch));
    fs_err::create_dir_all(&build_dir).map_err(io_err("create", &build_dir))?;
    // One builder at a time per build folder; another vmbuild (or gc) waits here.
    let _lock = ctx.store.lock(&ctx.store.kbuild_lock_key(&build_dir), || {
        (ctx.progress)("waiting for another vmbuild using the same kernel build folder")
    })?;
    let listing = match source {
        Fetch::Path(tree) => Some(keyed_listing(tree, ctx)?),
        _ => None,
    };
    let mut folder = BuildFolder::open(&build_dir, ctx.fresh, ctx.notice)?;
    folder.start(&tree, listing.as_ref(), ctx.notice)?;

    let mut make = Make::new(&tree, &build_dir, make_flags, ctx)?;
    let config = build_dir.join(".config");
    let config_inputs = config_inputs(
        base,
        fragments,
        make_flags,
        &source_id,
        listing.as_ref(),
        ctx,
    )?;
    // From the first make on, a killed build leaves the folder untrusted: configuring
    // builds host tools (scripts/kconfig/conf, fixdep) into it too.
    folder.compiling()?;
    if folder.config_is_current(&config_inputs) {
        (ctx.progress)("reusing .config: its base, fragments and Kconfig files are unchanged");
    } else {
        (ctx.progress)("configuring");
        match base {
            ConfigBase::Target(target) => make.run_in(&mut folder, &[target], false)?,
            ConfigBase::File(file) => {
                fs_err::copy(file, &config).map_err(io_err("copy config to", &config))?;
            }
        }
        if !fragments.is_empty() {
            let mut cmd = Command::new(tree.join("scripts/kconfig/merge_config.sh"));
            cmd.arg("-m")
                .arg("-O")
                .arg(&build_dir)
                .arg(&config)
                .args(fragments)
                .current_dir(&build_dir);
            make.run_logged(&mut cmd)?;
        }
        make.run_in(&mut folder, &["olddefconfig"], false)?;
        folder.config_made(&config_inputs)?;
    }
    check_fragments(fragments, &config)?;

    (ctx.progress)("compiling");
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    make.run_in(&mut folder, &["-j", &jobs], true)?;
    // Syncconfig may rewrite the .config while compiling (a new compiler version): what
    // is stored must still hold every option asked for.
    check_fragments(fragments, &config)?;
    for (from, to) in [
        (arch.kbuild_image(), arch.kernel_image()),
        (".config", "config"),
        ("System.map", "System.map"),
        ("vmlinux", "vmlinux"),
    ] {
        copy_tree(&build_dir.join(from), &out.join(to))?;
    }
    let release = fs_err::read_to_string(build_dir.join("include/config/kernel.release"))
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    let options = read_config(&config).map_err(io_err("read", &config))?;
    if options.get("CONFIG_MODULES").is_some_and(|v| v == "y") {
        (ctx.progress)("installing modules");
        let staging = ctx.work.join("modules-install");
        make.run(&[
            "modules_install",
            &format!("INSTALL_MOD_PATH={}", staging.display()),
        ])?;
        let installed = staging.join("lib/modules").join(&release);
        if installed.is_dir() {
            for link in ["build", "source"] {
                let _ = fs_err::remove_file(installed.join(link));
            }
            copy_tree(&installed, &out.join("modules").join(&release))?;
        }
    }
    if let (Fetch::Path(tree), Some(keyed)) = (source, &listing) {
        // Make read the tree as it is now: it must still be the keyed one.
        still_keyed(tree, keyed, ctx)?;
    }
    // The log of a successful build belongs to its entry.
    let entry_log = out.join(BUILD_LOG);
    make.finish_log(&entry_log)?;
    Ok(Map::from_iter([
        ("release".to_string(), json!(release)),
        ("build_dir".to_string(), json!(build_dir)),
    ]))
}

/// The kernel's make, out of tree, with its output appended to the build's log (each
/// line becomes the progress line; a failure carries the tail of its stderr and the log's
/// path).
///
/// Make runs in a clean environment (PATH, HOME, TMPDIR and a C locale): a variable
/// such as ARCH, CC, LLVM, KCFLAGS or MAKEFLAGS in vmbuild's own environment would change
/// the kernel without changing its key. Builds are reproducible: a fixed timestamp, user,
/// host and build number (`#1`), and no `+` for a dirty git tree.
struct Make<'a> {
    tree: &'a Path,
    build_dir: &'a Path,
    make_flags: &'a [String],
    log: BuildLog<'a>,
}

impl<'a> Make<'a> {
    fn new(
        tree: &'a Path,
        build_dir: &'a Path,
        make_flags: &'a [String],
        ctx: &'a BuildContext,
    ) -> Result<Make<'a>, BuildError> {
        Ok(Make {
            tree,
            build_dir,
            make_flags,
            log: BuildLog::create(ctx, Tail::Stderr)?,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(self.tree)
            .arg(format!("O={}", self.build_dir.display()))
            .args(self.make_flags)
            .args(args);
        clean_env(&mut cmd);
        cmd.env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("KBUILD_BUILD_USER", "vmbuild")
            .env("KBUILD_BUILD_HOST", "vmbuild")
            .env("KBUILD_BUILD_VERSION", "1")
            .env("LOCALVERSION", "");
        cmd
    }

    /// `make ARGS`; a non-zero exit is an error.
    fn run(&mut self, args: &[&str]) -> Result<(), BuildError> {
        let mut cmd = self.command(args);
        self.log.run(&mut cmd)
    }

    /// `make ARGS` in the build folder, which learns that make returned (and, for the
    /// `compile`, whether it succeeded); a non-zero exit is an error.
    fn run_in(
        &mut self,
        folder: &mut BuildFolder,
        args: &[&str],
        compile: bool,
    ) -> Result<(), BuildError> {
        let mut cmd = self.command(args);
        let status = self.log.status(&mut cmd)?;
        // Make returned with a status: what it left is whole (Kbuild removes what a
        // failed command half-made). Killed by a signal, it may not be: left unfinished.
        if status.code().is_some() {
            folder.returned(compile && status.success())?;
        }
        self.log.check(status)
    }

    /// Another command of the build (merge_config.sh), logged the same way.
    fn run_logged(&mut self, cmd: &mut Command) -> Result<(), BuildError> {
        clean_env(cmd);
        self.log.run(cmd)
    }

    /// Moves the log of a successful build to `to` (in the entry).
    fn finish_log(self, to: &Path) -> Result<(), BuildError> {
        self.log.finish(to)
    }
}

/// Leaves a kernel build command only the environment it needs.
fn clean_env(cmd: &mut Command) {
    cmd.env_clear().env("LC_ALL", "C");
    for name in ["PATH", "HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
}

/// The listing the key was computed from, as kept when the tree was keyed.
fn keyed_listing(tree: &Path, ctx: &BuildContext) -> Result<Listing, BuildError> {
    let digest = tree_digest(ctx.inputs).unwrap_or_default();
    match Listing::load(&ctx.store.trees_dir(), digest) {
        Some(listing) => Ok(listing),
        // Removed since keying (pruned, or a concurrent gc): list the tree again.
        None => {
            let listing = hashing::kernel_tree_listing(tree, &ctx.store.statcache_dir())
                .map_err(io_err("list", tree))?;
            if listing.digest != digest {
                return Err(changed_since_keyed(tree, &[]));
            }
            Ok(listing)
        }
    }
}

/// The tree must still be the one the key was computed from: an edit after keying (or
/// during the build) would store a kernel under a key that does not describe it.
fn still_keyed(tree: &Path, keyed: &Listing, ctx: &BuildContext) -> Result<(), BuildError> {
    let now = hashing::kernel_tree_listing(tree, &ctx.store.statcache_dir())
        .map_err(io_err("list", tree))?;
    if now.digest == keyed.digest {
        return Ok(());
    }
    let changed: Vec<&str> = hashing::changes(keyed, &now)
        .into_iter()
        .map(|(rel, _)| rel)
        .collect();
    Err(changed_since_keyed(tree, &changed))
}

fn changed_since_keyed(tree: &Path, changed: &[&str]) -> BuildError {
    let named = match changed {
        [] => String::new(),
        some => format!(
            " ({}{})",
            some.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            if some.len() > 5 { ", ..." } else { "" }
        ),
    };
    BuildError::Invalid(format!(
        "the source tree {} changed while vmbuild built it{named}: the kernel is not stored; run again",
        tree.display()
    ))
}

/// A digest of everything the `.config` is made from: the config base and fragments, the
/// make flags, the toolchain (Kconfig probes it), and the source's identity; for a local
/// tree, only the files Kconfig reads (every `Kconfig*`, `scripts/`, `configs/` folders,
/// the top-level and arch Makefiles), so a C edit keeps the `.config`.
fn config_inputs(
    base: &ConfigBase,
    fragments: &[PathBuf],
    make_flags: &[String],
    source_id: &str,
    listing: Option<&Listing>,
    ctx: &BuildContext,
) -> Result<String, BuildError> {
    let hash = |path: &Path| {
        hashing::sha256_file(path)
            .map(|(sha, _)| sha)
            .map_err(io_err("read", path))
    };
    let base = match base {
        ConfigBase::Target(target) => json!({ "target": target }),
        ConfigBase::File(file) => json!({ "file": hash(file)? }),
    };
    let fragments = fragments
        .iter()
        .map(|f| hash(f))
        .collect::<Result<Vec<_>, _>>()?;
    // The compiler's, linker's and make's versions, as the key has them.
    let toolchain = ctx.inputs.get("tools").cloned().unwrap_or_default();
    let kconfig_files: Vec<(&str, &str)> = listing
        .map(|l| {
            l.files()
                .filter(|(rel, _)| {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    name.starts_with("Kconfig")
                        || rel.starts_with("scripts/")
                        || rel.contains("/configs/")
                        || *rel == "Makefile"
                        // arch/x86/Makefile names the defconfig, among others.
                        || (rel.starts_with("arch/") && name == "Makefile" && rel.matches('/').count() == 2)
                })
                .collect()
        })
        .unwrap_or_default();
    let inputs = json!({
        "base": base,
        "fragments": fragments,
        "make_flags": make_flags,
        "toolchain": toolchain,
        "source": source_id,
        "kconfig_files": kconfig_files,
    });
    Ok(hashing::sha256_hex(inputs.to_string().as_bytes()))
}

/// The build tools, and the compiler and linker the make flags pick (a cross compiler
/// for another arch), each present or named with its package.
fn check_host_tools(make_flags: &[String]) -> Result<(), BuildError> {
    let (compiler, linker) = kernel_toolchain(make_flags);
    let mut missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .filter(|(tool, _)| process::which(tool).is_none())
        .map(|(_, p)| *p)
        .collect();
    for tool in [compiler.as_str(), linker.as_str()] {
        // A package vmbuild cannot name: the tool itself says what is missing.
        let package = process::known_package_for(tool).unwrap_or(tool);
        if process::which(tool).is_none() && !missing.contains(&package) {
            missing.push(package);
        }
    }
    missing.extend(
        BUILD_HEADERS
            .iter()
            .filter(|(h, _)| !Path::new(h).exists())
            .map(|(_, p)| *p),
    );
    if missing.is_empty() {
        return Ok(());
    }
    Err(BuildError::HostMissing(format!(
        "building a kernel needs host tools that are missing: {}\n  help: apt-get install {}",
        missing.join(", "),
        missing.join(" ")
    )))
}

/// The build folder's name part for a local tree: by its path (`local-<sha16>`).
pub(crate) fn local_source_id(tree: &Path) -> String {
    format!(
        "local-{}",
        &hashing::sha256_hex(tree.to_string_lossy().as_bytes())[..16]
    )
}

/// The build folder of a local tree for `arch`, under the store's `kbuild/`.
pub(crate) fn local_build_dir_name(tree: &Path, arch: Arch) -> String {
    build_dir_name(&local_source_id(tree), arch)
}

/// One build folder per source and arch: the objects of one arch are no use to another.
fn build_dir_name(source_id: &str, arch: Arch) -> String {
    format!("{source_id}-{}", arch.name())
}

/// The unpacked source tree, and a stable id for the build folder.
fn source_tree(source: &Fetch, ctx: &BuildContext) -> Result<(PathBuf, String), BuildError> {
    match source {
        Fetch::Path(path) => Ok((path.clone(), local_source_id(path))),
        Fetch::Deb { package, .. } => {
            let pin = ctx.lock.pin(package, false)?;
            let name = format!("src-{}", pin.package);
            let tree = unpacked_source(ctx, &pin.sha256, &name, |work| {
                let unpacked = work.join("deb");
                unpack_deb(&pin, &unpacked, ctx)?;
                let src = unpacked.join("usr/src");
                let tarball = fs_err::read_dir(&src)
                    .map_err(io_err("read", &src))?
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
                    .ok_or_else(|| {
                        BuildError::Invalid(format!("{} holds no usr/src/*.tar.xz", pin.package))
                    })?;
                Ok(tarball)
            })?;
            Ok((tree, format!("{}-{}", pin.package, &pin.sha256[..16])))
        }
        Fetch::Url { url, sha256 } => {
            let tree = unpacked_source(ctx, sha256, "src-tarball", |_| {
                (ctx.progress)(&format!("downloading {url}"));
                Ok(http::download(url, sha256, &ctx.store.downloads())?)
            })?;
            Ok((tree, format!("url-{}", &sha256[..16])))
        }
    }
}

/// A source tarball unpacked into its own store entry (once), keyed by the tarball's pin.
/// Returns the top folder of the tree.
fn unpacked_source(
    ctx: &BuildContext,
    pin_sha256: &str,
    name: &str,
    fetch_tarball: impl FnOnce(&Path) -> Result<PathBuf, BuildError>,
) -> Result<PathBuf, BuildError> {
    let key = hashing::sha256_hex(format!("kernel-source:{pin_sha256}").as_bytes());
    let find_tree = |entry: &Path| -> Result<PathBuf, BuildError> {
        fs_err::read_dir(entry)
            .map_err(io_err("read", entry))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("Makefile").is_file())
            .ok_or_else(|| {
                BuildError::Invalid(format!(
                    "no kernel tree (a folder with a Makefile) in {}",
                    entry.display()
                ))
            })
    };
    let (entry, _) = ctx.store.get_or_build(
        &key,
        name,
        "source",
        Build::IfMissing,
        || (ctx.progress)("waiting for another vmbuild unpacking the same source"),
        |out| {
            let work = ctx.work.join("source");
            fs_err::create_dir_all(&work).map_err(io_err("create", &work))?;
            let tarball = fetch_tarball(&work)?;
            (ctx.progress)(&format!(
                "unpacking {}",
                tarball.file_name().unwrap_or_default().to_string_lossy()
            ));
            process::run(
                Command::new("tar")
                    .arg("-xf")
                    .arg(&tarball)
                    .arg("-C")
                    .arg(out),
            )?;
            Ok::<_, BuildError>(Manifest::new(
                name,
                "source",
                &key,
                json!({ "tarball_sha256": pin_sha256 }),
            ))
        },
    )?;
    find_tree(&entry.path)
}

/// Every option a fragment set must have its value in the final config.
fn check_fragments(fragments: &[PathBuf], config: &Path) -> Result<(), BuildError> {
    let actual = read_config(config).map_err(io_err("read", config))?;
    let mut problems = Vec::new();
    for fragment in fragments {
        let asked = read_config(fragment).map_err(io_err("read", fragment))?;
        for (option, want) in asked {
            let got = actual.get(&option).map_or("n", String::as_str);
            if got != want {
                problems.push(format!(
                    "  {option}: asked {want} in {}, got {got}",
                    fragment.file_name().unwrap_or_default().to_string_lossy()
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(BuildError::Invalid(format!(
        "kernel config: {} option(s) did not end up as requested (a dependency is missing or the option does not exist):\n{}",
        problems.len(),
        problems.join("\n")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_options_that_did_not_survive_are_named_with_both_values() {
        let dir = tempfile::tempdir().unwrap();
        let frag = dir.path().join("virtio.config");
        std::fs::write(&frag, "CONFIG_VIRTIO_BLK=y\nCONFIG_PRINTK=y\n").unwrap();
        let config = dir.path().join(".config");
        std::fs::write(&config, "CONFIG_PRINTK=y\n# CONFIG_VIRTIO_BLK is not set\n").unwrap();
        let err = check_fragments(&[frag], &config).unwrap_err().to_string();
        assert!(
            err.contains("CONFIG_VIRTIO_BLK: asked y in virtio.config, got n"),
            "{err}"
        );
        assert!(!err.contains("CONFIG_PRINTK"), "{err}");
    }
}
