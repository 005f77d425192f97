//! Warm starts end to end, real qemu (TCG here): a test environment is booted once and
//! saved as a store entry, and VMs start from it. A qemu wrapper on PATH tells full boots
//! from restores (`-incoming`) without trusting vmbuild's account. Each test's recipes
//! carry a kernel command line of their own, so that each has an environment of its own
//! in the shared store.

mod common;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{cold_boots, counting_qemu, restores, TestProject};

/// A saved state's file in its entry: compressed, on a host with zstd (.ci/install-deps
/// installs it).
const STATE: &str = "state.zst";

/// Writes the bundle `<suite>-tests` of `tests` (name, script) into `tests/<suite>/`.
fn bundle(p: &TestProject, suite: &str, tests: &[(&str, &str)]) {
    for (name, script) in tests {
        p.write_exec(&format!("tests/{suite}/{name}"), script);
    }
    p.write(
        &format!("recipes/{suite}-tests.toml"),
        &format!("kind = \"bundle\"\ntests = \"../tests/{suite}\"\n"),
    );
}

/// Writes the test recipe `name`: Debian's kernel, `rootfs`, the bundle `<suite>-tests`,
/// the kernel command line `vmbuild.suite=<suite>` (an environment of its own) and `vm`
/// lines in its `[vm]`.
fn recipe(p: &TestProject, name: &str, suite: &str, rootfs: &str, vm: &str) {
    p.write(
        &format!("recipes/{name}.toml"),
        &format!(
            "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"{rootfs}\"\n\
             bundles = [\"{suite}-tests\"]\n[vm]\ncmdline = \"vmbuild.suite={suite}\"\n{vm}\n"
        ),
    );
}

/// The snapshots of `recipe`'s environments in the store, but those in `old` (each
/// qemu wrapper is a qemu of its own: earlier runs of a test leave theirs).
fn env_entries(p: &TestProject, recipe: &str, old: &[PathBuf]) -> Vec<PathBuf> {
    p.entries(&format!("env-{recipe}"))
        .into_iter()
        .filter(|e| !old.contains(e))
        .collect()
}

fn results_of(run: &common::Run) -> serde_json::Value {
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    serde_json::from_slice(&std::fs::read(entry.join("results.json")).unwrap()).unwrap()
}

fn test_log(run: &common::Run, test: &str) -> String {
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    std::fs::read_to_string(entry.join(format!("tests/{test}.log"))).unwrap()
}

