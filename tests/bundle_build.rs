//! Bundles that compile (`[build]`): the command's output folder is the bundle; it sees
//! only its declared inputs, in an empty working folder with a clean environment; a rerun
//! is a cache hit until an input changes; a failing command exits 3 with its log's tail.
//! The shipped kselftest-tests bundle builds the kernel selftests and their runner.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::TestProject;

/// Unpacks an entry's `bundle.cpio.gz` into a temp folder (with the system's cpio).
fn unpack_bundle(entry: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let cpio = entry.join("bundle.cpio.gz");
    let ok = Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | cpio -idm --quiet")
        .arg("sh")
        .arg(&cpio)
        .current_dir(dir.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "unpack {}", cpio.display());
    dir
}

fn build_json(p: &TestProject, recipe: &str) -> serde_json::Value {
    let run = p.run(&["build", "--json", recipe]).expect(0);
    run.json_lines().remove(0)
}

fn entry_of(built: &serde_json::Value) -> PathBuf {
    PathBuf::from(built["path"].as_str().unwrap())
}

const BUILD_SH: &str = r#"set -eu
gcc -O2 -o "$VMBUILD_OUT/hello" hello.c
# What the command sees, for the test to check (not executable: not a test).
{
    echo "cwd: $(ls -A | tr '\n' ' ')"
    echo "parent: $(ls -A .. | tr '\n' ' ')"
    echo "home: $HOME"
    echo "tmpdir: $TMPDIR"
    echo "epoch: $SOURCE_DATE_EPOCH"
    for f in secret ../secret ../cc/secret ../../cc/secret ../recipes/secret; do
        if [ -e "$f" ]; then echo "saw $f"; fi
    done
    env | sort
} > "$VMBUILD_OUT/seen.txt"
"#;

const HELLO_C: &str =
    "#include <stdio.h>\nint main(void) { puts(\"ok 1 - compiled\"); return 0; }\n";

fn cc_project() -> TestProject {
    let p = TestProject::new();
    p.write(
        "recipes/cc-tests.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"sh\", \"build.sh\"]\ninputs = [\"../cc/build.sh\", \"../cc/hello.c\"]\n",
    );
    p.write("cc/build.sh", BUILD_SH);
    p.write("cc/hello.c", HELLO_C);
    p.write("cc/secret", "beside the inputs, undeclared");
    p.write("recipes/secret", "beside the recipe, undeclared");
    p
}

