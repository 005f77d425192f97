//! The qemu backend's command lines.

use super::*;
use crate::vm::Disk;
use std::path::PathBuf;

#[test]
fn command_boots_directly_with_console_and_agent_ports() {
    let launch = Launch {
        boot: crate::vm::Boot::Kernel {
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0".into(),
        },
        machine: "q35".into(),
        memory_mb: 512,
        cpus: 2,
        root_disk: Some(crate::vm::RootDisk {
            image: PathBuf::from("/s/root,1.ext4"),
            layer: crate::vm::RootLayer::Throwaway,
            format: crate::vm::ImageFormat::Raw,
        }),
        disks: vec![Disk {
            path: PathBuf::from("/w/scratch.img"),
            serial: "scratch".into(),
            read_only: false,
        }],
        net: Net::None,
        wiring: Wiring::Agent {
            socket: "/tmp/a.sock".into(),
            shell: None,
        },
        control: None,
        incoming: None,
    };
    let cmd = Qemu {
        accel: Accel::Tcg,
        arch: Arch::X86_64,
    }
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
            "-drive file=/s/root,,1.ext4,format=raw,snapshot=on,if=none,id=disk0 \
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
        Wiring::Interactive {
            agent: "/tmp/a.sock".into(),
        },
    ] {
        let launch = direct_launch("/store/k/bzImage", "", "q35", wiring);
        let cmd = Qemu {
            accel: Accel::Kvm,
            arch: Arch::X86_64,
        }
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
        for opened in ["-netdev", "-fsdev", "-virtfs", "-drive", "-hda"] {
            assert!(!args.iter().any(|a| a == opened), "{opened} in {line}");
        }
        // One device: the VM generation ID (no data goes through it).
        let devices: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(devices, ["vmgenid,guid=auto"], "{line}");
        // The store's kernel reaches the guest only as qemu's own copy.
        assert!(line.contains("-kernel /store/k/bzImage"), "{line}");
    }
}

#[test]
fn net_user_gives_one_virtio_nic_on_user_mode_nat_and_nothing_else() {
    let launch = Launch {
        boot: crate::vm::Boot::Kernel {
            kernel: "/store/k/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: String::new(),
        },
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
        control: None,
        incoming: None,
    };
    let cmd = Qemu {
        accel: Accel::Tcg,
        arch: Arch::X86_64,
    }
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

/// A direct kernel boot of `kernel` on `machine`, wired as `wiring`, with nothing else.
fn direct_launch(kernel: &str, cmdline: &str, machine: &str, wiring: Wiring) -> Launch {
    Launch {
        boot: crate::vm::Boot::Kernel {
            kernel: kernel.into(),
            initrd: "/w/initrd".into(),
            cmdline: cmdline.into(),
        },
        machine: machine.into(),
        memory_mb: 512,
        cpus: 1,
        root_disk: None,
        disks: vec![],
        net: Net::None,
        wiring,
        control: None,
        incoming: None,
    }
}

fn launch_with_root(layer: RootLayer) -> Launch {
    Launch {
        boot: crate::vm::Boot::Kernel {
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0".into(),
        },
        machine: "q35".into(),
        memory_mb: 512,
        cpus: 1,
        root_disk: Some(crate::vm::RootDisk {
            image: "/s/root,1.ext4".into(),
            layer,
            format: crate::vm::ImageFormat::Raw,
        }),
        disks: vec![],
        net: Net::None,
        wiring: Wiring::Agent {
            socket: "/tmp/a.sock".into(),
            shell: None,
        },
        control: None,
        incoming: None,
    }
}

fn line_of(launch: &Launch) -> String {
    let cmd = Qemu {
        accel: Accel::Tcg,
        arch: Arch::X86_64,
    }
    .command(launch)
    .expect("qemu boots any launch");
    crate::process::describe(&cmd)
}

#[test]
fn a_saved_vm_records_its_root_writes_and_a_restored_one_replays_them_under_a_throwaway_overlay() {
    let record = line_of(&launch_with_root(RootLayer::Record(
        "/w/rec,1.qcow2".into(),
    )));
    assert!(
        record.contains(
            "-drive driver=qcow2,file.filename=/w/rec,,1.qcow2,backing.driver=raw,\
             backing.file.filename=/s/root,,1.ext4,if=none,id=disk0"
        ),
        "{record}"
    );
    assert!(!record.contains("snapshot=on"), "{record}");
    let replay = line_of(&launch_with_root(RootLayer::Replay("/e/root.qcow2".into())));
    assert!(
        replay.contains(
            "-drive driver=qcow2,file.filename=/e/root.qcow2,backing.driver=raw,\
             backing.file.filename=/s/root,,1.ext4,snapshot=on,if=none,id=disk0"
        ),
        "{replay}"
    );
}

#[test]
fn a_restored_vm_has_the_saved_vms_devices_its_control_socket_and_its_state_quoted() {
    let mut launch = launch_with_root(RootLayer::Throwaway);
    let cold = line_of(&launch);
    launch.control = Some("/tmp/c,1.sock".into());
    launch.incoming = Some(SavedState {
        path: "/store/it's here/state".into(),
        codec: StateCodec::Plain,
    });
    let restored = line_of(&launch);
    // Three serial ports and the generation ID, with or without a saved state.
    for line in [&cold, &restored] {
        assert_eq!(line.matches("-serial ").count(), 3, "{line}");
        assert!(line.contains("-device vmgenid,guid=auto"), "{line}");
    }
    assert!(
        restored.contains("-qmp unix:/tmp/c,,1.sock,server=on,wait=off"),
        "{restored}"
    );
    let args: Vec<String> = Qemu {
        accel: Accel::Tcg,
        arch: Arch::X86_64,
    }
    .command(&launch)
    .unwrap()
    .get_args()
    .map(|a| a.to_string_lossy().into_owned())
    .collect();
    let incoming = args
        .windows(2)
        .find(|w| w[0] == "-incoming")
        .map(|w| w[1].clone())
        .expect("-incoming");
    assert_eq!(incoming, r"exec:cat '/store/it'\''s here/state'");
    // What sh makes of it is the path, byte for byte.
    let word = incoming.strip_prefix("exec:cat ").unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf %s {word}"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "/store/it's here/state"
    );
    // A compressed state is decompressed on its way in, and compressed on its way out.
    let zstd = SavedState {
        path: "/e/it's.zst".into(),
        codec: StateCodec::Zstd,
    };
    assert_eq!(incoming_uri(&zstd), r"exec:zstd -q -d -c '/e/it'\''s.zst'");
    assert_eq!(
        outgoing_uri(&zstd),
        r"exec:zstd -q -1 > '/e/it'\''s.zst.part' && mv '/e/it'\''s.zst.part' '/e/it'\''s.zst'"
    );
    // Without ACPI there is no generation ID to give.
    launch.machine = "microvm".into();
    assert!(!line_of(&launch).contains("vmgenid"));
}