fn status_of(results: &serde_json::Value, test: &str) -> String {
    results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == test)
        .unwrap_or_else(|| panic!("no {test} in {results}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The value after `word ` on a line of `log`.
fn field(log: &str, word: &str) -> String {
    log.lines()
        .find_map(|l| l.strip_prefix(&format!("{word} ")))
        .unwrap_or_else(|| panic!("no `{word}` line in {log:?}"))
        .to_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn one_snapshot_serves_two_recipes_with_one_environment_and_another_qemu_is_another_key() {
    let p = TestProject::shared();
    let ok = "#!/bin/sh\necho ok\n";
    bundle(&p, "made-once", &[("a", ok), ("b", ok)]);
    recipe(&p, "made-once", "made-once", "busybox-rootfs", "");
    // Another timeout and isolation: what runs in the VM differs, the VM does not.
    recipe(
        &p,
        "made-once-isolated",
        "made-once",
        "busybox-rootfs",
        "isolation = \"test\"",
    );
    let isolated = p.path("recipes/made-once-isolated.toml");
    let text = std::fs::read_to_string(&isolated).unwrap();
    std::fs::write(&isolated, text.replace("[vm]", "timeout = \"30s\"\n[vm]")).unwrap();

    let old = env_entries(&p, "made-once", &[]);
    let (qemu_dir, log) = counting_qemu();
    let run = p
        .run_with_path(
            qemu_dir.path(),
            &["test", "-f", "made-once", "made-once-isolated"],
        )
        .expect(0);
    assert!(
        run.stderr.contains("no snapshot of this environment yet"),
        "{}",
        run.stderr
    );
    // One full boot made the snapshot (and ran made-once's tests); each test of the
    // isolated recipe had a VM of its own, restored.
    assert_eq!(
        cold_boots(&log),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert_eq!(restores(&log), 2);
    assert_eq!(env_entries(&p, "made-once", &old).len(), 1);
    assert!(env_entries(&p, "made-once-isolated", &old).is_empty());
    let env = &env_entries(&p, "made-once", &old)[0];
    for file in [STATE, "console.log", "manifest.json"] {
        assert!(
            env.join(file).is_file(),
            "{file} missing in {}",
            env.display()
        );
    }
    // A snapshot is an entry like any other.
    p.run(&["verify"]).expect(0);

    // --cold boots in full and leaves the snapshot as it is.
    std::fs::remove_file(&log).unwrap();
    p.run_with_path(
        qemu_dir.path(),
        &["test", "-f", "--cold", "made-once-isolated"],
    )
    .expect(0);
    assert_eq!((cold_boots(&log), restores(&log)), (2, 0));
    assert_eq!(env_entries(&p, "made-once", &old), vec![env.clone()]);

    // start = "boot" boots in full too.
    recipe(
        &p,
        "made-once-boot",
        "made-once",
        "busybox-rootfs",
        "start = \"boot\"",
    );
    std::fs::remove_file(&log).unwrap();
    p.run_with_path(qemu_dir.path(), &["test", "-f", "made-once-boot"])
        .expect(0);
    assert_eq!((cold_boots(&log), restores(&log)), (1, 0));

    // Another qemu binary (this wrapper is another file) is another environment.
    let (other_qemu, other_log) = counting_qemu();
    p.run_with_path(other_qemu.path(), &["test", "-f", "made-once"])
        .expect(0);
    assert_eq!(cold_boots(&other_log), 1);
    let envs = env_entries(&p, "made-once", &old);
    assert_eq!(envs.len(), 2, "{envs:?}");
}

/// Tests that each fail when they find the other's file on the root, and print 16 random
/// bytes and the time.
fn fresh_root_suite(p: &TestProject, suite: &str) {
    let script = "#!/bin/sh\n\
        if [ -e /root/left-behind ]; then echo \"saw $(cat /root/left-behind)\"; exit 1; fi\n\
        echo \"$0\" > /root/left-behind\n\
        echo \"random $(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n')\"\n\
        echo \"clock $(date +%s)\"\n";
    bundle(p, suite, &[("first", script), ("second", script)]);
}

fn isolation_gives_each_test_a_fresh_vm(rootfs: &str, suite: &str) {
    let p = TestProject::shared();
    fresh_root_suite(&p, suite);
    let isolated = format!("{suite}-isolated");
    let shared = format!("{suite}-shared");
    recipe(&p, &isolated, suite, rootfs, "isolation = \"test\"");
    recipe(&p, &shared, suite, rootfs, "");
    // Makes the snapshot (the first test runs in the VM that made it).
    let (qemu_dir, log) = counting_qemu();
    p.run_with_path(qemu_dir.path(), &["test", "-f", &isolated])
        .expect(0);
    // A clock the restore did not set would be as old as the snapshot.
    std::thread::sleep(std::time::Duration::from_secs(3));
    std::fs::remove_file(&log).unwrap();
    let before = now();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "--json", &isolated])
        .expect(0);
    let after = now();
    assert_eq!((restores(&log), cold_boots(&log)), (2, 0));
    let results = results_of(&run);
    assert_eq!(status_of(&results, "first"), "pass", "{results}");
    assert_eq!(status_of(&results, "second"), "pass", "{results}");
    let (first, second) = (test_log(&run, "first"), test_log(&run, "second"));
    // Two VMs restored from one state do not share their random state.
    let random = (field(&first, "random"), field(&second, "random"));
    assert_eq!(random.0.len(), 32, "{first}");
    assert_ne!(
        random.0, random.1,
        "both restored VMs read the same random bytes"
    );
    // ...nor keep the snapshot's clock.
    for log in [&first, &second] {
        let clock: u64 = field(log, "clock").parse().unwrap();
        assert!(
            (before.saturating_sub(1)..=after + 1).contains(&clock),
            "guest clock {clock}, host {before}..{after}"
        );
    }

    // The same tests sharing one VM: the second finds the first's file. (The check
    // above can fail.)
    let run = p.run(&["test", "-f", "--json", &shared]).expect(1);
    let results = results_of(&run);
    let statuses = [status_of(&results, "first"), status_of(&results, "second")];
    assert!(
        statuses.contains(&"pass".to_string()) && statuses.contains(&"fail".to_string()),
        "{results}"
    );
}

#[test]
fn isolation_test_gives_each_test_a_fresh_vm_with_its_own_randomness_and_the_time() {
    isolation_gives_each_test_a_fresh_vm("busybox-rootfs", "fresh-cpio");
}

#[test]
fn isolation_test_gives_each_test_a_fresh_root_disk() {
    if common::which("mmdebstrap").is_none() {
        common::skip("mmdebstrap is not installed (apt-get install mmdebstrap)");
        return;
    }
    isolation_gives_each_test_a_fresh_vm("debian-rootfs", "fresh-ext4");
}

/// Overwrites 64 KiB in the middle of `file`, keeping its size.
fn corrupt(file: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(file).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(len / 2)).unwrap();
    f.write_all(&vec![0xA5; 64 << 10]).unwrap();
}

#[test]
fn a_corrupt_snapshot_is_found_by_verify_and_a_run_boots_cold_and_replaces_it() {
    let p = TestProject::shared();
    bundle(&p, "corrupt", &[("ok", "#!/bin/sh\necho ok\n")]);
    recipe(&p, "corrupt", "corrupt", "busybox-rootfs", "");
    let old = env_entries(&p, "corrupt", &[]);
    let (qemu_dir, log) = counting_qemu();
    p.run_with_path(qemu_dir.path(), &["test", "-f", "corrupt"])
        .expect(0);
    let env = env_entries(&p, "corrupt", &old);
    assert_eq!(env.len(), 1);
    corrupt(&env[0].join(STATE));

    let verify = p.run(&["verify"]).expect(3);
    assert!(
        verify
            .stdout
            .contains(&format!("corrupt: {}", env[0].display()))
            && verify
                .stdout
                .contains(&format!("{STATE}: sha256 mismatch (expected ")),
        "{}",
        verify.stdout
    );

    std::fs::remove_file(&log).unwrap();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "corrupt"])
        .expect(0);
    assert!(
        run.stderr
            .contains("the snapshot of this environment cannot be used")
            && run.stderr.contains("sha256 mismatch")
            && run.stderr.contains("booting cold and replacing it"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("PASS    corrupt/ok"), "{}", run.stdout);
    // The restore was tried, refused, and one full boot replaced the snapshot: the
    // store verifies clean again and the next run restores it.
    assert_eq!((restores(&log), cold_boots(&log)), (1, 1));
    let verify = p.run(&["verify"]);
    assert!(
        !verify.stdout.contains(&env[0].display().to_string()),
        "{}",
        verify.stdout
    );

    // A state cut short is found by its size, before any VM starts, and said.
    let state = env[0].join(STATE);
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&state)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "corrupt"])
        .expect(0);
    assert!(
        run.stderr.contains(&format!("is damaged ({STATE}: size"))
            && run.stderr.contains("not used, and replaced"),
        "{}",
        run.stderr
    );
    // Replaced by a whole one.
    assert!(std::fs::metadata(&state).unwrap().len() > len / 2);
    let verify = p.run(&["verify"]);
    assert!(
        !verify.stdout.contains(&env[0].display().to_string()),
        "{}",
        verify.stdout
    );
}

