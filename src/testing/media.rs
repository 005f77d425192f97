//! What a VM boots from. A cpio root: the initramfs is the rootfs cpio, each bundle's cpio
//! and a small cpio holding the guest agent, concatenated (the kernel unpacks them in
//! order, later files replacing earlier ones), and the agent is PID 1. A disk root (an
//! ext4 image): the image is the VM's root disk, only read (the backend gives each VM a
//! copy-on-write overlay), and the initramfs is stage 1: static busybox, the kernel
//! modules the disk needs, the bundles and the agent; stage 1 mounts the disk and hands
//! over to the agent (the modules come from `format::modules`). A bootable disk
//! (`kind = "disk"`): the backend's UEFI firmware starts the unified kernel image on its
//! ESP, whose initramfs is the same stage 1 without the bundles; those come on a small
//! read-only disk of their own (`guest::write_bundles_disk`). Scratch disks are fresh
//! sparse files, thrown away with each boot.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::runner::{Artifacts, TestError};
use crate::format::bundle::BUNDLE_CPIO;
use crate::format::disk;
use crate::format::guest::{
    self, BundlesDiskError, AGENT_PATH, BOOT_PATH, BUNDLES_DISK_SERIAL, DISK_MODULES,
    EXT4_ROOT_MODULES,
};
use crate::format::kconfig::read_config;
use crate::format::modules;
use crate::format::rootfs as layout;
use crate::fsio::io_err;
use crate::recipe::units::approx_size;
use crate::recipe::{DiskSpec, Network, VmSpec};
use crate::vm::{
    Backend, Boot, Disk, Firmware, ImageFormat, Launch, Net, RootDisk, RootLayer, Wiring,
};

/// The kernel options behind those modules, and the fragment that sets them.
const DISK_OPTIONS: [(&str, &str); 2] = [
    ("CONFIG_VIRTIO_PCI", "modules/kconfig/virtio.config"),
    ("CONFIG_VIRTIO_BLK", "modules/kconfig/virtio.config"),
];
const EXT4_OPTION: (&str, &str) = ("CONFIG_EXT4_FS", "modules/kconfig/ext4.config");

/// The least memory OVMF boots a disk with (64 MiB runs it out of resources).
const FIRMWARE_MEMORY_MB: u64 = 128;

/// A VM's boot media, in the work folder (the root disk stays in the store).
pub(crate) struct BootMedia {
    start: MediaStart,
    /// The image to boot as the read-only root disk, for a disk root.
    root_disk: Option<(PathBuf, ImageFormat)>,
    /// What the kernel runs as PID 1 (`rdinit=`).
    pub init: &'static str,
}

/// How the VM gets to its kernel.
enum MediaStart {
    /// The backend loads the kernel recipe's image and this initramfs.
    Kernel { initrd: PathBuf },
    /// The firmware boots the disk's unified kernel image; the bundles come on a disk
    /// of their own (`guest::write_bundles_disk`), which every VM only reads.
    Firmware {
        firmware: Firmware,
        bundles: PathBuf,
    },
}

impl BootMedia {
    /// One VM booting these media with `vm`'s settings, `cmdline` and scratch `disks`
    /// (its root disk behind a throwaway overlay: `warm::Start::configure` may change it).
    pub(crate) fn launch(
        &self,
        artifacts: &Artifacts,
        vm: &VmSpec,
        cmdline: String,
        mut disks: Vec<Disk>,
        wiring: Wiring,
    ) -> Launch {
        let boot = match &self.start {
            MediaStart::Kernel { initrd } => Boot::Kernel {
                kernel: artifacts.kernel.path.join(vm.arch.kernel_image()),
                initrd: initrd.clone(),
                cmdline,
            },
            // The command line is the UKI's own.
            MediaStart::Firmware { firmware, bundles } => {
                disks.push(Disk {
                    path: bundles.clone(),
                    serial: BUNDLES_DISK_SERIAL.into(),
                    read_only: true,
                });
                Boot::Firmware(firmware.clone())
            }
        };
        Launch {
            boot,
            machine: vm.machine.clone(),
            memory_mb: vm.memory_mb,
            cpus: vm.cpus,
            root_disk: self.root_disk.as_ref().map(|(image, format)| RootDisk {
                image: image.clone(),
                format: *format,
                layer: RootLayer::Throwaway,
            }),
            disks,
            net: match vm.net {
                Network::None => Net::None,
                Network::User => Net::User,
            },
            wiring,
            control: None,
            incoming: None,
        }
    }
}

