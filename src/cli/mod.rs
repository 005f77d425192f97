//! The command line: clap types, one file per subcommand, and the only place that prints.
//! Each subcommand returns an exit code; errors map to the exit-code contract
//! (0 ok, 1 tests failed, 2 bad usage or recipe, 3 build failed, 4 VM/infrastructure).

mod boot;
mod build;
mod compare;
mod durations;
mod explain;
mod gc;
mod generated;
mod import;
mod lock;
mod record;
mod remote;
mod render;
mod results;
mod run;
mod shell;
mod test;
mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::engine::{Engine, Error, Force};
use crate::recipe::{Project, ProjectConfig, RemoteMode};
use crate::store::{Remote, RemoteSettings};

#[derive(Parser)]
#[command(
    name = "vmbuild",
    version,
    about = "Build kernels, root images and test bundles from recipes; test them in VMs",
    long_about = "Build kernels, root images and test bundles from TOML recipes into a \
content-addressed cache, then boot them in qemu and run tests inside. Every output, test \
results included, is stored under a key that hashes all its inputs: an unchanged rerun is a \
cache hit that does no work.\n\nRecipes live in recipes/NAME.toml under the project root (the \
nearest folder upward with vmbuild.toml or recipes/).",
    after_help = "Exit codes: 0 success, 1 tests failed, 2 bad usage or recipe, 3 build failed, 4 VM or infrastructure failure."
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub struct Global {
    /// The store folder [default: ./cache at the project root]
    #[arg(long, global = true, env = "VMBUILD_CACHE_DIR", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Run as if started in DIR
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// Show what vmbuild runs and why (commands, keys)
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Rehash every output of a cache hit against its manifest before using it (a hit
    /// always checks that each output is there with its recorded size)
    #[arg(long, global = true, env = "VMBUILD_VERIFY_ON_HIT")]
    verify_on_hit: bool,
    /// A remote cache speaking the Bazel HTTP cache protocol (nginx WebDAV,
    /// bazel-remote, ...): lookups that miss locally try it, new entries go to it
    /// [default: `remote_cache` in vmbuild.toml]
    #[arg(long, global = true, env = "VMBUILD_REMOTE_CACHE", value_name = "URL")]
    remote_cache: Option<String>,
    /// How to use the remote cache: off, read (never upload) or readwrite [default:
    /// `remote` in vmbuild.toml, else readwrite when a cache is set]
    #[arg(long, global = true, env = "VMBUILD_REMOTE", value_name = "MODE", value_parser = str::parse::<RemoteMode>)]
    remote: Option<RemoteMode>,
    /// Sign what is uploaded with this ed25519 secret key (`vmbuild keygen` makes one)
    /// [default: `signing_key` in vmbuild.toml]
    #[arg(long, global = true, env = "VMBUILD_SIGNING_KEY", value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Use only remote entries signed by this public key (NAME:BASE64; repeat for more;
    /// in VMBUILD_TRUSTED_KEYS, separated by spaces) [default: `trusted_keys` in
    /// vmbuild.toml; none: signatures are not checked]
    #[arg(
        long = "trusted-key",
        global = true,
        env = "VMBUILD_TRUSTED_KEYS",
        value_delimiter = ' ',
        value_name = "KEY"
    )]
    trusted_keys: Vec<String>,
}

impl Global {
    /// The remote cache the flags, the environment and `vmbuild.toml` name (in that
    /// order of precedence), or `None`.
    fn remote_settings(&self, config: &ProjectConfig) -> Option<RemoteSettings> {
        let url = self
            .remote_cache
            .clone()
            .or_else(|| config.remote_cache.clone())?;
        if url.is_empty() {
            return None;
        }
        let trusted_keys: Vec<String> = self
            .trusted_keys
            .iter()
            .filter(|k| !k.is_empty())
            .cloned()
            .collect();
        Some(RemoteSettings {
            url,
            mode: self
                .remote
                .or(config.remote)
                .unwrap_or(RemoteMode::Readwrite),
            signing_key: self
                .signing_key
                .clone()
                .or_else(|| config.signing_key.clone()),
            trusted_keys: match trusted_keys.is_empty() {
                true => config.trusted_keys.clone(),
                false => trusted_keys,
            },
        })
    }
}

#[derive(Args, Clone, Copy)]
pub struct ForceArg {
    /// Redo the named recipes even if cached (-ff: their whole dependency closure too)
    #[arg(short = 'f', long = "force", action = clap::ArgAction::Count)]
    force: u8,
}

