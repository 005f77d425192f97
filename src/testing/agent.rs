//! The kernel command line of a VM the guest agent serves, and the agent's wake-up. The
//! agent and stage 1 themselves are in `format::guest`.

use super::capture::{MAX_LINE, MAX_LOG};
use crate::vm;

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

/// What wakes the agent after READY: fresh host randomness and the host's time, so that
/// VMs restored from one saved state neither share random state nor keep its clock.
pub(crate) fn wake() -> String {
    let mut seed = [0u8; 32];
    // The clock and the process id, should the host's generator fail (it does not).
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        seed[..16].copy_from_slice(&nanos.to_le_bytes());
        seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    super::protocol::wake(&seed, now)
}