#[test]
fn a_build_bundle_holds_what_its_command_compiled_and_is_cached_until_an_input_changes() {
    if common::which("gcc").is_none() {
        return common::skip("gcc is not installed");
    }
    let p = cc_project();
    let first = build_json(&p, "cc-tests");
    assert_eq!(first["cached"], false);
    let entry = entry_of(&first);
    let tests = std::fs::read_to_string(entry.join("tests.json")).unwrap();
    let tests: serde_json::Value = serde_json::from_str(&tests).unwrap();
    let names: Vec<&str> = tests
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["hello"], "only executables are tests");
    let log = std::fs::read_to_string(entry.join("build.log")).unwrap();
    assert!(log.starts_with("$ sh build.sh\n"), "{log}");

    // The compiled test is in the bundle, where the guest finds it, and runs.
    let unpacked = unpack_bundle(&entry);
    let bundle = unpacked.path().join("vmbuild/bundles/cc-tests");
    let out = Command::new(bundle.join("hello")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 1 - compiled\n");

    // It ran in an empty folder holding only its inputs, with a clean environment whose
    // HOME and TMPDIR are the build's own, and saw no file it did not declare.
    let seen = std::fs::read_to_string(bundle.join("seen.txt")).unwrap();
    assert!(seen.contains("cwd: build.sh hello.c \n"), "{seen}");
    assert!(seen.contains("parent: build home out tmp \n"), "{seen}");
    assert!(!seen.contains("saw "), "{seen}");
    assert!(seen.contains("epoch: 0\n"), "{seen}");
    let home = seen.lines().find_map(|l| l.strip_prefix("home: ")).unwrap();
    assert!(
        home.starts_with(p.cache.join("tmp").to_str().unwrap()) && home.ends_with("/home"),
        "{seen}"
    );
    assert!(
        !seen.contains("CARGO"),
        "vmbuild's environment leaked: {seen}"
    );
    assert!(
        !seen.contains("VMBUILD_CACHE_DIR"),
        "vmbuild's environment leaked: {seen}"
    );

    // A rerun is a cache hit; so is a change to a file nobody declared.
    let again = build_json(&p, "cc-tests");
    assert_eq!(again["cached"], true);
    assert_eq!(again["path"], first["path"]);
    p.write("cc/secret", "changed, still undeclared");
    p.write("cc/notes.txt", "new, undeclared");
    assert_eq!(build_json(&p, "cc-tests")["cached"], true);

    // An input's change rebuilds, and `explain` says which.
    p.write("cc/hello.c", &HELLO_C.replace("compiled", "recompiled"));
    let changed = build_json(&p, "cc-tests");
    assert_eq!(changed["cached"], false);
    assert_ne!(changed["key"], first["key"]);
    let unpacked = unpack_bundle(&entry_of(&changed));
    let out = Command::new(unpacked.path().join("vmbuild/bundles/cc-tests/hello"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok 1 - recompiled\n");
    let explain = p.run(&["explain", "cc-tests"]).expect(0).stdout;
    assert!(
        explain.contains("recipe.build.inputs.hello.c.sha256: "),
        "{explain}"
    );
    assert!(!explain.contains("inputs.build.sh"), "{explain}");
}

#[test]
fn a_failing_build_command_exits_3_with_its_log_tail_and_stores_nothing() {
    if common::which("gcc").is_none() {
        return common::skip("gcc is not installed (its version is in the key)");
    }
    let p = cc_project();
    p.write(
        "cc/build.sh",
        "echo 'step one of the build'\nfor i in $(seq 1 30); do echo \"noise $i\"; done\necho 'the real problem' >&2\nexit 7\n",
    );
    let run = p.run(&["build", "cc-tests"]).expect(3);
    assert!(
        run.stderr.contains("`sh build.sh` failed (exit status: 7)"),
        "{}",
        run.stderr
    );
    // The tail of both streams, not the whole log.
    assert!(run.stderr.contains("the real problem"), "{}", run.stderr);
    assert!(run.stderr.contains("noise 30"), "{}", run.stderr);
    assert!(!run.stderr.contains("step one"), "{}", run.stderr);
    let text = std::fs::read_to_string(common::named_log(&run.stderr)).unwrap();
    assert!(text.contains("step one of the build"), "{text}");
    assert!(p.entries("cc-tests").is_empty());

    // A program that is not there is the recipe's build failing, not the host's.
    p.write(
        "recipes/cc-tests.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"./build-it.sh\"]\ninputs = [\"../cc/build.sh\"]\n",
    );
    let run = p.run(&["build", "cc-tests"]).expect(3);
    assert!(
        run.stderr
            .contains("program `./build-it.sh` (or its #! interpreter) was not found"),
        "{}",
        run.stderr
    );

    // A command that writes no executable has the bundle's usual complaint.
    p.write(
        "recipes/cc-tests.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"sh\", \"-c\", \"echo hi > $VMBUILD_OUT/readme\"]\n",
    );
    let run = p.run(&["build", "cc-tests"]).expect(3);
    assert!(
        run.stderr.contains("no executable files in $VMBUILD_OUT"),
        "{}",
        run.stderr
    );
    assert!(p.entries("cc-tests").is_empty());
}

#[test]
fn a_build_reads_the_entries_and_packages_it_names_and_only_built_kinds() {
    if common::which("gcc").is_none() {
        return common::skip("gcc is not installed (its version is in the key)");
    }
    let p = cc_project();
    let script = "set -eu\n\
        cp \"$VMBUILD_INPUT_CC_TESTS/tests.json\" \"$VMBUILD_OUT/cc-tests.json\"\n\
        test -x \"$VMBUILD_DEB_BUSYBOX_STATIC/bin/busybox\"\n\
        printf '#!/bin/sh\\necho ok\\n' > \"$VMBUILD_OUT/t\"\n\
        chmod +x \"$VMBUILD_OUT/t\"\n";
    p.write("uses/build.sh", script);
    p.write(
        "recipes/uses-cc.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"sh\", \"build.sh\"]\ninputs = [\"../uses/build.sh\"]\nrecipes = [\"cc-tests\"]\ndebs = [\"busybox-static\"]\n",
    );
    let first = build_json(&p, "uses-cc");
    let unpacked = unpack_bundle(&entry_of(&first));
    let copied = unpacked
        .path()
        .join("vmbuild/bundles/uses-cc/cc-tests.json");
    assert!(std::fs::read_to_string(copied)
        .unwrap()
        .contains("\"hello\""));

    // The entries it reads are in its key: a change below rebuilds it.
    p.write("cc/hello.c", &HELLO_C.replace("compiled", "changed"));
    let second = build_json(&p, "uses-cc");
    assert_eq!(second["cached"], false);
    assert_ne!(second["key"], first["key"]);

    // Test results are not something to build from.
    p.write(
        "recipes/uses-cc.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"true\"]\nrecipes = [\"smoke\"]\n",
    );
    let run = p.run(&["build", "uses-cc"]).expect(2);
    assert!(
        run.stderr.contains(
            "`recipes` needs a kernel, rootfs, bundle or disk recipe, but `smoke` is a test recipe"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("uses-cc.toml:4:12"), "{}", run.stderr);
}

#[test]
fn the_kselftest_bundle_holds_the_selftests_their_runner_and_a_test_that_runs_it() {
    for tool in ["gcc", "make", "rsync", "apt-get"] {
        if common::which(tool).is_none() {
            return common::skip(&format!("{tool} is not installed (.ci/install-deps)"));
        }
    }
    // The shared store: linux-source-6.1 is downloaded once for this and the kernel tests.
    let p = TestProject::shared();
    let built = build_json(&p, "kselftest-tests");
    let entry = entry_of(&built);
    let tests = std::fs::read_to_string(entry.join("tests.json")).unwrap();
    assert!(tests.contains("\"name\": \"kselftest\""), "{tests}");
    assert!(tests.contains("\"timeout_ms\": 300000"), "{tests}");

    let unpacked = unpack_bundle(&entry);
    let bundle = unpacked.path().join("vmbuild/bundles/kselftest-tests");
    for file in [
        "kselftest",
        "selftests/run_kselftest.sh",
        "selftests/kselftest/runner.sh",
        "selftests/size/get_size",
        "selftests/breakpoints/breakpoint_test",
        "selftests/timers/nanosleep",
    ] {
        assert!(
            bundle.join(file).is_file(),
            "{file} missing from the bundle"
        );
    }
    // The runner knows the listed selftests (and only those: the list is trimmed).
    let list = Command::new("sh")
        .arg("run_kselftest.sh")
        .arg("--list")
        .current_dir(bundle.join("selftests"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&list.stdout),
        "size:get_size\nbreakpoints:breakpoint_test\ntimers:nanosleep\n"
    );
}
