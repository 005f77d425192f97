//! Virtual machines: the `Backend` trait (what a VM needs -> the command that starts it),
//! the qemu backend, the bhyve backend, and the KVM probe. A VM always boots from
//! read-only store artifacts: the kernel and initramfs are only read, disks are fresh
//! scratch files or throwaway overlays. A guest has no network unless its launch asks
//! for one (`Net::User`).

pub mod bhyve;
mod ovmf;
pub mod qemu;
mod qmp;

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::recipe::{Arch, BackendKind, VmSpec};

/// How a VM's serial ports are wired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    /// Console on stdout, guest agent channel on a unix socket vmbuild listens on, and
    /// with `--keep-alive` a third port on a socket qemu listens on, for the user's shell.
    Agent {
        socket: PathBuf,
        shell: Option<PathBuf>,
    },
    /// Console on the user's terminal (`vmbuild shell`), the guest agent's channel on a
    /// unix socket vmbuild listens on.
    Interactive { agent: PathBuf },
}

/// The guest's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// No network device.
    None,
    /// One NIC behind the hypervisor's user-mode NAT: outbound connections only.
    User,
}

/// A launch this backend cannot give the guest; the recipe asks too much (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// A virtio-blk disk and the serial the guest sees it by
/// (`/sys/block/vdX/serial`, `/dev/disk/by-id/virtio-<serial>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub serial: String,
    /// Shown to the guest read-only (many VMs may share the file).
    pub read_only: bool,
}

/// How a VM gets to its kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// The backend loads the kernel and initramfs and passes the command line itself.
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    /// UEFI firmware starts the root disk's boot loader (its ESP's removable-media path,
    /// a unified kernel image holding initramfs and command line).
    Firmware(Firmware),
}

/// A backend's UEFI firmware: the code, and the variable store it starts from (only
/// read: each VM's changes are its own and thrown away).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: Option<PathBuf>,
}

/// The image format of a root disk (a disk recipe's `format`).
pub use crate::recipe::ImageFormat;

pub use crate::format::guest::{GuestPorts, ROOT_DISK_SERIAL};

/// A root disk image, only ever read, and what the VM's writes go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    pub image: PathBuf,
    pub format: ImageFormat,
    pub layer: RootLayer,
}

/// What lies between a root disk image and the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootLayer {
    /// A throwaway copy-on-write overlay of this VM's own: its writes are gone when it
    /// ends, so many VMs share one image.
    Throwaway,
    /// The guest's writes go to this overlay file (made by `Snapshots::create_overlay`):
    /// a VM whose state is saved keeps its disk's changes there.
    Record(PathBuf),
    /// The changes recorded before a saved state, read-only over the image, then a
    /// throwaway overlay: the disk as the restored guest left it.
    Replay(PathBuf),
}

/// Everything a backend needs to start one VM.
#[derive(Debug, Clone)]
pub struct Launch {
    pub boot: Boot,
    pub machine: String,
    pub memory_mb: u64,
    pub cpus: u32,
    /// The root disk, whose serial is `ROOT_DISK_SERIAL`.
    pub root_disk: Option<RootDisk>,
    /// Scratch disks, read-write, in the order the guest enumerates them.
    pub disks: Vec<Disk>,
    pub net: Net,
    pub wiring: Wiring,
    /// A socket the backend listens on for `Snapshots` requests.
    pub control: Option<PathBuf>,
    /// A state `Snapshots::save` wrote: the VM starts from it, paused (see
    /// `Snapshots::resume`), instead of booting. The guest's devices must be those of
    /// the VM that saved it (what backs them may differ: sockets, scratch files, the
    /// root disk's layers).
    pub incoming: Option<SavedState>,
}

/// A saved VM state's file, and how its bytes are stored there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedState {
    pub path: PathBuf,
    pub codec: StateCodec,
}

/// How a saved state is stored. A guest's memory shrinks about 2.7x under zstd's fastest
/// level (88 MB to 33 MB for a 512 MiB busybox guest, in 0.3 s), and decompresses faster
/// than it is read: states are kept compressed wherever the host has zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateCodec {
    Plain,
    Zstd,
}

impl StateCodec {
    const ZSTD: &'static str = "zstd";

