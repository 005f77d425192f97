//! Real workloads end to end: a Debian root booted from its ext4 image with Debian's
//! kernel, fio verifying a scratch disk, scratch disks by name and fresh for each test,
//! and VMs sharing one read-only root image. Real qemu (TCG here), real Debian packages.

mod common;

use std::path::{Path, PathBuf};

use common::TestProject;

fn have_mmdebstrap() -> bool {
    if common::which("mmdebstrap").is_none() {
        common::skip("mmdebstrap is not installed (apt-get install mmdebstrap)");
        return false;
    }
    true
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn built(p: &TestProject, recipe: &str) -> PathBuf {
    PathBuf::from(
        p.run(&["build", "--json", recipe]).expect(0).json_lines()[0]["path"]
            .as_str()
            .unwrap(),
    )
}

fn results_of(entry_line: &serde_json::Value) -> serde_json::Value {
    let entry = PathBuf::from(entry_line["path"].as_str().unwrap());
    serde_json::from_slice(&std::fs::read(entry.join("results.json")).unwrap()).unwrap()
}

/// Writes the bundle `<name>-tests` of the scripts in `tests/<name>/` and the test recipe
/// `<name>`: Debian's kernel, `rootfs`, that bundle, and `vm` as its `[vm]` table.
fn test_of_folder(p: &TestProject, name: &str, rootfs: &str, vm: &str) {
    p.write(
        &format!("recipes/{name}-tests.toml"),
        &format!("kind = \"bundle\"\ntests = \"../tests/{name}\"\n"),
    );
    p.write(
        &format!("recipes/{name}.toml"),
        &format!(
            "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"{rootfs}\"\n\
             bundles = [\"{name}-tests\"]\n[vm]\n{vm}\n"
        ),
    );
}

#[test]
fn fio_verify_passes_on_a_debian_root_and_a_corrupted_block_fails_the_verify() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    let run = p.run(&["test", "-f", "--json", "fio-verify"]).expect(0);
    let results = results_of(&run.json_lines()[0]);
    let test = &results["tests"][0];
    assert_eq!(test["name"], "fio-verify");
    assert_eq!(test["status"], "pass", "{test}");
    let job = &test["fio"][0];
    assert_eq!(job["name"], "randwrite-verify", "{test}");
    assert_eq!(job["error"], 0);
    let io = job["io"].as_array().expect("fio figures in results.json");
    for direction in ["write", "read"] {
        let figures = io
            .iter()
            .find(|i| i["direction"] == direction)
            .unwrap_or_else(|| panic!("no {direction} figures: {job}"));
        assert!(figures["iops"].as_f64().unwrap() > 0.0, "{figures}");
        assert!(
            figures["bandwidth_kib_s"].as_f64().unwrap() > 0.0,
            "{figures}"
        );
        let p50 = figures["clat_p50_us"].as_f64().unwrap();
        let p99 = figures["clat_p99_us"].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99, "{figures}");
    }

    // The shipped job file in two passes, with blocks overwritten in between: the verify
    // pass must catch them. Proves the verification reads the disk back.
    let job_file = std::fs::read_to_string(p.path("modules/fio/verify.fio")).unwrap();
    p.write("tests/fio-corrupt/verify.fio", &job_file);
    p.write_exec(
        "tests/fio-corrupt/fio-corrupt",
        r#"#!/bin/sh
# vmbuild: disks=1
set -e
here=${0%/*}
sed 's/^do_verify=1/do_verify=0/' "$here/verify.fio" >/tmp/write.fio
sed 's/^do_verify=1/verify_only=1/' "$here/verify.fio" >/tmp/check.fio
grep -q '^verify_only=1' /tmp/check.fio
fio --output-format=json /tmp/write.fio >/dev/null
dd if=/dev/urandom of="$VMBUILD_DISK_SCRATCH" bs=4096 seek=64 count=4 conv=notrunc,fsync 2>/dev/null
echo "overwrote 4 blocks"
exec fio --output-format=json /tmp/check.fio
"#,
    );
    test_of_folder(
        &p,
        "fio-corrupt",
        "debian-rootfs",
        "disks = [{ name = \"scratch\", size = \"64M\" }]",
    );
    let run = p.run(&["test", "-f", "--json", "fio-corrupt"]).expect(1);
    let results = results_of(&run.json_lines()[0]);
    let test = &results["tests"][0];
    assert_eq!(test["status"], "fail", "{test}");
    let reason = test["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("verify") || reason.contains("bad magic"),
        "the failure carries fio's message: {test}"
    );
    assert_ne!(test["fio"][0]["error"], 0, "{test}");
}

#[test]
fn two_vms_on_one_ext4_root_see_only_their_own_writes_and_the_image_is_unchanged() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    let rootfs = built(&p, "debian-rootfs");
    let image = rootfs.join("rootfs.ext4");
    let before = sha256(&image);
    // Each test writes a file named by its VM's boot and fails if it sees another boot's.
    // The scratch disk gives each test a VM of its own, two at a time.
    let script = r#"#!/bin/sh
# vmbuild: disks=1
boot=$(cat /proc/sys/kernel/random/boot_id)
echo "boot $boot"
echo "$0" >"/written-by-$boot"
sync
sleep 1
for f in /written-by-*; do
    [ "$f" = "/written-by-$boot" ] || { echo "sees another VM's write: $f"; exit 1; }
done
# The agent and the bundles are on a tmpfs, the rest is the disk.
grep -q ' / ext4 ' /proc/mounts
echo "own writes only"
"#;
    p.write_exec("tests/overlay/write-a", script);
    p.write_exec("tests/overlay/write-b", script);
    test_of_folder(
        &p,
        "overlay",
        "debian-rootfs",
        "vms = 2\ndisks = [{ name = \"scratch\", size = \"4M\" }]",
    );
    let run = p.run(&["test", "-f", "--json", "overlay"]).expect(0);
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    let mut boots = Vec::new();
    for test in ["write-a", "write-b"] {
        let log = std::fs::read_to_string(entry.join(format!("tests/{test}.log"))).unwrap();
        assert!(log.contains("own writes only"), "{test}: {log}");
        boots.push(log.lines().next().unwrap().to_string());
    }
    assert_ne!(boots[0], boots[1], "the two tests ran in two VMs");
    assert_eq!(
        sha256(&image),
        before,
        "the store's image was never written"
    );
    let verify = p.run(&["verify"]).expect(0);
    assert!(!verify.stdout.contains("mismatch"), "{}", verify.stdout);
}

#[test]
fn scratch_disks_are_named_and_fresh_for_every_test() {
    let p = TestProject::shared();
    // On the busybox initramfs with Debian's modular kernel: vmbuild loads virtio_blk.
    let script = r#"#!/bin/sh
# vmbuild: disks=2
set -e
echo "scratch=$VMBUILD_DISK_SCRATCH data_2=$VMBUILD_DISK_DATA_2"
[ -b "$VMBUILD_DISK_SCRATCH" ] && [ -b "$VMBUILD_DISK_DATA_2" ]
[ "$(readlink -f /dev/disk/by-id/virtio-scratch)" = "$VMBUILD_DISK_SCRATCH" ]
[ "$(readlink -f /dev/disk/by-id/virtio-data-2)" = "$VMBUILD_DISK_DATA_2" ]
[ "$(cat /sys/block/${VMBUILD_DISK_DATA_2#/dev/}/size)" = 16384 ]
# A fresh disk reads as zeros; leave a mark for the next test to (not) find.
first=$(dd if="$VMBUILD_DISK_SCRATCH" bs=512 count=1 2>/dev/null | tr -d '\000' | wc -c)
[ "$first" = 0 ] || { echo "the disk holds an earlier test's data"; exit 1; }
echo "mark of $0" | dd of="$VMBUILD_DISK_SCRATCH" conv=fsync 2>/dev/null
echo "fresh"
"#;
    // A run of its own: results of earlier runs in the shared store would be reused.
    let script = format!("{script}# {}\n", common::nonce());
    p.write_exec("tests/disks/first", &script);
    p.write_exec("tests/disks/second", &script);
    let disks =
        "disks = [{ name = \"scratch\", size = \"4M\" }, { name = \"data-2\", size = \"8M\" }]";
    test_of_folder(&p, "disks", "busybox-rootfs", disks);
    let run = p.run(&["test", "-f", "--json", "disks"]).expect(0);
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    for test in ["first", "second"] {
        let log = std::fs::read_to_string(entry.join(format!("tests/{test}.log"))).unwrap();
        assert!(log.contains("fresh"), "{test}: {log}");
    }
    // Each test had a VM of its own (two, one starting while the other ran), and no disk
    // outlived its VM.
    let consoles = std::fs::read_dir(&entry)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("console"))
        .count();
    assert_eq!(consoles, 2, "{}", entry.display());
    // Only this recipe's work folders: other tests share the store and run at once.
    let tmp = p.cache.join("tmp");
    let leftover: Vec<_> = walkdir::WalkDir::new(&tmp)
        .into_iter()
        .flatten()
        .filter(|e| e.path().to_string_lossy().contains("-disks."))
        .filter(|e| e.file_name().to_string_lossy().starts_with("disk-"))
        .collect();
    assert!(leftover.is_empty(), "{leftover:?}");

    // share_disks: one boot, and the second test finds the first one's mark.
    test_of_folder(
        &p,
        "disks",
        "busybox-rootfs",
        &format!("share_disks = true\n{disks}"),
    );
    let run = p.run(&["test", "--json", "disks"]).expect(1);
    let results = results_of(&run.json_lines()[0]);
    let mut statuses: Vec<&str> = results["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    statuses.sort();
    assert_eq!(
        statuses,
        ["fail", "pass"],
        "the later test found the mark: {results}"
    );
}

#[test]
fn an_ext4_root_the_kernel_cannot_mount_is_a_clear_recipe_error() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    // Debian's kernel image alone: no config for vmbuild to check and no modules, so
    // stage 1 finds no virtio disk and says so.
    let kernel = built(&p, "debian-kernel");
    std::fs::create_dir_all(p.path("files")).unwrap();
    std::fs::copy(kernel.join("bzImage"), p.path("files/bzImage")).unwrap();
    p.write(
        "recipes/bare-kernel.toml",
        "kind = \"kernel\"\n[prebuilt]\npath = \"../files/bzImage\"\n",
    );
    p.write(
        "recipes/unmountable.toml",
        "kind = \"test\"\nkernel = \"bare-kernel\"\nrootfs = \"debian-rootfs\"\n\
         bundles = [\"smoke-tests\"]\n",
    );
    let run = p.run(&["test", "unmountable"]).expect(2);
    assert!(
        run.stderr.contains("could not boot its root disk")
            && run.stderr.contains("CONFIG_VIRTIO_BLK"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("last console lines"), "{}", run.stderr);
    assert!(p.entries("unmountable").is_empty(), "nothing stored");

    // A kernel whose config lacks the drivers is refused before anything boots, naming
    // the options and the fragments that set them.
    p.write(
        "recipes/tiny-on-disk.toml",
        "kind = \"test\"\nkernel = \"tiny-kernel\"\nrootfs = \"debian-rootfs\"\n\
         bundles = [\"smoke-tests\"]\n",
    );
    let run = p.run(&["test", "tiny-on-disk"]).expect(2);
    for needed in [
        "CONFIG_VIRTIO_BLK (in modules/kconfig/virtio.config)",
        "CONFIG_EXT4_FS (in modules/kconfig/ext4.config)",
    ] {
        assert!(run.stderr.contains(needed), "{needed}: {}", run.stderr);
    }
    assert!(p.entries("tiny-on-disk").is_empty(), "nothing stored");
}

#[test]
fn vmbuild_run_boots_an_ext4_root_too() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    let run = p
        .run(&[
            "run",
            "--kernel",
            "debian-kernel",
            "--rootfs",
            "debian-rootfs",
            "--",
            "sh",
            "-c",
            "cat /etc/debian_version; fio --version; exit 7",
        ])
        .expect(7);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert!(
        lines[0].starts_with("12."),
        "a Debian 12 root: {}",
        run.stdout
    );
    assert!(lines[1].starts_with("fio-"), "{}", run.stdout);
}

#[test]
fn a_debian_package_that_does_not_exist_is_named_before_mmdebstrap_runs() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::new();
    p.write(
        "recipes/misspelt.toml",
        "kind = \"rootfs\"\nbase = \"debian:bookworm\"\npackages = [\"fio\", \"no-such-package-vmb\"]\nformat = \"ext4\"\n",
    );
    let run = p.run(&["build", "misspelt"]).expect(2);
    assert!(
        run.stderr.contains("`no-such-package-vmb`") && !run.stderr.contains("`fio`"),
        "{}",
        run.stderr
    );
    // Named before the bootstrap starts, not after it.
    assert!(
        !run.stderr.contains("mmdebstrap bookworm"),
        "{}",
        run.stderr
    );
    assert!(p.entries("misspelt").is_empty());
}

#[test]
fn stress_ng_verifies_its_work_in_a_debian_root() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    let run = p.run(&["test", "-f", "--json", "stress"]).expect(0);
    let entry = PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    let log = std::fs::read_to_string(entry.join("tests/stress-verify.log")).unwrap();
    assert!(log.contains("successful run completed"), "{log}");
    for stressor in ["cpu", "vm", "hdd"] {
        assert!(
            log.lines()
                .any(|l| l.contains("metrc:") && l.split_whitespace().nth(3) == Some(stressor)),
            "{stressor} ran: {log}"
        );
    }
}

#[test]
fn kernel_selftests_run_by_their_own_runner_are_subtests_in_results_and_junit() {
    if !have_mmdebstrap() {
        return;
    }
    let p = TestProject::shared();
    let junit = p.path("kselftest.xml");
    let run = p
        .run(&[
            "test",
            "-f",
            "--json",
            "kselftest",
            "--junit",
            junit.to_str().unwrap(),
        ])
        .expect(0);
    let results = results_of(&run.json_lines()[0]);
    let subtests: Vec<(&str, &str)> = results["tests"][0]["subtests"]
        .as_array()
        .expect("KTAP subtests")
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        subtests,
        [
            ("selftests: size: get_size", "pass"),
            ("selftests: breakpoints: breakpoint_test", "pass"),
            ("selftests: timers: nanosleep", "pass"),
        ],
        "{results}"
    );
    // One test case for the runner and one per selftest, as a JUnit consumer reads them.
    if let Some(counts) = common::junit_counts(&junit) {
        assert_eq!(counts, "4 0 0 0", "junitparser reads the file");
    }
}

#[test]
fn scratch_disks_the_host_cannot_hold_are_refused_before_booting() {
    let p = TestProject::shared();
    p.write(
        "recipes/huge-disks.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n\
         bundles = [\"smoke-tests\"]\n[vm]\nvms = 2\ndisks = [{ name = \"huge\", size = \"64T\" }]\n",
    );
    let run = p.run(&["test", "huge-disks"]).expect(2);
    assert!(
        run.stderr
            .contains("the scratch disks need 128 TiB (64 TiB per VM, 2 VMs)"),
        "{}",
        run.stderr
    );
    assert!(p.entries("huge-disks").is_empty());
}

#[test]
fn a_test_that_talks_over_the_agents_channel_cannot_lose_or_forge_its_result() {
    let p = TestProject::shared();
    // The channel is not the test's: fd 3 is closed for it.
    p.write_exec(
        "tests/channel/a-fd3",
        "#!/bin/sh\nprintf 'VMBUILD END a-fd3 0\\npartial' >&3 && exit 1\necho \"no channel on fd 3\"\n",
    );
    // Writing to the port itself: the agent appears to go on without an END.
    p.write_exec(
        "tests/channel/b-done",
        "#!/bin/sh\nprintf 'VMBUILD DONE\\n' >/dev/ttyS1\nsleep 2\n",
    );
    p.write_exec("tests/channel/c-after", "#!/bin/sh\necho fine\n");
    test_of_folder(&p, "channel", "busybox-rootfs", "");
    let run = p.run(&["test", "-f", "--json", "channel"]).expect(1);
    let results = results_of(&run.json_lines()[0]);
    let status = |name: &str| {
        results["tests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| {
                (
                    t["status"].as_str().unwrap().to_string(),
                    t["reason"].clone(),
                )
            })
            .unwrap_or_else(|| panic!("{name} has a result: {results}"))
    };
    assert_eq!(status("a-fd3").0, "pass", "{results}");
    let (b, reason) = status("b-done");
    assert_eq!(b, "crash", "{results}");
    assert!(reason.as_str().unwrap().contains("END"), "{reason}");
    assert_eq!(status("c-after").0, "pass", "{results}");
}