#[test]
fn a_state_qemu_refuses_is_said_in_one_line_and_the_vm_boots_cold() {
    let p = TestProject::shared();
    bundle(&p, "refused", &[("ok", "#!/bin/sh\necho ok\n")]);
    recipe(&p, "refused", "refused", "busybox-rootfs", "");
    // A qemu that refuses every saved state once `refuse` exists, as a qemu of
    // another version would.
    let dir = tempfile::tempdir().unwrap();
    let real = common::which("qemu-system-x86_64").unwrap();
    let refuse = dir.path().join("refuse");
    let boots = dir.path().join("boots.log");
    let wrapper = dir.path().join("qemu-system-x86_64");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{log}'\n\
             case \"$*\" in *-incoming*) if [ -e '{refuse}' ]; then\n\
             echo 'qemu-system-x86_64: Unknown savevm section or instance vmgenid 0' >&2\n\
             echo 'qemu-system-x86_64: load of migration failed: Invalid argument' >&2\n\
             exit 1; fi ;; esac\nexec '{real}' \"$@\"\n",
            log = boots.display(),
            refuse = refuse.display(),
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    p.run_with_path(dir.path(), &["test", "-f", "refused"])
        .expect(0);
    std::fs::write(&refuse, "").unwrap();
    let run = p
        .run_with_path(dir.path(), &["test", "-f", "refused"])
        .expect(0);
    let said: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("cannot be used"))
        .collect();
    assert_eq!(said.len(), 1, "{}", run.stderr);
    assert!(
        said[0].contains("load of migration failed: Invalid argument")
            && said[0].contains("booting cold and replacing it"),
        "{}",
        said[0]
    );
    assert!(run.stdout.contains("PASS    refused/ok"), "{}", run.stdout);
    // The first run's full boot; then one restore refused and one full boot (which
    // saved a new snapshot).
    assert_eq!((restores(&boots), cold_boots(&boots)), (1, 2));
}

