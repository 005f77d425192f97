//! The guest agent script, built into vmbuild from `modules/guest-agent/agent.sh` and
//! placed at `/vmbuild/init` in every test VM's initramfs. Its hash is part of every test
//! key, so changing the agent reruns tests.

use super::capture::{MAX_LINE, MAX_LOG};
use crate::vm;

pub const AGENT: &str = include_str!("../../modules/guest-agent/agent.sh");
/// Where the agent lives in the guest; the kernel runs it as PID 1 (`rdinit=`).
pub const AGENT_PATH: &str = "/vmbuild/init";
/// Stage 1 of a VM whose root is a disk image: loads its modules, mounts the disk and
/// hands over to the agent (`modules/guest-agent/boot.sh`); keyed like the agent.
pub const BOOT: &str = include_str!("../../modules/guest-agent/boot.sh");
/// Where stage 1 lives in the initramfs; the kernel runs it as PID 1 instead of the agent.
pub const BOOT_PATH: &str = "/vmbuild/boot/init";
/// Where the static busybox stage 1 runs lives; stage 1 copies it into the booted root.
pub const BUSYBOX_PATH: &str = "/vmbuild/bin/busybox";

/// The kernel command line of a VM the agent serves (tests or a command), starting
/// `init` (the agent, or stage 1 before it), with the recipe's own additions last. The
/// agent relays at most this much of a test's output (docs/guest-protocol.md); the host
/// enforces the same limits whatever the guest does.
pub(crate) fn cmdline(init: &str, recipe_cmdline: &str) -> String {
    let line = format!(
        "{} vmbuild.maxlog={MAX_LOG} vmbuild.maxline={MAX_LINE}",
        vm::base_cmdline(init)
    );
    if recipe_cmdline.is_empty() {
        line
    } else {
        format!("{line} {recipe_cmdline}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both scripts parse under the host's POSIX sh (dash on Debian) and busybox's ash:
    /// a syntax error would kill PID 1 and panic the guest's kernel.
    #[test]
    fn the_guest_scripts_parse_and_name_the_root_disk_as_the_backends_do() {
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
        assert!(BOOT.contains(&format!("= {}", vm::ROOT_DISK_SERIAL)));
    }
}
