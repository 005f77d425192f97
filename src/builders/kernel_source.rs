//! Kernels from source, with the kernel's own build: config base (`make tinyconfig`, ...
//! or a full `.config`), fragments merged by the kernel's `merge_config.sh`, then
//! `olddefconfig`; every option a fragment asked for is checked to have survived. Builds
//! are out of tree (`O=`) in a build folder kept per (source, arch) under
//! `<store>/kbuild/`, so the next build only recompiles what changed. That folder is a
//! cache, never an input: deleting it gives the same output.
//!
//! Sources: a Debian `linux-source-*` package or a URL tarball, each unpacked once into
//! its own store entry (`src-<package>`), or a local tree used in place.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};

use super::kbuild::BuildFolder;
use super::{copy_tree, io_err, BuildContext, BuildError};
use crate::fetch::{apt, http};
use crate::format::kconfig::read_config;
use crate::hashing::{self, Listing};
use crate::process;
use crate::recipe::{ConfigBase, Fetch, KernelSpec};
use crate::store::Manifest;

pub const BUILD_LOG: &str = "build.log";

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
    check_host_tools()?;
    let (tree, source_id) = source_tree(source, ctx)?;
    let build_dir = ctx.store.kbuild_dir().join(format!("{source_id}-x86_64"));
    fs_err::create_dir_all(&build_dir).map_err(io_err("create", &build_dir))?;
    // One builder at a time per build folder; another vmbuild waits here.
    let _lock = ctx.store.lock(
        &hashing::sha256_hex(build_dir.to_string_lossy().as_bytes()),
        || (ctx.progress)("waiting for another vmbuild using the same kernel build folder"),
    )?;
    let listing = match source {
        Fetch::Path(tree) => Some(keyed_listing(tree, ctx)?),
        _ => None,
    };
    let mut folder = BuildFolder::open(&build_dir, ctx.fresh, ctx.notice)?;
    folder.start(&tree, listing.as_ref(), ctx.notice)?;

    let log_path = ctx.log.to_path_buf();
    if let Some(dir) = log_path.parent() {
        fs_err::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let mut log = fs_err::File::create(&log_path).map_err(io_err("create", &log_path))?;
    let jobs = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    let make = |args: &[&str], log: &mut fs_err::File| -> Result<(), BuildError> {
        let mut cmd = Command::new("make");
        cmd.arg("-C")
            .arg(&tree)
            .arg(format!("O={}", build_dir.display()))
            .args(make_flags)
            .args(args);
        cmd.env("KBUILD_BUILD_TIMESTAMP", "1970-01-01")
            .env("KBUILD_BUILD_USER", "vmbuild")
            .env("KBUILD_BUILD_HOST", "vmbuild");
        run_logged(&mut cmd, log, &log_path, ctx.progress)
    };

    let config = build_dir.join(".config");
    let config_inputs = config_inputs(base, fragments, make_flags, &source_id, listing.as_ref())?;
    if folder.config_is_current(&config_inputs) {
        (ctx.progress)("reusing .config: its base, fragments and Kconfig files are unchanged");
    } else {
        (ctx.progress)("configuring");
        match base {
            ConfigBase::Target(target) => make(&[target], &mut log)?,
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
            run_logged(&mut cmd, &mut log, &log_path, ctx.progress)?;
        }
        make(&["olddefconfig"], &mut log)?;
        folder.config_made(&config_inputs)?;
    }
    check_fragments(fragments, &config)?;

    (ctx.progress)("compiling");
    make(&["-j", &jobs], &mut log)?;
    if let Fetch::Path(tree) = source {
        // Make read the tree as it is now: it must still be the keyed one.
        current_listing(tree, ctx)?;
    }
    for (from, to) in [
        ("arch/x86/boot/bzImage", "bzImage"),
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
        make(
            &[
                "modules_install",
                &format!("INSTALL_MOD_PATH={}", staging.display()),
            ],
            &mut log,
        )?;
        let installed = staging.join("lib/modules").join(&release);
        if installed.is_dir() {
            for link in ["build", "source"] {
                let _ = fs_err::remove_file(installed.join(link));
            }
            copy_tree(&installed, &out.join("modules").join(&release))?;
        }
    }
    log.flush().map_err(io_err("write", &log_path))?;
    // The log of a successful build belongs to its entry.
    let entry_log = out.join(BUILD_LOG);
    fs_err::rename(&log_path, &entry_log).map_err(io_err("move the build log to", &entry_log))?;
    Ok(Map::from_iter([
        ("release".to_string(), json!(release)),
        ("build_dir".to_string(), json!(build_dir)),
    ]))
}

/// The listing the key was computed from, as kept when the tree was keyed.
fn keyed_listing(tree: &Path, ctx: &BuildContext) -> Result<Listing, BuildError> {
    let digest = ctx
        .inputs
        .pointer("/recipe/source/tree")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match Listing::load(&ctx.store.trees_dir(), digest) {
        Some(listing) => Ok(listing),
        // Removed or damaged since keying (a concurrent gc): list the tree again.
        None => current_listing(tree, ctx),
    }
}

