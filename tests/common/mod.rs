//! Integration-test harness: a temporary copy of the shipped project (recipes, modules,
//! smoke tests, vmbuild.lock) and the real `vmbuild` binary run against it.
#![allow(dead_code)]

pub mod nginx;
pub mod suites;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct TestProject {
    pub dir: tempfile::TempDir,
    pub cache: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asserts the exit code, showing both streams when it differs.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The JSON objects printed one per line on stdout.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `to` made a copy of the folder `from` whose files are hard links to its own (copies
/// where `to` is on another file system).
fn link_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            link_tree(&entry.path(), &target);
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &target).unwrap();
        } else if std::fs::hard_link(entry.path(), &target).is_err() {
            // Another file system (a tmpfs /tmp): a copy, then.
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The store shared by tests that need heavy artifacts (kernels): keys hash content, not
/// paths, so every copy of the project finds the same entries; vmbuild's per-key locks
/// make concurrent tests wait for one build instead of racing.
pub fn shared_store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-store")
}

impl TestProject {
    /// A copy of the shipped project with its own empty store.
    pub fn new() -> TestProject {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["recipes", "modules", "tests/smoke"] {
            copy_dir(&repo().join(sub), &dir.path().join(sub));
        }
        std::fs::copy(repo().join("vmbuild.lock"), dir.path().join("vmbuild.lock")).unwrap();
        let cache = dir.path().join("cache");
        TestProject { dir, cache }
    }

    /// A copy of the shipped project using the shared store.
    pub fn shared() -> TestProject {
        TestProject {
            cache: shared_store(),
            ..TestProject::new()
        }
    }

    /// Gives this project's own store the shared store's entries of `names` (built
    /// there first), hard-linked: what a test on a fresh store needs but does not test
    /// the making of costs no disk (Debian's kernel is 390 MiB, and CI disks are small).
    pub fn seed_from_shared(&self, names: &[&str]) {
        let shared = TestProject::shared();
        let built = shared
            .run(&[&["build", "--json"], names].concat())
            .expect(0);
        for line in built.json_lines() {
            let entry = PathBuf::from(line["path"].as_str().expect("an entry path"));
            link_tree(&entry, &self.cache.join(entry.file_name().unwrap()));
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> &TestProject {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        self
    }

    pub fn write_exec(&self, rel: &str, text: &str) -> &TestProject {
        self.write(rel, text);
        std::fs::set_permissions(self.path(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmbuild"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("VMBUILD_CACHE_DIR", &self.cache)
            // These machines' /dev/kvm passes vmbuild's probe now and then while real
            // guests hang under it: the suite runs on TCG unless told otherwise
            // (VMBUILD_TEST_ACCEL=kvm, or =auto to let vmbuild probe).
            .env_remove("VMBUILD_ACCEL");
        // A CI that shares a remote cache with its builds must not share it with these
        // tests: they count boots and builds, and the remote tests name their own.
        for remote in [
            "VMBUILD_REMOTE_CACHE",
            "VMBUILD_REMOTE",
            "VMBUILD_SIGNING_KEY",
            "VMBUILD_TRUSTED_KEYS",
        ] {
            cmd.env_remove(remote);
        }
        match std::env::var("VMBUILD_TEST_ACCEL").as_deref() {
            Ok("auto") => {}
            Ok(accel) => {
                cmd.env("VMBUILD_ACCEL", accel);
            }
            Err(_) => {
                cmd.env("VMBUILD_ACCEL", "tcg");
            }
        }
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().unwrap())
    }

    /// Runs with `dir` first on PATH (e.g. a qemu wrapper that counts boots).
    pub fn run_with_path(&self, dir: &Path, args: &[&str]) -> Run {
        let path = format!(
            "{}:{}",
            dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Run::from(self.command(args).env("PATH", path).output().unwrap())
    }

    /// Published entries of `name` in this project's store.
    pub fn entries(&self, name: &str) -> Vec<PathBuf> {
        std::fs::read_dir(&self.cache)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        // `<64 hex digits of key>-<name>`
                        let file = p.file_name().unwrap().to_string_lossy().into_owned();
                        file.get(65..) == Some(name)
                            && file.as_bytes().get(64) == Some(&b'-')
                            && p.join("manifest.json").exists()
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A folder holding a `qemu-system-x86_64` that logs each start to `boots.log`, then runs
/// the real qemu: counts boots without trusting vmbuild's own account.
pub fn counting_qemu() -> (tempfile::TempDir, PathBuf) {
    counting("qemu-system-x86_64", "qemu-system-x86")
}

/// `counting_qemu` for another qemu `program`, from Debian's `package`.
pub fn counting(program: &str, package: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let real = which(program)
        .unwrap_or_else(|| panic!("{program} is installed (apt-get install {package})"));
    let log = dir.path().join("boots.log");
    let script = format!(
        "#!/bin/sh\necho \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
        log.display(),
        real.display()
    );
    let wrapper = dir.path().join(program);
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, log)
}

/// Whether a qemu command line `counting_qemu` logged boots a guest: a kernel, or
/// firmware (the KVM probe, which uses `-M pc` and neither, is not a boot).
fn is_boot(line: &str) -> bool {
    line.contains("-kernel") || line.contains("if=pflash")
}

/// Boots recorded by `counting_qemu`.
pub fn boots(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| is_boot(l))
        .count()
}

/// Of the boots `counting_qemu` recorded, those that booted a kernel in full (not
/// restored from a saved state with `-incoming`).
pub fn cold_boots(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| is_boot(l) && !l.contains("-incoming"))
        .count()
}

/// Of the boots `counting_qemu` recorded, the VMs started from a saved state.
pub fn restores(log: &Path) -> usize {
    boots(log) - cold_boots(log)
}

/// The kept log a failed build's message names (`(full log: PATH)`).
pub fn named_log(stderr: &str) -> PathBuf {
    stderr
        .split("(full log: ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no log named: {stderr}"))
}

/// Runs git in `dir` (as a test user), asserting success.
pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .status()
        .unwrap()
        .success();
    assert!(ok, "git {args:?}");
}

/// A string no earlier run used: recipes and scripts that hold it have keys of their own.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", t.as_nanos(), std::process::id())
}

