//! aarch64 guests end to end, on an x86_64 host: the shipped `smoke-arm64` recipe
//! cross-builds a tinyconfig arm64 kernel from Debian's linux-source-6.1 with Debian's
//! gcc-aarch64-linux-gnu, packs Debian's arm64 busybox, and runs the smoke tests in
//! qemu-system-aarch64's `virt` machine under TCG: booted in full once, then started from
//! the saved environment. A kernel, root or bundle of another arch is refused at the
//! reference, before anything builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{boots, cold_boots, counting, restores, TestProject};

/// These tests cross-build for arm64 from an x86_64 host, and expect its lock names.
fn on_x86_64_host() -> bool {
    if cfg!(target_arch = "x86_64") {
        return true;
    }
    common::skip("these tests cross-build arm64 guests from an x86_64 host");
    false
}

/// The entry `vmbuild build RECIPE` prints.
fn built(p: &TestProject, recipe: &str) -> PathBuf {
    PathBuf::from(p.run(&["build", recipe]).expect(0).stdout.trim())
}

/// The ELF machine of a file's header (183: aarch64, 62: x86-64).
fn elf_machine(bytes: &[u8]) -> u16 {
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
fn smoke_arm64_boots_an_aarch64_guest_once_and_then_starts_from_its_snapshot() {
    if !on_x86_64_host() {
        return;
    }
    let p = TestProject::shared();
    let (qemu_dir, log) = counting("qemu-system-aarch64", "qemu-system-arm");
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "smoke-arm64"])
        .expect(0);
    for line in [
        "PASS    smoke-arm64/hello",
        "PASS    smoke-arm64/tap-example",
        "PASS    smoke-arm64/scratch-disk",
        "SKIP    smoke-arm64/sysrq (0.00s): kernel lacks CONFIG_MAGIC_SYSRQ",
    ] {
        assert!(run.stdout.contains(line), "{line}\n{}", run.stdout);
    }
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(cold_boots(&log), 1, "{lines}");
    assert!(
        lines.contains("-machine virt") && lines.contains("virtconsole"),
        "{lines}"
    );
    // Rerun: the VM starts from the environment the first run saved.
    p.run_with_path(qemu_dir.path(), &["test", "-f", "smoke-arm64"])
        .expect(0);
    assert_eq!(
        cold_boots(&log),
        1,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(restores(&log) >= 1);
    // Unchanged, it is a cache hit, with no VM.
    let started = boots(&log);
    let again = p
        .run_with_path(qemu_dir.path(), &["test", "smoke-arm64"])
        .expect(0);
    let cached = again
        .stdout
        .lines()
        .filter(|l| l.starts_with("PASS    ") || l.starts_with("SKIP    "))
        .filter(|l| l.ends_with("[cached]"))
        .count();
    assert_eq!(cached, 4, "{}", again.stdout);
    assert_eq!(boots(&log), started, "a cached run started a VM");

    // The guest is an aarch64 machine, and says so.
    let uname = p
        .run(&["run", "smoke-arm64", "--", "uname", "-m"])
        .expect(0);
    assert_eq!(uname.stdout.trim(), "aarch64", "{}", uname.stderr);
}