impl ForceArg {
    fn level(self) -> Force {
        match self.force {
            0 => Force::None,
            1 => Force::Named,
            _ => Force::Closure,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Build recipes; print each requested entry's path (one per line)
    #[command(after_help = "Examples:
  vmbuild build busybox-rootfs               # prints the entry's path; a rerun is a cache hit
  vmbuild build --json debian-kernel         # {\"name\",\"kind\",\"key\",\"path\",\"cached\"}
  vmbuild build -f busybox-rootfs            # rebuild it (-ff: and everything below it)
  vmbuild build busybox-disk                 # a bootable GPT disk: prints the image")]
    Build(build::BuildArgs),
    /// Build what test recipes need, boot VMs, run the tests; print one line per test
    #[command(after_help = "Examples:
  vmbuild test smoke                         # one line per test, then \"N passed, N failed\"
  vmbuild test smoke --junit junit.xml       # also JUnit XML for CI
  vmbuild test -f smoke --filter 'proc*'     # rerun some tests even though they passed
  vmbuild test --keep-alive smoke            # keep a failed test's VM up for a shell
  vmbuild test --shard 2/4 smoke             # the second quarter of the tests (a CI matrix job)")]
    Test(test::TestArgs),
    /// Show the last results of a test recipe without running anything
    #[command(after_help = "Examples:
  vmbuild results smoke                      # the last results, nothing run
  vmbuild results --json smoke               # results.json
  vmbuild results --merge --shards 4 smoke   # join a CI matrix's four shards")]
    Results(results::ResultsArgs),
    /// Name the latest results of a test recipe, to compare later results with
    ///
    /// Copies the results `vmbuild results RECIPE` shows into
    /// <cache>/records/LABEL.json, so `gc` removing their entry does not lose them.
    /// Recording a label again replaces it.
    #[command(after_help = "Examples:
  vmbuild record before smoke                # name the latest results `before`")]
    Record(record::RecordArgs),
    /// Compare two records: status changes, the largest duration changes; exit 1 when a
    /// test regressed
    ///
    /// A and B are labels given to `vmbuild record` (A the earlier). Lists the tests
    /// whose status changed (`pass -> fail`, `fail -> pass`, ...), were added or removed,
    /// then the largest changes of duration (`--top`; tests under 0.05 s in both, or
    /// that took as long, are left out), then a summary line. Exits 1 when a test went
    /// from pass, flaky or skip to fail, timeout or crash; else 0.
    #[command(after_help = "Examples:
  vmbuild record before smoke && vmbuild test -f smoke && vmbuild record after smoke
  vmbuild compare before after               # exit 1 if a test regressed")]
    Compare(compare::CompareArgs),
    /// Show a recipe's cache key inputs and, after a change, what changed
    #[command(after_help = "Examples:
  vmbuild explain smoke                      # its key inputs; after an edit, what changed")]
    Explain(explain::ExplainArgs),
    /// Rehash store entries against their manifests
    #[command(after_help = "Examples:
  vmbuild verify                             # exit 3 and one line per damaged entry
  vmbuild verify --delete                    # remove them (rebuilt when next needed)")]
    Verify(verify::VerifyArgs),
    /// Remove store entries no recipe reaches, or older than an age
    #[command(after_help = "Examples:
  vmbuild gc                                 # remove what no recipe reaches
  vmbuild gc --older-than 7d                 # also what was made more than a week ago")]
    Gc(gc::GcArgs),
    /// Pin the Debian packages recipes use anew in vmbuild.lock
    #[command(after_help = "Examples:
  vmbuild lock && git diff vmbuild.lock      # take Debian's current packages")]
    Lock(lock::LockArgs),
    /// Boot a test recipe's VM with an interactive console
    #[command(after_help = "Examples:
  vmbuild shell smoke                        # a root shell in smoke's VM; `exit` ends it
  vmbuild shell --cold smoke                 # boot it in full instead of from its snapshot")]
    Shell(shell::ShellArgs),
    /// Boot a test recipe's VM, run one command in it, exit with its exit code
    Run(run::RunArgs),
    /// Upload what the recipes need (and their results) from the local store to the
    /// remote cache
    ///
    /// Builds and all-pass test runs upload on their own when a remote cache is set to
    /// readwrite; push sends what was made before (or with --remote read). Each entry is
    /// rehashed first; a damaged one is not sent (exit 3). Blobs the server has are
    /// skipped.
    #[command(after_help = "Examples:
  vmbuild --remote-cache http://cache:8080/vmbuild push smoke")]
    Push(remote::TransferArgs),
    /// Download what the recipes need (and their results) from the remote cache into the
    /// local store, without building anything; print each entry's path
    ///
    /// Lookups do this on their own; pull fetches ahead of time (a CI job warming its
    /// store before going offline, say). Every file is checked against its hash.
    #[command(after_help = "Examples:
  vmbuild --remote-cache http://cache:8080/vmbuild --remote read pull smoke")]
    Pull(remote::TransferArgs),
    /// Make an ed25519 key pair to sign uploads with: the secret key goes to FILE, the
    /// public key (to list in trusted_keys) is printed
    #[command(after_help = "Examples:
  vmbuild keygen ci-1 ci-1.secret            # prints ci-1:BASE64 for trusted_keys")]
    Keygen(remote::KeygenArgs),
    /// Turn a test written for another tool into a test recipe and bundle
    #[command(after_help = import::EXAMPLES)]
    Import(import::ImportArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish or powershell)
    #[command(after_help = "Examples:
  vmbuild completions bash > /etc/bash_completion.d/vmbuild
  vmbuild completions zsh > \"${fpath[1]}/_vmbuild\"
  vmbuild completions fish > ~/.config/fish/completions/vmbuild.fish")]
    Completions(generated::CompletionsArgs),
    /// Print the manual page (roff), or write one per subcommand into a folder
    #[command(after_help = "Examples:
  vmbuild man | man -l -
  vmbuild man --dir /usr/local/share/man/man1")]
    Man(generated::ManArgs),
}

/// Parses arguments, runs the command, returns the exit code.
/// Standard output that cannot be written (`> /dev/full`, a full disk) ends vmbuild with
/// one line and exit 4, not a panic's backtrace: `println!` panics when its write fails.
/// What was published stays valid (every publish is one rename), as after `kill -9`.
fn end_on_unwritable_stdout() {
    const FAILED: &str = "failed printing to stdout: ";
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        match message.strip_prefix(FAILED) {
            Some(why) => {
                eprintln!("error: write to standard output: {why}");
                std::process::exit(4);
            }
            None => default(info),
        }
    }));
}

