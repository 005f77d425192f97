//! Test suites written on the fly for the scale and selection tests: a bundle and its
//! test recipe, their results as `--json` gives them, and qemu wrappers that watch or
//! steer the VMs vmbuild starts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{which, Run, TestProject};

/// Writes the bundle `<suite>-tests` of `tests` (name, script) and the test recipe
/// `<suite>` (Debian's kernel, the busybox root) with `vm` lines in its `[vm]`.
pub fn suite(p: &TestProject, suite: &str, tests: &[(&str, &str)], vm: &str) {
    for (name, script) in tests {
        p.write_exec(&format!("tests/{suite}/{name}"), script);
    }
    p.write(
        &format!("recipes/{suite}-tests.toml"),
        &format!("kind = \"bundle\"\ntests = \"../tests/{suite}\"\n"),
    );
    p.write(
        &format!("recipes/{suite}.toml"),
        &format!(
            "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n\
             bundles = [\"{suite}-tests\"]\ntimeout = \"60s\"\n[vm]\n{vm}\n"
        ),
    );
}

/// The results of the (first) recipe of a `--json` run, as the store holds them.
pub fn results_of(run: &Run) -> serde_json::Value {
    let line = &run.json_lines()[0];
    serde_json::json!({ "tests": line["tests"], "summary": line["summary"] })
}

pub fn test<'a>(results: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {results}"))
}

/// `name status` per test, sorted.
pub fn statuses(results: &serde_json::Value) -> Vec<String> {
    let mut all: Vec<String> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["name"].as_str().unwrap(),
                t["status"].as_str().unwrap()
            )
        })
        .collect();
    all.sort();
    all
}

/// `suite` of tests that each echo their name.
pub fn echo_suite(p: &TestProject, name: &str, tests: &[&str], vm: &str) {
    let scripts: Vec<String> = tests
        .iter()
        .map(|t| format!("#!/bin/sh\necho {t}\n"))
        .collect();
    let pairs: Vec<(&str, &str)> = tests
        .iter()
        .zip(&scripts)
        .map(|(t, s)| (*t, s.as_str()))
        .collect();
    suite(p, name, &pairs, vm);
}

/// A folder holding a `qemu-system-x86_64` wrapper: `script(real_qemu, folder)` gives its
/// shell text (it runs `real_qemu` itself).
pub fn qemu_wrapper(script: impl Fn(&Path, &Path) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let real = which("qemu-system-x86_64").expect("qemu-system-x86_64 is installed");
    let wrapper = dir.path().join("qemu-system-x86_64");
    std::fs::write(&wrapper, script(&real, dir.path())).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
