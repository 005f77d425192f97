//! What vmbuild itself puts into every test VM: the guest agent
//! (`modules/guest-agent/agent.sh`, PID 1 or started by stage 1), stage 1 of a VM whose
//! root is a disk image (`modules/guest-agent/boot.sh`), where they live in the
//! initramfs, and which of the kernel's modules go along. All of it changes what a test
//! observes, so `fingerprint` is part of every test key.

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

/// The modules (and what they depend on) a VM needs for virtio disks, and for an ext4
/// root. crc32c: ext4 checksums its metadata with it and asks the crypto API for it at
/// mount time, when no modprobe could load it.
pub const DISK_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];
pub const EXT4_ROOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_blk", "crc32c_generic", "ext4"];

/// The sha256 of everything above, for test keys.
pub(crate) fn fingerprint() -> String {
    let text = format!(
        "{AGENT}\0{AGENT_PATH}\0{BOOT}\0{BOOT_PATH}\0{BUSYBOX_PATH}\0{ROOT_DISK_SERIAL}\0{DISK_MODULES:?}\0{EXT4_ROOT_MODULES:?}"
    );
    hashing::sha256_hex(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(BOOT.contains(&format!("= {ROOT_DISK_SERIAL} ]")));
        assert!(BOOT.contains(BUSYBOX_PATH));
    }
}
