//! Test suites at scale, real qemu (TCG here): per-test results reused across runs, VMs
//! sharing a queue, a VM killed from outside replaced, retries and flaky tests. qemu
//! wrappers on PATH count VM starts (and, for the flaky test, vary the first boot) without
//! trusting vmbuild's own account.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::suites::{qemu_wrapper, results_of, statuses, suite, test};
use common::{boots, counting_qemu, TestProject};

fn sleeper(seconds: &str) -> String {
    format!("#!/bin/sh\necho sleeping {seconds}\nsleep {seconds}\n")
}

#[test]
fn one_and_three_vms_give_the_same_results_and_a_changed_test_alone_runs_again() {
    let p = TestProject::shared();
    let tests: Vec<(String, String)> = vec![
        ("s-a".into(), sleeper("2")),
        ("s-b".into(), sleeper("1")),
        ("s-c".into(), sleeper("0.5")),
        ("s-d".into(), sleeper("0")),
        ("s-e".into(), "#!/bin/sh\necho broken\nexit 3\n".into()),
        ("s-f".into(), "#!/bin/sh\nexit 77\n".into()),
    ];
    let refs: Vec<(&str, &str)> = tests
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    suite(
        &p,
        "scale-one",
        &refs,
        "vms = 1\ncmdline = \"vmbuild.suite=scale\"",
    );
    // The same tests in another recipe, on three VMs.
    p.write(
        "recipes/scale-three.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n\
         bundles = [\"scale-one-tests\"]\ntimeout = \"60s\"\n[vm]\nvms = 3\ncmdline = \"vmbuild.suite=scale\"\n",
    );
    let one = p.run(&["test", "-f", "--json", "scale-one"]).expect(1);
    let three = p.run(&["test", "-f", "--json", "scale-three"]).expect(1);
    let (one, three) = (results_of(&one), results_of(&three));
    assert_eq!(statuses(&one), statuses(&three));
    assert_eq!(
        statuses(&one),
        ["s-a pass", "s-b pass", "s-c pass", "s-d pass", "s-e fail", "s-f skip"]
    );

    // A rerun runs only the failed test; after one script changes, that one too. (The
    // shared store outlives this run: a fresh edit is one no earlier run made.)
    let nonce = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    };
    p.write_exec(
        "tests/scale-one/s-b",
        &format!("{}# {}\n", sleeper("0.2"), nonce()),
    );
    let (qemu_dir, log) = counting_qemu();
    let list = p
        .run_with_path(qemu_dir.path(), &["test", "--list", "scale-one"])
        .expect(0);
    for line in [
        "CACHED  scale-one/s-a",
        "RUN     scale-one/s-b",
        "CACHED  scale-one/s-c",
        "RUN     scale-one/s-e",
        "CACHED  scale-one/s-f",
        "2 to run, 4 cached, 0 skipped",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == line),
            "{line}: {}",
            list.stdout
        );
    }
    assert_eq!(boots(&log), 0, "--list starts no VM");
    let rerun = p
        .run_with_path(qemu_dir.path(), &["test", "--json", "scale-one"])
        .expect(1);
    let results = results_of(&rerun);
    for name in ["s-a", "s-c", "s-d", "s-f"] {
        assert_eq!(test(&results, name)["cached"], true, "{name}: {results}");
    }
    for name in ["s-b", "s-e"] {
        assert!(
            test(&results, name).get("cached").is_none(),
            "{name}: {results}"
        );
    }
    assert_eq!(results["summary"]["cached"], 4, "{results}");
    assert_eq!(boots(&log), 1, "one VM runs the two tests");
    let plain = p
        .run_with_path(qemu_dir.path(), &["test", "scale-one"])
        .expect(1);
    assert!(
        plain
            .stdout
            .contains("5 from the cache: 4 passed, 1 failed, 1 skipped"),
        "{}",
        plain.stdout
    );
    assert_eq!(boots(&log), 2, "only the failed test ran again");

    // Recorded before and after a fix, the runs compare with the fix as a status change.
    p.run(&["record", "before", "scale-one"]).expect(0);
    p.write_exec(
        "tests/scale-one/s-e",
        &format!("#!/bin/sh\necho fixed\n# {}\n", nonce()),
    );
    p.run_with_path(qemu_dir.path(), &["test", "scale-one"])
        .expect(0);
    assert_eq!(boots(&log), 3, "only the fixed test ran");
    p.run(&["record", "after", "scale-one"]).expect(0);
    let compare = p.run(&["compare", "before", "after"]).expect(0);
    let changed = compare
        .stdout
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["fail", "->", "pass", "s-e"]);
    assert!(changed, "{}", compare.stdout);
    let back = p.run(&["compare", "after", "before"]).expect(1);
    assert!(back.stdout.contains("[regressed]"), "{}", back.stdout);
}