    /// The file name, in an environment entry, of a state stored this way.
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            StateCodec::Plain => "state",
            StateCodec::Zstd => "state.zst",
        }
    }

    /// Whether this host has what reads and writes states stored this way.
    pub(crate) fn on_this_host(self) -> bool {
        match self {
            StateCodec::Plain => true,
            StateCodec::Zstd => crate::process::which(StateCodec::ZSTD).is_some(),
        }
    }

    /// How this host stores the states it saves: compressed when it has zstd.
    pub(crate) fn for_saving() -> StateCodec {
        match StateCodec::Zstd.on_this_host() {
            true => StateCodec::Zstd,
            false => StateCodec::Plain,
        }
    }

    /// How the state in `entry` (a folder) is stored: the codec whose file it holds.
    pub(crate) fn of_entry(entry: &Path) -> StateCodec {
        match entry.join(StateCodec::Zstd.file_name()).exists() {
            true => StateCodec::Zstd,
            false => StateCodec::Plain,
        }
    }
}

pub trait Backend: Sync {
    fn name(&self) -> &'static str;
    /// The program that runs VMs: its identity is part of saved states' keys.
    fn program(&self) -> &'static str;
    /// The command that boots `launch`, or why this backend cannot.
    fn command(&self, launch: &Launch) -> Result<Command, Unsupported>;
    /// The UEFI firmware this backend boots disks with (`Boot::Firmware`) on this host;
    /// `Err` says what to install.
    fn firmware(&self) -> Result<Firmware, String>;
    /// Saving and restoring a running VM, when this backend can.
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
    /// What the guest calls the ports `command` wires (console, agent, shell): the
    /// kernel command line names them.
    fn guest_ports(&self) -> GuestPorts {
        GuestPorts::SERIAL
    }
    /// Whether a VM on `machine` has a VM generation ID, which a guest restored from a
    /// saved state sees change (and reseeds its random generator).
    fn generation_id(&self, _machine: &str) -> bool {
        false
    }
}

/// Saving a running VM's whole state to a file and starting VMs from it. Every call
/// talks to the VM through the launch's `control` socket. Errors are one line, in the
/// backend's words.
pub trait Snapshots: Sync {
    /// Makes `overlay` an empty copy-on-write layer over `image`, for
    /// `RootLayer::Record`.
    fn create_overlay(
        &self,
        image: &Path,
        format: ImageFormat,
        overlay: &Path,
    ) -> Result<(), String>;
    /// Pauses the VM and writes its state to `state`; it stays paused.
    fn save(&self, control: &Path, state: &SavedState) -> Result<(), String>;
    /// Waits until a VM started with `incoming` has loaded its state (it is then
    /// paused); `Err` when the backend refused the state (another version, another CPU,
    /// a damaged file).
    fn wait_loaded(&self, control: &Path, within: std::time::Duration) -> Result<(), String>;
    /// Runs a paused VM.
    fn resume(&self, control: &Path) -> Result<(), String>;
}

/// The backend a test recipe asks for, on this host: the one place that picks a
/// hypervisor, so the test phase only ever talks to `Backend`. `Err` says why the backend
/// cannot run here (an infrastructure failure, not a bad recipe).
pub(crate) fn backend(vm: &VmSpec, accel: Accel) -> Result<Box<dyn Backend>, String> {
    match vm.backend {
        BackendKind::Qemu => Ok(Box::new(qemu::Qemu {
            accel: accel.for_guest(vm.arch),
            arch: vm.arch,
        })),
        BackendKind::Bhyve => bhyve::Bhyve::on_this_host().map(|b| Box::new(b) as Box<dyn Backend>),
    }
}

/// Whether this host has qemu for `vm`'s guests: asked before anything is built for a
/// test (bhyve says what it lacks when `backend` is asked for it).
pub(crate) fn hypervisor_present(vm: &VmSpec) -> Result<(), crate::process::ProcessError> {
    let program = vm.backend.program(vm.arch);
    if vm.backend != BackendKind::Qemu || crate::process::which(program).is_some() {
        return Ok(());
    }
    Err(crate::process::ProcessError::Missing {
        command: program.into(),
        tool: program.into(),
        package: crate::process::package_for(program).into(),
    })
}

/// What a run says once when it boots a guest of another machine than the host's.
pub(crate) fn foreign_guest_notice(arch: Arch) -> String {
    format!(
        "{} guests run under TCG (emulated) on this {} host",
        arch.name(),
        Arch::host().name()
    )
}