/// Whether this is CI (`CI=true`), where `.ci/install-deps` installed every tool.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A test that cannot run here says why and returns; under CI (`CI=true`), where
/// `.ci/install-deps` installs everything the suite needs, that is a failure instead.
pub fn skip(reason: &str) {
    if in_ci() {
        panic!("CI=true, yet this test would be skipped: {reason}");
    }
    eprintln!("skipping: {reason}");
}

pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Waits for `child` up to `deadline`; past it, kills the child's whole process group
/// (spawn it with `process_group(0)`, so the VMs it started go too) and returns `None`.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    deadline: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < end {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling the process group the test created for the child.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    None
}

/// `tests failures errors skipped` of a JUnit file, as junitparser (a real consumer)
/// reads it. `None` (after `skip`, which fails under CI=true) only when python3 or
/// junitparser is missing; a file junitparser cannot read fails the test.
pub fn junit_counts(path: &std::path::Path) -> Option<String> {
    let importable = std::process::Command::new("python3")
        .args(["-c", "import junitparser"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        // .ci/install-deps installs it: `skip` fails under CI=true.
        skip("the JUnit check: python3 junitparser is not installed (.ci/install-deps installs it: pip install junitparser)");
        return None;
    }
    let script = "import sys, junitparser\n\
        x = junitparser.JUnitXml.fromfile(sys.argv[1])\n\
        print(x.tests, x.failures, x.errors, x.skipped)\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "junitparser cannot read {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `vmbuild test --keep-alive` of the test recipe `name` (`head`: its kernel, rootfs and
/// other lines) whose bundle has a failing test: the held VM's shell answers on the socket
/// vmbuild names, holds the failed test's output, and `exit` ends the run with exit 1.
pub fn keep_alive_holds_a_failed_test(p: &TestProject, name: &str, head: &str) {
    use std::io::{BufRead, Read, Write};
    p.write_exec(
        &format!("tests/{name}/broken"),
        "#!/bin/sh\necho 'this test is broken'\nexit 1\n",
    );
    p.write_exec(&format!("tests/{name}/fine"), "#!/bin/sh\ntrue\n");
    p.write(
        &format!("recipes/{name}-tests.toml"),
        &format!("kind = \"bundle\"\ntests = \"../tests/{name}\"\n"),
    );
    p.write(
        &format!("recipes/{name}.toml"),
        &format!("kind = \"test\"\n{head}bundles = [\"{name}-tests\"]\n"),
    );
    let mut child = p
        .command(&["test", "--keep-alive", name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // If an assertion fails, end vmbuild (and through it the held VM) instead of leaking it.
    struct KillOnDrop(u32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .arg(self.0.to_string())
                .status();
        }
    }
    let _guard = KillOnDrop(child.id());
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut socket = None;
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 {
        seen.push_str(&line);
        if let Some(path) = line
            .trim()
            .strip_prefix("attach:  socat -,raw,echo=0 UNIX-CONNECT:")
        {
            socket = Some(path.to_string());
            break;
        }
        line.clear();
    }
    let socket = socket.unwrap_or_else(|| panic!("no attach instructions:\n{seen}"));
    let mut shell = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    shell
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    shell
        .write_all(b"echo kept-$((40 + 2)); cat /tmp/vmbuild-test.log\n")
        .unwrap();
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&output).contains("this test is broken") {
        let n = shell.read(&mut buf).unwrap();
        assert!(n > 0, "shell closed: {}", String::from_utf8_lossy(&output));
        output.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&output).contains("kept-42"));
    shell.write_all(b"exit\n").unwrap();
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{rest}");
    assert!(
        stdout.contains(&format!("FAIL    {name}/broken")),
        "{stdout}"
    );
}