#[test]
fn the_arm64_kernel_and_root_hold_arm64_code() {
    if !on_x86_64_host() {
        return;
    }
    let p = TestProject::shared();
    let kernel = built(&p, "tiny-kernel-arm64");
    assert!(!kernel.join("bzImage").exists());
    let image = std::fs::read(kernel.join("Image")).unwrap();
    // The arm64 boot header: "ARM\x64" at offset 56.
    assert_eq!(&image[56..60], b"ARM\x64", "not an arm64 Image");
    assert_eq!(
        elf_machine(&std::fs::read(kernel.join("vmlinux")).unwrap()),
        183
    );
    let config = std::fs::read_to_string(kernel.join("config")).unwrap();
    for option in [
        "CONFIG_ARM64=y",
        "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y",
        "CONFIG_VIRTIO_CONSOLE=y",
    ] {
        assert!(config.lines().any(|l| l == option), "{option} missing");
    }

    let root = built(&p, "busybox-rootfs-arm64");
    let busybox = Command::new("sh")
        .arg("-c")
        .arg("zcat \"$1\" | cpio -i --quiet --to-stdout bin/busybox")
        .arg("sh")
        .arg(root.join("rootfs.cpio.gz"))
        .output()
        .unwrap();
    assert!(busybox.status.success(), "{busybox:?}");
    assert_eq!(elf_machine(&busybox.stdout), 183);
    // Its applets are linked where the x86_64 root has them.
    let listing = |entry: &Path| {
        let out = Command::new("sh")
            .arg("-c")
            .arg("zcat \"$1\" | cpio -t --quiet | sort")
            .arg("sh")
            .arg(entry.join("rootfs.cpio.gz"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let x86 = built(&p, "busybox-rootfs");
    assert_eq!(listing(&root), listing(&x86));
    assert!(listing(&root).lines().any(|l| l == "usr/bin/awk"));

    // The arch is in the key, and the busybox pin is the arm64 build's.
    let explain = p.run(&["explain", "busybox-rootfs-arm64"]).expect(0).stdout;
    assert!(explain.contains("\"arch\": \"aarch64\""), "{explain}");
    assert!(
        explain.contains("\"name\": \"busybox-static:arm64\""),
        "{explain}"
    );
}

/// Writes `recipes/NAME.toml` with `text`, builds it, and expects exit 2 with each of
/// `said` on stderr.
fn refused(p: &TestProject, name: &str, text: &str, said: &[&str]) {
    p.write(&format!("recipes/{name}.toml"), text);
    let run = p.run(&["build", name]).expect(2);
    for words in said {
        assert!(run.stderr.contains(words), "{words}\n{}", run.stderr);
    }
}

#[test]
fn a_kernel_root_or_bundle_of_another_arch_is_refused_at_the_reference() {
    if !on_x86_64_host() {
        return;
    }
    let p = TestProject::new();
    p.write(
        "recipes/built-here.toml",
        "kind = \"bundle\"\n[build]\ncommand = [\"true\"]\n",
    );
    refused(
        &p,
        "mixed",
        "kind = \"test\"\nkernel = \"tiny-kernel-arm64\"\nrootfs = \"busybox-rootfs\"\n",
        &[
            "`mixed` is for x86_64, but `tiny-kernel-arm64` (its `kernel`) is for aarch64",
            "mixed.toml:2:",
            "set arch = \"aarch64\" in `mixed`",
        ],
    );
    refused(
        &p,
        "mixed",
        "kind = \"test\"\narch = \"aarch64\"\nkernel = \"tiny-kernel-arm64\"\nrootfs = \"busybox-rootfs\"\n",
        &["but `busybox-rootfs` (its `rootfs`) is for x86_64"],
    );
    // A [build] bundle is built here, for this host; a bundle of files runs anywhere.
    refused(
        &p,
        "mixed",
        "kind = \"test\"\narch = \"aarch64\"\nkernel = \"tiny-kernel-arm64\"\n\
         rootfs = \"busybox-rootfs-arm64\"\nbundles = [\"smoke-tests\", \"built-here\"]\n",
        &["a [build] bundle is built on this host"],
    );
    refused(
        &p,
        "mixed",
        "kind = \"test\"\narch = \"arm64\"\nkernel = \"tiny-kernel-arm64\"\nrootfs = \"busybox-rootfs-arm64\"\n",
        &["mixed.toml:2:8", "write arch = \"aarch64\""],
    );
    // No qemu-system-aarch64 for bhyve, no foreign Debian root.
    refused(
        &p,
        "mixed",
        "kind = \"test\"\narch = \"aarch64\"\nkernel = \"tiny-kernel-arm64\"\n\
         rootfs = \"busybox-rootfs-arm64\"\n[vm]\nbackend = \"bhyve\"\n",
        &["runs x86_64 guests"],
    );
    refused(
        &p,
        "debian-arm64",
        "kind = \"rootfs\"\narch = \"aarch64\"\nbase = \"debian:bookworm\"\n",
        &["not for aarch64"],
    );
    for name in [
        "tiny-kernel-arm64",
        "busybox-rootfs-arm64",
        "busybox-rootfs",
        "built-here",
    ] {
        assert!(p.entries(name).is_empty(), "{name} was built");
    }
}

#[test]
fn keep_alive_holds_a_failed_aarch64_test_with_a_shell_on_the_second_virtio_console() {
    if !on_x86_64_host() {
        return;
    }
    common::keep_alive_holds_a_failed_test(
        &TestProject::shared(),
        "held-arm64",
        "arch = \"aarch64\"\nkernel = \"tiny-kernel-arm64\"\nrootfs = \"busybox-rootfs-arm64\"\n",
    );
}

/// A folder of links to every program on PATH but those named `hidden*`.
fn path_without(hidden: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var_os("PATH").unwrap();
    for folder in std::env::split_paths(&path) {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let link = dir.path().join(&*name);
            if hidden.iter().any(|h| name.starts_with(h)) || link.exists() {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), link);
        }
    }
    dir
}

#[test]
fn a_host_without_the_arm64_tools_still_plans_every_recipe_and_says_what_to_install() {
    if !on_x86_64_host() {
        return;
    }
    let p = TestProject::new();
    let bare = path_without(&["qemu-system-aarch64", "aarch64-linux-gnu-"]);
    let path = |run: &mut Command| {
        run.env("PATH", bare.path());
    };
    // gc keys every recipe, the arm64 ones too.
    let mut gc = p.command(&["gc"]);
    path(&mut gc);
    let out = gc.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A test says what it lacks before anything is built for it.
    let mut test = p.command(&["test", "smoke-arm64"]);
    path(&mut test);
    let out = test.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("apt-get install qemu-system-arm"),
        "{stderr}"
    );
    assert!(p.entries("tiny-kernel-arm64").is_empty(), "{stderr}");
    // The kernel's build names the cross compiler's packages.
    let mut build = p.command(&["build", "tiny-kernel-arm64"]);
    path(&mut build);
    let out = build.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("apt-get install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu"),
        "{stderr}"
    );
}

#[test]
fn a_pin_whose_sha256_names_the_other_archs_build_is_refused() {
    if !on_x86_64_host() {
        return;
    }
    let p = TestProject::new();
    // The amd64 busybox is in the store's downloads, by its sha256.
    p.run(&["build", "busybox-rootfs"]).expect(0);
    let lock = std::fs::read_to_string(p.path("vmbuild.lock")).unwrap();
    let sha = |name: &str| {
        let block = lock
            .split("[[package]]")
            .find(|b| b.contains(&format!("name = \"{name}\"\n")))
            .unwrap();
        block
            .lines()
            .find_map(|l| l.strip_prefix("sha256 = \""))
            .unwrap()
            .trim_end_matches('"')
            .to_string()
    };
    let (x86, arm) = (sha("busybox-static"), sha("busybox-static:arm64"));
    p.write("vmbuild.lock", &lock.replace(&arm, &x86));
    let run = p.run(&["build", "busybox-rootfs-arm64"]).expect(3);
    assert!(
        run.stderr
            .contains("but that file is busybox-static for amd64"),
        "{}",
        run.stderr
    );
    assert!(p.entries("busybox-rootfs-arm64").is_empty());
}
