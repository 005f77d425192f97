//! The bhyve backend (FreeBSD, illumos). Linux guests boot through `grub-bhyve`, which
//! loads the kernel and initramfs, then `bhyve` runs the VM with the console on com1 and
//! the guest agent's channel on com2 (a nullmodem device). Only the command lines are
//! built here; they are unit-tested, since bhyve cannot run on Linux hosts.
//!
//! The guest gets no NIC (bhyve adds none by itself). There is no `Net::User` here: the
//! slirp backend of released bhyve lets connections only into the guest (its sandbox
//! blocks outbound ones), and a virtio-net device on a tap or netgraph node needs host
//! setup vmbuild does not do. Recipes asking for it are refused when they are read.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{Backend, Launch, Net, Unsupported, Wiring};

pub struct Bhyve {
    /// The VM's name in `/dev/vmm`.
    pub vm_name: String,
    /// The nullmodem device for the agent channel, e.g. `/dev/nmdm0A`.
    pub agent_device: PathBuf,
}

impl Bhyve {
    /// The grub-bhyve command that loads the kernel and initramfs, and the grub script
    /// it reads (to be written to `grub_cfg`).
    pub fn loader(&self, launch: &Launch, device_map: &Path) -> (Command, String) {
        let script = format!(
            "linux (host){} {}\ninitrd (host){}\nboot\n",
            launch.kernel.display(),
            launch.cmdline,
            launch.initrd.display()
        );
        let mut cmd = Command::new("grub-bhyve");
        cmd.arg("-m").arg(device_map).args([
            "-r",
            "host",
            "-M",
            &format!("{}M", launch.memory_mb),
            &self.vm_name,
        ]);
        (cmd, script)
    }
}

impl Backend for Bhyve {
    fn name(&self) -> &'static str {
        "bhyve"
    }

    fn program(&self) -> &'static str {
        "bhyve"
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
        match &launch.wiring {
            Wiring::Agent { .. } | Wiring::Interactive { .. } => {
                cmd.args(["-l", "com1,stdio", "-l"])
                    .arg(format!("com2,{}", self.agent_device.display()));
            }
        }
        for (slot, disk) in launch.disks.iter().enumerate() {
            cmd.arg("-s").arg(format!(
                "{}:0,virtio-blk,{},ser={}",
                slot + 2,
                disk.path.display(),
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
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0 rdinit=/vmbuild/init".into(),
            machine: "q35".into(),
            memory_mb: 512,
            cpus: 1,
            root_disk: None,
            disks: vec![crate::vm::Disk {
                path: "/w/d.img".into(),
                serial: "scratch".into(),
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
        let (loader, script) = b.loader(&launch, Path::new("/w/device.map"));
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
            }),
            ..launch
        };
        let refused = b.command(&disk_root).expect_err("no copy-on-write root");
        assert!(refused.to_string().contains("qemu backend"), "{refused}");
    }
}
