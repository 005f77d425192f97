//! Which tests a run takes and how runs combine, real qemu (TCG here): CI shards that
//! cover every test once and merge into one JUnit file, filters and a reproducible random
//! order, and `-j` running independent recipes side by side while `after` still waits.

mod common;

use std::path::{Path, PathBuf};

use common::suites::{echo_suite, qemu_wrapper, results_of, statuses, suite};
use common::{junit_counts, TestProject};

#[test]
fn shards_cover_every_test_exactly_once_and_merge_into_one_junit_file() {
    let p = TestProject::shared();
    let names = ["h-1", "h-2", "h-3", "h-4", "h-5"];
    echo_suite(
        &p,
        "scale-shard",
        &names,
        "cmdline = \"vmbuild.suite=scale-shard\"",
    );
    let mut seen: Vec<String> = Vec::new();
    for shard in ["1/3", "2/3", "3/3"] {
        let run = p
            .run(&["test", "-f", "--json", "--shard", shard, "scale-shard"])
            .expect(0);
        let results = results_of(&run);
        seen.extend(statuses(&results));
    }
    seen.sort();
    let expected: Vec<String> = names.iter().map(|n| format!("{n} pass")).collect();
    assert_eq!(seen, expected, "every test in exactly one shard");

    let junit = p.path("merged.xml");
    let merged = p.run(&[
        "results",
        "--merge",
        "scale-shard",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let merged = merged.expect(0);
    assert!(
        merged.stdout.contains("5 passed, 0 failed"),
        "{}",
        merged.stdout
    );
    if let Some(counts) = junit_counts(&junit) {
        assert_eq!(counts, "5 0 0 0");
    }
}

#[test]
fn selection_runs_some_tests_in_a_reproducible_order() {
    let p = TestProject::shared();
    let names = ["o-a", "o-b", "o-c", "o-d", "x-skip"];
    echo_suite(
        &p,
        "scale-select",
        &names,
        "cmdline = \"vmbuild.suite=scale-select\"",
    );
    let order = |seed: &str| -> Vec<String> {
        let run = p
            .run(&[
                "test",
                "-f",
                "--filter",
                "o-*",
                "--order",
                "random",
                "--seed",
                seed,
                "--iterate",
                "2",
                "scale-select",
            ])
            .expect(0);
        assert!(
            run.stderr.contains(&format!("seed {seed}")),
            "{}",
            run.stderr
        );
        run.stdout
            .lines()
            .filter(|l| l.starts_with("PASS"))
            .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
            .collect()
    };
    let first = order("42");
    assert_eq!(first.len(), 8, "{first:?}");
    assert!(
        first.iter().all(|t| t.starts_with("scale-select/o-")),
        "{first:?}"
    );
    assert!(
        first.contains(&"scale-select/o-a#2".to_string()),
        "{first:?}"
    );
    // One VM takes them in the queue's order, so the same seed gives the same lines.
    assert_eq!(order("42"), first);
    let excluded = p
        .run(&["test", "--exclude", "o-*", "scale-select"])
        .expect(0);
    assert!(excluded.stdout.contains("x-skip"), "{}", excluded.stdout);
    assert!(!excluded.stdout.contains("o-a"), "{}", excluded.stdout);
}

/// A qemu wrapper that logs `start <ns>` and `end <ns>` around each VM it runs.
fn timing_qemu() -> (tempfile::TempDir, PathBuf) {
    let dir = qemu_wrapper(|real, dir| {
        format!(
            "#!/bin/sh\ncase \"$*\" in *-kernel*) ;; *) exec '{real}' \"$@\" ;; esac\n\
             echo \"start $(date +%s%N) $*\" >> '{log}'\n'{real}' \"$@\"\nrc=$?\n\
             echo \"end $(date +%s%N) $*\" >> '{log}'\nexit $rc\n",
            real = real.display(),
            log = dir.join("vms.log").display()
        )
    });
    let log = dir.path().join("vms.log");
    (dir, log)
}

/// When the VM whose command line holds `marker` started and ended (ns).
fn vm_span(log: &Path, marker: &str) -> (u128, u128) {
    let text = std::fs::read_to_string(log).unwrap();
    let at = |word: &str| -> u128 {
        text.lines()
            .find(|l| l.starts_with(word) && l.contains(marker))
            .unwrap_or_else(|| panic!("no {word} of {marker} in {text}"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    };
    (at("start "), at("end "))
}

#[test]
fn jobs_run_independent_recipes_side_by_side_and_after_still_waits() {
    let p = TestProject::shared();
    let sleepy = "#!/bin/sh\nsleep 3\n";
    suite(
        &p,
        "scale-j1",
        &[("one", sleepy)],
        "cmdline = \"vmbuild.suite=scale-j1\"",
    );
    suite(
        &p,
        "scale-j2",
        &[("two", sleepy)],
        "cmdline = \"vmbuild.suite=scale-j2\"",
    );
    suite(
        &p,
        "scale-j3",
        &[("three", sleepy)],
        "cmdline = \"vmbuild.suite=scale-j3\"",
    );
    // scale-j3 comes after scale-j1.
    let recipe = p.path("recipes/scale-j3.toml");
    let text = std::fs::read_to_string(&recipe).unwrap();
    std::fs::write(
        &recipe,
        text.replace("[vm]", "after = [\"scale-j1\"]\n[vm]"),
    )
    .unwrap();
    let (qemu_dir, log) = timing_qemu();
    p.run_with_path(
        qemu_dir.path(),
        &["test", "-f", "-j", "2", "scale-j1", "scale-j2", "scale-j3"],
    )
    .expect(0);
    let (one, two, three) = (
        vm_span(&log, "vmbuild.suite=scale-j1"),
        vm_span(&log, "vmbuild.suite=scale-j2"),
        vm_span(&log, "vmbuild.suite=scale-j3"),
    );
    assert!(
        two.0 < one.1 && one.0 < two.1,
        "j1 and j2 ran side by side: {one:?} {two:?}"
    );
    assert!(
        three.0 >= one.1,
        "j3 started after j1 ended: {one:?} {three:?}"
    );
}
