//! The qemu backend (x86_64): direct kernel boot with `-kernel`/`-initrd`, no default
//! devices, `-no-reboot` so the guest's `reboot -f` (or a panic with `panic=-1`) ends
//! qemu. Serial port 0 is the kernel console, port 1 the guest agent's channel.
//! The guest gets no network (`-nic none`) and nothing of the store but what qemu reads
//! itself (`-kernel`, `-initrd`): its only drives are fresh scratch files.

use std::process::Command;

use super::{Accel, Backend, Launch, Wiring};

pub const QEMU: &str = "qemu-system-x86_64";

pub struct Qemu {
    pub accel: Accel,
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn command(&self, launch: &Launch) -> Command {
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
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-nic",
            "none",
        ])
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
        for disk in &launch.disks {
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                disk.display()
            ));
        }
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            disks: vec![PathBuf::from("/w/scratch.img")],
            wiring: Wiring::Agent {
                socket: "/tmp/a.sock".into(),
                shell: None,
            },
        };
        let cmd = Qemu { accel: Accel::Tcg }.command(&launch);
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
            line.contains("-drive file=/w/scratch.img,format=raw,if=virtio"),
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
                disks: vec![],
                wiring,
            };
            let cmd = Qemu { accel: Accel::Kvm }.command(&launch);
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
}
