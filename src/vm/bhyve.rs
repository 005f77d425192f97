//! The bhyve backend (FreeBSD, illumos). Linux guests boot through `grub-bhyve`, which
//! loads the kernel and initramfs, then `bhyve` runs the VM with the console on com1 and
//! the guest agent's channel on com2 (a nullmodem device). A disk image boots through
//! UEFI firmware instead (`-l bootrom,BHYVE_UEFI.fd`, no loader). Only the command lines
//! are built here; they are unit-tested, since bhyve cannot run on Linux hosts. A root
//! disk is still refused: bhyve has no copy-on-write drives, and the test phase makes no
//! per-VM copy.
//!
//! The guest gets no NIC (bhyve adds none by itself). There is no `Net::User` here: the
//! slirp backend of released bhyve lets connections only into the guest (its sandbox
//! blocks outbound ones), and a virtio-net device on a tap or netgraph node needs host
//! setup vmbuild does not do. Recipes asking for it are refused when they are read.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Backend, Boot, Firmware, Launch, Net, Unsupported, Wiring};

/// FreeBSD's UEFI firmware for bhyve (the `edk2-bhyve` package).
const BHYVE_UEFI: &str = "/usr/local/share/uefi-firmware/BHYVE_UEFI.fd";

pub struct Bhyve {
    /// The VM's name in `/dev/vmm`.
    pub vm_name: String,
    /// The nullmodem device for the agent channel, e.g. `/dev/nmdm0A`.
    pub agent_device: PathBuf,
}

impl Bhyve {
    /// The grub-bhyve command that loads the kernel and initramfs, and the grub script
    /// it reads (to be written to `grub_cfg`); `None` for a firmware boot, which needs no
    /// loader.
    pub fn loader(&self, launch: &Launch, device_map: &Path) -> Option<(Command, String)> {
        let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &launch.boot
        else {
            return None;
        };
        let script = format!(
            "linux (host){} {cmdline}\ninitrd (host){}\nboot\n",
            kernel.display(),
            initrd.display()
        );
        let mut cmd = Command::new("grub-bhyve");
        cmd.arg("-m").arg(device_map).args([
            "-r",
            "host",
            "-M",
            &format!("{}M", launch.memory_mb),
            &self.vm_name,
        ]);
        Some((cmd, script))
    }
}

