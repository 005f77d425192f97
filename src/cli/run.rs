//! `vmbuild run RECIPE -- CMD [ARGS...]`: boot a test recipe's VM (or a kernel and a
//! rootfs), run one command in it through the guest agent, stream its output here and
//! exit with its exit code. Nothing is cached: a command's outcome is not a build output.

use std::ffi::OsString;
use std::io::Write;

use clap::Args;

use super::boot::{self, BootEnv};
use super::{open_engine, render::Renderer, Global};
use crate::engine::Error;
use crate::report::{Event, Reporter};
use crate::testing::exec::{self, Exec, Outcome};
use crate::testing::protocol::Stream;

const EXAMPLES: &str = "\
Examples:
  vmbuild run smoke -- uname -r
  vmbuild run smoke -- sh -c 'dmesg | tail -n 5; exit 3'   # exits 3
  vmbuild run --kernel tiny-kernel --rootfs busybox-rootfs -- cat /proc/cmdline

The command runs in / of the guest, stdin from /dev/null, started by the guest agent
exactly as given: each argument reaches the guest byte for byte, and no shell interprets
it unless the command is one. Its stdout and stderr come here line by line as it runs.
vmbuild exits with the command's exit code (127 when it is not found in the guest), or
with 2 for bad usage or a bad recipe and 4 when the VM cannot start or the guest never
boots (these print `error:`). Nothing is cached. The kernel console goes to
cache/logs/run-NAME.console.log; --console or -v also show it on stderr.";

#[derive(Args)]
#[command(after_help = EXAMPLES)]
pub struct RunArgs {
    /// A test recipe whose VM to boot: its kernel, rootfs, bundles (in /vmbuild/bundles)
    /// and [vm] settings
    #[arg(
        value_name = "RECIPE",
        required_unless_present = "kernel",
        conflicts_with_all = ["kernel", "rootfs"]
    )]
    recipe: Option<String>,
    /// Boot this kernel recipe instead of a test recipe's (with --rootfs; default VM
    /// settings)
    #[arg(long, value_name = "KERNEL", requires = "rootfs")]
    kernel: Option<String>,
    /// The rootfs recipe to boot with --kernel (cpio or ext4), or a disk recipe (booted
    /// through UEFI firmware; --kernel names its kernel)
    #[arg(long, value_name = "ROOTFS", requires = "kernel")]
    rootfs: Option<String>,
    /// Also show the kernel console on stderr as the guest boots and runs
    #[arg(long)]
    console: bool,
    /// Boot the VM in full instead of starting it from the environment's snapshot
    #[arg(long)]
    cold: bool,
    /// The command to run in the guest, and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

pub fn run(global: &Global, reporter: &Renderer, args: RunArgs) -> Result<i32, Error> {
    let engine = open_engine(global, reporter, false)?;
    let env = match (&args.recipe, &args.kernel, &args.rootfs) {
        (Some(recipe), _, _) => BootEnv::test(&engine, recipe, "run")?,
        (None, Some(kernel), Some(rootfs)) => BootEnv::parts(&engine, kernel, rootfs)?,
        _ => {
            return Err(Error::Usage(
                "name a test recipe, or --kernel KERNEL --rootfs ROOTFS".into(),
            ))
        }
    };
    let accel = boot::accel(&engine, reporter, &env.vm);
    reporter.finish();
    let console_log = engine
        .store
        .logs_dir()
        .join(format!("run-{}.console.log", env.name));
    let work =
        tempfile::tempdir().map_err(|e| Error::Usage(format!("create a temp folder: {e}")))?;
    // A reader that goes away (`| head`) must not kill vmbuild before it ends the VM:
    // writes fail instead, and the VM is stopped.
    // SAFETY: setting a signal's disposition to ignore; no handler runs.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let mut on_output = |stream: Stream, bytes: &[u8]| -> std::io::Result<()> {
        match stream {
            Stream::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Stream::Stderr => {
                let mut err = std::io::stderr().lock();
                err.write_all(bytes)?;
                err.flush()
            }
        }
    };
    let show_console = args.console || global.verbose;
    let on_console = |line: &str| {
        if show_console {
            eprintln!("{line}");
        }
    };
    let detail = |line: &str| reporter.event(Event::Detail(line));
    let artifacts = env.artifacts();
    let outcome = exec::exec(Exec {
        vm: &env.vm,
        artifacts: &artifacts,
        accel,
        argv: &args.command,
        work: work.path(),
        console: &console_log,
        on_output: &mut on_output,
        on_console: &on_console,
        detail: &detail,
        store: (!args.cold).then_some(&engine.store),
        name: &env.name,
        notice: &|line: &str| reporter.event(Event::Notice(line)),
    })
    .map_err(|source| Error::Boot {
        name: env.name.clone(),
        source,
    })?;
    Ok(match outcome {
        Outcome::Exited(code) => code,
        // What a shell reports for a writer killed by SIGPIPE.
        Outcome::OutputClosed => 128 + libc::SIGPIPE,
    })
}