/// A qemu wrapper that records each VM's pid (qemu keeps the wrapper's: exec).
fn pid_recording_qemu() -> (tempfile::TempDir, PathBuf) {
    let dir = qemu_wrapper(|real, dir| {
        format!(
            "#!/bin/sh\ncase \"$*\" in *-kernel*) echo $$ >> '{}' ;; esac\nexec '{}' \"$@\"\n",
            dir.join("pids").display(),
            real.display()
        )
    });
    let pids = dir.path().join("pids");
    (dir, pids)
}

/// The console of a run of `recipe` being staged in `store`, once it holds `marker`.
fn staged_console_with(store: &Path, recipe: &str, marker: &str) -> bool {
    let Ok(tmp) = std::fs::read_dir(store.join("tmp")) else {
        return false;
    };
    tmp.flatten().any(|dir| {
        let name = dir.file_name().to_string_lossy().into_owned();
        name.contains(&format!("-{recipe}.")) && {
            let console = dir.path().join("console.log");
            std::fs::read_to_string(console).is_ok_and(|c| c.contains(marker))
        }
    })
}

#[test]
fn a_vm_killed_mid_test_is_replaced_and_its_test_passes_on_requeue() {
    let p = TestProject::shared();
    suite(
        &p,
        "scale-kill",
        &[(
            "long",
            "#!/bin/sh\necho scale-kill-marker > /dev/console\nsleep 6\necho done\n",
        )],
        "cmdline = \"vmbuild.suite=scale-kill\"",
    );
    let (qemu_dir, pids) = pid_recording_qemu();
    let path = format!(
        "{}:{}",
        qemu_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = p
        .command(&["test", "-f", "--json", "scale-kill"])
        .env("PATH", path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !staged_console_with(&p.cache, "scale-kill", "scale-kill-marker") {
        assert!(Instant::now() < deadline, "the test never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let first: i32 = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: killing the qemu this test's wrapper started.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let run = common::Run::from(child.wait_with_output().unwrap()).expect(0);
    let results = results_of(&run);
    let long = test(&results, "long");
    assert_eq!(long["status"], "pass", "{results}");
    assert_eq!(long["vm_restarts"], 1, "{results}");
    assert!(
        run.stderr.contains("a new VM runs it again"),
        "{}",
        run.stderr
    );
    let started = std::fs::read_to_string(&pids).unwrap().lines().count();
    assert_eq!(started, 2, "one VM replaced the killed one");
}

/// A qemu wrapper whose first VM's kernel command line carries `vmbuild_flaky=fail`.
fn first_boot_failing_qemu() -> tempfile::TempDir {
    qemu_wrapper(|real, dir| {
        format!(
            r#"#!/bin/bash
case "$*" in *-kernel*) ;; *) exec '{real}' "$@" ;; esac
n=$(cat '{count}' 2>/dev/null || echo 0)
echo $((n + 1)) > '{count}'
args=()
prev=
for a in "$@"; do
    if [ "$prev" = -append ] && [ "$n" = 0 ]; then a="$a vmbuild_flaky=fail"; fi
    args+=("$a")
    prev=$a
done
exec '{real}' "${{args[@]}}"
"#,
            real = real.display(),
            count = dir.join("count").display()
        )
    })
}

#[test]
fn a_test_that_fails_once_then_passes_is_flaky_and_flaky_fails_makes_it_a_failure() {
    let p = TestProject::shared();
    suite(
        &p,
        "scale-flaky",
        &[(
            "wobbly",
            "#!/bin/sh\nif grep -q vmbuild_flaky=fail /proc/cmdline; then echo first try fails; exit 1; fi\necho passes\n",
        )],
        // Each VM boots in full, so the wrapper's command line reaches the kernel.
        "start = \"boot\"\ncmdline = \"vmbuild.suite=scale-flaky\"",
    );
    let qemu = first_boot_failing_qemu();
    let run = p
        .run_with_path(
            qemu.path(),
            &["test", "-f", "--json", "--retries", "2", "scale-flaky"],
        )
        .expect(0);
    let results = results_of(&run);
    let wobbly = test(&results, "wobbly");
    assert_eq!(wobbly["status"], "flaky", "{results}");
    assert_eq!(wobbly["earlier"][0]["status"], "fail", "{results}");
    assert_eq!(results["summary"]["flaky"], 1, "{results}");
    assert_eq!(results["summary"]["passed"], 1, "{results}");
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    let first = std::fs::read_to_string(entry.join("tests/tries/wobbly.1.log")).unwrap();
    assert!(first.contains("first try fails"), "{first}");
    let last = std::fs::read_to_string(entry.join("tests/wobbly.log")).unwrap();
    assert!(last.contains("passes"), "{last}");

    // Under --flaky-fails the same story is a failure.
    let qemu = first_boot_failing_qemu();
    let run = p
        .run_with_path(
            qemu.path(),
            &[
                "test",
                "-f",
                "--retries",
                "1",
                "--flaky-fails",
                "scale-flaky",
            ],
        )
        .expect(1);
    assert!(
        run.stdout.contains("FAIL    scale-flaky/wobbly"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("--flaky-fails"), "{}", run.stdout);
}