/// How qemu runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// How a guest of `arch` runs where this accelerator was found: KVM runs only the
    /// host's own machine.
    pub fn for_guest(self, arch: Arch) -> Accel {
        match arch == Arch::host() {
            true => self,
            false => Accel::Tcg,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The host CPU's identity, for states saved under KVM (where the guest sees the host's
/// CPU and its features): a hash of the first CPU's vendor, family, model, stepping,
/// microcode and flags in `/proc/cpuinfo`.
pub fn host_cpu() -> String {
    let info = fs_err::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = info.split("\n\n").next().unwrap_or_default();
    let fields: Vec<&str> = first
        .lines()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or_default().trim();
            matches!(
                name,
                "vendor_id" | "cpu family" | "model" | "stepping" | "microcode" | "flags"
            )
        })
        .collect();
    crate::hashing::sha256_hex(fields.join("\n").as_bytes())
}

/// A 512-byte boot sector that writes 1 to qemu's isa-debug-exit port: qemu then exits
/// with status 3. Booting it proves the accelerator really runs guest code.
fn probe_boot_sector() -> Vec<u8> {
    // mov al, 1; out 0xf4, al; hlt; jmp $-1
    let mut sector = vec![0xB0, 0x01, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD];
    sector.resize(510, 0);
    sector.extend([0x55, 0xAA]);
    sector
}

/// Whether KVM really works: boots a probe sector under KVM with a short timeout (on some
/// hosts `/dev/kvm` exists but hangs). The answer is remembered per host boot in
/// `<store>/accel.json`. `VMBUILD_ACCEL=tcg|kvm` skips the probe. Returns the accelerator
/// and, when KVM was refused, why.
pub fn detect_accel(store_root: &Path) -> (Accel, Option<String>) {
    match std::env::var("VMBUILD_ACCEL").as_deref() {
        Ok("tcg") => return (Accel::Tcg, Some("VMBUILD_ACCEL=tcg".into())),
        Ok("kvm") => return (Accel::Kvm, None),
        _ => {}
    }
    let boot_id = fs_err::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
        .trim()
        .to_string();
    let memo = store_root.join("accel.json");
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Memo {
        boot_id: String,
        accel: Accel,
        reason: Option<String>,
    }
    if let Some(m) = fs_err::read(&memo)
        .ok()
        .and_then(|b| serde_json::from_slice::<Memo>(&b).ok())
    {
        if m.boot_id == boot_id {
            return (m.accel, m.reason);
        }
    }
    let (accel, reason) = probe_kvm();
    let m = Memo {
        boot_id,
        accel,
        reason: reason.clone(),
    };
    let tmp = memo.with_extension(format!("tmp.{}", std::process::id()));
    if fs_err::write(&tmp, serde_json::to_vec(&m).unwrap_or_default()).is_ok() {
        let _ = fs_err::rename(&tmp, &memo);
    }
    (accel, reason)
}

fn probe_kvm() -> (Accel, Option<String>) {
    // The probe is an x86 boot sector; vmbuild has run nowhere else.
    if Arch::host() != Arch::X86_64 {
        return (
            Accel::Tcg,
            Some(format!(
                "vmbuild probes KVM on x86_64 hosts only, and this one is {}",
                Arch::host().name()
            )),
        );
    }
    let kvm = Path::new("/dev/kvm");
    if fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .open(kvm)
        .is_err()
    {
        return (
            Accel::Tcg,
            Some("/dev/kvm is missing or not accessible".into()),
        );
    }
    let Ok(dir) = tempfile::tempdir() else {
        return (Accel::Tcg, Some("no temp folder for the KVM probe".into()));
    };
    let image = dir.path().join("probe.img");
    if fs_err::write(&image, probe_boot_sector()).is_err() {
        return (Accel::Tcg, Some("cannot write the KVM probe image".into()));
    }
    let mut cmd = Command::new(BackendKind::Qemu.program(Arch::X86_64));
    cmd.args([
        "-accel",
        "kvm",
        "-M",
        "pc",
        "-nodefaults",
        "-display",
        "none",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-drive")
    .arg(format!(
        "file={},format=raw,if=ide,snapshot=on",
        image.display()
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let Ok(mut guard) =
        crate::process::GroupGuard::spawn(&mut cmd, std::time::Duration::from_millis(200))
    else {
        return (
            Accel::Tcg,
            Some("qemu could not start for the KVM probe".into()),
        );
    };
    match guard.wait_timeout(std::time::Duration::from_secs(2)) {
        Some(status) if status.code() == Some(3) => (Accel::Kvm, None),
        Some(status) => (
            Accel::Tcg,
            Some(format!("the KVM probe VM failed ({status})")),
        ),
        None => {
            guard.terminate();
            (Accel::Tcg, Some("the KVM probe VM hung for 2 s".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_sector_is_a_boot_sector() {
        let s = probe_boot_sector();
        assert_eq!(s.len(), 512);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
    }
}
