//! The test phase end to end: real qemu (TCG here) booting Debian's kernel with the
//! busybox initramfs. Heavy artifacts come from the shared store, so they are built once
//! per run; a qemu wrapper on PATH counts boots independently of vmbuild.

mod common;

use common::{boots, counting_qemu, junit_counts, TestProject};

#[test]
fn smoke_runs_in_a_real_vm_and_a_cached_rerun_boots_nothing() {
    let p = TestProject::shared();
    let (qemu_dir, log) = counting_qemu();
    let junit = p.path("junit.xml");
    let run = p
        .run_with_path(
            qemu_dir.path(),
            &["test", "-f", "smoke", "--junit", junit.to_str().unwrap()],
        )
        .expect(0);
    assert_eq!(boots(&log), 1);
    assert!(run.stdout.contains("PASS    smoke/hello"), "{}", run.stdout);
    assert!(
        run.stdout.contains("SKIP    smoke/scratch-disk"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("PASS    smoke/sysrq"), "{}", run.stdout);
    assert!(
        run.stdout.contains("  PASS    procfs is mounted"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .trim_end()
            .ends_with("3 passed, 0 failed, 1 skipped"),
        "{}",
        run.stdout
    );

    // The results entry holds what the contract says.
    let entry = p.run(&["test", "--json", "smoke"]).expect(0).json_lines()[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let entry = std::path::PathBuf::from(entry);
    for file in [
        "results.json",
        "junit.xml",
        "console.log",
        "tests/hello.log",
        "manifest.json",
    ] {
        assert!(
            entry.join(file).is_file(),
            "{file} missing from {}",
            entry.display()
        );
    }
    let hello = std::fs::read_to_string(entry.join("tests/hello.log")).unwrap();
    assert!(hello.contains("hello from the guest"), "{hello}");
    let console = std::fs::read_to_string(entry.join("console.log")).unwrap();
    assert!(
        console.contains("Linux version"),
        "the kernel console is captured"
    );
    assert!(
        !console.contains("VMBUILD"),
        "the agent's channel stays off the console"
    );

    // JUnit, checked by a real consumer: 4 tests + 3 TAP subtests, 1 skipped.
    if let Some(counts) = junit_counts(&junit) {
        assert_eq!(counts, "7 0 0 1");
    }

    // Cached: no boot, same results, exit 0.
    let cached = p
        .run_with_path(qemu_dir.path(), &["test", "smoke"])
        .expect(0);
    assert_eq!(boots(&log), 1, "a cached rerun must not boot");
    assert!(
        cached.stdout.contains("PASS    smoke/hello") && cached.stdout.contains("[cached]"),
        "{}",
        cached.stdout
    );
    assert!(cached
        .stdout
        .trim_end()
        .ends_with("3 passed, 0 failed, 1 skipped"));

    // -f reruns.
    p.run_with_path(qemu_dir.path(), &["test", "-f", "smoke"])
        .expect(0);
    assert_eq!(boots(&log), 2);
}

#[test]
fn failures_timeouts_and_crashes_are_reported_and_failed_results_rerun() {
    let p = TestProject::shared();
    p.write_exec("tests/mixed/a-pass", "#!/bin/sh\necho fine\n");
    p.write_exec(
        "tests/mixed/b-fail",
        "#!/bin/sh\necho 'about to fail' >&2\nexit 3\n",
    );
    p.write_exec(
        "tests/mixed/c-hang",
        "#!/bin/sh\n# vmbuild: timeout=3s\necho hanging\nsleep 1000\n",
    );
    p.write_exec(
        "tests/mixed/d-crash",
        "#!/bin/sh\necho c > /proc/sysrq-trigger\nsleep 30\n",
    );
    p.write_exec(
        "tests/mixed/e-after-crash",
        "#!/bin/sh\necho 'a new VM took over'\n",
    );
    p.write(
        "recipes/mixed-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/mixed\"\n",
    );
    p.write(
        "recipes/mixed.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"mixed-tests\"]\n",
    );
    // The queue runs slowest first by the last recorded durations: results of earlier
    // runs in the shared store would reorder it (e-after-crash before d-crash), and the
    // tests' own results of earlier runs would be reused (no VM would run the passing ones).
    let earlier = std::fs::read_dir(&p.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path());
    for old in earlier.filter(|e| {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        name.get(65..)
            .is_some_and(|n| n == "mixed" || n.starts_with("mixed."))
    }) {
        std::fs::remove_dir_all(old).unwrap();
    }
    let (qemu_dir, log) = counting_qemu();
    let junit = p.path("mixed.xml");
    let run = p
        .run_with_path(
            qemu_dir.path(),
            &["test", "mixed", "--junit", junit.to_str().unwrap()],
        )
        .expect(1);
    let line = |prefix: &str| run.stdout.lines().any(|l| l.starts_with(prefix));
    assert!(line("PASS    mixed/a-pass"), "{}", run.stdout);
    assert!(line("FAIL    mixed/b-fail"), "{}", run.stdout);
    assert!(line("TIMEOUT mixed/c-hang"), "{}", run.stdout);
    assert!(line("CRASH   mixed/d-crash"), "{}", run.stdout);
    assert!(line("PASS    mixed/e-after-crash"), "{}", run.stdout);
    assert!(
        run.stdout.trim_end().ends_with("2 passed, 3 failed"),
        "{}",
        run.stdout
    );
    assert_eq!(
        boots(&log),
        2,
        "the crashed VM is replaced for the rest of the queue"
    );
    if let Some(counts) = junit_counts(&junit) {
        assert_eq!(counts, "5 1 2 0");
    }

    // `results` shows the stored failure without running anything.
    let results = p
        .run_with_path(qemu_dir.path(), &["results", "mixed"])
        .expect(1);
    assert!(
        results.stdout.contains("CRASH   mixed/d-crash"),
        "{}",
        results.stdout
    );
    assert!(
        results.stdout.contains("kernel crashed"),
        "{}",
        results.stdout
    );
    assert_eq!(boots(&log), 2);
    let fail_log = std::fs::read_to_string(
        std::path::Path::new(&p.cache)
            .join(p.entries("mixed").first().unwrap().file_name().unwrap())
            .join("tests/b-fail.log"),
    )
    .unwrap();
    assert!(fail_log.contains("about to fail"), "{fail_log}");

    // A failed result is not a cache hit: the next run boots again.
    p.run_with_path(qemu_dir.path(), &["test", "mixed"])
        .expect(1);
    assert!(boots(&log) > 2);
}

#[test]
fn a_guest_that_never_boots_is_an_infrastructure_failure_and_is_not_stored() {
    let p = TestProject::shared();
    p.write("files/bogus-kernel", "this is not a kernel image\n");
    p.write(
        "recipes/bogus-kernel.toml",
        "kind = \"kernel\"\n[prebuilt]\npath = \"../files/bogus-kernel\"\n",
    );
    p.write(
        "recipes/bogus.toml",
        "kind = \"test\"\nkernel = \"bogus-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\n",
    );
    let run = p.run(&["test", "bogus"]).expect(4);
    assert!(run.stderr.contains("VM failed"), "{}", run.stderr);
    assert!(run.stderr.contains("qemu said"), "{}", run.stderr);
    assert!(
        p.entries("bogus").is_empty(),
        "infrastructure failures are never stored"
    );
    // The console the message names is kept, outside the removed temp folder.
    let console = run
        .stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("console: "))
        .unwrap_or_else(|| panic!("no console path in:\n{}", run.stderr));
    let console = std::path::Path::new(console);
    assert!(console.is_file(), "{} does not exist", console.display());
    assert!(
        console.starts_with(p.cache.join("logs")),
        "{}",
        console.display()
    );
}

#[test]
fn missing_qemu_says_how_to_install_it() {
    let p = TestProject::shared();
    let empty = tempfile::tempdir().unwrap();
    let out = p
        .command(&["test", "-f", "smoke"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("apt-get install qemu-system-x86"),
        "{stderr}"
    );
}

#[test]
fn keep_alive_holds_a_failed_tests_vm_with_a_shell_until_the_user_ends_it() {
    common::keep_alive_holds_a_failed_test(
        &TestProject::shared(),
        "held",
        "kernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n",
    );
}

#[test]
fn several_vms_pull_tests_from_one_queue() {
    let p = TestProject::shared();
    for i in 0..4 {
        p.write_exec(
            &format!("tests/queue/t{i}"),
            "#!/bin/sh\nsleep 1\necho done\n",
        );
    }
    p.write(
        "recipes/queue-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/queue\"\n",
    );
    p.write(
        "recipes/queue.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"queue-tests\"]\n[vm]\nvms = 2\n",
    );
    let (qemu_dir, log) = counting_qemu();
    let run = p
        // -f: the shared store may hold this all-pass result from an earlier run.
        .run_with_path(qemu_dir.path(), &["test", "-f", "queue"])
        .expect(0);
    assert_eq!(boots(&log), 2, "two VMs");
    assert!(
        run.stdout.trim_end().ends_with("4 passed, 0 failed"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("booting 2 VM(s)"), "{}", run.stderr);
    // Each VM kept its own console log.
    let entry = &p.entries("queue")[0];
    assert!(entry.join("console.log").is_file());
    assert!(entry.join("console.vm1.boot0.log").is_file());
}

/// A copy of the shipped project with its own empty store that uses the accelerator the
/// shared store chose (the KVM probe can pass on hosts whose KVM then hangs real guests;
/// tests on fresh stores should not probe again and choose otherwise).
fn fresh_project() -> TestProject {
    let p = TestProject::new();
    let memo = common::shared_store().join("accel.json");
    if memo.is_file() {
        std::fs::create_dir_all(&p.cache).unwrap();
        std::fs::copy(memo, p.cache.join("accel.json")).unwrap();
    }
    p
}

/// Entries being built, and locks someone still holds, in a store.
fn leftovers(cache: &std::path::Path) -> (Vec<String>, Vec<String>) {
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(cache.join(dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let held = names("locks")
        .into_iter()
        .filter(|name| {
            let file = std::fs::File::open(cache.join("locks").join(name)).unwrap();
            let fd = std::os::unix::io::AsRawFd::as_raw_fd(&file);
            // SAFETY: a non-blocking flock probe on a file we own; closing it unlocks.
            let free = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) == 0 };
            !free
        })
        .collect();
    (names("tmp"), held)
}

#[test]
fn two_concurrent_runs_of_one_test_recipe_boot_once_and_agree() {
    // A fresh store, so that neither run finds results or artifacts from elsewhere.
    let p = fresh_project();
    // Artifacts first: the race under test is the one on the results entry.
    p.seed_from_shared(&["debian-kernel"]);
    p.run(&["build", "debian-kernel", "busybox-rootfs", "smoke-tests"])
        .expect(0);
    let (qemu_dir, log) = counting_qemu();
    let start = || {
        let path = format!(
            "{}:{}",
            qemu_dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        p.command(&["test", "--json", "smoke"])
            .env("PATH", path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (start(), start());
    let outputs = [
        first.wait_with_output().unwrap(),
        second.wait_with_output().unwrap(),
    ];
    for out in &outputs {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(boots(&log), 1, "exactly one VM suite run");
    let results: Vec<serde_json::Value> = outputs
        .iter()
        .map(|o| serde_json::from_slice(&o.stdout).expect("one JSON line"))
        .collect();
    let cached: Vec<bool> = results
        .iter()
        .map(|r| r["cached"].as_bool().unwrap())
        .collect();
    assert!(
        cached.contains(&true) && cached.contains(&false),
        "one ran, the other reused it: {cached:?}"
    );
    assert_eq!(results[0]["path"], results[1]["path"]);
    assert_eq!(results[0]["key"], results[1]["key"]);
    assert_eq!(results[0]["tests"], results[1]["tests"]);
    assert_eq!(p.entries("smoke").len(), 1);
    let (tmp, held) = leftovers(&p.cache);
    assert!(tmp.is_empty(), "left in tmp: {tmp:?}");
    assert!(held.is_empty(), "locks still held: {held:?}");
}

#[test]
fn a_test_recipe_after_a_failing_one_is_not_run_and_exits_1() {
    let p = TestProject::shared();
    p.write_exec("tests/broken/broken", "#!/bin/sh\nexit 1\n");
    p.write(
        "recipes/broken-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/broken\"\n",
    );
    p.write(
        "recipes/broken.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"broken-tests\"]\n",
    );
    p.write(
        "recipes/later.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\nafter = [\"broken\"]\n",
    );
    let (qemu_dir, log) = counting_qemu();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "later"])
        .expect(1);
    assert_eq!(boots(&log), 1, "only `broken` boots");
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("NOT RUN later/hello") && l.contains("broken")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .trim_end()
            .ends_with("0 passed, 0 failed, 4 not run"),
        "{}",
        run.stdout
    );
    assert!(
        p.entries("later").is_empty(),
        "not-run results are not stored"
    );
}

#[test]
fn a_test_that_floods_its_output_finishes_with_its_log_capped() {
    let p = TestProject::shared();
    p.write_exec(
        "tests/flood/flood",
        "#!/bin/sh\nhead -c 67108864 /dev/zero | tr '\\0' x\n",
    );
    p.write_exec("tests/flood/quiet", "#!/bin/sh\necho still here\n");
    p.write(
        "recipes/flood-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/flood\"\n",
    );
    p.write(
        "recipes/flood.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"flood-tests\"]\n",
    );
    let run = p.run(&["test", "-f", "--json", "flood"]).expect(0);
    let line = &run.json_lines()[0];
    let entry = std::path::PathBuf::from(line["path"].as_str().unwrap());
    let tests = line["tests"].as_array().unwrap();
    let flood = tests.iter().find(|t| t["name"] == "flood").unwrap();
    let quiet = tests.iter().find(|t| t["name"] == "quiet").unwrap();
    assert_eq!(flood["status"], "pass", "{flood}");
    assert_eq!(flood["truncated"], true, "{flood}");
    assert_eq!(quiet["truncated"], false, "{quiet}");
    // results.json, the stored record, says so too.
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("results.json")).unwrap()).unwrap();
    assert_eq!(stored["tests"][0]["truncated"], true, "{stored}");
    let log = std::fs::read_to_string(entry.join("tests/flood.log")).unwrap();
    assert!(log.len() <= 8 << 20, "{} bytes kept", log.len());
    assert!(
        log.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("[vmbuild: output truncated after ")),
        "{}",
        &log[log.len().saturating_sub(200)..]
    );
    let quiet_log = std::fs::read_to_string(entry.join("tests/quiet.log")).unwrap();
    assert_eq!(quiet_log, "still here\n");
}

#[test]
fn the_guest_has_no_network_and_cannot_write_the_store() {
    // A fresh store, so `verify` checks exactly the entries this test booted.
    let p = fresh_project();
    p.seed_from_shared(&["debian-kernel"]);
    driver_rootfs(&p, "hostile-rootfs");
    let script = r#"#!/bin/sh
# vmbuild: disks=1
for ko in /lib/drivers/*.ko; do insmod "$ko" 2>/dev/null; done
sleep 1
# Write every block device there is and mount any shared folder offered.
for dev in /sys/block/*; do
    name=${dev##*/}
    case "$name" in loop*|ram*|zram*) continue ;; esac
    [ -b "/dev/$name" ] || mknod "/dev/$name" b $(tr ':' ' ' <"$dev/dev")
    dd if=/dev/urandom of="/dev/$name" bs=4096 count=64 conv=fsync 2>/dev/null &&
        echo "wrote $name"
done
mkdir -p /mnt/host
for tag in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
    [ -e "$tag" ] || continue
    mount -t 9p -o trans=virtio "$(cat "$tag")" /mnt/host && echo "mounted 9p" &&
        echo evil >/mnt/host/evil
done
for nic in /sys/class/net/*; do
    [ "${nic##*/}" = lo ] && continue
    echo "network interface ${nic##*/}"
    exit 1
