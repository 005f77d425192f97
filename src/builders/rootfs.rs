//! Root filesystems: a base (busybox from Debian's `busybox-static`, a Debian root made by
//! mmdebstrap, or nothing), then `[files]` and kernel modules laid over it, packed as a
//! gzip cpio initramfs, an ext4 image (`mke2fs -d`, no root or loop devices needed), a tar,
//! or left as a folder. Owners are root:root and timestamps fixed, so the same inputs give
//! the same bytes. An ext4 image and a Debian root carry Debian's static busybox beside
//! them (`format::rootfs::BOOT_BUSYBOX`): the test phase boots a disk image through a
//! small initramfs that runs it, and the guest agent falls back on its applets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Map, Value};

use super::{copy_tree, io_err, BuildContext, BuildError};
use crate::fetch::{apt, FetchError};
use crate::format::cpio::CpioWriter;
use crate::format::rootfs as layout;
use crate::process;
use crate::recipe::{Arch, RootfsBase, RootfsFormat, RootfsSpec, BUSYBOX_PACKAGE};

/// The `/init` of a busybox root that includes nothing else: mount the basics, give a shell.
const BUSYBOX_INIT: &str = "#!/bin/sh
# vmbuild busybox root: mount the basics and start a shell on the console.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec /bin/sh
";

const BUSYBOX_DIRS: [&str; 14] = [
    "bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "run", "var",
    "mnt", "lib",
];

pub fn build(
    spec: &RootfsSpec,
    arch: Arch,
    ctx: &BuildContext,
    out: &Path,
) -> Result<Map<String, Value>, BuildError> {
    let root = ctx.work.join("root");
    fs_err::create_dir_all(&root).map_err(io_err("create", &root))?;
    let mut details = Map::new();
    match &spec.base {
        RootfsBase::Busybox => {
            let version = busybox_base(ctx, arch, &root)?;
            details.insert("busybox".into(), json!(version));
        }
        RootfsBase::Debian(release) => debian_base(release, &spec.packages, ctx, &root)?,
        RootfsBase::Empty => {}
    }
    if let Some(kernel) = &spec.kernel_modules {
        let modules = ctx.dep(&kernel.name)?.path.join("modules");
        if modules.is_dir() {
            (ctx.progress)("copying kernel modules");
            copy_tree(&modules, &root.join("lib/modules"))?;
        }
    }
    for (dest, source) in &spec.files {
        copy_tree(source, &root.join(dest.trim_start_matches('/')))?;
    }
    (ctx.progress)(&format!("packing {}", spec.format.name()));
    match spec.format {
        RootfsFormat::Cpio => write_cpio(&root, &out.join(layout::CPIO))?,
        RootfsFormat::Tar => write_tar(&root, &out.join(layout::TAR))?,
        RootfsFormat::Ext4 => write_ext4(&root, spec.size, &out.join(layout::EXT4))?,
        RootfsFormat::Dir => {
            fs_err::rename(&root, out.join(layout::DIR)).map_err(io_err("move", &root))?
        }
    }
    if spec.carries_busybox() {
        let (busybox, version) = fetch_busybox(ctx, arch, "boot-busybox")?;
        copy_tree(&busybox, &out.join(layout::BOOT_BUSYBOX))?;
        details.insert("boot_busybox".into(), json!(version));
    }
    Ok(details)
}

/// Debian's static busybox for `arch` (`busybox-static`, pinned in the lock), unpacked
/// into the work folder's `unpack_as`: its path and the package version.
fn fetch_busybox(
    ctx: &BuildContext,
    arch: Arch,
    unpack_as: &str,
) -> Result<(std::path::PathBuf, String), BuildError> {
    let pin = ctx.lock.pin_for(BUSYBOX_PACKAGE, arch, false)?;
    (ctx.progress)(&format!(
        "fetching {BUSYBOX_PACKAGE} {} ({})",
        pin.version, pin.architecture
    ));
    let deb = apt::download(&pin, &ctx.store.downloads())?;
    let unpacked = ctx.work.join(unpack_as);
    apt::extract(&deb, &unpacked)?;
    Ok((unpacked.join("bin/busybox"), pin.version))
}

