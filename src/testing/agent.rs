//! The kernel command line of a VM the guest agent serves. The agent and stage 1
//! themselves are in `format::guest`.

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
