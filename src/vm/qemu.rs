//! The qemu backend (x86_64): direct kernel boot with `-kernel`/`-initrd`, no default
//! devices, `-no-reboot` so the guest's `reboot -f` (or a panic with `panic=-1`) ends
//! qemu. Serial port 0 is the kernel console, port 1 the guest agent's channel.
//! The guest gets no network (`-nic none`) unless the recipe opts in (`net = "user"`: one
//! virtio-net NIC on qemu's user-mode NAT), and nothing of the store but what qemu reads
//! itself: `-kernel`, `-initrd` and a root disk image opened with `snapshot=on` (qemu
//! opens the image read-only and sends the guest's writes to a temporary overlay of its
//! own, deleted when qemu exits). Every other drive is a fresh scratch file. Each drive
//! is a virtio-blk device with a serial the guest names it by.

use std::process::Command;

use super::{Accel, Backend, Launch, Net, Unsupported, Wiring, ROOT_DISK_SERIAL};

pub const QEMU: &str = "qemu-system-x86_64";

pub struct Qemu {
    pub accel: Accel,
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn command(&self, launch: &Launch) -> Result<Command, Unsupported> {
        let mut cmd = Command::new(QEMU);
        cmd.args(["-machine", &launch.machine, "-accel", self.accel.name()]);
        if self.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.args([
            "-m",
            &launch.memory_mb.to_string(),
            "-smp",
            &launch.cpus.to_string(),
        ])
        .args(["-nodefaults", "-display", "none", "-no-reboot", "-nic"])
        .arg(match launch.net {
            Net::None => "none",
            // virtio-net: Debian's kernel has it as a module, and a kernel built from
            // source adds it with CONFIG_VIRTIO_PCI and CONFIG_VIRTIO_NET. No hostfwd: the
            // NAT lets nothing in.
            Net::User => "user,model=virtio-net-pci",
        })
        .arg("-kernel")
        .arg(&launch.kernel)
        .arg("-initrd")
        .arg(&launch.initrd)
        .args(["-append", &launch.cmdline]);
        match &launch.wiring {
            Wiring::Agent { socket, shell } => {
                cmd.args(["-serial", "stdio", "-serial"])
                    .arg(format!("unix:{}", socket.display()));
                if let Some(shell) = shell {
                    cmd.arg("-serial")
                        .arg(format!("unix:{},server=on,wait=off", shell.display()));
                }
            }
            Wiring::Interactive => {
                cmd.args(["-serial", "mon:stdio", "-serial", "null"]);
            }
        }
        let root = launch
            .root_disk
            .iter()
            .map(|path| (path, ROOT_DISK_SERIAL, true));
        let scratch = launch
            .disks
            .iter()
            .map(|d| (&d.path, d.serial.as_str(), false));
        for (n, (path, serial, overlay)) in root.chain(scratch).enumerate() {
            // A comma in a path would start another option: qemu escapes it as `,,`.
            let file = path.to_string_lossy().replace(',', ",,");
            let mode = if overlay {
                "snapshot=on"
            } else {
                "cache=unsafe"
            };
            cmd.arg("-drive")
                .arg(format!("file={file},format=raw,if=none,id=disk{n},{mode}"))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{n},serial={serial}"));
        }
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::Disk;
    use std::path::PathBuf;

    #[test]
    fn command_boots_directly_with_console_and_agent_ports() {
        let launch = Launch {
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0".into(),
            machine: "q35".into(),
            memory_mb: 512,
            cpus: 2,
            root_disk: Some(PathBuf::from("/s/root,1.ext4")),
            disks: vec![Disk {
                path: PathBuf::from("/w/scratch.img"),
                serial: "scratch".into(),
            }],
            net: Net::None,
            wiring: Wiring::Agent {
                socket: "/tmp/a.sock".into(),
                shell: None,
            },
        };
        let cmd = Qemu { accel: Accel::Tcg }
            .command(&launch)
            .expect("qemu boots any launch");
        let line = crate::process::describe(&cmd);
        assert!(
            line.starts_with("qemu-system-x86_64 -machine q35 -accel tcg -m 512 -smp 2"),
            "{line}"
        );
        assert!(
            line.contains("-kernel /s/bzImage -initrd /w/initrd -append console=ttyS0"),
            "{line}"
        );
        assert!(
            line.contains("-serial stdio -serial unix:/tmp/a.sock"),
            "{line}"
        );
        assert!(
            line.contains(
                "-drive file=/s/root,,1.ext4,format=raw,if=none,id=disk0,snapshot=on \
                 -device virtio-blk-pci,drive=disk0,serial=vmbuild-root \
                 -drive file=/w/scratch.img,format=raw,if=none,id=disk1,cache=unsafe \
                 -device virtio-blk-pci,drive=disk1,serial=scratch"
            ),
            "{line}"
        );
        assert!(!line.contains("-cpu host"), "{line}");
    }

    #[test]
    fn the_guest_has_no_network_and_no_shared_folders() {
        for wiring in [
            Wiring::Agent {
                socket: "/tmp/a.sock".into(),
                shell: Some("/tmp/s.sock".into()),
            },
            Wiring::Interactive,
        ] {
            let launch = Launch {
                kernel: "/store/k/bzImage".into(),
                initrd: "/w/initrd".into(),
                cmdline: String::new(),
                machine: "q35".into(),
                memory_mb: 512,
                cpus: 1,
                root_disk: None,
                disks: vec![],
                net: Net::None,
                wiring,
            };
            let cmd = Qemu { accel: Accel::Kvm }
                .command(&launch)
                .expect("qemu boots any launch");
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let line = args.join(" ");
            assert!(line.contains("-nodefaults"), "{line}");
            assert!(
                args.windows(2).any(|w| w[0] == "-nic" && w[1] == "none"),
                "{line}"
            );
            for opened in ["-netdev", "-fsdev", "-virtfs", "-drive", "-hda", "-device"] {
                assert!(!args.iter().any(|a| a == opened), "{opened} in {line}");
            }
            // The store's kernel reaches the guest only as qemu's own copy.
            assert!(line.contains("-kernel /store/k/bzImage"), "{line}");
        }
    }

    #[test]
    fn net_user_gives_one_virtio_nic_on_user_mode_nat_and_nothing_else() {
        let launch = Launch {
            kernel: "/store/k/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: String::new(),
            machine: "q35".into(),
            memory_mb: 512,
            cpus: 1,
            root_disk: None,
            disks: vec![],
            net: Net::User,
            wiring: Wiring::Agent {
                socket: "/tmp/a.sock".into(),
                shell: None,
            },
        };
        let cmd = Qemu { accel: Accel::Tcg }
            .command(&launch)
            .expect("qemu boots any launch");
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let nics: Vec<&[String]> = args.windows(2).filter(|w| w[0] == "-nic").collect();
        assert_eq!(nics.len(), 1, "{args:?}");
        assert_eq!(nics[0][1], "user,model=virtio-net-pci");
        // No port forwarded into the guest, no shared folder or TFTP/SMB root from the host.
        let line = args.join(" ");
        for opened in [
            "hostfwd", "guestfwd", "tftp", "smb", "-netdev", "-fsdev", "-virtfs",
        ] {
            assert!(!line.contains(opened), "{opened} in {line}");
        }
    }
}