/// Where each applet of `busybox` (a binary for `arch`) is linked (`bin/ls`,
/// `usr/bin/awk`), as its `--list-full` says. A binary for another machine cannot run
/// here: the host's busybox of the same source version says where each applet goes (one
/// source and one configuration build every architecture), and only the applets whose
/// names the binary holds are linked.
fn applet_paths(
    ctx: &BuildContext,
    arch: Arch,
    busybox: &Path,
    version: &str,
) -> Result<Vec<String>, BuildError> {
    let lister = match arch == Arch::host() {
        true => busybox.to_path_buf(),
        false => {
            let (lister, host_version) = fetch_busybox(ctx, Arch::host(), "busybox-host")?;
            if source_version(&host_version) != source_version(version) {
                return Err(BuildError::Invalid(format!(
                    "the {} busybox (vmbuild.lock: {version}) has its applets listed by this \
                     host's busybox of the same source version, but the lock pins \
                     {host_version} for {}\n  help: pin both to one version (`vmbuild lock` \
                     resolves both anew)",
                    arch.debian(),
                    Arch::host().debian()
                )));
            }
            lister
        }
    };
    let list = process::run(Command::new(&lister).arg("--list-full"))?;
    let listed = String::from_utf8_lossy(&list.stdout);
    let paths = listed
        .lines()
        .filter(|l| !l.is_empty() && *l != "bin/busybox")
        .map(str::to_string);
    if arch == Arch::host() {
        return Ok(paths.collect());
    }
    let binary = fs_err::read(busybox).map_err(io_err("read", busybox))?;
    let names = applet_names(&binary);
    if !names.contains("sh") {
        return Err(BuildError::Invalid(format!(
            "the {} busybox holds no applet table vmbuild can read (no `sh` in it)",
            arch.debian()
        )));
    }
    Ok(paths
        .filter(|p| names.contains(p.rsplit('/').next().unwrap_or(p)))
        .collect())
}

/// The source package's version of a binary package's: without a binary-only rebuild's
/// `+bN`, which differs between architectures built from one source.
fn source_version(version: &str) -> &str {
    version
        .rsplit_once("+b")
        .filter(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .map_or(version, |(source, _)| source)
}

/// The applet names a busybox binary holds: its `applet_names` table, the NUL-separated
/// sorted names that start with `[` and `[[`.
fn applet_names(binary: &[u8]) -> std::collections::BTreeSet<&str> {
    const TABLE_START: &[u8] = b"[\0[[\0";
    let Some(start) = binary
        .windows(TABLE_START.len())
        .position(|w| w == TABLE_START)
    else {
        return Default::default();
    };
    binary[start..]
        .split(|b| *b == 0)
        .map_while(|name| {
            std::str::from_utf8(name).ok().filter(|n| {
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"[-_.".contains(&b))
            })
        })
        .collect()
}

/// Lays out `arch`'s busybox with a link for every applet. Returns the busybox package
/// version.
fn busybox_base(ctx: &BuildContext, arch: Arch, root: &Path) -> Result<String, BuildError> {
    let (unpacked, version) = fetch_busybox(ctx, arch, "busybox-deb")?;
    for dir in BUSYBOX_DIRS {
        fs_err::create_dir_all(root.join(dir)).map_err(io_err("create", &root.join(dir)))?;
    }
    let busybox = root.join("bin/busybox");
    copy_tree(&unpacked, &busybox)?;
    for applet in applet_paths(ctx, arch, &busybox, &version)? {
        let link = root.join(applet);
        if link.symlink_metadata().is_err() {
            if let Some(parent) = link.parent() {
                fs_err::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            std::os::unix::fs::symlink("/bin/busybox", &link)
                .map_err(io_err("link applet", &link))?;
        }
    }
    let init = root.join("init");
    fs_err::write(&init, BUSYBOX_INIT).map_err(io_err("write", &init))?;
    fs_err::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
        .map_err(io_err("chmod", &init))?;
    for (path, text) in [
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ("etc/group", "root:x:0:\n"),
    ] {
        fs_err::write(root.join(path), text).map_err(io_err("write", &root.join(path)))?;
    }
    Ok(version)
}

/// A Debian root from the host's apt sources with mmdebstrap.
fn debian_base(
    release: &str,
    packages: &[String],
    ctx: &BuildContext,
    root: &Path,
) -> Result<(), BuildError> {
    // A misspelt package fails mmdebstrap only after minutes of work: ask apt first,
    // when the host's package lists are the release's own.
    if apt::host_release().as_deref() == Some(release) {
        let unknown = apt::unknown_packages(packages)?;
        if !unknown.is_empty() {
            return Err(FetchError::UnknownPackages {
                release: release.to_string(),
                packages: unknown,
            }
            .into());
        }
    }
    (ctx.progress)(&format!("mmdebstrap {release}"));
    let mut cmd = Command::new("mmdebstrap");
    cmd.args([
        "--variant=essential",
        "--mode=root",
        "--format=directory",
        "--quiet",
    ]);
    if !packages.is_empty() {
        cmd.arg(format!("--include={}", packages.join(",")));
    }
    // Both are checked against their grammar at parse time; `--` ends the options anyway.
    cmd.arg("--").arg(release).arg(root);
    process::run(&mut cmd)?;
    Ok(())
}

/// A gzip cpio with `/dev/console` and `/dev/null`, which the kernel needs before any
/// devtmpfs is mounted.
pub fn write_cpio(root: &Path, path: &Path) -> Result<(), BuildError> {
    let file = fs_err::File::create(path).map_err(io_err("create", path))?;
    let mut cpio = CpioWriter::new(file);
    let write = |cpio: &mut CpioWriter<fs_err::File>| -> std::io::Result<()> {
        cpio.tree(root, "/")?;
        if !root.join("dev/console").exists() {
            cpio.char_device("/dev/console", 0o600, 5, 1)?;
        }
        if !root.join("dev/null").exists() {
            cpio.char_device("/dev/null", 0o666, 1, 3)?;
        }
        Ok(())
    };
    write(&mut cpio).map_err(io_err("write", path))?;
    cpio.finish().map_err(io_err("write", path))?;
    Ok(())
}

/// A ustar/GNU tar with root:root owners and mtime 0, entries sorted. Headers are built
/// here (not by `tar::Builder::append_path`) so device nodes of Debian roots are kept.
fn write_tar(root: &Path, path: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let file = fs_err::File::create(path).map_err(io_err("create", path))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let walker = walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| io_err("read", root)(std::io::Error::other(e)))?;
        let source = entry.path();
        let rel = source.strip_prefix(root).unwrap_or(source);
        let meta = fs_err::symlink_metadata(source).map_err(io_err("read", source))?;
        let ft = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(meta.permissions().mode() & 0o7777);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(0);
        let add =
            |tar: &mut tar::Builder<_>, header: &mut tar::Header, data: &mut dyn std::io::Read| {
                tar.append_data(header, rel, data)
                    .map_err(io_err("add to tar", source))
            };
        if ft.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            add(&mut tar, &mut header, &mut std::io::empty())?;
        } else if ft.is_symlink() {
            let target = fs_err::read_link(source).map_err(io_err("read", source))?;
            header.set_entry_type(tar::EntryType::Symlink);
            tar.append_link(&mut header, rel, &target)
                .map_err(io_err("add to tar", source))?;
        } else if ft.is_file() {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let mut data = fs_err::File::open(source).map_err(io_err("read", source))?;
            add(&mut tar, &mut header, &mut data)?;
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                continue; // sockets have no place in an image
            };
            header.set_entry_type(kind);
            let (major, minor) = crate::fsio::device_numbers(meta.rdev());
            header
                .set_device_major(major)
                .map_err(io_err("add to tar", source))?;
            header
                .set_device_minor(minor)
                .map_err(io_err("add to tar", source))?;
            add(&mut tar, &mut header, &mut std::io::empty())?;
        }
    }
    tar.finish().map_err(io_err("write", path))?;
    Ok(())
}