#[test]
fn the_saved_vm_and_every_restored_one_have_the_same_devices() {
    // What a device is, without what backs it: the drive's file and layers, the
    // serial port's chardev, the state to load.
    let devices = |launch: &Launch| -> Vec<String> {
        let cmd = Qemu {
            accel: Accel::Tcg,
            arch: Arch::X86_64,
        }
        .command(launch)
        .unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let mut kept = Vec::new();
        let mut i = 0;
        while i < args.len() {
            match args[i].as_str() {
                "-incoming" | "-qmp" | "-initrd" => i += 1,
                "-serial" => kept.push("-serial".to_string()),
                "-drive" => {
                    let tail = args[i + 1].rsplit(',').take(2).collect::<Vec<_>>();
                    kept.push(format!("-drive {tail:?}"));
                }
                other => kept.push(other.to_string()),
            }
            i += if matches!(args[i].as_str(), "-serial" | "-drive") {
                2
            } else {
                1
            };
        }
        kept
    };
    let mut saved = launch_with_root(RootLayer::Record("/w/rec.qcow2".into()));
    saved.control = Some("/tmp/c0.sock".into());
    saved.disks = vec![crate::vm::Disk {
        path: "/w/disk-vm0-scratch.img".into(),
        serial: "scratch".into(),
        read_only: false,
    }];
    let mut restored = saved.clone();
    restored.root_disk.as_mut().unwrap().layer = RootLayer::Replay("/e/root.layer".into());
    restored.control = Some("/tmp/c1.sock".into());
    restored.incoming = Some(SavedState {
        path: "/e/state".into(),
        codec: StateCodec::Zstd,
    });
    if let crate::vm::Boot::Kernel { initrd, .. } = &mut restored.boot {
        *initrd = "/w2/initrd".into();
    }
    restored.disks[0].path = "/w/disk-vm1-scratch.img".into();
    restored.wiring = Wiring::Agent {
        socket: "/tmp/a1.sock".into(),
        shell: Some("/tmp/s1.sock".into()),
    };
    assert_eq!(devices(&saved), devices(&restored));
    // The shell's VM too: the console goes to the terminal, the devices stay.
    let mut shell = restored.clone();
    shell.wiring = Wiring::Interactive {
        agent: "/tmp/a2.sock".into(),
    };
    assert_eq!(devices(&saved), devices(&shell));
    // ...and a VM with more memory does not pass for one.
    let mut bigger = restored.clone();
    bigger.memory_mb = 1024;
    assert_ne!(devices(&saved), devices(&bigger));
}

