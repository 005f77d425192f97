//! The qemu backend (x86_64): direct kernel boot with `-kernel`/`-initrd`, no default
//! devices, `-no-reboot` so the guest's `reboot -f` (or a panic with `panic=-1`) ends
//! qemu. Three serial ports whatever they carry (a saved state restores only into the
//! same devices): the kernel console, the guest agent's channel, and the `--keep-alive`
//! shell (`null` otherwise). A VM generation ID on pc and q35 machines, so that a Linux
//! guest restored from a saved state reseeds its random generator.
//! The guest gets no network (`-nic none`) unless the recipe opts in (`net = "user"`: one
//! virtio-net NIC on qemu's user-mode NAT), and nothing of the store but what qemu reads
//! itself: `-kernel`, `-initrd`, a root disk image (and a saved state's layer over it)
//! opened read-only with a temporary overlay of qemu's own for the guest's writes
//! (`snapshot=on`, deleted when qemu exits), and a saved state (`-incoming`). Every other
//! drive is a fresh scratch file or the layer a VM being saved records its root disk's
//! writes in. Each drive is a virtio-blk device with a serial the guest names it by.
//! Saving and restoring (`Snapshots`) go through QMP on the launch's control socket.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::Qmp;
use super::{
    Accel, Backend, Boot, Firmware, ImageFormat, Launch, Net, RootLayer, Snapshots, Unsupported,
    Wiring, ROOT_DISK_SERIAL,
};

pub const QEMU: &str = "qemu-system-x86_64";
const QEMU_IMG: &str = "qemu-img";
/// How long a starting qemu may take to open its control socket (many TCG VMs starting
/// at once on few cores are slow to).
const CONTROL_WITHIN: Duration = Duration::from_secs(30);
/// The longest a save may take (88 MB for a 512 MiB guest, in well under a second).
const SAVE_WITHIN: Duration = Duration::from_secs(120);
/// The migration speed limit while saving: none to speak of (qemu's default, 128 MiB/s,
/// would make a save of a paused VM wait for nothing).
const SAVE_BANDWIDTH: u64 = 1 << 40;

/// `path` as a qemu option value: a comma would start another option, so it is doubled.
fn option_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// `path` as one word of a `sh -c` command (qemu's `exec:` migration runs one), byte for
/// byte: in single quotes, each `'` as `'\''`.
fn shell_word(path: &Path) -> OsString {
    let mut word = vec![b'\''];
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'\'' => word.extend_from_slice(b"'\\''"),
            b => word.push(b),
        }
    }
    word.push(b'\'');
    OsString::from_vec(word)
}

/// `prefix` then `word`.
fn joined(prefix: &str, word: OsString) -> OsString {
    let mut joined = OsString::from(prefix);
    joined.push(word);
    joined
}