pub fn main() -> i32 {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`| head`).
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    end_on_unwritable_stdout();
    let cli = Cli::parse();
    if let Some(dir) = &cli.global.directory {
        if let Err(e) = std::env::set_current_dir(dir) {
            eprintln!("error: change to {}: {e}", dir.display());
            return 2;
        }
    }
    let reporter = render::Renderer::new(cli.global.verbose);
    let outcome = match cli.command {
        Command::Build(args) => build::run(&cli.global, &reporter, args),
        Command::Test(args) => test::run(&cli.global, &reporter, args),
        Command::Results(args) => results::run(&cli.global, &reporter, args),
        Command::Record(args) => record::run(&cli.global, &reporter, args),
        Command::Compare(args) => compare::run(&cli.global, &reporter, args),
        Command::Explain(args) => explain::run(&cli.global, &reporter, args),
        Command::Verify(args) => verify::run(&cli.global, &reporter, args),
        Command::Gc(args) => gc::run(&cli.global, &reporter, args),
        Command::Lock(args) => lock::run(&cli.global, &reporter, args),
        Command::Shell(args) => shell::run(&cli.global, &reporter, args),
        Command::Run(args) => run::run(&cli.global, &reporter, args),
        Command::Push(args) => remote::push(&cli.global, &reporter, args),
        Command::Pull(args) => remote::pull(&cli.global, &reporter, args),
        Command::Keygen(args) => remote::keygen(args),
        Command::Import(args) => import::run(&cli.global, &reporter, args),
        Command::Completions(args) => generated::completions(args),
        Command::Man(args) => generated::man(args),
    };
    reporter.finish();
    match outcome {
        // Whatever came back after Ctrl-C was cut short by it.
        Ok(_) if crate::process::interrupted() => {
            eprintln!("vmbuild: interrupted");
            130
        }
        Ok(code) => code,
        // A VM that died because the user pressed Ctrl-C is not a failure to report.
        Err(_) if crate::process::interrupted() => {
            eprintln!("vmbuild: interrupted");
            130
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Finds the project and opens the store and lock.
fn open_engine<'a>(
    global: &Global,
    reporter: &'a render::Renderer,
    refresh_lock: bool,
) -> Result<Engine<'a>, Error> {
    let cwd = std::env::current_dir()
        .map_err(|e| Error::Usage(format!("find the current folder: {e}")))?;
    let project = Project::discover(&cwd)?;
    let cache = global
        .cache_dir
        .clone()
        .unwrap_or_else(|| project.root.join("cache"));
    let config = ProjectConfig::load(&project.root)?;
    let remote = match global.remote_settings(&config) {
        Some(settings) => Remote::open(&settings).map_err(|e| Error::Usage(e.to_string()))?,
        None => None,
    };
    let mut engine = Engine::open(project, &cache, reporter, refresh_lock)?;
    engine.store.set_verify_on_hit(global.verify_on_hit);
    engine.store.set_remote(remote);
    Ok(engine)
}