done
echo "no network"
"#;
    p.write_exec("tests/hostile/hostile", script);
    p.write(
        "recipes/hostile-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/hostile\"\n",
    );
    p.write(
        "recipes/hostile.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"hostile-rootfs\"\nbundles = [\"hostile-tests\"]\n[vm]\ndisks = [{ name = \"scratch\", size = \"16M\" }]\n",
    );
    p.run(&["build", "hostile-rootfs", "hostile-tests"])
        .expect(0);
    p.run(&["verify"]).expect(0);
    let run = p.run(&["test", "--json", "hostile"]).expect(0);
    let entry = std::path::PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    let log = std::fs::read_to_string(entry.join("tests/hostile.log")).unwrap();
    assert!(
        log.contains("wrote vda"),
        "the scratch disk was written: {log}"
    );
    assert!(log.contains("no network"), "{log}");
    assert!(!log.contains("mounted 9p"), "{log}");
    // Every entry, the booted kernel and rootfs included, still matches its manifest.
    let verify = p.run(&["verify"]).expect(0);
    assert!(!verify.stdout.contains("mismatch"), "{}", verify.stdout);
}

/// Writes `recipes/<name>.toml`: a busybox rootfs carrying, in `/lib/drivers/NN.ko`, the
/// modules of Debian's kernel a guest would use to reach disks, shared folders and
/// networks, in load order (the rootfs holds no modules of its own, and all of Debian's
/// would not fit an initramfs). Builds the kernel to copy them from.
fn driver_rootfs(p: &TestProject, name: &str) {
    let kernel = p
        .run(&["build", "--json", "debian-kernel"])
        .expect(0)
        .json_lines()[0]["path"]
        .as_str()
        .unwrap()
        .to_string();
    let drivers = [
        "drivers/virtio/virtio_ring",
        "drivers/virtio/virtio",
        "drivers/virtio/virtio_pci_modern_dev",
        "drivers/virtio/virtio_pci_legacy_dev",
        "drivers/virtio/virtio_pci",
        "drivers/block/virtio_blk",
        "net/9p/9pnet",
        "net/9p/9pnet_virtio",
        "fs/netfs/netfs",
        "fs/fscache/fscache",
        "fs/9p/9p",
        "net/core/failover",
        "drivers/net/net_failover",
        "drivers/net/virtio_net",
        "drivers/net/ethernet/intel/e1000/e1000",
    ];
    let release = std::fs::read_dir(std::path::Path::new(&kernel).join("modules"))
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    std::fs::create_dir_all(p.path("files/drivers")).unwrap();
    for (i, driver) in drivers.iter().enumerate() {
        let from = release.join(format!("kernel/{driver}.ko"));
        std::fs::copy(&from, p.path(&format!("files/drivers/{i:02}.ko"))).unwrap();
    }
    p.write(
        &format!("recipes/{name}.toml"),
        "kind = \"rootfs\"\ninclude = [\"base-files\"]\n[files]\n\"/lib/drivers\" = \"../files/drivers\"\n",
    );
}

