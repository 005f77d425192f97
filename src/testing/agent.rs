//! The guest agent's wake-up. The agent, stage 1 and the kernel command line that starts
//! them are in `format::guest`.

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
