//! `vmbuild shell RECIPE`: boot a test recipe's VM with the console on this terminal.
//! The session ends when the guest powers off or halts (`exit`, `poweroff -f`, `halt -f`).

use std::io::Write;

use clap::Args;

use super::boot::{self, BootEnv};
use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::testing::shell::{self, Shell};

#[derive(Args)]
pub struct ShellArgs {
    /// A test recipe name or path
    #[arg(value_name = "RECIPE")]
    recipe: String,
    /// Boot the VM in full instead of starting it from the environment's snapshot
    #[arg(long)]
    cold: bool,
}

pub fn run(global: &Global, reporter: &Renderer, args: ShellArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let env = BootEnv::test(&engine, &args.recipe, "shell")?;
    let accel = boot::accel(&engine, reporter, &env.vm);
    reporter.finish();
    eprintln!(
        "booting {}: tests are in /vmbuild/bundles; `exit`, `poweroff -f` or `halt -f` end the session (Ctrl-A X quits qemu)",
        env.name
    );
    let work =
        tempfile::tempdir().map_err(|e| Error::Usage(format!("create a temp folder: {e}")))?;
    let console = |bytes: &[u8]| {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(bytes);
        let _ = out.flush();
    };
    let terminal = Terminal::save();
    let artifacts = env.artifacts();
    let notice = |line: &str| eprintln!("vmbuild: {line}");
    let end = shell::shell(&Shell {
        vm: &env.vm,
        artifacts: &artifacts,
        accel,
        work: work.path(),
        console: &console,
        store: (!args.cold).then_some(&engine.store),
        name: &env.name,
        notice: &notice,
    });
    drop(terminal);
    let end = end.map_err(|source| Error::Boot {
        name: env.name.clone(),
        source,
    })?;
    if end.halted {
        eprintln!("vmbuild: the guest halted; its VM is stopped");
        return Ok(0);
    }
    Ok(if end.status.is_some_and(|s| s.success()) {
        0
    } else {
        4
    })
}

/// The terminal's settings, put back when dropped: the VM sets the terminal raw and
/// restores it when it exits by itself or on SIGTERM, but not when it has to be killed.
struct Terminal(Option<libc::termios>);

impl Terminal {
    fn save() -> Terminal {
        // SAFETY: tcgetattr fills the termios it is given; stdin may not be a terminal.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            Terminal((libc::tcgetattr(0, &mut t) == 0).then_some(t))
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring settings tcgetattr returned for the same descriptor.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}