#[test]
fn net_user_gives_the_guest_a_network_interface() {
    // The same drivers as above, where the default (`net` unset) leaves the guest no
    // interface but `lo`; here the recipe opts in. One boot.
    let p = TestProject::shared();
    driver_rootfs(&p, "driver-rootfs");
    let script = r#"#!/bin/sh
for ko in /lib/drivers/*.ko; do insmod "$ko" 2>/dev/null; done
# Sends nothing: it only looks for an interface besides lo.
for try in 1 2 3 4 5 6 7 8 9 10; do
    for nic in /sys/class/net/*; do
        [ "${nic##*/}" = lo ] && continue
        echo "network interface ${nic##*/} driver $(basename "$(readlink "$nic/device/driver")")"
        exit 0
    done
    sleep 1
done
echo "no network"
exit 1
"#;
    p.write_exec("tests/nic/nic", script);
    p.write(
        "recipes/nic-tests.toml",
        "kind = \"bundle\"\ntests = \"../tests/nic\"\n",
    );
    p.write(
        "recipes/nic.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"driver-rootfs\"\nbundles = [\"nic-tests\"]\n[vm]\nnet = \"user\"\n",
    );
    let (qemu_dir, log) = counting_qemu();
    // -f: the shared store may hold this result from an earlier run.
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "--json", "nic"])
        .expect(0);
    assert_eq!(boots(&log), 1);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("-nic user,model=virtio-net-pci"),
        "qemu was asked for the NIC"
    );
    let entry = std::path::PathBuf::from(run.json_lines()[0]["path"].as_str().unwrap());
    let nic_log = std::fs::read_to_string(entry.join("tests/nic.log")).unwrap();
    assert!(
        nic_log.contains("network interface eth0 driver virtio_net"),
        "{nic_log}"
    );
    // The choice is part of the test's key.
    let explain = p.run(&["explain", "nic"]).expect(0);
    assert!(
        explain.stdout.contains("\"net\": \"user\""),
        "{}",
        explain.stdout
    );
}

#[test]
fn a_bhyve_recipe_on_a_host_without_bhyve_is_exit_4_naming_what_is_missing() {
    if common::which("bhyve").is_some() {
        // A FreeBSD host: the recipe would run (CI's hosts are Linux).
        common::skip("this host has bhyve: nothing is missing to name");
        return;
    }
    let p = TestProject::shared();
    p.write(
        "recipes/on-bhyve.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\n[vm]\nbackend = \"bhyve\"\n",
    );
    let run = p.run(&["test", "-f", "on-bhyve"]).expect(4);
    assert!(
        run.stderr.contains("the bhyve backend runs on FreeBSD")
            && run.stderr.contains("pkg install grub2-bhyve socat"),
        "{}",
        run.stderr
    );
}
