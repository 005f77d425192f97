//! The kernel developer's loop: `vmbuild run RECIPE -- CMD` runs one command in a real VM
//! (qemu, TCG here, Debian's kernel from the shared store) and exits with its exit code;
//! `vmbuild shell` ends when the guest halts. Each boot costs seconds, so each test
//! function makes several checks per boot sequence.

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::{wait_or_kill, TestProject};

/// Far longer than a boot under TCG; only a hang gets there.
const DEADLINE: Duration = Duration::from_secs(180);

#[test]
fn run_exits_with_the_commands_code_and_streams_its_output() {
    let p = TestProject::shared();
    p.run(&["run", "smoke", "--", "sh", "-c", "exit 3"])
        .expect(3);

    let missing = p
        .run(&["run", "smoke", "--", "no-such-command", "arg"])
        .expect(127);
    assert!(
        missing
            .stderr
            .contains("no-such-command: command not found"),
        "{}",
        missing.stderr
    );

    // Output arrives while the command still runs, each stream on its own.
    let mut child = p
        .command(&[
            "run",
            "smoke",
            "--",
            "sh",
            "-c",
            "echo started; echo oops >&2; sleep 5; echo done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert_eq!(first, "started\n");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first line came only after the command ended"
    );
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = wait_or_kill(&mut child, DEADLINE).expect("vmbuild run ended");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(rest, "done\n");
    assert!(stderr.contains("oops\n"), "{stderr}");
}

#[test]
fn run_prints_the_kernel_release_and_passes_arguments_byte_for_byte() {
    let p = TestProject::shared();
    let kernel = p
        .run(&["build", "--json", "debian-kernel"])
        .expect(0)
        .json_lines()[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&kernel).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let release = manifest["details"]["release"].as_str().unwrap();
    assert!(!release.is_empty());

    let uname = p.run(&["run", "smoke", "--", "uname", "-r"]).expect(0);
    // Only the command's output is on stdout: the kernel console went to a file.
    assert_eq!(uname.stdout, format!("{release}\n"));
    assert!(!uname.stderr.contains("Linux version"), "{}", uname.stderr);
    let console = std::fs::read_to_string(p.cache.join("logs/run-smoke.console.log")).unwrap();
    assert!(console.contains("Linux version"), "{console}");

    // Arguments a shell would mangle, passed to printf with no shell in between; a
    // kernel and a rootfs instead of a test recipe.
    let args: [&[u8]; 9] = [
        b"a b",
        b"it's",
        b"\"quoted\" $HOME `id` $(id) *",
        b"two\nlines\n",
        b"",
        b"  leading and trailing  ",
        b"back\\slash \\n %s",
        b"\t\r-e",
        b"\xff\xfe not UTF-8",
    ];
    let out = p
        .command(&[
            "run",
            "--kernel",
            "debian-kernel",
            "--rootfs",
            "busybox-rootfs",
            "--",
            "printf",
            "%s\\n",
        ])
        .args(args.iter().map(|a| OsStr::from_bytes(a)))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let expected: Vec<u8> = args.iter().flat_map(|a| [*a, b"\n"].concat()).collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(out.stdout, expected);
}

#[test]
fn run_relays_long_lines_whole_and_exits_when_the_command_does() {
    let p = TestProject::shared();
    // Both streams at once, stdout as one 20,000-byte line: their relays share the
    // channel, and no protocol line of one may cut into the other's. Then text holding
    // the agent's old end marker, output without a final newline, and a background
    // child that keeps both pipes open for longer than DEADLINE: vmbuild must exit with
    // the command, not with its child.
    let script = "head -c 20000 /dev/zero | tr '\\000' b & yes ERR | head -n 3000 >&2; wait; \
                  echo; printf 'x\\001vmbuild-eof\\001\\nmid\\ntail'; sleep 300 & exit 4";
    let mut child = p
        .command(&["run", "smoke", "--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    // Read on threads: a vmbuild that hangs must meet DEADLINE, not a blocked read.
    let read_all = |mut from: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = from.read_to_end(&mut bytes);
            bytes
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let errors = read_all(Box::new(child.stderr.take().unwrap()));
    let status = wait_or_kill(&mut child, DEADLINE);
    let out = out.join().unwrap();
    let errors = String::from_utf8_lossy(&errors.join().unwrap()).into_owned();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(4),
        "vmbuild waited for the background child or failed\n{errors}"
    );
    let expected = [
        "b".repeat(20000).as_bytes(),
        b"\n",
        b"x\x01vmbuild-eof\x01\nmid\ntail",
    ]
    .concat();
    assert!(
        out == expected,
        "stdout differs: {} bytes, {} b's, protocol text inside: {}",
        out.len(),
        out.iter().filter(|&&b| b == b'b').count(),
        String::from_utf8_lossy(&out).contains("VMBUILD")
    );
    assert!(errors.contains(&"ERR\n".repeat(3000)), "{errors}");
    // (vmbuild's own notes may name VMBUILD_ACCEL.)
    assert!(
        !errors.contains("VMBUILD OUT") && !errors.contains("VMBUILD PART"),
        "{errors}"
    );
}

#[test]
fn run_refuses_what_it_cannot_boot() {
    let p = TestProject::new();
    let run = p.run(&["run", "debian-kernel", "--", "true"]).expect(2);
    assert!(
        run.stderr
            .contains("`debian-kernel` is a kernel recipe, not a test"),
        "{}",
        run.stderr
    );
    let run = p
        .run(&[
            "run",
            "--kernel",
            "busybox-rootfs",
            "--rootfs",
            "debian-kernel",
            "--",
            "true",
        ])
        .expect(2);
    assert!(
        run.stderr.contains("--kernel takes a kernel"),
        "{}",
        run.stderr
    );
    // Neither a recipe nor --kernel/--rootfs; no command; a command without `--`.
    p.run(&["run", "--", "true"]).expect(2);
    p.run(&["run", "--kernel", "debian-kernel", "--", "true"])
        .expect(2);
    p.run(&["run", "smoke"]).expect(2);
    p.run(&["run", "smoke", "true"]).expect(2);
    let help = p.run(&["run", "--help"]).expect(0);
    assert!(
        help.stdout.contains("vmbuild run smoke -- uname -r"),
        "{}",
        help.stdout
    );
    assert!(p.run(&["--help"]).expect(0).stdout.contains("run"));
}

/// Starts `vmbuild shell RECIPE` with piped stdin, waits for the guest's shell prompt,
/// types `command`, and returns how vmbuild ended (`None`: it had to be killed) and
/// what it printed (the console, then its stderr).
fn shell_session(p: &TestProject, recipe: &str, command: &str) -> (Option<i32>, String) {
    shell_session_with_path(p, None, recipe, command)
}

/// `shell_session` with `dir` first on PATH (a qemu wrapper).
fn shell_session_with_path(
    p: &TestProject,
    dir: Option<&std::path::Path>,
    recipe: &str,
    command: &str,
) -> (Option<i32>, String) {
    let mut cmd = p.command(&["shell", recipe]);
    if let Some(dir) = dir {
        cmd.env(
            "PATH",
            format!(
                "{}:{}",
                dir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (prompt_tx, prompt_rx) = std::sync::mpsc::channel();
    // Reads the console to its end (a VM must never block on a full pipe), saying when
    // the agent's shell is up.
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if !told {
                if let Some(at) = text.find("vmbuild shell:") {
                    if text[at..].contains("# ") {
                        told = true;
                        let _ = prompt_tx.send(());
                    }
                }
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    if prompt_rx.recv_timeout(DEADLINE).is_ok() {
        stdin.write_all(format!("{command}\n").as_bytes()).unwrap();
    }
    let status = wait_or_kill(&mut child, DEADLINE);
    drop(stdin);
    let console = reader.join().unwrap();
    let errors = errors.join().unwrap();
    (
        status.and_then(|s| s.code()),
        format!("{console}\n--- stderr\n{errors}"),
    )
}

#[test]
fn shell_ends_when_the_guest_powers_off_or_halts() {
    let p = TestProject::shared();
    // Without ACPI (as on a tinyconfig kernel) the kernel turns a power-off into a halt:
    // the guest's CPUs stop and qemu would run on forever.
    p.write(
        "recipes/no-acpi.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\n[vm]\ncmdline = \"acpi=off\"\n",
    );
    let (code, console) = shell_session(&p, "no-acpi", "poweroff -f");
    assert_eq!(code, Some(0), "{console}");
    assert!(console.contains("reboot: System halted"), "{console}");
    // With ACPI, `halt -f` halts too.
    let (code, console) = shell_session(&p, "smoke", "halt -f");
    assert_eq!(code, Some(0), "{console}");
    assert!(console.contains("reboot: System halted"), "{console}");
}

#[test]
fn run_and_shell_start_from_the_environments_snapshot() {
    let p = TestProject::shared();
    // An environment of this test's own.
    p.write(
        "recipes/warm-run.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\n[vm]\ncmdline = \"vmbuild.suite=warm-run\"\n",
    );
    let (qemu_dir, log) = common::counting_qemu();
    let first = p
        .run_with_path(qemu_dir.path(), &["run", "warm-run", "--", "echo", "made"])
        .expect(0);
    assert_eq!(first.stdout, "made\n");
    assert_eq!((common::cold_boots(&log), common::restores(&log)), (1, 0));
    // Restored, with the host's time (not the snapshot's, a few seconds old).
    std::thread::sleep(Duration::from_secs(3));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let second = p
        .run_with_path(qemu_dir.path(), &["run", "warm-run", "--", "date", "+%s"])
        .expect(0);
    let clock: u64 = second.stdout.trim().parse().unwrap();
    assert!(
        clock + 1 >= before && clock <= before + 30,
        "guest {clock}, host {before}"
    );
    // The console of a restored VM starts with the boot that made the snapshot.
    let console = std::fs::read_to_string(p.cache.join("logs/run-warm-run.console.log")).unwrap();
    assert!(
        console.contains("Linux version") && console.contains("started from the snapshot"),
        "{console}"
    );
    assert_eq!((common::cold_boots(&log), common::restores(&log)), (1, 1));
    // The shell lands in a VM started from the same snapshot, the console on the terminal.
    let (code, console) = shell_session_with_path(
        &p,
        Some(qemu_dir.path()),
        "warm-run",
        "echo from-the-shell; exit",
    );
    assert_eq!(code, Some(0), "{console}");
    assert!(console.contains("from-the-shell"), "{console}");
    assert_eq!((common::cold_boots(&log), common::restores(&log)), (1, 2));
    // --cold boots in full.
    p.run_with_path(
        qemu_dir.path(),
        &["run", "--cold", "warm-run", "--", "true"],
    )
    .expect(0);
    assert_eq!((common::cold_boots(&log), common::restores(&log)), (2, 2));
}
