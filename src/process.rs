//! Running host tools: clear errors that quote the command line and show the tail of its
//! stderr, a check that a tool exists (with the apt command that installs it), and a guard
//! that kills a child's whole process group if the caller returns early.

use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("run `{command}`: {tool} is not installed\n  help: install it with `apt-get install {package}`")]
    Missing {
        command: String,
        tool: String,
        package: String,
    },
    #[error("`{command}` printed no version: its identity is part of cache keys")]
    NoVersion { command: String },
    #[error("run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}){}", tail_block("stderr", .stderr.lines()))]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
    /// A build step whose output went to a log that is kept.
    #[error("{0}")]
    Logged(Box<LoggedFailure>),
}

/// A failed build step: its command, how it ended, the tail of `tail_of` (`stderr`, or
/// `output` for both streams) and where the whole log is.
#[derive(Debug)]
pub struct LoggedFailure {
    pub command: String,
    pub status: String,
    pub tail_of: &'static str,
    pub tail: Vec<String>,
    pub log: PathBuf,
}

impl std::fmt::Display for LoggedFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = tail_block(self.tail_of, self.tail.iter().map(String::as_str));
        write!(
            f,
            "`{}` failed ({}){tail}\n  (full log: {})",
            self.command,
            self.status,
            self.log.display()
        )
    }
}

/// The last lines of a failed command's output, indented under what they are.
fn tail_block<'a>(label: &str, lines: impl Iterator<Item = &'a str>) -> String {
    let lines: Vec<&str> = lines.collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n  {label}:\n    {}", tail.join("\n    "))
    }
}

/// The command line as a user could paste it.
pub fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    for arg in cmd.get_args() {
        let a = arg.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
            parts.push(shell_word(arg).to_string_lossy().into_owned());
        } else {
            parts.push(a.into_owned());
        }
    }
    parts.join(" ")
}

/// The Debian package that provides a tool vmbuild runs.
pub fn package_for(tool: &str) -> &'static str {
    known_package_for(tool).unwrap_or("the package that provides it")
}

/// The Debian package of a tool vmbuild knows.
pub fn known_package_for(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "qemu-system-x86_64" => "qemu-system-x86",
        "qemu-system-aarch64" => "qemu-system-arm",
        "aarch64-linux-gnu-gcc" => "gcc-aarch64-linux-gnu",
        "aarch64-linux-gnu-ld" => "binutils-aarch64-linux-gnu",
        "x86_64-linux-gnu-gcc" => "gcc-x86-64-linux-gnu",
        "x86_64-linux-gnu-ld" => "binutils-x86-64-linux-gnu",
        "qemu-img" => "qemu-utils",
        "mke2fs" | "debugfs" => "e2fsprogs",
        "dpkg-deb" => "dpkg",
        "apt-get" | "apt-cache" => "apt",
        "mmdebstrap" => "mmdebstrap",
        "make" => "make",
        "gcc" => "gcc",
        "flex" => "flex",
        "bison" => "bison",
        "bc" => "bc",
        "tar" => "tar",
        "xz" => "xz-utils",
        "perl" => "perl",
        "ld" | "as" | "objcopy" => "binutils",
        "mcopy" | "mmd" => "mtools",
        "mkfs.fat" | "fsck.fat" => "dosfstools",
        "resize2fs" => "e2fsprogs",
        "git" => "git",
        "clang" => "clang",
        "ld.lld" => "lld",
        _ => return None,
    })
}

/// `word` as one word of a `sh -c` command, byte for byte: in single quotes, each `'` as
/// `'\''`.
pub(crate) fn shell_word(word: &std::ffi::OsStr) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut quoted = vec![b'\''];
    for &b in word.as_bytes() {
        match b {
            b'\'' => quoted.extend_from_slice(b"'\\''"),
            b => quoted.push(b),
        }
    }
    quoted.push(b'\'');
    std::ffi::OsString::from_vec(quoted)
}

/// `prefix` then `word`.
pub(crate) fn joined(prefix: &str, word: std::ffi::OsString) -> std::ffi::OsString {
    let mut joined = std::ffi::OsString::from(prefix);
    joined.push(word);
    joined
}

/// Finds a program on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn missing(cmd: &Command) -> ProcessError {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    ProcessError::Missing {
        command: describe(cmd),
        package: package_for(&tool).into(),
        tool,
    }
}

/// The error for a command that could not start: a missing program names its package.
fn start_error(cmd: &Command, source: std::io::Error) -> ProcessError {
    if source.kind() == std::io::ErrorKind::NotFound {
        missing(cmd)
    } else {
        ProcessError::Spawn {
            command: describe(cmd),
            source,
        }
    }
}

/// Spawns a command, naming the package to install when the program does not exist.
pub fn spawn(cmd: &mut Command) -> Result<Child, ProcessError> {
    cmd.spawn().map_err(|source| start_error(cmd, source))
}

