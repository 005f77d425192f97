//! The guest agent script, built into vmbuild from `modules/guest-agent/agent.sh` and
//! placed at `/vmbuild/init` in every test VM's initramfs. Its hash is part of every test
//! key, so changing the agent reruns tests.

pub const AGENT: &str = include_str!("../../modules/guest-agent/agent.sh");
/// Where the agent lives in the guest; the kernel runs it as PID 1 (`rdinit=`).
pub const AGENT_PATH: &str = "/vmbuild/init";
