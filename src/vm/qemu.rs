//! The qemu backend (x86_64 guests, and aarch64 guests on the `virt` machine): direct
//! kernel boot with `-kernel`/`-initrd` (or, x86_64 only, a disk started by OVMF from
//! pflash, first in the boot order: `Boot::Firmware`), no default devices, `-no-reboot`
//! so the guest's `reboot -f` (or a panic with `panic=-1`) ends qemu. Three ports whatever
//! they carry (a saved state restores only into the same devices): the kernel console, the
//! guest agent's channel, and the `--keep-alive` shell (`null` otherwise); on x86_64 three
//! serial ports, on aarch64 (whose `virt` machine has one UART) the UART and two virtio
//! consoles (`guest_ports`). A VM generation ID on pc and q35 machines, so that a Linux
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
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::Qmp;
use super::{
    Accel, Backend, Boot, Firmware, GuestPorts, ImageFormat, Launch, Net, RootLayer, SavedState,
    Snapshots, StateCodec, Unsupported, Wiring, ROOT_DISK_SERIAL,
};
use crate::process::{joined, shell_word};
use crate::recipe::{Arch, BackendKind};

const QEMU_IMG: &str = "qemu-img";
/// How long a starting qemu may take to open its control socket (many TCG VMs starting
/// at once on few cores are slow to).
const CONTROL_WITHIN: Duration = Duration::from_secs(30);
/// The longest a save may take (88 MB for a 512 MiB guest, in well under a second).
const SAVE_WITHIN: Duration = Duration::from_secs(120);
/// The migration speed limit while saving: none to speak of (qemu's default, 128 MiB/s,
/// would make a save of a paused VM wait for nothing).
const SAVE_BANDWIDTH: u64 = 1 << 40;

/// A `-chardev` with `id` for what a `-serial` option names: `null`, or
/// `unix:PATH[,options]`.
fn chardev(id: &str, serial: &str) -> String {
    match serial.strip_prefix("unix:") {
        Some(rest) => format!("socket,id={id},path={rest}"),
        None => format!("{serial},id={id}"),
    }
}

