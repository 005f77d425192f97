//! The bhyve backend (FreeBSD). One VM is one `sh -c` script, so the test phase runs it
//! like any backend's command (one process group, stopped by a signal):
//!
//! 1. `socat` bridges the guest agent's port (com2, a nullmodem pair `/dev/nmdmNA`-`B`)
//!    to the unix socket vmbuild listens on, and with `--keep-alive` com3 to a socket the
//!    user connects to;
//! 2. `grub-bhyve` loads the kernel and initramfs, reading a grub.cfg the script writes;
//! 3. `bhyve` runs the VM, its console (com1) on stdout;
//! 4. `bhyvectl --destroy` removes the VM from the kernel when bhyve exits, and at once
//!    on a signal (a trap; bhyve runs in the background so that the trap runs). A kill -9
//!    of the script leaves its VM to the next one, which destroys the VMs of vmbuilds
//!    that are gone.
//!
//! Each VM gets a name of its own (`vmbuild-PID-N`) and nullmodem units of its own, so
//! several run at once. What runs is unit-tested (the exact script, and the script run
//! against stand-in programs); no bhyve host has run it (docs/test-vms.md).
//!
//! A root disk, and so a disk image's firmware boot, is refused: bhyve has no
//! copy-on-write drives, and the test phase makes no per-VM copy. Paths and a command line
//! with characters grub, bhyve or socat would read otherwise are refused too. The guest gets no NIC: the slirp backend of released bhyve lets
//! connections only into the guest, and a virtio-net device on a tap or netgraph node
//! needs host setup vmbuild does not do (recipes asking for it are refused when read).

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Backend, Boot, Firmware, Launch, Net, Unsupported, Wiring};
use crate::process::{joined, shell_word};

/// Destroys the VMs of vmbuilds that are gone: `vmbuild-PID-N` with no process PID.
const STALE_VMS: &str = "for stale in /dev/vmm/vmbuild-*; do [ -e \"$stale\" ] || continue; \
     name=${stale##*/}; pid=${name#vmbuild-}; pid=${pid%%-*}; \
     kill -0 \"$pid\" 2>/dev/null || bhyvectl --destroy --vm=\"$name\" >/dev/null 2>&1; done";
/// The programs a bhyve VM needs, and the package of each.
const PROGRAMS: [(&str, &str); 4] = [
    ("bhyve", "the base system"),
    ("bhyvectl", "the base system"),
    ("grub-bhyve", "grub2-bhyve"),
    ("socat", "socat"),
];
/// VMs one vmbuild names before its names repeat (nullmodem units are decimal numbers).
const NAMES_PER_PROCESS: u32 = 1000;

pub(crate) struct Bhyve {
    /// This process's id, in every VM and nullmodem name it makes.
    pid: u32,
    next: AtomicU32,
}

/// The names one VM goes by.
#[derive(Debug, PartialEq, Eq)]
struct Names {
    vm: String,
    /// Nullmodem units: the agent's (com2) and the shell's (com3).
    agent_unit: u64,
    shell_unit: u64,
}