pub struct Qemu {
    pub accel: Accel,
}

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn program(&self) -> &'static str {
        QEMU
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn firmware(&self) -> Result<Firmware, String> {
        find_ovmf(
            std::env::var_os("VMBUILD_OVMF_CODE"),
            std::env::var_os("VMBUILD_OVMF_VARS"),
        )
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
        });
        match &launch.boot {
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            } => {
                cmd.arg("-kernel")
                    .arg(kernel)
                    .arg("-initrd")
                    .arg(initrd)
                    .args(["-append", cmdline]);
            }
            Boot::Firmware(firmware) => {
                if launch.root_disk.is_none() {
                    return Err(Unsupported(
                        "a firmware boot needs a root disk to boot from".into(),
                    ));
                }
                cmd.arg("-drive").arg(format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    option_path(&firmware.code)
                ));
                // The variables' template is only read: each VM writes a throwaway
                // overlay of its own.
                if let Some(vars) = &firmware.vars {
                    cmd.arg("-drive").arg(format!(
                        "if=pflash,format=raw,unit=1,snapshot=on,file={}",
                        option_path(vars)
                    ));
                }
            }
        }
        // Three serial ports whatever they carry: a saved state restores only into the
        // same devices.
        match &launch.wiring {
            Wiring::Agent { socket, shell } => {
                cmd.args(["-serial", "stdio", "-serial"])
                    .arg(format!("unix:{}", option_path(socket)))
                    .arg("-serial");
                match shell {
                    Some(shell) => {
                        cmd.arg(format!("unix:{},server=on,wait=off", option_path(shell)))
                    }
                    None => cmd.arg("null"),
                };
            }
            Wiring::Interactive { agent } => {
                cmd.args(["-serial", "mon:stdio", "-serial"])
                    .arg(format!("unix:{}", option_path(agent)))
                    .args(["-serial", "null"]);
            }
        }
        // A VM generation ID: a restored Linux guest sees it change and reseeds its
        // random number generator at once. It lives in ACPI, which pc and q35 have.
        if launch.machine.starts_with("pc") || launch.machine.starts_with("q35") {
            cmd.args(["-device", "vmgenid,guid=auto"]);
        }
        if let Some(control) = &launch.control {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", option_path(control)));
        }
        if let Some(state) = &launch.incoming {
            cmd.arg("-incoming")
                .arg(joined("exec:cat ", shell_word(state)));
        }
        if let Some(root) = &launch.root_disk {
            let image = option_path(&root.image);
            let format = root.format.name();
            let drive = match &root.layer {
                RootLayer::Throwaway => format!("file={image},format={format},snapshot=on"),
                RootLayer::Record(overlay) => format!(
                    "driver=qcow2,file.filename={},backing.driver={format},backing.file.filename={image}",
                    option_path(overlay)
                ),
                // The recorded layer's own idea of its backing file is not asked: the
                // store may have moved since.
                RootLayer::Replay(layer) => format!(
                    "driver=qcow2,file.filename={},backing.driver={format},backing.file.filename={image},\
                     snapshot=on",
                    option_path(layer)
                ),
            };
            // Firmware boots the root disk first.
            let boot_first = match launch.boot {
                Boot::Firmware(_) => ",bootindex=0",
                Boot::Kernel { .. } => "",
            };
            cmd.arg("-drive")
                .arg(format!("{drive},if=none,id=disk0"))
                .arg("-device")
                .arg(format!(
                    "virtio-blk-pci,drive=disk0,serial={ROOT_DISK_SERIAL}{boot_first}"
                ));
        }
        let first = usize::from(launch.root_disk.is_some());
        for (n, disk) in launch.disks.iter().enumerate() {
            let n = n + first;
            let access = if disk.read_only {
                "readonly=on"
            } else {
                "cache=unsafe"
            };
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=disk{n},{access}",
                    option_path(&disk.path)
                ))
                .arg("-device")
                .arg(format!(
                    "virtio-blk-pci,drive=disk{n},serial={}",
                    disk.serial
                ));
        }
        Ok(cmd)
    }
}

impl Snapshots for Qemu {
    fn create_overlay(
        &self,
        image: &Path,
        format: ImageFormat,
        overlay: &Path,
    ) -> Result<(), String> {
        let mut cmd = Command::new(QEMU_IMG);
        cmd.args(["create", "-q", "-f", "qcow2", "-F", format.name(), "-b"])
            .arg(image)
            .arg(overlay);
        crate::process::run(&mut cmd)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn save(&self, control: &Path, state: &Path) -> Result<(), String> {
        let mut qmp = Qmp::connect(control, CONTROL_WITHIN)?;
        qmp.execute("stop", json!({}))?;
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": SAVE_BANDWIDTH }),
        )?;
        // QMP speaks JSON strings: a path that is not UTF-8 cannot be sent.
        let uri = joined("exec:cat > ", shell_word(state));
        let uri = uri
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", state.display()))?;
        qmp.execute("migrate", json!({ "uri": uri }))?;
        let done = migration_done(&mut qmp, SAVE_WITHIN);
        if done.is_err() {
            // Not left running: it would pause the VM again when it completes.
            let _ = qmp.execute("migrate_cancel", json!({}));
        }
        done
    }

