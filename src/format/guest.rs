//! What vmbuild itself puts into every test VM: the guest agent
//! (`modules/guest-agent/agent.sh`, PID 1 or started by stage 1), stage 1 of a VM whose
//! root is a disk image (`modules/guest-agent/boot.sh`), where they live in the
//! initramfs, and which of the kernel's modules go along. All of it changes what a test
//! observes, so `fingerprint` is part of every test key.

use super::cpio::CpioWriter;
use crate::fsio::{io_err, IoError};
use crate::hashing;

pub const AGENT: &str = include_str!("../../modules/guest-agent/agent.sh");
/// Where the agent lives in the guest; the kernel runs it as PID 1 (`rdinit=`).
pub const AGENT_PATH: &str = "/vmbuild/init";
/// Stage 1: loads the root disk's modules, mounts it and hands over to the agent.
pub const BOOT: &str = include_str!("../../modules/guest-agent/boot.sh");
/// Where stage 1 lives in the initramfs; the kernel runs it as PID 1 instead of the agent.
pub const BOOT_PATH: &str = "/vmbuild/boot/init";
/// Where the static busybox of a Debian or disk root lives; its applets are linked beside
/// it, and stage 1 copies it into the booted root.
pub const BUSYBOX_PATH: &str = "/vmbuild/bin/busybox";
/// The serial of a VM's root disk (stage 1 looks for it); scratch disk names may not
/// start with `vmbuild`.
pub const ROOT_DISK_SERIAL: &str = "vmbuild-root";

/// The serial of the disk a VM booted through firmware gets its bundles on (its UKI's
/// initramfs was made before any test): stage 1 unpacks them from it.
pub const BUNDLES_DISK_SERIAL: &str = "vmbuild-bundles";
/// The bundles disk's header: this line, then `<first sector> <bytes>` per archive, then
/// `end`, in the first `BUNDLES_HEADER` bytes; each archive starts on a sector.
const BUNDLES_MAGIC: &str = "vmbuild-bundles 1";
const BUNDLES_HEADER: usize = 65536;
/// The least a bundles disk holds: the kernel reads a small disk's partition tables
/// past its end, and says so on the console.
const BUNDLES_DISK_MIN: u64 = 1 << 20;

/// Why the bundles disk could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BundlesDiskError {
    /// More bundles than its header lists: the recipe asks too much.
    #[error("{0} bundles do not fit the bundles disk's header (a disk boots at most about 3000)")]
    TooMany(usize),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Writes the bundles disk: the gzip cpio archives `parts`, listed in a header stage 1
/// reads with `head` and `dd`.
pub(crate) fn write_bundles_disk(
    parts: &[std::path::PathBuf],
    path: &std::path::Path,
) -> Result<(), BundlesDiskError> {
    use std::io::Write;
    let mut header = format!("{BUNDLES_MAGIC}\n");
    let mut at = BUNDLES_HEADER as u64;
    let mut sizes = Vec::with_capacity(parts.len());
    for part in parts {
        let len = fs_err::metadata(part).map_err(io_err("read", part))?.len();
        header.push_str(&format!("{} {len}\n", at / 512));
        sizes.push(len);
        at = (at + len).next_multiple_of(512);
    }
    header.push_str("end\n");
    if header.len() > BUNDLES_HEADER {
        return Err(BundlesDiskError::TooMany(parts.len()));
    }
    let file = fs_err::File::create(path).map_err(io_err("create", path))?;
    let mut out = std::io::BufWriter::new(file);
    let mut bytes = header.into_bytes();
    bytes.resize(BUNDLES_HEADER, 0);
    out.write_all(&bytes).map_err(io_err("write", path))?;
    for (part, len) in parts.iter().zip(sizes) {
        let mut input = fs_err::File::open(part).map_err(io_err("read", part))?;
        let copied = std::io::copy(&mut input, &mut out).map_err(io_err("write", path))?;
        if copied != len {
            return Err(io_err("read", part)(std::io::Error::other(
                "it changed while it was copied",
            ))
            .into());
        }
        let pad = (len.next_multiple_of(512) - len) as usize;
        out.write_all(&vec![0u8; pad])
            .map_err(io_err("write", path))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", path)(e.into_error()))?;
    let len = file.metadata().map_err(io_err("read", path))?.len();
    file.set_len(len.max(BUNDLES_DISK_MIN))
        .map_err(io_err("write", path))?;
    Ok(())
}

/// The most bytes kept of one test's output, and of one VM boot's console: the agent
/// relays no more (`vmbuild.maxlog=`), and the host keeps no more whatever the guest does.
pub(crate) const MAX_LOG: usize = 8 << 20;
/// The longest line kept whole (`vmbuild.maxline=`).
pub(crate) const MAX_LINE: usize = 64 << 10;

/// The guest's names of the three ports a VM is wired with (by its backend, which says
/// which: `vm::Backend::guest_ports`): the kernel console, the agent's channel and the
/// `--keep-alive` shell's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPorts {
    pub console: &'static str,
    pub channel: &'static str,
    pub hold: &'static str,
}