impl Bhyve {
    /// The backend, where this host can run bhyve VMs; else what is missing and how to
    /// get it.
    pub(crate) fn on_this_host() -> Result<Bhyve, String> {
        let missing: Vec<String> = PROGRAMS
            .iter()
            .filter(|(program, _)| crate::process::which(program).is_none())
            .map(|(program, package)| format!("{program} ({package})"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "the bhyve backend runs on FreeBSD with bhyve, grub2-bhyve and socat, and this \
                 host lacks {}\n  help: on FreeBSD, `pkg install grub2-bhyve socat`; elsewhere use \
                 backend = \"qemu\"",
                missing.join(", ")
            ));
        }
        if !Path::new("/dev/vmm").is_dir() {
            return Err("bhyve's kernel module is not loaded (no /dev/vmm)\n  \
                 help: `kldload vmm` (and vmm_load=\"YES\" in /boot/loader.conf)"
                .into());
        }
        Ok(Bhyve::with_pid(std::process::id()))
    }

    fn with_pid(pid: u32) -> Bhyve {
        Bhyve {
            pid,
            next: AtomicU32::new(0),
        }
    }

    fn names(&self) -> Names {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % NAMES_PER_PROCESS;
        let base = (u64::from(self.pid) * u64::from(NAMES_PER_PROCESS) + u64::from(n)) * 2;
        Names {
            vm: format!("vmbuild-{}-{n}", self.pid),
            agent_unit: base,
            shell_unit: base + 1,
        }
    }

    /// The script that runs `launch` as the VM `names`.
    fn script(&self, launch: &Launch, names: &Names) -> Result<OsString, Unsupported> {
        if launch.net != Net::None {
            return Err(Unsupported(
                "the bhyve backend has no user-mode network; \
                 use the qemu backend for a networked guest"
                    .into(),
            ));
        }
        if launch.root_disk.is_some() || matches!(launch.boot, Boot::Firmware(_)) {
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
        refuse_unsafe_text(launch)?;
        let word = |text: &str| shell_word(text.as_ref());
        let path = |p: &Path| shell_word(p.as_os_str());
        let nmdm = |unit: u64, side: char| format!("/dev/nmdm{unit}{side}");
        let mut script = OsString::new();
        let mut line = |parts: &[OsString]| {
            for part in parts {
                script.push(part);
            }
            script.push("\n");
        };
        line(&[joined("vm=", word(&names.vm))]);
        line(&["dir=$(mktemp -d \"${TMPDIR:-/tmp}/vmbuild-bhyve.XXXXXX\") || exit 1".into()]);
        // A background command's stdin is /dev/null in sh, whatever it redirects: bhyve
        // reads the terminal (`vmbuild shell`) through fd 3.
        line(&["exec 3<&0".into()]);
        line(&["bridges=".into()]);
        line(&[
            "cleanup() { bhyvectl --destroy --vm=\"$vm\" >/dev/null 2>&1; \
             [ -z \"$bridges\" ] || kill $bridges 2>/dev/null; rm -rf \"$dir\"; }"
                .into(),
        ]);
        line(&["trap 'cleanup; exit 143' TERM".into()]);
        line(&["trap 'cleanup; exit 130' INT".into()]);
        line(&["trap 'cleanup; exit 129' HUP".into()]);
        // VMs left by a vmbuild that was killed (kill -9 leaves no trap to run): gone
        // before this one starts.
        line(&[STALE_VMS.into()]);
        let (agent, shell) = match &launch.wiring {
            Wiring::Agent { socket, shell } => (socket, shell.as_ref()),
            Wiring::Interactive { agent } => (agent, None),
        };
        let raw = ",raw,echo=0";
        line(&[
            "socat ".into(),
            word(&format!("{}{raw}", nmdm(names.agent_unit, 'B'))),
            " ".into(),
            joined("UNIX-CONNECT:", path(agent)),
            " & bridges=\"$bridges $!\"".into(),
        ]);
        if let Some(shell) = shell {
            line(&[
                "socat ".into(),
                joined("UNIX-LISTEN:", path(shell)),
                ",fork ".into(),
                word(&format!("{}{raw}", nmdm(names.shell_unit, 'B'))),
                " & bridges=\"$bridges $!\"".into(),
            ]);
        }
        if let Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } = &launch.boot
        {
            let mut grub_cfg = OsString::from("linux (host)");
            grub_cfg.push(kernel.as_os_str());
            grub_cfg.push(format!(" {cmdline}\ninitrd (host)"));
            grub_cfg.push(initrd.as_os_str());
            grub_cfg.push("\nboot\n");
            line(&[
                "printf '%s' ".into(),
                shell_word(&grub_cfg),
                " > \"$dir/grub.cfg\"".into(),
            ]);
            line(&[": > \"$dir/device.map\"".into()]);
            line(&[format!(
                "grub-bhyve -m \"$dir/device.map\" -r host -d \"$dir\" -M {}M \"$vm\" \
                     </dev/null || {{ cleanup; exit 1; }}",
                launch.memory_mb
            )
            .into()]);
        }
        let mut bhyve = vec![OsString::from(format!(
            "bhyve -c {} -m {}M -H -A -P -s 0:0,hostbridge -s 1:0,lpc",
            launch.cpus, launch.memory_mb
        ))];
        bhyve.push(" -l com1,stdio -l ".into());
        bhyve.push(word(&format!("com2,{}", nmdm(names.agent_unit, 'A'))));
        if shell.is_some() {
            bhyve.push(" -l ".into());
            bhyve.push(word(&format!("com3,{}", nmdm(names.shell_unit, 'A'))));
        }
        for (slot, disk) in launch.disks.iter().enumerate() {
            let mut device = OsString::from(format!("{}:0,virtio-blk,", slot + 2));
            device.push(disk.path.as_os_str());
            if disk.read_only {
                device.push(",ro");
            }
            device.push(format!(",ser={}", disk.serial));
            bhyve.push(" -s ".into());
            bhyve.push(shell_word(&device));
        }
        // In the background, so that a signal runs the trap at once (sh runs traps only
        // between commands, and `wait` is one).
        bhyve.push(" \"$vm\" <&3 3<&- &".into());
        line(&bhyve);
        line(&["wait $!".into()]);
        line(&["status=$?".into()]);
        line(&["cleanup".into()]);
        line(&["exit $status".into()]);
        Ok(script)
    }
}

/// Paths and the command line go unquoted into grub.cfg, bhyve's comma-separated device
/// options and socat's addresses: anything but plain characters is refused, not mangled.
fn refuse_unsafe_text(launch: &Launch) -> Result<(), Unsupported> {
    let plain = |text: &str, also: &str| {
        text.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c) || also.contains(c))
    };
    let mut paths: Vec<&Path> = launch.disks.iter().map(|d| d.path.as_path()).collect();
    match &launch.wiring {
        Wiring::Agent { socket, shell } => {
            paths.push(socket);
            paths.extend(shell.as_deref());
        }
        Wiring::Interactive { agent } => paths.push(agent),
    }
    if let Boot::Kernel {
        kernel,
        initrd,
        cmdline,
    } = &launch.boot
    {
        paths.push(kernel);
        paths.push(initrd);
        if !plain(cmdline, " =,:") {
            return Err(Unsupported(format!(
                "the bhyve backend passes the kernel command line through grub, which would \
                 read `{cmdline}` otherwise than written: use letters, digits, `/._+-=,:` and \
                 spaces"
            )));
        }
    }
    match paths.iter().find(|p| !plain(&p.to_string_lossy(), "")) {
        Some(path) => Err(Unsupported(format!(
            "the bhyve backend cannot pass the path {} to grub, bhyve and socat intact: use a \
             store (--cache-dir) whose path has only letters, digits and `/._+-`",
            path.display()
        ))),
        None => Ok(()),
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
        // A firmware boot starts a disk image, and this backend boots no root disk.
        Err(
            "the bhyve backend cannot boot disk images yet (bhyve has no copy-on-write \
             drives, and a VM would write into the store); use backend = \"qemu\""
                .into(),
        )
    }

    fn command(&self, launch: &Launch) -> Result<Command, Unsupported> {
        let script = self.script(launch, &self.names())?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        Ok(cmd)
    }
}

#[cfg(test)]
#[path = "bhyve_tests.rs"]
mod tests;