#[test]
fn a_firmware_boot_starts_ovmf_from_the_root_disk_with_read_only_template_and_disks() {
    let mut launch = launch_with_root(RootLayer::Throwaway);
    launch.boot = crate::vm::Boot::Firmware(Firmware {
        code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
        vars: Some("/usr/share/OVMF/OVMF_VARS_4M.fd".into()),
    });
    launch.root_disk.as_mut().unwrap().format = ImageFormat::Qcow2;
    launch.disks = vec![Disk {
        path: "/w/bundles.img".into(),
        serial: "vmbuild-bundles".into(),
        read_only: true,
    }];
    let line = line_of(&launch);
    assert!(
        !line.contains("-kernel") && !line.contains("-append"),
        "{line}"
    );
    assert!(
        line.contains(
            "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,snapshot=on,file=/usr/share/OVMF/OVMF_VARS_4M.fd"
        ),
        "{line}"
    );
    assert!(
        line.contains(
            "-drive file=/s/root,,1.ext4,format=qcow2,snapshot=on,if=none,id=disk0 \
             -device virtio-blk-pci,drive=disk0,serial=vmbuild-root,bootindex=0"
        ),
        "{line}"
    );
    assert!(
        line.contains("-drive file=/w/bundles.img,format=raw,if=none,id=disk1,readonly=on"),
        "{line}"
    );
    // Nothing to boot from without a root disk.
    launch.root_disk = None;
    assert!(Qemu {
        accel: Accel::Tcg,
        arch: Arch::X86_64
    }
    .command(&launch)
    .is_err());
}

#[test]
fn firmware_named_by_the_environment_must_exist_and_none_found_says_what_to_install() {
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("CODE.fd");
    let missing = super::super::ovmf::find(Some(code.clone().into()), None).unwrap_err();
    assert!(missing.contains("does not exist"), "{missing}");
    std::fs::write(&code, b"firmware").unwrap();
    let found = super::super::ovmf::find(Some(code.clone().into()), None).unwrap();
    assert_eq!(found.code, code);
    assert_eq!(found.vars, None);
}

#[test]
fn an_aarch64_guest_gets_the_virt_machine_a_plain_cpu_and_virtio_consoles_for_the_agent() {
    let launch = |wiring| direct_launch("/s/Image", "console=ttyAMA0", "virt", wiring);
    let qemu = Qemu {
        accel: Accel::Tcg,
        arch: Arch::Aarch64,
    };
    assert_eq!(qemu.program(), "qemu-system-aarch64");
    let ports = qemu.guest_ports();
    assert_eq!(
        (ports.console, ports.channel, ports.hold),
        ("ttyAMA0", "hvc0", "hvc1")
    );
    let line = crate::process::describe(
        &qemu
            .command(&launch(Wiring::Agent {
                socket: "/tmp/a,b.sock".into(),
                shell: Some("/tmp/shell.sock".into()),
            }))
            .unwrap(),
    );
    assert!(
        line.starts_with("qemu-system-aarch64 -machine virt -accel tcg -cpu cortex-a57 -m 512"),
        "{line}"
    );
    // The UART is the console; the agent is hvc0 and the shell hvc1, in that order.
    assert!(
        line.contains(
            "-serial stdio -device virtio-serial-pci,id=vmbuild-ports \
             -chardev socket,id=vmbuild-agent,path=/tmp/a,,b.sock \
             -device virtconsole,chardev=vmbuild-agent \
             -chardev socket,id=vmbuild-shell,path=/tmp/shell.sock,server=on,wait=off \
             -device virtconsole,chardev=vmbuild-shell"
        ),
        "{line}"
    );
    assert!(!line.contains("vmgenid"), "{line}");
    // The same devices when nothing listens on the shell's port, or the console is the
    // user's: a saved state restores only into them.
    let interactive = crate::process::describe(
        &qemu
            .command(&launch(Wiring::Interactive {
                agent: "/tmp/a.sock".into(),
            }))
            .unwrap(),
    );
    assert!(
        interactive.contains(
            "-serial mon:stdio -device virtio-serial-pci,id=vmbuild-ports \
             -chardev socket,id=vmbuild-agent,path=/tmp/a.sock \
             -device virtconsole,chardev=vmbuild-agent \
             -chardev null,id=vmbuild-shell -device virtconsole,chardev=vmbuild-shell"
        ),
        "{interactive}"
    );
    // UEFI disks are x86_64's.
    assert!(qemu.firmware().is_err());
}
