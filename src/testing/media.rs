//! What a VM boots from. A cpio root: the initramfs is the rootfs cpio, each bundle's cpio
//! and a small cpio holding the guest agent, concatenated (the kernel unpacks them in
//! order, later files replacing earlier ones), and the agent is PID 1. A disk root (an
//! ext4 image): the image is the VM's root disk, only read (the backend gives each VM a
//! copy-on-write overlay), and the initramfs is stage 1: static busybox, the kernel
//! modules the disk needs, the bundles and the agent; stage 1 mounts the disk and hands
//! over to the agent. Scratch disks are fresh sparse files, thrown away with each boot.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::agent::{AGENT, AGENT_PATH, BOOT, BOOT_PATH, BUSYBOX_PATH};
use super::runner::{Artifacts, TestError};
use crate::format::bundle::BUNDLE_CPIO;
use crate::format::cpio::CpioWriter;
use crate::format::kconfig::read_config;
use crate::format::{modinfo, rootfs as layout};
use crate::fsio::io_err;
use crate::recipe::units::approx_size;
use crate::recipe::{DiskSpec, Network, VmSpec};
use crate::store::Entry;
use crate::vm::{Disk, Launch, Net, Wiring};

/// The modules (and what they depend on) a VM needs for virtio disks, and for an ext4
/// root. crc32c: ext4 checksums its metadata with it and asks the crypto API for it at
/// mount time, when no modprobe could load it.
const DISK_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];
const EXT4_ROOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// The kernel options behind those modules, and the fragment that sets them.
const DISK_OPTIONS: [(&str, &str); 2] = [
    ("CONFIG_VIRTIO_PCI", "modules/kconfig/virtio.config"),
    ("CONFIG_VIRTIO_BLK", "modules/kconfig/virtio.config"),
];
const EXT4_OPTION: (&str, &str) = ("CONFIG_EXT4_FS", "modules/kconfig/ext4.config");

/// A VM's boot media, in the work folder (the root disk stays in the store).
pub(crate) struct BootMedia {
    pub initrd: PathBuf,
    /// The image to boot as the read-only root disk, for a disk root.
    pub root_disk: Option<PathBuf>,
    /// What the kernel runs as PID 1 (`rdinit=`).
    pub init: &'static str,
}

impl BootMedia {
    /// One VM booting these media with `vm`'s settings, `cmdline` and scratch `disks`.
    pub(crate) fn launch(
        &self,
        artifacts: &Artifacts,
        vm: &VmSpec,
        cmdline: String,
        disks: Vec<Disk>,
        wiring: Wiring,
    ) -> Launch {
        Launch {
            kernel: artifacts.kernel.path.join("bzImage"),
            initrd: self.initrd.clone(),
            cmdline,
            machine: vm.machine.clone(),
            memory_mb: vm.memory_mb,
            cpus: vm.cpus,
            root_disk: self.root_disk.clone(),
            disks,
            net: match vm.net {
                Network::None => Net::None,
                Network::User => Net::User,
            },
            wiring,
        }
    }
}

/// Writes the initramfs for `artifacts` into `work` (`initrd.img`); `disks` says whether
/// the VM gets scratch disks, whose drivers a modular kernel must load first.
pub(crate) fn prepare(
    artifacts: &Artifacts,
    disks: bool,
    work: &Path,
) -> Result<BootMedia, TestError> {
    let rootfs = &artifacts.rootfs.path;
    let bundles = artifacts
        .bundles
        .iter()
        .map(|(_, e)| e.path.join(BUNDLE_CPIO));
    let initrd = work.join("initrd.img");
    if rootfs.join(layout::CPIO).is_file() {
        let mut parts = vec![rootfs.join(layout::CPIO)];
        parts.extend(bundles);
        let modules = if disks {
            check_options(artifacts, &DISK_OPTIONS, "scratch disks")?;
            modules_layer(artifacts.kernel, &DISK_MODULES)?
        } else {
            Vec::new()
        };
        write_initrd(&initrd, &parts, &[modules, agent_layer(None)?])?;
        return Ok(BootMedia {
            initrd,
            root_disk: None,
            init: AGENT_PATH,
        });
    }
    let image = rootfs.join(layout::EXT4);
    if !image.is_file() {
        return Err(TestError::Unsupported(format!(
            "rootfs `{}` is neither a cpio initramfs nor an ext4 image; a test VM boots \
             format = \"cpio\" or format = \"ext4\" roots",
            artifacts.rootfs.manifest.name
        )));
    }
    let mut options = DISK_OPTIONS.to_vec();
    options.push(EXT4_OPTION);
    check_options(artifacts, &options, "an ext4 root disk")?;
    let busybox = rootfs.join(layout::BOOT_BUSYBOX);
    let busybox = fs_err::read(&busybox).map_err(io_err("read", &busybox))?;
    let modules = modules_layer(artifacts.kernel, &EXT4_ROOT_MODULES)?;
    let parts: Vec<PathBuf> = bundles.collect();
    write_initrd(&initrd, &parts, &[modules, agent_layer(Some(&busybox))?])?;
    Ok(BootMedia {
        initrd,
        root_disk: Some(image),
        init: BOOT_PATH,
    })
}