impl BootMedia {
    /// The root disk's image and format, for a disk root.
    pub(crate) fn root_image(&self) -> Option<(&Path, ImageFormat)> {
        self.root_disk
            .as_ref()
            .map(|(image, format)| (image.as_path(), *format))
    }
}

/// Checks that the host can hold the scratch disks of `vms` VMs with `vm`'s settings, and
/// writes the initramfs for `artifacts` into `work` (`initrd.img`); with scratch disks, a
/// modular kernel's disk drivers go along. A bootable disk (`kind = "disk"`) boots
/// through `backend`'s firmware, its bundles on a disk made here (`bundles.img`).
pub(crate) fn prepare(
    artifacts: &Artifacts,
    vm: &VmSpec,
    backend: &dyn Backend,
    vms: usize,
    work: &Path,
) -> Result<BootMedia, TestError> {
    check_disk_space(&vm.disks, vms, work)?;
    let disks = !vm.disks.is_empty();
    let rootfs = &artifacts.rootfs.path;
    if artifacts.rootfs.manifest.kind == disk::KIND {
        let image = rootfs.join(artifacts.rootfs.detail("image").unwrap_or(disk::RAW_IMAGE));
        // The UKI boots the kernel it was made with, whatever the VM is said to boot.
        let disk_kernel = artifacts.rootfs.manifest.details.get("kernel_key");
        if disk_kernel.and_then(|k| k.as_str()) != Some(artifacts.kernel.manifest.key.as_str()) {
            return Err(TestError::Unsupported(format!(
                "disk `{}` boots the kernel in its unified kernel image, not kernel `{}`: name \
                 the disk's kernel",
                artifacts.rootfs.manifest.name, artifacts.kernel.manifest.name
            )));
        }
        let mut options = DISK_OPTIONS.to_vec();
        options.push(EXT4_OPTION);
        check_options(artifacts, &options, "a bootable disk")?;
        if vm.memory_mb < FIRMWARE_MEMORY_MB {
            return Err(TestError::Unsupported(format!(
                "UEFI firmware needs at least {FIRMWARE_MEMORY_MB}M of memory to boot disk `{}`; \
                 the VM has {}M: raise [vm] memory",
                artifacts.rootfs.manifest.name, vm.memory_mb
            )));
        }
        let firmware = backend.firmware().map_err(TestError::Infra)?;
        let format = match image.ends_with(disk::QCOW2_IMAGE) {
            true => ImageFormat::Qcow2,
            false => ImageFormat::Raw,
        };
        let bundles = work.join("bundles.img");
        let parts: Vec<PathBuf> = artifacts
            .bundles
            .iter()
            .map(|(_, e)| e.path.join(BUNDLE_CPIO))
            .collect();
        guest::write_bundles_disk(&parts, &bundles).map_err(|e| match e {
            BundlesDiskError::TooMany(_) => TestError::Unsupported(format!(
                "{e}; rootfs `{}` is a disk: use fewer, larger bundles",
                artifacts.rootfs.manifest.name
            )),
            BundlesDiskError::Io(e) => TestError::Io(e),
        })?;
        return Ok(BootMedia {
            start: MediaStart::Firmware { firmware, bundles },
            root_disk: Some((image, format)),
            init: BOOT_PATH,
        });
    }
    let busybox_file = rootfs.join(layout::BOOT_BUSYBOX);
    let busybox = match busybox_file.is_file() {
        true => Some(fs_err::read(&busybox_file).map_err(io_err("read", &busybox_file))?),
        false => None,
    };
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
            modules_of(artifacts, &DISK_MODULES)?
        } else {
            Vec::new()
        };
        write_initrd(
            &initrd,
            &parts,
            &[modules, guest::archive(busybox.as_deref(), false)?],
        )?;
        return Ok(BootMedia {
            start: MediaStart::Kernel { initrd },
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
    let Some(busybox) = busybox else {
        return Err(TestError::Unsupported(format!(
            "rootfs `{}` has no {} beside its image: rebuild it (`vmbuild build -f {}`)",
            artifacts.rootfs.manifest.name,
            layout::BOOT_BUSYBOX,
            artifacts.rootfs.manifest.name
        )));
    };
    let modules = modules_of(artifacts, &EXT4_ROOT_MODULES)?;
    let parts: Vec<PathBuf> = bundles.collect();
    write_initrd(
        &initrd,
        &parts,
        &[modules, guest::archive(Some(&busybox), true)?],
    )?;
    Ok(BootMedia {
        start: MediaStart::Kernel { initrd },
        root_disk: Some((image, ImageFormat::Raw)),
        init: BOOT_PATH,
    })
}

/// The initramfs layer with `wanted` kernel modules of the artifacts' kernel.
fn modules_of(artifacts: &Artifacts, wanted: &[&str]) -> Result<Vec<u8>, TestError> {
    let kernel = artifacts.kernel;
    Ok(modules::layer(
        &kernel.manifest.name,
        &kernel.path,
        kernel.detail("release"),
        wanted,
    )?)
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
    // Anywhere in a line: the kernel's printk may share it.
    const MARK: &str = "vmbuild-boot: ";
    let at = lines.iter().position(|l| l.contains(MARK))?;
    let line = lines[at];
    let said = line[line.find(MARK).unwrap_or(0) + MARK.len()..].trim_end_matches('\r');
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

/// Whether the host holds the scratch disks of `vms` VMs with `disks` in `work`.
pub(crate) fn disks_fit(disks: &[DiskSpec], vms: usize, work: &Path) -> bool {
    check_disk_space(disks, vms, work).is_ok()
}

/// Refuses scratch disks the host cannot hold: `vms` VMs each with `disks`, all in `work`.
/// The files are sparse, but a test may fill them.
fn check_disk_space(disks: &[DiskSpec], vms: usize, work: &Path) -> Result<(), TestError> {
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
        let file = match fs_err::File::create(&path) {
            Ok(file) => file,
            Err(e) => {
                remove_disks(&made);
                return Err(io_err("create", &path)(e).into());
            }
        };
        if let Err(e) = file.set_len(disk.size) {
            remove_disks(&made);
            let _ = fs_err::remove_file(&path);
            let message = format!(
                "scratch disk `{}` of {} cannot be created in {}: {e}",
                disk.name,
                approx_size(disk.size),
                work.display()
            );
            // Larger than a file may be there: the recipe asks too much. Anything else
            // is the host's trouble.
            return Err(if e.raw_os_error() == Some(libc::EFBIG) {
                TestError::Unsupported(message)
            } else {
                TestError::Infra(message)
            });
        }
        made.push(Disk {
            path,
            serial: disk.name.clone(),
            read_only: false,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_1_complaints_are_found_even_inside_a_kernel_line() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        fs_err::write(
            &console,
            "[ 1.0] virtio_blk\n[ 2.0] rtc: vmbuild-boot: cannot mount the root disk /dev/vda as ext4\r\n",
        )
        .unwrap();
        let refused = stage1_failure(&console, "kept.log").expect("stage 1 complained");
        let text = refused.to_string();
        assert!(
            text.contains(
                "could not boot its root disk: cannot mount the root disk /dev/vda as ext4\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("[ 1.0] virtio_blk") && text.contains("console: kept.log"),
            "{text}"
        );
        assert!(matches!(refused, TestError::Unsupported(_)));
        fs_err::write(&console, "[ 1.0] all fine\n").unwrap();
        assert!(stage1_failure(&console, "kept.log").is_none());
    }

    #[test]
    fn disks_the_host_cannot_hold_are_refused_and_made_disks_are_sparse_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let huge = [DiskSpec {
            name: "scratch".into(),
            size: 1 << 60,
        }];
        let refused = check_disk_space(&huge, 2, dir.path())
            .unwrap_err()
            .to_string();
        assert!(refused.contains("per VM, 2 VMs"), "{refused}");
        let small = [DiskSpec {
            name: "scratch".into(),
            size: 1 << 20,
        }];
        check_disk_space(&small, 1, dir.path()).unwrap();
        let made = scratch_disks(&small, dir.path(), "vm0").unwrap();
        assert_eq!(made[0].serial, "scratch");
        assert_eq!(fs_err::metadata(&made[0].path).unwrap().len(), 1 << 20);
        remove_disks(&made);
        assert!(!made[0].path.exists());
    }
}