fn write_ext4(root: &Path, size: Option<u64>, path: &Path) -> Result<(), BuildError> {
    let size = match size {
        Some(s) => s,
        None => {
            let used: u64 = walkdir::WalkDir::new(root)
                .into_iter()
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len() + 4096)
                .sum();
            (used + used / 3 + (32 << 20)).next_multiple_of(1 << 20)
        }
    };
    let file = fs_err::File::create(path).map_err(io_err("create", path))?;
    file.set_len(size).map_err(io_err("size", path))?;
    drop(file);
    let mut cmd = Command::new("mke2fs");
    cmd.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-L",
        "rootfs",
        "-E",
        "root_owner=0:0",
    ])
    // A fixed UUID, hash seed and clock make the image reproducible.
    .args([
        "-U",
        "6d766d62-7569-6c64-0000-000000000001",
        "-E",
        "hash_seed=6d766d62-7569-6c64-0000-000000000002",
    ])
    .env("E2FSPROGS_FAKE_TIME", "1")
    .arg("-d")
    .arg(root)
    .arg(path);
    process::run(&mut cmd)?;
    pin_ext4_times(root, path)
}

/// mke2fs copies each file's atime, mtime and ctime from the host; ctime cannot be set
/// there, so every inode's times are rewritten in the image with debugfs instead.
fn pin_ext4_times(root: &Path, image: &Path) -> Result<(), BuildError> {
    let mut paths = vec!["/".to_string()];
    for entry in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| io_err("read", root)(std::io::Error::other(e)))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .unwrap_or(entry.path())
            .to_string_lossy();
        paths.push(format!("/{rel}"));
    }
    let mut script = String::new();
    for path in paths.iter().filter(|p| !p.contains('"')) {
        for field in ["atime", "mtime", "ctime", "crtime"] {
            script.push_str(&format!("sif \"{path}\" {field} 0\n"));
        }
    }
    let script_path = image.with_extension("debugfs");
    fs_err::write(&script_path, script).map_err(io_err("write", &script_path))?;
    let result = process::run(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&script_path)
            .arg(image)
            .env("E2FSPROGS_FAKE_TIME", "1"),
    );
    fs_err::remove_file(&script_path).map_err(io_err("remove", &script_path))?;
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_names_are_read_from_the_table_that_starts_with_the_brackets() {
        let binary = b"\x7fELF junk\0ls\0[\0[[\0acpid\0add-shell\0ls\0zcat\0\0\x01\x02sh\0";
        let names: Vec<&str> = applet_names(binary).into_iter().collect();
        assert_eq!(names, ["[", "[[", "acpid", "add-shell", "ls", "zcat"]);
        assert!(applet_names(b"no table here").is_empty());
    }

    #[test]
    fn a_binary_only_rebuild_has_its_sources_version() {
        assert_eq!(
            source_version("1:1.35.0-4+deb12u1+b1"),
            "1:1.35.0-4+deb12u1"
        );
        assert_eq!(source_version("1:1.35.0-4+deb12u1"), "1:1.35.0-4+deb12u1");
        assert_eq!(source_version("2.0+bar"), "2.0+bar");
    }
}