/// Refuses a kernel whose config (when its entry has one) has none of `options`, with
/// the fragment that adds each.
fn check_options(
    artifacts: &Artifacts,
    options: &[(&str, &str)],
    what: &str,
) -> Result<(), TestError> {
    let Ok(config) = read_config(&artifacts.kernel.path.join("config")) else {
        return Ok(()); // a kernel without its config: the boot tells
    };
    let missing: Vec<String> = options
        .iter()
        .filter(|(option, _)| !matches!(config.get(*option).map(String::as_str), Some("y" | "m")))
        .map(|(option, fragment)| format!("{option} (in {fragment})"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(TestError::Unsupported(format!(
        "kernel `{}` cannot boot {what} of rootfs `{}`: it lacks {}; add the fragments to its \
         [config] fragments",
        artifacts.kernel.manifest.name,
        artifacts.rootfs.manifest.name,
        missing.join(", ")
    )))
}

/// A gzip cpio with `wanted` and every module they depend on under
/// `/vmbuild/boot/modules/`, and `/vmbuild/boot/modules.load` naming them in load order
/// (dependencies first). A module the kernel has built in, or lacks, is left out: the
/// config check above has spoken for the ones that matter. Empty for a kernel without
/// modules.
fn modules_layer(kernel: &Entry, wanted: &[&str]) -> Result<Vec<u8>, TestError> {
    let release = kernel
        .manifest
        .details
        .get("release")
        .and_then(|r| r.as_str())
        .unwrap_or("");
    let tree = kernel.path.join("modules").join(release);
    if release.is_empty() || !tree.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&tree).into_iter().flatten() {
        let path = entry.path();
        if let Some(name) = modinfo::module_name(path) {
            files.insert(name, path.to_path_buf());
        } else if modinfo::is_compressed_module(path)
            && wanted.iter().any(|w| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.replace('-', "_").starts_with(&format!("{w}.ko")))
            })
        {
            return Err(TestError::Unsupported(format!(
                "kernel `{}` has compressed modules ({}); vmbuild loads uncompressed .ko \
                 files only: build it with CONFIG_MODULE_COMPRESS_NONE=y",
                kernel.manifest.name,
                path.display()
            )));
        }
    }
    let mut order: Vec<String> = Vec::new();
    let mut bytes: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for name in wanted {
        add_with_deps(name, &files, &mut bytes, &mut order, 0)?;
    }
    if order.is_empty() {
        return Ok(Vec::new());
    }
    let mut cpio = CpioWriter::new(Vec::new());
    let write = |cpio: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        cpio.dir("/vmbuild", 0o755)?;
        cpio.dir("/vmbuild/boot", 0o755)?;
        cpio.dir("/vmbuild/boot/modules", 0o755)?;
        for name in &order {
            cpio.file(
                &format!("/vmbuild/boot/modules/{name}.ko"),
                0o644,
                &bytes[name],
            )?;
        }
        let list: String = order.iter().map(|n| format!("{n}\n")).collect();
        cpio.file("/vmbuild/boot/modules.load", 0o644, list.as_bytes())
    };
    write(&mut cpio).map_err(io_err("pack", &tree))?;
    Ok(cpio.finish().map_err(io_err("pack", &tree))?)
}

