//! Bootable disks end to end: a GPT image built from the busybox root and Debian's kernel,
//! booted by real OVMF under qemu (no -kernel), checked by the host's own partitioning and
//! file system tools, rebuilt byte for byte; and the bad inputs a disk recipe can have.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{boots, counting_qemu, in_ci, nonce, skip, Run, TestProject};

/// Runs a host tool, returning (success, stdout + stderr).
fn tool(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `size` bytes of `image` from `start`, as a file of their own in `dir`.
fn extract(image: &Path, start: u64, size: u64, dir: &Path, name: &str) -> PathBuf {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(image).unwrap();
    file.seek(std::io::SeekFrom::Start(start)).unwrap();
    let mut bytes = vec![0u8; size as usize];
    file.read_exact(&mut bytes).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn host_has_disk_tools() -> bool {
    for (tool, package) in [
        ("mcopy", "mtools"),
        ("mkfs.fat", "dosfstools"),
        ("fsck.vfat", "dosfstools"),
        ("sfdisk", "fdisk"),
        ("sgdisk", "gdisk"),
    ] {
        if common::which(tool).is_none() {
            assert!(
                !in_ci(),
                "CI=true, yet {tool} is missing: .ci/install-deps installs {package}"
            );
            skip(&format!("{tool} is missing (apt-get install {package})"));
            return false;
        }
    }
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file() {
        assert!(
            !in_ci(),
            "CI=true, yet OVMF is missing: .ci/install-deps installs ovmf"
        );
        skip("OVMF is missing (apt-get install ovmf)");
        return false;
    }
    true
}

#[test]
fn a_disk_boots_through_uefi_firmware_checks_clean_and_rebuilds_byte_for_byte() {
    if !host_has_disk_tools() {
        return;
    }
    let p = TestProject::shared();
    let (qemu_dir, log) = counting_qemu();
    let run = p
        .run_with_path(qemu_dir.path(), &["test", "-f", "disk-smoke"])
        .expect(0);
    for test in ["hello", "sysrq", "tap-example"] {
        assert!(
            run.stdout.contains(&format!("PASS    disk-smoke/{test}")),
            "{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .trim_end()
            .ends_with("3 passed, 0 failed, 1 skipped"),
        "{}",
        run.stdout
    );
    // Started by the firmware, from the disk: no kernel handed to qemu.
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(boots(&log), 1, "{lines}");
    let boot = lines.lines().find(|l| l.contains("if=pflash")).unwrap();
    assert!(!boot.contains("-kernel"), "{boot}");
    assert!(boot.contains("OVMF_CODE"), "{boot}");
    assert!(boot.contains("disk.img"), "{boot}");

    // The firmware is one of the results' inputs.
    let explain = p.run(&["explain", "disk-smoke"]).expect(0);
    assert!(
        explain.stdout.contains("\"firmware\": \"sha256:"),
        "{}",
        explain.stdout
    );

    // The image and its partition offsets, as `build --json` gives them.
    let built = p.run(&["build", "--json", "busybox-disk"]).expect(0);
    let json = &built.json_lines()[0];
    let image = PathBuf::from(json["image"].as_str().unwrap());
    assert!(image.ends_with("disk.img"), "{json}");
    let plain = p.run(&["build", "busybox-disk"]).expect(0);
    assert_eq!(plain.stdout.trim(), image.to_str().unwrap());
    let parts = json["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{json}");
    let (esp, root) = (&parts[0], &parts[1]);

    // The host's tools read the table and both file systems.
    let (ok, verified) = tool("sgdisk", &["-v", image.to_str().unwrap()]);
    assert!(ok && verified.contains("No problems found"), "{verified}");
    let (ok, table) = tool("sfdisk", &["-d", image.to_str().unwrap()]);
    assert!(ok, "{table}");
    assert!(table.contains("label: gpt"), "{table}");
    for (part, type_guid) in [
        (esp, "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        (root, "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"),
    ] {
        let start = part["start"].as_u64().unwrap() / 512;
        let size = part["size"].as_u64().unwrap() / 512;
        let line = table
            .lines()
            .find(|l| l.contains(&format!("type={type_guid}")))
            .unwrap_or_else(|| panic!("no {type_guid} in {table}"));
        assert!(line.contains(&format!("start={start:>12},")), "{line}");
        assert!(line.contains(&format!("size={size:>12},")), "{line}");
        let uuid = part["uuid"].as_str().unwrap().to_uppercase();
        assert!(line.contains(&format!("uuid={uuid}")), "{line} vs {uuid}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let at = |part: &serde_json::Value, name| {
        extract(
            &image,
            part["start"].as_u64().unwrap(),
            part["size"].as_u64().unwrap(),
            scratch.path(),
            name,
        )
    };
    let esp_file = at(esp, "esp.img");
    let (ok, fsck) = tool("fsck.vfat", &["-n", esp_file.to_str().unwrap()]);
    assert!(ok, "{fsck}");
    let (ok, listing) = tool(
        "mdir",
        &["-i", esp_file.to_str().unwrap(), "-b", "::EFI/BOOT"],
    );
    assert!(ok && listing.contains("BOOTX64.EFI"), "{listing}");
    let root_file = at(root, "root.img");
    let (ok, e2fsck) = tool("e2fsck", &["-fn", root_file.to_str().unwrap()]);
    assert!(ok, "{e2fsck}");

    // The same inputs, built again: the same bytes.
    let before = std::fs::read(&image).unwrap();
    // In another time zone: FAT keeps local times.
    let again = Run::from(
        p.command(&["build", "-f", "--json", "busybox-disk"])
            .env("TZ", "America/New_York")
            .output()
            .unwrap(),
    )
    .expect(0);
    assert_eq!(again.json_lines()[0]["cached"], false);
    assert_eq!(again.json_lines()[0]["key"], json["key"]);
    assert!(
        before == std::fs::read(&image).unwrap(),
        "the rebuilt image differs"
    );
}

#[test]
fn a_larger_qcow2_disk_grows_its_root_and_stays_clean() {
    if !host_has_disk_tools() {
        return;
    }
    let p = TestProject::shared();
    let tag = nonce();
    p.write(
        "recipes/big-disk.toml",
        &format!(
            "kind = \"disk\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-ext4\"\n\
             size = \"256M\"\nformat = \"qcow2\"\ncmdline = \"quiet vmbuild_tag={tag}\"\n"
        ),
    );
    let built = p.run(&["build", "--json", "big-disk"]).expect(0);
    let json = &built.json_lines()[0];
    let image = json["image"].as_str().unwrap();
    assert!(image.ends_with("disk.qcow2"), "{json}");
    assert_eq!(json["size"], 256 << 20);
    let (ok, info) = tool("qemu-img", &["info", "--output=json", image]);
    assert!(ok, "{info}");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 256 << 20);
    let scratch = tempfile::tempdir().unwrap();
    let raw = scratch.path().join("disk.raw");
    let (ok, out) = tool(
        "qemu-img",
        &["convert", "-O", "raw", image, raw.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let root = &json["partitions"][1];
    // The root takes the rest: all but the ESP, the first MiB and the last.
    let esp_size = json["partitions"][0]["size"].as_u64().unwrap();
    assert_eq!(
        root["size"].as_u64().unwrap(),
        (256 << 20) - esp_size - (2 << 20)
    );
    let root_file = extract(
        &raw,
        root["start"].as_u64().unwrap(),
        root["size"].as_u64().unwrap(),
        scratch.path(),
        "root.img",
    );
    let (ok, e2fsck) = tool("e2fsck", &["-fn", root_file.to_str().unwrap()]);
    assert!(ok, "{e2fsck}");
    // The file system fills its partition.
    let (ok, dump) = tool("dumpe2fs", &["-h", root_file.to_str().unwrap()]);
    assert!(ok, "{dump}");
    let blocks: u64 = dump
        .lines()
        .find_map(|l| l.strip_prefix("Block count:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(blocks * 1024, root["size"].as_u64().unwrap(), "{dump}");
}

#[test]
fn bad_disk_recipes_say_what_to_change() {
    if !host_has_disk_tools() {
        return;
    }
    let p = TestProject::shared();
    let tag = nonce();
    let disk = |name: &str, body: &str| {
        p.write(
            &format!("recipes/{name}.toml"),
            &format!("kind = \"disk\"\ncmdline = \"vmbuild_tag={tag}\"\n{body}"),
        );
    };

    // Too small for its partitions: both sizes named.
    disk(
        "small-disk",
        "kernel = \"debian-kernel\"\nrootfs = \"busybox-ext4\"\nsize = \"64M\"\n",
    );
    let small = p.run(&["build", "small-disk"]).expect(2);
    assert!(
        small
            .stderr
            .contains("a disk of 64 MiB cannot hold its partitions"),
        "{}",
        small.stderr
    );
    assert!(
        small.stderr.contains("the ESP takes 64 MiB"),
        "{}",
        small.stderr
    );
    assert!(
        small.stderr.contains("make `size` at least"),
        "{}",
        small.stderr
    );

    // Grown past what its root's file system can grow to.
    disk(
        "huge-disk",
        "kernel = \"debian-kernel\"\nrootfs = \"busybox-ext4\"\nsize = \"2T\"\n",
    );
    let huge = p.run(&["build", "huge-disk"]).expect(2);
    assert!(
        huge.stderr.contains("more than 512 times") && huge.stderr.contains("make `size` at most"),
        "{}",
        huge.stderr
    );

    // vmbuild's own command-line words, at their line.
    p.write(
        "recipes/own-words.toml",
        "kind = \"disk\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-ext4\"\n\
         cmdline = \"quiet vmbuild.rootpart=1\"\n",
    );
    let own = p.run(&["build", "own-words"]).expect(2);
    assert!(
        own.stderr.contains("own-words.toml:4:") && own.stderr.contains("is vmbuild's to set"),
        "{}",
        own.stderr
    );

    // Too little memory for the firmware: said before any boot.
    p.write(
        "recipes/small-vm.toml",
        &format!(
            "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-disk\"\n\
             bundles = [\"smoke-tests\"]\ntimeout = \"61s\"\n# {tag}\n[vm]\nmemory = \"64M\"\n"
        ),
    );
    let small_vm = p.run(&["test", "small-vm"]).expect(2);
    assert!(
        small_vm.stderr.contains("needs at least 128M"),
        "{}",
        small_vm.stderr
    );

    // A cpio root: refused at the reference, before anything is built.
    disk(
        "cpio-disk",
        "kernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n",
    );
    let cpio = p.run(&["build", "cpio-disk"]).expect(2);
    assert!(cpio.stderr.contains("cpio-disk.toml:4:"), "{}", cpio.stderr);
    assert!(
        cpio.stderr.contains("set format = \"ext4\""),
        "{}",
        cpio.stderr
    );

    // A kernel firmware cannot start.
    p.write(
        "recipes/no-stub.toml",
        "kind = \"kernel\"\n[prebuilt]\npath = \"no-stub.bin\"\n",
    );
    let mut bytes = vec![0u8; 4096];
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x300..0x300 + tag.len()].copy_from_slice(tag.as_bytes());
    std::fs::write(p.path("recipes/no-stub.bin"), bytes).unwrap();
    disk(
        "stubless-disk",
        "kernel = \"no-stub\"\nrootfs = \"busybox-ext4\"\n",
    );
    let stubless = p.run(&["build", "stubless-disk"]).expect(2);
    assert!(
        stubless
            .stderr
            .contains("kernel `no-stub` cannot be started by UEFI firmware")
            && stubless.stderr.contains("CONFIG_EFI_STUB=y"),
        "{}",
        stubless.stderr
    );

    // A test naming another kernel than its disk's, or a command line it cannot pass.
    p.write(
        "recipes/wrong-kernel.toml",
        "kind = \"test\"\nkernel = \"tiny-kernel\"\nrootfs = \"busybox-disk\"\n",
    );
    let wrong = p.run(&["test", "wrong-kernel"]).expect(2);
    assert!(
        wrong.stderr.contains("set kernel = \"debian-kernel\""),
        "{}",
        wrong.stderr
    );
    p.write(
        "recipes/disk-cmdline.toml",
        "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-disk\"\n[vm]\ncmdline = \"quiet\"\n",
    );
    let cmdline = p.run(&["test", "disk-cmdline"]).expect(2);
    assert!(
        cmdline.stderr.contains("move [vm] cmdline"),
        "{}",
        cmdline.stderr
    );

    // No firmware on the host: what to install, exit 4.
    let no_ovmf = Run::from(
        p.command(&["test", "-f", "disk-smoke"])
            .env("VMBUILD_OVMF_CODE", p.path("nowhere/OVMF_CODE.fd"))
            .output()
            .unwrap(),
    )
    .expect(4);
    assert!(
        no_ovmf.stderr.contains("does not exist"),
        "{}",
        no_ovmf.stderr
    );

    // No mtools: the key cannot be made without it, and the package is named.
    let bin = tempfile::tempdir().unwrap();
    for dir in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            if name == "mcopy" || name == "mmd" {
                continue;
            }
            let _ = std::os::unix::fs::symlink(entry.path(), bin.path().join(&name));
        }
    }
    disk(
        "tools-disk",
        "kernel = \"debian-kernel\"\nrootfs = \"busybox-ext4\"\n",
    );
    let no_mtools = Run::from(
        p.command(&["build", "tools-disk"])
            .env("PATH", bin.path())
            .output()
            .unwrap(),
    )
    .expect(4);
    assert!(
        no_mtools.stderr.contains("apt-get install mtools"),
        "{}",
        no_mtools.stderr
    );
}