impl GuestPorts {
    /// Three serial ports: an x86_64 VM's, and the agent's defaults.
    pub const SERIAL: GuestPorts = GuestPorts {
        console: "ttyS0",
        channel: "ttyS1",
        hold: "ttyS2",
    };
}

/// The kernel command line of a VM wired with `ports` that the agent serves (tests or a
/// command), starting `init` (the agent, or stage 1 before it) as PID 1, with the
/// recipe's own additions last (docs/guest-protocol.md).
pub fn cmdline(ports: GuestPorts, init: &str, recipe_cmdline: &str) -> String {
    let mut line = format!(
        "console={} rdinit={init} panic=-1 vmbuild.maxlog={MAX_LOG} vmbuild.maxline={MAX_LINE}",
        ports.console
    );
    if ports.channel != GuestPorts::SERIAL.channel || ports.hold != GuestPorts::SERIAL.hold {
        line.push_str(&format!(
            " vmbuild.channel={} vmbuild.hold={}",
            ports.channel, ports.hold
        ));
    }
    if recipe_cmdline.is_empty() {
        line
    } else {
        format!("{line} {recipe_cmdline}")
    }
}

/// The modules (and what they depend on) a VM needs for virtio disks, and for an ext4
/// root. crc32c: ext4 checksums its metadata with it and asks the crypto API for it at
/// mount time, when no modprobe could load it.
pub const DISK_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];
pub const EXT4_ROOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// The agent's own archive (an uncompressed cpio): the agent, `/dev/console`, the root's
/// static busybox when it has one, and for a disk root (`stage1`) stage 1.
pub(crate) fn archive(busybox: Option<&[u8]>, stage1: bool) -> Result<Vec<u8>, IoError> {
    let mut cpio = CpioWriter::fast(Vec::new());
    let write = |cpio: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        cpio.dir("/vmbuild", 0o755)?;
        cpio.file(AGENT_PATH, 0o755, AGENT.as_bytes())?;
        if let Some(busybox) = busybox {
            cpio.dir("/vmbuild/bin", 0o755)?;
            cpio.file(BUSYBOX_PATH, 0o755, busybox)?;
        }
        if stage1 {
            cpio.dir("/vmbuild/boot", 0o755)?;
            cpio.file(BOOT_PATH, 0o755, BOOT.as_bytes())?;
        }
        cpio.char_device("/dev/console", 0o600, 5, 1)
    };
    write(&mut cpio).map_err(io_err("pack", AGENT_PATH))?;
    cpio.finish().map_err(io_err("pack", AGENT_PATH))
}