/// A local tree's listing now, through the same stat cache the key used. It must be the
/// tree the key was computed from: an edit after keying (or during the build) would
/// store a kernel under a key that does not describe it.
fn current_listing(tree: &Path, ctx: &BuildContext) -> Result<Listing, BuildError> {
    let cache = hashing::stat_cache_file(&ctx.store.statcache_dir(), tree);
    let listing = hashing::source_tree_listing(tree, &cache, &["Makefile", "Kconfig"])
        .map_err(io_err("list", tree))?;
    let keyed = ctx
        .inputs
        .pointer("/recipe/source/tree")
        .and_then(Value::as_str);
    if keyed.is_some_and(|k| k != listing.digest) {
        return Err(BuildError::Invalid(format!(
            "the source tree {} changed after vmbuild keyed it: the kernel is not stored; run again",
            tree.display()
        )));
    }
    Ok(listing)
}

/// A digest of everything the `.config` is made from: the config base and fragments, the
/// make flags, the compiler (Kconfig probes it), and the source's identity; for a local
/// tree, only the files Kconfig reads (every `Kconfig*`, `scripts/`, `configs/` folders
/// and the top-level Makefile), so a C edit keeps the `.config`.
fn config_inputs(
    base: &ConfigBase,
    fragments: &[PathBuf],
    make_flags: &[String],
    source_id: &str,
    listing: Option<&Listing>,
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
    let compiler = process::run(Command::new("gcc").arg("--version"))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
    let kconfig_files: Vec<(&str, &str)> = listing
        .map(|l| {
            l.files()
                .filter(|(rel, _)| {
                    let name = rel.rsplit('/').next().unwrap_or(rel);
                    name.starts_with("Kconfig")
                        || rel.starts_with("scripts/")
                        || rel.contains("/configs/")
                        || *rel == "Makefile"
                })
                .collect()
        })
        .unwrap_or_default();
    let inputs = json!({
        "base": base,
        "fragments": fragments,
        "make_flags": make_flags,
        "compiler": compiler,
        "source": source_id,
        "kconfig_files": kconfig_files,
    });
    Ok(hashing::sha256_hex(inputs.to_string().as_bytes()))
}

fn check_host_tools() -> Result<(), BuildError> {
    let mut missing: Vec<&str> = BUILD_TOOLS
        .iter()
        .filter(|(tool, _)| process::which(tool).is_none())
        .map(|(_, p)| *p)
        .collect();
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

/// The unpacked source tree, and a stable id for the build folder.
fn source_tree(source: &Fetch, ctx: &BuildContext) -> Result<(PathBuf, String), BuildError> {
    match source {
        Fetch::Path(path) => {
            let id = format!(
                "local-{}",
                &hashing::sha256_hex(path.to_string_lossy().as_bytes())[..16]
            );
            Ok((path.clone(), id))
        }
        Fetch::Deb { package, .. } => {
            let pin = ctx.lock.pin(package, false)?;
            let name = format!("src-{}", pin.package);
            let tree = unpacked_source(ctx, &pin.sha256, &name, |work| {
                (ctx.progress)(&format!("fetching {} {}", pin.package, pin.version));
                let deb = apt::download(&pin, &ctx.store.downloads())?;
                let unpacked = work.join("deb");
                apt::extract(&deb, &unpacked)?;
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
        false,
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

/// Runs a command with stdout and stderr appended to the log; each line of output becomes
/// the progress line. On failure, the error carries the log's tail.
fn run_logged(
    cmd: &mut Command,
    log: &mut fs_err::File,
    log_path: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), BuildError> {
    let command = process::describe(cmd);
    writeln!(log, "$ {command}").map_err(io_err("write", log_path))?;
    let mut child = process::spawn(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let stderr = child.stderr.take().expect("piped");
    let err_log = log.try_clone().map_err(io_err("write", log_path))?;
    let stderr_thread = std::thread::spawn(move || {
        let mut err_log = err_log;
        let mut tail = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = writeln!(err_log, "{line}");
            tail.push(line);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        tail
    });
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
    {
        writeln!(log, "{line}").map_err(io_err("write", log_path))?;
        // Kbuild's step lines ("  CC      kernel/fork.o") make a good progress line.
        let step = line.trim();
        if !step.is_empty() && !step.starts_with('#') {
            progress(step);
        }
    }
    let status = child
        .wait()
        .map_err(io_err("wait for", Path::new(&command)))?;
    let tail = stderr_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(process::ProcessError::Failed {
            command,
            status: status.to_string(),
            stderr: format!("{}\n(full log: {})", tail.join("\n"), log_path.display()),
        }
        .into());
    }
    Ok(())
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