impl Backend for Bhyve {
    fn name(&self) -> &'static str {
        "bhyve"
    }

    fn program(&self) -> &'static str {
        "bhyve"
    }

    fn firmware(&self) -> Result<Firmware, String> {
        if !Path::new(BHYVE_UEFI).is_file() {
            return Err(format!(
                "bhyve needs UEFI firmware to boot a disk image, and {BHYVE_UEFI} is missing\n  \
                 help: install it with `pkg install edk2-bhyve`"
            ));
        }
        // No variable store: bhyve keeps the variables in memory, thrown away at exit.
        Ok(Firmware {
            code: BHYVE_UEFI.into(),
            vars: None,
        })
    }

    fn command(&self, launch: &Launch) -> Result<Command, Unsupported> {
        if launch.net != Net::None {
            return Err(Unsupported(
                "the bhyve backend has no user-mode network; \
                 use the qemu backend for a networked guest"
                    .into(),
            ));
        }
        if launch.root_disk.is_some() {
            // bhyve has no copy-on-write drives: the guest would write into the store.
            return Err(Unsupported(
                "the bhyve backend cannot boot a root disk image without writing to it; \
                 use the qemu backend, or a cpio root"
                    .into(),
            ));
        }
        if launch.control.is_some() || launch.incoming.is_some() {
            // Never asked: `snapshots()` says this backend has none (docs/warm-starts.md
            // says what bhyve's suspend and resume would need).
            return Err(Unsupported(
                "the bhyve backend cannot save or restore a running VM".into(),
            ));
        }
        let mut cmd = Command::new("bhyve");
        cmd.args([
            "-c",
            &launch.cpus.to_string(),
            "-m",
            &format!("{}M", launch.memory_mb),
        ])
        .args(["-H", "-A", "-P", "-s", "0:0,hostbridge", "-s", "1:0,lpc"]);
        if let Boot::Firmware(firmware) = &launch.boot {
            let mut bootrom = format!("bootrom,{}", firmware.code.display());
            if let Some(vars) = &firmware.vars {
                bootrom.push_str(&format!(",{}", vars.display()));
            }
            cmd.arg("-l").arg(bootrom);
        }
        match &launch.wiring {
            Wiring::Agent { .. } | Wiring::Interactive { .. } => {
                cmd.args(["-l", "com1,stdio", "-l"])
                    .arg(format!("com2,{}", self.agent_device.display()));
            }
        }
        for (slot, disk) in launch.disks.iter().enumerate() {
            cmd.arg("-s").arg(format!(
                "{}:0,virtio-blk,{}{},ser={}",
                slot + 2,
                disk.path.display(),
                if disk.read_only { ",ro" } else { "" },
                disk.serial
            ));
        }
        cmd.arg(&self.vm_name);
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bhyve_command_lines() {
        let launch = Launch {
            boot: crate::vm::Boot::Kernel {
                kernel: "/s/bzImage".into(),
                initrd: "/w/initrd".into(),
                cmdline: "console=ttyS0 rdinit=/vmbuild/init".into(),
            },
            machine: "q35".into(),
            memory_mb: 512,
            cpus: 1,
            root_disk: None,
            disks: vec![crate::vm::Disk {
                path: "/w/d.img".into(),
                serial: "scratch".into(),
                read_only: false,
            }],
            net: Net::None,
            wiring: Wiring::Agent {
                socket: "/unused".into(),
                shell: None,
            },
            control: None,
            incoming: None,
        };
        let b = Bhyve {
            vm_name: "vmbuild0".into(),
            agent_device: "/dev/nmdm0A".into(),
        };
        let line = crate::process::describe(&b.command(&launch).expect("no network asked"));
        assert_eq!(
            line,
            "bhyve -c 1 -m 512M -H -A -P -s 0:0,hostbridge -s 1:0,lpc -l com1,stdio -l com2,/dev/nmdm0A -s 2:0,virtio-blk,/w/d.img,ser=scratch vmbuild0"
        );
        let (loader, script) = b
            .loader(&launch, Path::new("/w/device.map"))
            .expect("a kernel boot");
        assert_eq!(
            crate::process::describe(&loader),
            "grub-bhyve -m /w/device.map -r host -M 512M vmbuild0"
        );
        assert!(script.starts_with(
            "linux (host)/s/bzImage console=ttyS0 rdinit=/vmbuild/init\ninitrd (host)/w/initrd\n"
        ));

        let networked = Launch {
            net: Net::User,
            ..launch.clone()
        };
        let refused = b.command(&networked).expect_err("no user-mode network");
        assert!(refused.to_string().contains("qemu backend"), "{refused}");

        let disk_root = Launch {
            root_disk: Some(crate::vm::RootDisk {
                image: "/store/rootfs.ext4".into(),
                layer: crate::vm::RootLayer::Throwaway,
                format: crate::vm::ImageFormat::Raw,
            }),
            ..launch.clone()
        };
        let refused = b.command(&disk_root).expect_err("no copy-on-write root");
        assert!(refused.to_string().contains("qemu backend"), "{refused}");

        // UEFI: the firmware is the boot ROM, and no loader runs.
        let uefi = Launch {
            boot: Boot::Firmware(Firmware {
                code: BHYVE_UEFI.into(),
                vars: Some("/w/vars.fd".into()),
            }),
            ..launch
        };
        assert!(b.loader(&uefi, Path::new("/w/device.map")).is_none());
        let line = crate::process::describe(&b.command(&uefi).expect("a firmware boot"));
        assert_eq!(
            line,
            "bhyve -c 1 -m 512M -H -A -P -s 0:0,hostbridge -s 1:0,lpc \
             -l bootrom,/usr/local/share/uefi-firmware/BHYVE_UEFI.fd,/w/vars.fd \
             -l com1,stdio -l com2,/dev/nmdm0A -s 2:0,virtio-blk,/w/d.img,ser=scratch vmbuild0"
        );
    }
}