/// Appends `name` to `order` after what it depends on (depth-first; modules.dep graphs
/// have no cycles, and a depth past 32 says this one does).
fn add_with_deps(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    bytes: &mut BTreeMap<String, Vec<u8>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<(), TestError> {
    if order.iter().any(|n| n == name) || depth > 32 {
        return Ok(());
    }
    let Some(path) = files.get(name) else {
        return Ok(()); // built in, or not in this kernel
    };
    let data = fs_err::read(path).map_err(io_err("read", path))?;
    for dep in modinfo::depends(&data) {
        add_with_deps(&dep, files, bytes, order, depth + 1)?;
    }
    if !order.iter().any(|n| n == name) {
        order.push(name.to_string());
        bytes.insert(name.to_string(), data);
    }
    Ok(())
}

/// The agent's own archive: the agent, `/dev/console`, and for a disk root stage 1 and
/// the busybox it runs.
fn agent_layer(busybox: Option<&[u8]>) -> Result<Vec<u8>, TestError> {
    let mut cpio = CpioWriter::new(Vec::new());
    let write = |cpio: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        cpio.dir("/vmbuild", 0o755)?;
        cpio.file(AGENT_PATH, 0o755, AGENT.as_bytes())?;
        if let Some(busybox) = busybox {
            cpio.dir("/vmbuild/bin", 0o755)?;
            cpio.file(BUSYBOX_PATH, 0o755, busybox)?;
            cpio.dir("/vmbuild/boot", 0o755)?;
            cpio.file(BOOT_PATH, 0o755, BOOT.as_bytes())?;
        }
        cpio.char_device("/dev/console", 0o600, 5, 1)
    };
    write(&mut cpio).map_err(io_err("pack", Path::new(AGENT_PATH)))?;
    Ok(cpio
        .finish()
        .map_err(io_err("pack", Path::new(AGENT_PATH)))?)
}

/// Concatenates the archive files `parts`, then the in-memory archives `layers`.
fn write_initrd(path: &Path, parts: &[PathBuf], layers: &[Vec<u8>]) -> Result<(), TestError> {
    let mut out = fs_err::File::create(path).map_err(io_err("create", path))?;
    for part in parts {
        let mut input = fs_err::File::open(part).map_err(io_err("read", part))?;
        std::io::copy(&mut input, &mut out).map_err(io_err("write", path))?;
    }
    for layer in layers {
        out.write_all(layer).map_err(io_err("write", path))?;
    }
    Ok(())
}

/// What stage 1 said before it gave up (its `vmbuild-boot:` console lines), with the
/// console's last lines before them: a VM that cannot mount its root disk is a recipe
/// whose kernel lacks a driver (exit 2), not a broken host. `None` when stage 1 did not
/// complain. `shown` is where the user finds the console.
pub(crate) fn stage1_failure(console: &Path, shown: &str) -> Option<TestError> {
    let text = fs_err::read(console).ok()?;
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("vmbuild-boot: "))?;
    let said = lines[at].trim_start_matches("vmbuild-boot: ");
    let before: Vec<String> = lines[at.saturating_sub(8)..at]
        .iter()
        .map(|l| format!("    {l}"))
        .collect();
    Some(TestError::Unsupported(format!(
        "the VM could not boot its root disk: {said}\n  the kernel's last console lines:\n{}\n  \
         console: {shown}",
        before.join("\n"),
    )))
}

/// Refuses scratch disks the host cannot hold: `vms` VMs each with `disks`, all in `work`.
/// The files are sparse, but a test may fill them.
pub(crate) fn check_disk_space(
    disks: &[DiskSpec],
    vms: usize,
    work: &Path,
) -> Result<(), TestError> {
    let per_vm: u64 = disks.iter().map(|d| d.size).sum();
    let needed = per_vm.saturating_mul(vms as u64);
    if needed == 0 {
        return Ok(());
    }
    let free = crate::fsio::free_bytes(work).map_err(io_err("check the free space of", work))?;
    if needed > free {
        return Err(TestError::Unsupported(format!(
            "the scratch disks need {} ({} per VM, {vms} VM{}) but {} has {} free: \
             make them smaller in [vm] disks, or use fewer VMs",
            approx_size(needed),
            approx_size(per_vm),
            if vms == 1 { "" } else { "s" },
            work.display(),
            approx_size(free)
        )));
    }
    Ok(())
}

/// Creates the recipe's scratch disks in `work` (`disk-<prefix>-<name>.img`, fresh and
/// sparse), each named by its serial in the guest.
pub(crate) fn scratch_disks(
    disks: &[DiskSpec],
    work: &Path,
    prefix: &str,
) -> Result<Vec<Disk>, TestError> {
    let mut made = Vec::new();
    for disk in disks {
        let path = work.join(format!("disk-{prefix}-{}.img", disk.name));
        let _ = fs_err::remove_file(&path);
        let file = fs_err::File::create(&path).map_err(io_err("create", &path))?;
        file.set_len(disk.size).map_err(|e| {
            TestError::Unsupported(format!(
                "scratch disk `{}` of {} bytes cannot be created in {}: {e}",
                disk.name,
                disk.size,
                work.display()
            ))
        })?;
        made.push(Disk {
            path,
            serial: disk.name.clone(),
        });
    }
    Ok(made)
}

/// Removes scratch disks made by `scratch_disks`.
pub(crate) fn remove_disks(disks: &[Disk]) {
    for disk in disks {
        let _ = fs_err::remove_file(&disk.path);
    }
}