/// The sha256 of everything above, for test keys.
pub(crate) fn fingerprint() -> String {
    let text = format!(
        "{AGENT}\0{AGENT_PATH}\0{BOOT}\0{BOOT_PATH}\0{BUSYBOX_PATH}\0{ROOT_DISK_SERIAL}\0{DISK_MODULES:?}\0{EXT4_ROOT_MODULES:?}\0{BUNDLES_DISK_SERIAL}\0{BUNDLES_MAGIC}"
    );
    hashing::sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_names_the_ports_the_agent_does_not_expect() {
        let serial = cmdline(GuestPorts::SERIAL, "/vmbuild/init", "quiet");
        assert!(serial.starts_with("console=ttyS0 rdinit=/vmbuild/init panic=-1"));
        assert!(!serial.contains("vmbuild.channel") && serial.ends_with(" quiet"));
        let virtio = GuestPorts {
            console: "ttyAMA0",
            channel: "hvc0",
            hold: "hvc1",
        };
        let line = cmdline(virtio, "/vmbuild/init", "");
        assert!(
            line.starts_with("console=ttyAMA0 rdinit=/vmbuild/init"),
            "{line}"
        );
        assert!(
            line.ends_with(" vmbuild.channel=hvc0 vmbuild.hold=hvc1"),
            "{line}"
        );
        // The agent reads both, and defaults to the serial ports.
        assert!(AGENT.contains("vmbuild.channel=*)") && AGENT.contains("vmbuild.hold=*)"));
        assert!(AGENT.contains("chan=/dev/ttyS1") && AGENT.contains("hold=/dev/ttyS2"));
    }

    /// Both scripts parse under the host's POSIX sh (dash on Debian) and busybox's ash:
    /// a syntax error would kill PID 1 and panic the guest's kernel.
    #[test]
    fn the_guest_scripts_parse_and_stage_1_looks_for_the_root_disk_serial() {
        for shell in ["sh", "busybox"] {
            for (name, script) in [("agent", AGENT), ("boot", BOOT)] {
                let mut cmd = std::process::Command::new(shell);
                if shell == "busybox" {
                    cmd.arg("sh");
                }
                let Ok(out) = cmd.args(["-n", "-c", script]).output() else {
                    continue; // busybox missing on this host: sh still checked
                };
                assert!(
                    out.status.success(),
                    "{shell}: {name}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        assert!(BOOT.contains(&format!("find_serial {ROOT_DISK_SERIAL}")));
        assert!(BOOT.contains(BUSYBOX_PATH));
        // Stage 1 reads the bundles disk the way it is written.
        assert!(BOOT.contains(&format!("find_serial {BUNDLES_DISK_SERIAL}")));
        assert!(BOOT.contains(&format!("\"{BUNDLES_MAGIC}\"")));
        assert!(BOOT.contains(&format!("head -c {BUNDLES_HEADER} ")));
    }

    #[test]
    fn the_bundles_disk_lists_each_archive_at_its_sector() {
        let dir = tempfile::tempdir().unwrap();
        let parts: Vec<std::path::PathBuf> = [&b"first"[..], &[7u8; 1000][..]]
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let path = dir.path().join(format!("{i}.cpio.gz"));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect();
        let disk = dir.path().join("bundles.img");
        write_bundles_disk(&parts, &disk).unwrap();
        let bytes = std::fs::read(&disk).unwrap();
        let header = String::from_utf8_lossy(&bytes[..BUNDLES_HEADER]);
        let lines: Vec<&str> = header.trim_end_matches('\0').lines().collect();
        assert_eq!(lines, [BUNDLES_MAGIC, "128 5", "129 1000", "end"]);
        assert_eq!(&bytes[128 * 512..128 * 512 + 5], b"first");
        assert_eq!(&bytes[129 * 512..129 * 512 + 1000], &[7u8; 1000][..]);
        assert_eq!(bytes.len() as u64, BUNDLES_DISK_MIN);
        let many: Vec<std::path::PathBuf> = std::iter::repeat_n(parts[0].clone(), 10000).collect();
        assert!(matches!(
            write_bundles_disk(&many, &disk),
            Err(BundlesDiskError::TooMany(10000))
        ));
    }
}