#[test]
fn a_guest_that_crashes_after_restore_is_reported_as_a_crash() {
    let p = TestProject::shared();
    bundle(
        &p,
        "restored-crash",
        &[(
            "panic",
            "#!/bin/sh\necho about to crash\necho c > /proc/sysrq-trigger\nsleep 30\n",
        )],
    );
    recipe(&p, "restored-crash", "restored-crash", "busybox-rootfs", "");
    // The first run makes the snapshot; the second starts from it.
    let (qemu_dir, log) = counting_qemu();
    p.run_with_path(qemu_dir.path(), &["test", "-f", "restored-crash"])
        .expect(1);
    std::fs::remove_file(&log).unwrap();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "--json", "restored-crash"])
        .expect(1);
    assert_eq!((restores(&log), cold_boots(&log)), (1, 0));
    let results = results_of(&run);
    assert_eq!(status_of(&results, "panic"), "crash", "{results}");
    let reason = results["tests"][0]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("kernel crashed"), "{results}");
}

#[test]
fn vms_that_need_a_snapshot_being_made_wait_for_it_and_start_from_it() {
    let p = TestProject::shared();
    let ok = "#!/bin/sh\necho ok\n";
    bundle(&p, "made-for-two", &[("a", ok), ("b", ok), ("c", ok)]);
    recipe(
        &p,
        "made-for-two",
        "made-for-two",
        "busybox-rootfs",
        "vms = 2\nisolation = \"test\"",
    );
    let (qemu_dir, log) = counting_qemu();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "made-for-two"])
        .expect(0);
    assert!(run.stdout.contains("3 passed"), "{}", run.stdout);
    // One VM boots and saves; the other waits for the snapshot instead of booting too.
    assert_eq!((cold_boots(&log), restores(&log)), (1, 2), "{}", run.stderr);
}

#[test]
fn a_compressed_snapshot_on_a_host_without_zstd_is_said_and_left_as_it_is() {
    let p = TestProject::shared();
    let script = format!("#!/bin/sh\necho ok\n# {}\n", common::nonce());
    bundle(&p, "nozstd", &[("ok", &script)]);
    recipe(&p, "nozstd", "nozstd", "busybox-rootfs", "");
    let old = env_entries(&p, "nozstd", &[]);
    p.run(&["test", "-f", "nozstd"]).expect(0);
    let env = env_entries(&p, "nozstd", &old);
    assert_eq!(env.len(), 1);
    let state = env[0].join(STATE);
    let saved = std::fs::read(&state).unwrap();

    // A PATH with everything of this host's but zstd.
    let bin = tempfile::tempdir().unwrap();
    for dir in ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let link = bin.path().join(entry.file_name());
            if entry.file_name() != "zstd" && !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
    }
    let run = p
        .command(&["test", "-f", "nozstd"])
        .env("PATH", bin.path())
        .output()
        .unwrap();
    let run = common::Run::from(run).expect(0);
    assert!(
        run.stderr
            .contains("zstd-compressed and zstd is not installed (apt-get install zstd)"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("PASS    nozstd/ok"), "{}", run.stdout);
    // Not replaced: hosts with zstd go on using it.
    assert_eq!(std::fs::read(&state).unwrap(), saved);
    assert_eq!(env_entries(&p, "nozstd", &old).len(), 1);
}
