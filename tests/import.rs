//! `vmbuild import ktest`: a test written in ktest's format becomes a recipe and a
//! bundle, and its tests run in a real VM (Debian's kernel, the busybox root, a scratch
//! disk) with what it declared.

mod common;

use common::{nonce, TestProject};

/// A ktest test, in ktest's documented format (declarations at the top level, tests as
/// `test_*` functions, `main "$@"` last). POSIX sh, so that busybox's shell runs it.
fn ktest_file(tag: &str) -> String {
    format!(
        r#"#!/bin/sh
# A block-device test in ktest's format. {tag}
. $(dirname $(readlink -e "$0"))/test-libs.sh

require-kernel-config VIRTIO_BLK=m,MAGIC_SYSRQ
require-git https://example.org/fstests.git fstests
config-scratch-devs 16M
config-timeout 40
config-mem 512M
config-cpus 1

helper_size()
{{
    blockdev --getsize64 "$1"
}}

test_scratch_disk()
{{
    [ -b "$ktest_scratch_dev" ]
    echo "scratch: $ktest_scratch_dev is $(helper_size "$ktest_scratch_dev") bytes"
    dd if=/dev/zero of="$ktest_scratch_dev" bs=4096 count=16 2>/dev/null
}}

test_errexit()
{{
    false
    echo "not reached: the first failure fails the test"
}}

main "$@"
"#
    )
}

#[test]
fn a_ktest_test_is_imported_and_runs_in_a_vm_with_what_it_declared() {
    let p = TestProject::shared();
    let tag = nonce();
    p.write("ktests/blockdev.ktest", &ktest_file(&tag));
    let import = p
        .run(&[
            "import",
            "ktest",
            "--rootfs",
            "busybox-rootfs",
            "ktests/blockdev.ktest",
        ])
        .expect(0);
    for file in [
        "recipes/blockdev.toml",
        "recipes/blockdev-tests.toml",
        "tests/blockdev/blockdev.ktest",
        "tests/blockdev/scratch_disk",
        "tests/blockdev/errexit",
        "modules/kconfig/blockdev-ktest.config",
    ] {
        assert!(import.stdout.contains(file), "{file}: {}", import.stdout);
    }
    // What does not translate is listed with its line.
    assert!(
        import.stderr.contains("line 3: . $(dirname")
            && import
                .stderr
                .contains("line 6: require-git https://example.org/fstests.git")
            && import
                .stderr
                .contains("2 tests imported; run them with: vmbuild test blockdev"),
        "{}",
        import.stderr
    );
    let recipe = std::fs::read_to_string(p.path("recipes/blockdev.toml")).unwrap();
    assert!(
        recipe.contains("timeout = \"40s\"")
            && recipe.contains("memory = \"512M\"")
            && recipe.contains("disks = [{ name = \"scratch0\", size = \"16M\" }]"),
        "{recipe}"
    );
    let fragment =
        std::fs::read_to_string(p.path("modules/kconfig/blockdev-ktest.config")).unwrap();
    assert!(
        fragment.contains("CONFIG_VIRTIO_BLK=m\nCONFIG_MAGIC_SYSRQ=y\n"),
        "{fragment}"
    );

    let run = p.run(&["test", "blockdev"]).expect(1);
    let line = |prefix: &str| run.stdout.lines().any(|l| l.starts_with(prefix));
    assert!(line("PASS    blockdev/scratch_disk"), "{}", run.stdout);
    assert!(line("FAIL    blockdev/errexit"), "{}", run.stdout);
    // This run's results: the newest entry of the recipe.
    let entry = p
        .entries("blockdev")
        .into_iter()
        .max_by_key(|e| {
            e.join("manifest.json")
                .metadata()
                .unwrap()
                .modified()
                .unwrap()
        })
        .unwrap();
    let log_of =
        |test: &str| std::fs::read_to_string(entry.join(format!("tests/{test}.log"))).unwrap();
    let disk = log_of("scratch_disk");
    assert!(disk.contains("is 16777216 bytes"), "{disk}");
    assert!(!log_of("errexit").contains("not reached"));
}

#[test]
fn an_import_that_would_not_load_or_would_overwrite_is_refused_and_leaves_nothing() {
    let p = TestProject::new();
    p.write(
        "a.ktest",
        "#!/bin/sh\nconfig-timeout 5\ntest_one()\n{\n    true\n}\n",
    );
    // A kernel recipe that does not exist: refused, and no file is left behind.
    let run = p
        .run(&["import", "ktest", "--kernel", "no-such-kernel", "a.ktest"])
        .expect(2);
    assert!(run.stderr.contains("no-such-kernel"), "{}", run.stderr);
    assert!(!p.path("recipes/a.toml").exists());
    assert!(!p.path("tests/a").exists());

    p.run(&["import", "ktest", "a.ktest"]).expect(0);
    let again = p.run(&["import", "ktest", "a.ktest"]).expect(2);
    assert!(
        again.stderr.contains("recipes/a.toml exists") && again.stderr.contains("--force"),
        "{}",
        again.stderr
    );
    p.run(&["import", "ktest", "--force", "a.ktest"]).expect(0);
    // A --force import that fails leaves the earlier one as it was.
    let recipe = std::fs::read_to_string(p.path("recipes/a.toml")).unwrap();
    p.run(&["import", "ktest", "--force", "--kernel", "nope", "a.ktest"])
        .expect(2);
    assert_eq!(
        std::fs::read_to_string(p.path("recipes/a.toml")).unwrap(),
        recipe
    );
    assert!(p.path("tests/a/one").is_file());
    // --force replaces only what an import wrote.
    let smoke = std::fs::read_to_string(p.path("recipes/smoke.toml")).unwrap();
    let refused = p
        .run(&["import", "ktest", "--force", "--name", "smoke", "a.ktest"])
        .expect(2);
    assert!(
        refused.stderr.contains("`vmbuild import` did not write it"),
        "{}",
        refused.stderr
    );
    assert_eq!(
        std::fs::read_to_string(p.path("recipes/smoke.toml")).unwrap(),
        smoke
    );
    // A name is checked before any path is made of it.
    let outside = p
        .run(&["import", "ktest", "--name", "../../x", "a.ktest"])
        .expect(2);
    assert!(outside.stderr.contains("--name"), "{}", outside.stderr);
    // Runners of tests that are gone go with a --force import.
    p.write("a.ktest", "#!/bin/sh\ntest_two()\n{\n    true\n}\n");
    p.run(&["import", "ktest", "--force", "a.ktest"]).expect(0);
    assert!(!p.path("tests/a/one").exists() && p.path("tests/a/two").is_file());

    p.write("none.ktest", "#!/bin/bash\nconfig-timeout 5\n");
    let none = p.run(&["import", "ktest", "none.ktest"]).expect(2);
    assert!(
        none.stderr.contains("none.ktest: no tests in it"),
        "{}",
        none.stderr
    );
    let missing = p.run(&["import", "ktest", "missing.ktest"]).expect(2);
    assert!(
        missing.stderr.contains("missing.ktest"),
        "{}",
        missing.stderr
    );
}