/// Runs a command to completion, capturing output; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<Output, ProcessError> {
    cmd.stdin(std::process::Stdio::null());
    let output = cmd.output().map_err(|source| start_error(cmd, source))?;
    if !output.status.success() {
        return Err(ProcessError::Failed {
            command: describe(cmd),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(output)
}

/// Stops a child that is not in a process group of its own (one that reads the
/// terminal): SIGTERM, then SIGKILL if it has not exited after `grace`.
pub(crate) fn stop(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // SAFETY: kill(2) on the pid of a child we have not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    child.wait().ok()
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the user interrupted vmbuild: errors that follow are its consequence.
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// Process groups of live children, for the interrupt handler.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// On SIGINT, SIGTERM or SIGHUP: end every child process group vmbuild started (VMs run
/// in their own groups, so the terminal's Ctrl-C does not reach them), then exit 130.
/// Unpublished builds are left in the store's tmp/, which the next build cleans.
pub fn install_interrupt_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(start_interrupt_thread);
}

fn start_interrupt_thread() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
            let groups = LIVE_GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
            for pgid in &groups {
                // SAFETY: signalling process groups this process created.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
            }
            if !groups.is_empty() {
                std::thread::sleep(Duration::from_millis(500));
                for pgid in &groups {
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
            }
            eprintln!(
                "vmbuild: interrupted (signal {signal}); stopped {} child process group(s)",
                groups.len()
            );
            std::process::exit(130);
        }
    });
}

fn forget_group(pgid: i32) {
    if let Ok(mut groups) = LIVE_GROUPS.lock() {
        groups.retain(|g| *g != pgid);
    }
}

/// Owns a child started in its own process group. Dropping it (early return, panic, error)
/// ends the whole group: SIGTERM, then SIGKILL after a grace period.
pub struct GroupGuard {
    child: Option<Child>,
    grace: Duration,
}

/// Asks the kernel to kill the calling process (a child between fork and exec) when its
/// parent dies.
fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: one system call on the calling process, with a valid signal number (and,
    // on FreeBSD, a pointer to it that outlives the call).
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    #[cfg(target_os = "freebsd")]
    let rc = {
        let mut signal = libc::SIGKILL;
        unsafe {
            libc::procctl(
                libc::P_PID,
                0,
                libc::PROC_PDEATHSIG_CTL,
                (&mut signal as *mut libc::c_int).cast(),
            )
        }
    };
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let rc = 0;
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

impl GroupGuard {
    /// Spawns `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command, grace: Duration) -> Result<GroupGuard, ProcessError> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        // If vmbuild dies (kill -9), the child goes too, not left running for nobody.
        // SAFETY: die_with_parent only makes one async-signal-safe call; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(die_with_parent);
        }
        // Installed on first use: runs that start no VM start no signal thread.
        install_interrupt_handler();
        let child = spawn(cmd)?;
        if let Ok(mut groups) = LIVE_GROUPS.lock() {
            groups.push(child.id() as i32);
        }
        Ok(GroupGuard {
            child: Some(child),
            grace,
        })
    }

    pub fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("child is present until the guard is finished")
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits for the child to exit on its own, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child().try_wait() {
                Ok(Some(status)) => {
                    forget_group(self.id() as i32);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                _ => return None,
            }
        }
    }

    /// Ends the group: SIGTERM, wait up to the grace period, then SIGKILL. Returns the status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pgid = self.id() as i32;
        if let Ok(Some(status)) = self.child().try_wait() {
            forget_group(pgid);
            return Some(status);
        }
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if let Some(status) = self.wait_timeout(self.grace) {
            return Some(status);
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let status = self.child().wait().ok();
        forget_group(pgid);
        status
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_package() {
        let err = run(&mut Command::new("mke2fs-that-does-not-exist")).unwrap_err();
        assert!(matches!(err, ProcessError::Missing { .. }), "{err}");
        let err = run(&mut Command::new("qemu-system-x86_64-nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install"), "{err}");
    }

    #[test]
    fn failure_quotes_command_and_stderr_tail() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`sh -c 'echo boom >&2; exit 3'`"), "{err}");
        assert!(err.contains("boom"), "{err}");
    }

    #[test]
    fn guard_kills_the_whole_group() {
        let mut guard = GroupGuard::spawn(
            Command::new("sh").args(["-c", "sleep 100 & sleep 100; wait"]),
            Duration::from_millis(200),
        )
        .unwrap();
        let pgid = guard.id() as i32;
        let status = guard.terminate();
        assert!(status.is_some());
        // Orphans may linger as zombies until init reaps them; only live members count.
        let live_members = || {
            std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|stat| {
                    let fields: Vec<&str> = stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .collect();
                    fields.first() != Some(&"Z")
                        && fields.get(2) == Some(&pgid.to_string().as_str())
                })
                .count()
        };
        let alive = live_members() > 0;
        assert!(!alive, "process group {pgid} survived");
    }
}
