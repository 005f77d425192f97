//! Debian-based roots: mmdebstrap with the host's apt sources, real packages.

mod common;

use common::TestProject;

#[test]
fn a_debian_root_carries_real_packages() {
    if common::which("mmdebstrap").is_none() {
        common::skip("mmdebstrap is not installed (apt-get install mmdebstrap)");
        return;
    }
    let p = TestProject::shared();
    p.write(
        "recipes/debian-fio.toml",
        "kind = \"rootfs\"\nbase = \"debian:bookworm\"\npackages = [\"fio\"]\nformat = \"tar\"\n",
    );
    let run = p.run(&["build", "debian-fio"]).expect(0);
    let tar = std::path::Path::new(run.stdout.trim()).join("rootfs.tar");
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.lines().any(|l| l == "usr/bin/fio"),
        "fio is in the image"
    );
    assert!(
        listing.lines().any(|l| l == "var/lib/dpkg/status"),
        "it is a Debian root with a package database"
    );
    let explain = p.run(&["explain", "debian-fio"]).expect(0).stdout;
    assert!(
        explain.contains("\"mmdebstrap\""),
        "the mmdebstrap version is part of the key:\n{explain}"
    );
}