/// `path` as a qemu option value: a comma would start another option, so it is doubled.
fn option_path(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

pub struct Qemu {
    pub accel: Accel,
    /// The guest's machine.
    pub arch: Arch,
}

/// The CPU an aarch64 guest gets under TCG: a plain ARMv8.0 core, the same in every qemu
/// (`max` grows with each release; it boots the tiny arm64 kernel no faster: 948 ms
/// against 941, `benches/run.sh arm64`).
const TCG_AARCH64_CPU: &str = "cortex-a57";

impl Backend for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn program(&self) -> &'static str {
        BackendKind::Qemu.program(self.arch)
    }

    fn snapshots(&self) -> Option<&dyn Snapshots> {
        Some(self)
    }

    fn guest_ports(&self) -> GuestPorts {
        match self.arch {
            Arch::X86_64 => GuestPorts::SERIAL,
            // The UART, then the two virtconsoles in the order `command` adds them.
            Arch::Aarch64 => GuestPorts {
                console: "ttyAMA0",
                channel: "hvc0",
                hold: "hvc1",
            },
        }
    }

    /// The vmgenid device lives in ACPI, which pc and q35 have (a directly booted aarch64
    /// kernel on virt gets a device tree instead).
    fn generation_id(&self, machine: &str) -> bool {
        machine.starts_with("pc") || machine.starts_with("q35")
    }

    fn firmware(&self) -> Result<Firmware, String> {
        if self.arch != Arch::X86_64 {
            return Err(format!(
                "vmbuild boots disks through UEFI on x86_64 guests only, not {}",
                self.arch.name()
            ));
        }
        super::ovmf::find(
            std::env::var_os("VMBUILD_OVMF_CODE"),
            std::env::var_os("VMBUILD_OVMF_VARS"),
        )
    }

    fn command(&self, launch: &Launch) -> Result<Command, Unsupported> {
        let mut cmd = Command::new(self.program());
        cmd.args(["-machine", &launch.machine, "-accel", self.accel.name()]);
        match (self.accel, self.arch) {
            (Accel::Kvm, _) => cmd.args(["-cpu", "host"]),
            (Accel::Tcg, Arch::Aarch64) => cmd.args(["-cpu", TCG_AARCH64_CPU]),
            (Accel::Tcg, Arch::X86_64) => &mut cmd,
        };
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
        // Three ports whatever they carry: a saved state restores only into the same
        // devices.
        let (console, agent, shell) = match &launch.wiring {
            Wiring::Agent { socket, shell } => (
                "stdio",
                format!("unix:{}", option_path(socket)),
                match shell {
                    Some(shell) => format!("unix:{},server=on,wait=off", option_path(shell)),
                    None => "null".into(),
                },
            ),
            Wiring::Interactive { agent } => (
                "mon:stdio",
                format!("unix:{}", option_path(agent)),
                "null".into(),
            ),
        };
        cmd.args(["-serial", console]);
        match self.arch {
            Arch::X86_64 => {
                cmd.arg("-serial").arg(agent).arg("-serial").arg(shell);
            }
            // virt has one UART: the agent and the shell get virtio consoles, hvc0 and
            // hvc1 in this order (`guest_ports`).
            Arch::Aarch64 => {
                cmd.args(["-device", "virtio-serial-pci,id=vmbuild-ports"]);
                for (id, backend) in [("vmbuild-agent", agent), ("vmbuild-shell", shell)] {
                    cmd.arg("-chardev")
                        .arg(chardev(id, &backend))
                        .arg("-device")
                        .arg(format!("virtconsole,chardev={id}"));
                }
            }
        }
        // A VM generation ID: a restored Linux guest sees it change and reseeds its
        // random number generator at once.
        if self.generation_id(&launch.machine) {
            cmd.args(["-device", "vmgenid,guid=auto"]);
        }
        if let Some(control) = &launch.control {
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", option_path(control)));
        }
        if let Some(state) = &launch.incoming {
            cmd.arg("-incoming").arg(incoming_uri(state));
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

    fn save(&self, control: &Path, state: &SavedState) -> Result<(), String> {
        let mut qmp = Qmp::connect(control, CONTROL_WITHIN)?;
        qmp.execute("stop", json!({}))?;
        qmp.execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": SAVE_BANDWIDTH }),
        )?;
        // QMP speaks JSON strings: a path that is not UTF-8 cannot be sent.
        let uri = outgoing_uri(state);
        let uri = uri
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", state.path.display()))?;
        qmp.execute("migrate", json!({ "uri": uri }))?;
        let done = migration_done(&mut qmp, SAVE_WITHIN);
        if done.is_err() {
            // Not left running: it would pause the VM again when it completes.
            let _ = qmp.execute("migrate_cancel", json!({}));
            return done;
        }
        // The command writing the state finishes after qemu's last byte.
        let deadline = Instant::now() + SAVE_WITHIN;
        while !state.path.exists() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} was not written within {SAVE_WITHIN:?} of the migration's end",
                    state.path.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
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

/// The migration URI a VM saves `state` through: a shell command its stream is piped to.
/// It writes `<state>.part` and renames it to `state` once whole: qemu says the migration
/// completed before the command has seen the end of its input.
fn outgoing_uri(state: &SavedState) -> OsString {
    let writer = match state.codec {
        StateCodec::Plain => "exec:cat > ",
        // Level 1: the save happens while a test waits; a higher level gains 3%.
        StateCodec::Zstd => "exec:zstd -q -1 > ",
    };
    let part = shell_word(partial(state).as_os_str());
    let mut uri = joined(writer, part.clone());
    uri.push(" && mv ");
    uri.push(part);
    uri.push(" ");
    uri.push(shell_word(state.path.as_os_str()));
    uri
}

/// Where the command behind `outgoing_uri` writes until the state is whole.
fn partial(state: &SavedState) -> std::path::PathBuf {
    let mut part = state.path.clone().into_os_string();
    part.push(".part");
    part.into()
}

/// The migration URI a VM loads `state` from.
fn incoming_uri(state: &SavedState) -> OsString {
    let reader = match state.codec {
        StateCodec::Plain => "exec:cat ",
        StateCodec::Zstd => "exec:zstd -q -d -c ",
    };
    joined(reader, shell_word(state.path.as_os_str()))
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

#[cfg(test)]
#[path = "qemu_tests.rs"]
mod tests;