    fn wait_loaded(&self, control: &Path, within: Duration) -> Result<(), String> {
        let mut qmp = Qmp::connect(control, CONTROL_WITHIN)?;
        migration_done(&mut qmp, within)
    }

    fn resume(&self, control: &Path) -> Result<(), String> {
        Qmp::connect(control, CONTROL_WITHIN)?
            .execute("cont", json!({}))
            .map(drop)
    }
}

/// Polls the migration under way (a save, or a VM loading its `-incoming` state) until it
/// completes; its error when it fails. Polled: qemu sends MIGRATION events only with the
/// `events` capability, which a VM loading `-incoming` cannot have set before it starts.
fn migration_done(qmp: &mut Qmp, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        let info = qmp.execute("query-migrate", json!({}))?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some("failed") | Some("cancelled") => {
                let why = info
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(format!("the migration failed: {why}"));
            }
            _ if Instant::now() >= deadline => {
                return Err(format!("the migration did not complete within {within:?}"))
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Debian's OVMF (package `ovmf`), 4 MiB flash first; Fedora's and Arch's paths after.
/// `VMBUILD_OVMF_CODE` (with `VMBUILD_OVMF_VARS`) names another build.
const OVMF: [(&str, &str); 4] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
];

fn find_ovmf(
    code: Option<std::ffi::OsString>,
    vars: Option<std::ffi::OsString>,
) -> Result<Firmware, String> {
    if let Some(code) = code {
        let code = std::path::PathBuf::from(code);
        let vars = vars.map(std::path::PathBuf::from);
        for file in std::iter::once(&code).chain(vars.as_ref()) {
            if !file.is_file() {
                return Err(format!(
                    "the UEFI firmware file {} (VMBUILD_OVMF_CODE, VMBUILD_OVMF_VARS) does not exist",
                    file.display()
                ));
            }
        }
        return Ok(Firmware { code, vars });
    }
    OVMF.iter()
        .find(|(code, vars)| Path::new(code).is_file() && Path::new(vars).is_file())
        .map(|(code, vars)| Firmware {
            code: code.into(),
            vars: Some(vars.into()),
        })
        .ok_or_else(|| {
            format!(
                "qemu needs UEFI firmware to boot a disk image, and none is installed (looked \
                 for {})\n  help: install it with `apt-get install ovmf`, or name the files in \
                 VMBUILD_OVMF_CODE and VMBUILD_OVMF_VARS",
                OVMF[0].0
            )
        })
}

#[cfg(test)]
mod tests {
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
                net: Net::None,
                wiring,
                control: None,
                incoming: None,
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
        let cmd = Qemu { accel: Accel::Tcg }
            .command(launch)
            .expect("qemu boots any launch");
        crate::process::describe(&cmd)
    }

    #[test]
    fn a_saved_vm_records_its_root_writes_and_a_restored_one_replays_them_under_a_throwaway_overlay(
    ) {
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
        launch.incoming = Some("/store/it's here/state".into());
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
        let args: Vec<String> = Qemu { accel: Accel::Tcg }
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
        // Without ACPI there is no generation ID to give.
        launch.machine = "microvm".into();
        assert!(!line_of(&launch).contains("vmgenid"));
    }

    #[test]
    fn the_saved_vm_and_every_restored_one_have_the_same_devices() {
        // What a device is, without what backs it: the drive's file and layers, the
        // serial port's chardev, the state to load.
        let devices = |launch: &Launch| -> Vec<String> {
            let cmd = Qemu { accel: Accel::Tcg }.command(launch).unwrap();
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
        restored.incoming = Some("/e/state".into());
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
}
