//! A build's log, and the commands that write it: the kernel's make and a bundle's
//! `[build] command` run in their own process group (a failed or interrupted build leaves
//! nothing running), with stdout and stderr appended to one log under the store's `logs/`
//! (`Store::kept_log`). Each stdout line becomes the progress line. A failure names the
//! command, its exit status, the tail of what it printed and the kept log; on success the
//! log moves into the entry as `build.log`.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use super::{io_err, BuildContext, BuildError};
use crate::process::{self, LoggedFailure, ProcessError};

/// The log's name in an entry.
pub(crate) const BUILD_LOG: &str = "build.log";

/// Lines of output a failure shows.
const TAIL_LINES: usize = 20;

/// Which output a failure's tail is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tail {
    /// Only stderr: make's stdout is step lines ("  CC  kernel/fork.o"), its errors are on
    /// stderr, and with `-j` the steps of other jobs would push them out of the tail.
    Stderr,
    /// Both streams, in the order they arrived: a build script may report on either.
    Output,
}

impl Tail {
    fn label(self) -> &'static str {
        match self {
            Tail::Stderr => "stderr",
            Tail::Output => "output",
        }
    }
}

pub(crate) struct BuildLog<'a> {
    file: fs_err::File,
    path: &'a Path,
    progress: &'a (dyn Fn(&str) + Sync),
    tail_of: Tail,
    /// The last command run, and the tail of its output, for a failure's message.
    last_command: String,
    tail: Vec<String>,
}

impl<'a> BuildLog<'a> {
    /// Starts the build's log at `ctx.log` (emptied if a failed build left one there).
    pub(crate) fn create(ctx: &'a BuildContext, tail_of: Tail) -> Result<BuildLog<'a>, BuildError> {
        if let Some(dir) = ctx.log.parent() {
            fs_err::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let file = fs_err::File::create(ctx.log).map_err(io_err("create", ctx.log))?;
        Ok(BuildLog {
            file,
            path: ctx.log,
            progress: ctx.progress,
            tail_of,
            last_command: String::new(),
            tail: Vec::new(),
        })
    }

    /// Runs `cmd`; a non-zero exit is an error.
    pub(crate) fn run(&mut self, cmd: &mut Command) -> Result<(), BuildError> {
        let status = self.status(cmd)?;
        self.check(status)
    }

    /// Runs `cmd` in its own process group with stdout and stderr appended to the log,
    /// returning how it ended. If logging fails midway the group is ended (the guard's
    /// drop), never left running.
    pub(crate) fn status(&mut self, cmd: &mut Command) -> Result<ExitStatus, BuildError> {
        let command = process::describe(cmd);
        let log_path = self.path;
        writeln!(self.file, "$ {command}").map_err(io_err("write", log_path))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut guard = process::GroupGuard::spawn(cmd, std::time::Duration::from_secs(5))?;
        let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let keep = |tail: &Mutex<VecDeque<String>>, line: &str| {
            let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.push_back(line.to_string());
            if tail.len() > TAIL_LINES {
                tail.pop_front();
            }
        };
        let stderr = guard.child().stderr.take().expect("piped");
        let err_log = self.file.try_clone().map_err(io_err("write", log_path))?;
        let err_tail = Arc::clone(&tail);
        let stderr_thread = std::thread::spawn(move || {
            let mut err_log = err_log;
            for line in lossy_lines(stderr) {
                let _ = writeln!(err_log, "{line}");
                keep(&err_tail, &line);
            }
        });
        let stdout = guard.child().stdout.take().expect("piped");
        for line in lossy_lines(stdout) {
            writeln!(self.file, "{line}").map_err(io_err("write", log_path))?;
            if self.tail_of == Tail::Output {
                keep(&tail, &line);
            }
            // Kbuild's step lines ("  CC      kernel/fork.o") make a good progress line.
            let step = line.trim();
            if !step.is_empty() && !step.starts_with('#') {
                (self.progress)(step);
            }
        }
        let status = guard
            .child()
            .wait()
            .map_err(io_err("wait for", Path::new(&command)))?;
        let _ = stderr_thread.join();
        self.tail = Vec::from(std::mem::take(
            &mut *tail.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        self.last_command = command;
        Ok(status)
    }

    /// Ok for a successful `status`; else the error naming the last command, the tail of
    /// its output and the kept log.
    pub(crate) fn check(&mut self, status: ExitStatus) -> Result<(), BuildError> {
        if status.success() {
            return Ok(());
        }
        let _ = self.file.flush();
        Err(ProcessError::Logged(Box::new(LoggedFailure {
            command: self.last_command.clone(),
            status: status.to_string(),
            tail_of: self.tail_of.label(),
            tail: self.tail.clone(),
            log: self.path.to_path_buf(),
        }))
        .into())
    }

    /// Moves the log of a successful build to `to` (in the entry).
    pub(crate) fn finish(mut self, to: &Path) -> Result<(), BuildError> {
        self.file.flush().map_err(io_err("write", self.path))?;
        fs_err::rename(self.path, to).map_err(io_err("move the build log to", to))?;
        Ok(())
    }
}

/// The lines of a child's output as text, to its end: a line that is not UTF-8 (a
/// warning quoting a Latin-1 source line) is converted, never a reason to stop reading
/// (which would close the pipe and kill the writer with SIGPIPE).
fn lossy_lines(reader: impl std::io::Read) -> impl Iterator<Item = String> {
    let mut reader = std::io::BufReader::new(reader);
    std::iter::from_fn(move || {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                Some(String::from_utf8_lossy(&line).into_owned())
            }
        }
    })
}
