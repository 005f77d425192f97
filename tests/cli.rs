//! The CLI on bad input and the store's caching behaviour, through the real binary on a
//! temporary project. Builds here use only busybox and small files (no kernel builds).

mod common;

use common::TestProject;

#[test]
fn malformed_toml_names_file_line_and_column() {
    let p = TestProject::new();
    p.write(
        "recipes/broken.toml",
        "kind = \"rootfs\"\nformat = \"cpio\n",
    );
    let run = p.run(&["build", "broken"]).expect(2);
    assert!(run.stderr.contains("broken.toml:2:"), "{}", run.stderr);
    assert!(run.stderr.contains("format = \"cpio"), "{}", run.stderr);
}

#[test]
fn unknown_key_gets_did_you_mean() {
    let p = TestProject::new();
    p.write("recipes/typo.toml", "kind = \"rootfs\"\nformt = \"cpio\"\n");
    let run = p.run(&["build", "typo"]).expect(2);
    assert!(
        run.stderr.contains("unknown field `formt`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("typo.toml:2:1"), "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean `format`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn wrong_type_and_missing_field_are_located() {
    let p = TestProject::new();
    p.write("recipes/wrongtype.toml", "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n[vm]\ncpus = \"two\"\n");
    let run = p.run(&["build", "wrongtype"]).expect(2);
    assert!(run.stderr.contains("wrongtype.toml:5:8"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("invalid type: string \"two\", expected i64"),
        "{}",
        run.stderr
    );

    p.write("recipes/nofield.toml", "kind = \"bundle\"\n");
    let run = p.run(&["build", "nofield"]).expect(2);
    assert!(
        run.stderr.contains("missing field `tests`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nofield.toml:1:1"), "{}", run.stderr);
}

#[test]
fn unknown_recipe_names_are_suggested() {
    let p = TestProject::new();
    let run = p.run(&["build", "busybox-rootf"]).expect(2);
    assert!(
        run.stderr.contains("did you mean `busybox-rootfs`?"),
        "{}",
        run.stderr
    );

    p.write(
        "recipes/t.toml",
        "kind = \"test\"\nkernel = \"debian-kernal\"\nrootfs = \"busybox-rootfs\"\n",
    );
    let run = p.run(&["test", "t"]).expect(2);
    assert!(
        run.stderr.contains("no recipe named `debian-kernal`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("t.toml:2:10"), "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean `debian-kernel`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn dependency_cycles_are_printed() {
    let p = TestProject::new();
    let test = |after: &str| {
        format!("kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nafter = [\"{after}\"]\n")
    };
    p.write("recipes/a.toml", &test("b"));
    p.write("recipes/b.toml", &test("a"));
    let run = p.run(&["test", "a"]).expect(2);
    assert!(run.stderr.contains("cycle a -> b -> a"), "{}", run.stderr);
}

#[test]
fn files_must_stay_inside_the_project_and_the_image() {
    let p = TestProject::new();
    let outside = tempfile::NamedTempFile::new().unwrap();
    p.write(
        "recipes/escape.toml",
        &format!(
            "kind = \"rootfs\"\n[files]\n\"/etc/x\" = \"{}\"\n",
            outside.path().display()
        ),
    );
    let run = p.run(&["build", "escape"]).expect(2);
    assert!(
        run.stderr.contains("is outside the project"),
        "{}",
        run.stderr
    );

    p.write(
        "recipes/dotdot.toml",
        "kind = \"rootfs\"\n[files]\n\"/etc/../../x\" = \"busybox-rootfs.toml\"\n",
    );
    let run = p.run(&["build", "dotdot"]).expect(2);
    assert!(run.stderr.contains("without `..`"), "{}", run.stderr);
    assert!(run.stderr.contains("dotdot.toml:3:1"), "{}", run.stderr);
}

#[test]
fn missing_local_paths_are_named() {
    let p = TestProject::new();
    p.write(
        "recipes/nofile.toml",
        "kind = \"rootfs\"\n[files]\n\"/etc/motd\" = \"files/motd\"\n",
    );
    let run = p.run(&["build", "nofile"]).expect(2);
    assert!(
        run.stderr.contains("no such file or folder"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("files/motd"), "{}", run.stderr);
    assert!(run.stderr.contains("nofile.toml:3:15"), "{}", run.stderr);
}

/// Serves `dir` over HTTP on a free port with Python's http.server.
fn http_server(dir: &std::path::Path) -> Option<(std::process::Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

#[test]
fn url_inputs_are_verified_and_a_mismatch_stores_nothing() {
    let p = TestProject::new();
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("bzImage"), "not really a kernel").unwrap();
    let Some((mut server, port)) = http_server(served.path()) else {
        common::skip("python3 -m http.server could not start");
        return;
    };
    let wrong = "0".repeat(64);
    p.write(
        "recipes/url-kernel.toml",
        &format!("kind = \"kernel\"\n[prebuilt]\nurl = \"http://127.0.0.1:{port}/bzImage\"\nsha256 = \"{wrong}\"\n"),
    );
    let run = p.run(&["build", "url-kernel"]).expect(3);
    assert!(
        run.stderr.contains(&format!("expected: {wrong}")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("actual:"), "{}", run.stderr);
    assert!(p.entries("url-kernel").is_empty());
    assert!(
        std::fs::read_dir(p.cache.join("downloads"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // With the right hash it builds and the output is the served file.
    let (right, _) = vmbuild::hashing::sha256_file(&served.path().join("bzImage")).unwrap();
    p.write(
        "recipes/url-kernel.toml",
        &format!("kind = \"kernel\"\n[prebuilt]\nurl = \"http://127.0.0.1:{port}/bzImage\"\nsha256 = \"{right}\"\n"),
    );
    let run = p.run(&["build", "url-kernel"]).expect(0);
    let path = std::path::PathBuf::from(run.stdout.trim());
    assert_eq!(
        std::fs::read_to_string(path.join("bzImage")).unwrap(),
        "not really a kernel"
    );
    let _ = server.kill();
    let _ = server.wait();

    // Unreachable: the server is gone; a new hash forces a fetch.
    p.write(
        "recipes/url-kernel.toml",
        &format!("kind = \"kernel\"\n[prebuilt]\nurl = \"http://127.0.0.1:{port}/gone\"\nsha256 = \"{}\"\n", "1".repeat(64)),
    );
    let run = p.run(&["build", "url-kernel"]).expect(3);
    assert!(
        run.stderr
            .contains(&format!("download http://127.0.0.1:{port}/gone")),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_debian_package_is_bad_input() {
    let p = TestProject::new();
    p.write(
        "recipes/nopkg.toml",
        "kind = \"kernel\"\n[prebuilt]\ndeb = \"linux-image-does-not-exist\"\n",
    );
    let run = p.run(&["build", "nopkg"]).expect(2);
    assert!(
        run.stderr.contains("apt knows no such package"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("linux-image-does-not-exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn cached_rebuild_prints_the_same_path_and_does_no_work() {
    let p = TestProject::new();
    let first = p
        .run(&["build", "--json", "busybox-rootfs"])
        .expect(0)
        .json_lines();
    assert_eq!(first[0]["cached"], false);
    assert_eq!(first[0]["kind"], "rootfs");
    let second = p.run(&["build", "busybox-rootfs"]).expect(0);
    assert_eq!(second.stdout.trim(), first[0]["path"].as_str().unwrap());
    assert!(!second.stderr.contains("building"), "{}", second.stderr);
    // The entry is complete and verifies.
    let path = std::path::PathBuf::from(second.stdout.trim());
    assert!(path.join("rootfs.cpio.gz").is_file());
    p.run(&["verify"]).expect(0);
}

#[test]
fn same_inputs_give_the_same_bytes() {
    let a = TestProject::new();
    let b = TestProject::new();
    let pa = a.run(&["build", "busybox-rootfs"]).expect(0).stdout;
    let pb = b.run(&["build", "busybox-rootfs"]).expect(0).stdout;
    let read =
        |p: &str| std::fs::read(std::path::Path::new(p.trim()).join("rootfs.cpio.gz")).unwrap();
    assert_eq!(read(&pa), read(&pb));
    // Same key although the projects live in different folders.
    let name = |p: &str| {
        std::path::Path::new(p.trim())
            .file_name()
            .unwrap()
            .to_owned()
    };
    assert_eq!(name(&pa), name(&pb));
}

#[test]
fn editing_a_module_file_rebuilds_exactly_its_dependents_and_explain_says_why() {
    let p = TestProject::new();
    p.run(&["build", "busybox-rootfs", "smoke-tests"]).expect(0);
    p.write("modules/base-files/motd", "a different welcome\n");
    let explain = p.run(&["explain", "busybox-rootfs"]).expect(0);
    assert!(
        explain.stdout.contains("status: not in the store"),
        "{}",
        explain.stdout
    );
    assert!(
        explain.stdout.contains("recipe.files./etc/motd.sha256:"),
        "{}",
        explain.stdout
    );
    let after = p
        .run(&["build", "--json", "busybox-rootfs", "smoke-tests"])
        .expect(0)
        .json_lines();
    assert_eq!(after[0]["cached"], false, "the rootfs includes the module");
    assert_eq!(after[1]["cached"], true, "the bundle does not");
    assert_eq!(p.entries("busybox-rootfs").len(), 2);
}

#[test]
fn force_redoes_the_named_recipe_and_force_force_the_closure() {
    let p = TestProject::new();
    p.write(
        "recipes/fake-kernel.toml",
        "kind = \"kernel\"\n[prebuilt]\npath = \"../files/bzImage\"\n",
    );
    p.write("files/bzImage", "pretend kernel");
    p.write("files/modules/x.ko", "module");
    p.write(
        "recipes/with-modules.toml",
        "kind = \"rootfs\"\nbase = \"none\"\nkernel_modules = \"fake-kernel\"\nformat = \"tar\"\n[files]\n\"/hello\" = \"../files/bzImage\"\n",
    );
    let cached = |run: &common::Run| run.json_lines()[0]["cached"].as_bool().unwrap();
    assert!(!cached(
        &p.run(&["build", "--json", "with-modules"]).expect(0)
    ));
    assert!(cached(
        &p.run(&["build", "--json", "with-modules"]).expect(0)
    ));

    let run = p.run(&["build", "-f", "with-modules"]).expect(0);
    assert!(
        run.stderr.contains("with-modules (rootfs): building"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("fake-kernel (kernel): building"),
        "{}",
        run.stderr
    );

    let run = p.run(&["build", "-ff", "with-modules"]).expect(0);
    assert!(
        run.stderr.contains("with-modules (rootfs): building"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("fake-kernel (kernel): building"),
        "{}",
        run.stderr
    );
    // Still one entry each: -f replaces, it does not duplicate.
    assert_eq!(p.entries("with-modules").len(), 1);
    p.run(&["verify"]).expect(0);
}

#[test]
fn verify_finds_corruption_and_gc_removes_unreachable_entries() {
    let p = TestProject::new();
    let path = p
        .run(&["build", "smoke-tests"])
        .expect(0)
        .stdout
        .trim()
        .to_string();
    std::fs::write(std::path::Path::new(&path).join("tests.json"), "[]").unwrap();
    let run = p.run(&["verify"]).expect(3);
    assert!(
        run.stdout.contains("tests.json: sha256 mismatch"),
        "{}",
        run.stdout
    );
    p.run(&["verify", "--delete"]).expect(0);
    assert!(p.entries("smoke-tests").is_empty());

    p.run(&["build", "smoke-tests"]).expect(0);
    p.write_exec("tests/smoke/extra", "#!/bin/sh\ntrue\n");
    p.run(&["build", "smoke-tests"]).expect(0);
    assert_eq!(p.entries("smoke-tests").len(), 2);
    let run = p.run(&["gc"]).expect(0);
    assert!(run.stdout.contains("1 entries removed"), "{}", run.stdout);
    assert_eq!(p.entries("smoke-tests").len(), 1);
}

#[test]
fn concurrent_builds_of_one_entry_build_it_once() {
    let p = TestProject::new();
    let a = p
        .command(&["build", "--json", "busybox-rootfs"])
        .output()
        .unwrap();
    // Warm the download so both racers spend their time in the build itself.
    assert!(a.status.success());
    p.write("modules/base-files/motd", "race\n");
    let racers: Vec<_> = (0..2)
        .map(|_| {
            p.command(&["build", "--json", "busybox-rootfs"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut built = 0;
    let mut paths = Vec::new();
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        built += usize::from(!line["cached"].as_bool().unwrap());
        paths.push(line["path"].clone());
    }
    assert_eq!(
        built, 1,
        "exactly one racer builds, the other reuses its entry"
    );
    assert_eq!(paths[0], paths[1]);
}

#[test]
fn kill_9_mid_build_leaves_the_store_valid() {
    let p = TestProject::new();
    p.run(&["build", "busybox-rootfs"]).expect(0); // downloads warm
                                                   // A big file makes the build long enough to be caught in the middle.
    let big = p.path("files/big.bin");
    std::fs::create_dir_all(big.parent().unwrap()).unwrap();
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, data).unwrap();
    p.write("recipes/big.toml", "kind = \"rootfs\"\ninclude = [\"base-files\"]\n[files]\n\"/big.bin\" = \"../files/big.bin\"\n");
    let mut child = p
        .command(&["build", "big"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its staging folder exists, then kill it without warning.
    let tmp = p.cache.join("tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_dir(&tmp)
        .map(|d| d.flatten().count())
        .unwrap_or(0)
        == 0
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        p.entries("big").is_empty(),
        "a killed build must not be visible"
    );
    p.run(&["verify"]).expect(0);
    let run = p.run(&["build", "big"]).expect(0);
    assert_eq!(p.entries("big").len(), 1, "{}", run.stderr);
    p.run(&["verify"]).expect(0);
    // The dead builder's temp folder was cleaned up by the next build.
    let leftovers: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_full_disk_fails_the_build_and_publishes_nothing() {
    let p = TestProject::new();
    let mount = p.path("small-disk");
    std::fs::create_dir_all(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mount)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        common::skip("cannot mount a small tmpfs here (needs root)");
        return;
    }
    let p = TestProject {
        cache: mount.join("cache"),
        ..p
    };
    let run = p.run(&["build", "busybox-rootfs"]);
    let _ = std::process::Command::new("umount").arg(&mount).status();
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
    assert!(p.entries("busybox-rootfs").is_empty());
}

#[test]
fn test_recipes_and_build_recipes_are_not_confused() {
    let p = TestProject::new();
    let run = p.run(&["build", "smoke"]).expect(2);
    assert!(
        run.stderr
            .contains("is a test recipe: run it with `vmbuild test smoke`"),
        "{}",
        run.stderr
    );
    let run = p.run(&["test", "busybox-rootfs"]).expect(2);
    assert!(run.stderr.contains("not a test"), "{}", run.stderr);
}

#[test]
fn help_explains_commands_and_exit_codes() {
    let p = TestProject::new();
    let run = p.run(&["--help"]).expect(0);
    for word in [
        "build",
        "test",
        "results",
        "explain",
        "verify",
        "gc",
        "shell",
        "Exit codes",
    ] {
        assert!(
            run.stdout.contains(word),
            "{word} missing from --help:\n{}",
            run.stdout
        );
    }
    p.run(&["build"]).expect(2);
}

#[test]
fn ext4_and_tar_images_are_reproducible_and_owned_by_root() {
    let p = TestProject::new();
    p.write(
        "recipes/disk.toml",
        "kind = \"rootfs\"\ninclude = [\"base-files\"]\nformat = \"ext4\"\nsize = \"64M\"\n",
    );
    p.write(
        "recipes/archive.toml",
        "kind = \"rootfs\"\ninclude = [\"base-files\"]\nformat = \"tar\"\n",
    );
    let first = p.run(&["build", "disk", "archive"]).expect(0).stdout;
    let paths: Vec<std::path::PathBuf> = first.lines().map(std::path::PathBuf::from).collect();
    let image = paths[0].join("rootfs.ext4");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 64 << 20);
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let ls = std::process::Command::new("debugfs")
        .args(["-R", "stat /etc/motd"])
        .arg(&image)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&ls.stdout);
    assert!(stat.contains("User:     0   Group:     0"), "{stat}");

    let tar = std::process::Command::new("tar")
        .arg("-tvf")
        .arg(paths[1].join("rootfs.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&tar.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.contains(" 0/0 ") && l.ends_with("bin/busybox")),
        "{listing}"
    );
    assert!(
        !listing.lines().any(|l| !l.contains(" 0/0 ")),
        "every entry is root:root\n{listing}"
    );

    // Rebuilding from scratch gives the same bytes.
    let hash = |p: &std::path::Path| vmbuild::hashing::sha256_file(p).unwrap().0;
    let (ext4_before, tar_before) = (hash(&image), hash(&paths[1].join("rootfs.tar")));
    p.run(&["build", "-f", "disk", "archive"]).expect(0);
    assert_eq!(hash(&image), ext4_before);
    assert_eq!(hash(&paths[1].join("rootfs.tar")), tar_before);
}

#[test]
fn a_files_source_that_is_a_symlink_is_copied_as_the_link() {
    let p = TestProject::new();
    std::fs::create_dir_all(p.path("files")).unwrap();
    std::os::unix::fs::symlink("/bin/busybox", p.path("files/linuxrc")).unwrap();
    p.write("recipes/linked.toml", "kind = \"rootfs\"\nbase = \"none\"\nformat = \"dir\"\n[files]\n\"/linuxrc\" = \"../files/linuxrc\"\n");
    let out = p.run(&["build", "linked"]).expect(0).stdout;
    let link = std::path::Path::new(out.trim()).join("root/linuxrc");
    assert_eq!(
        std::fs::read_link(link).unwrap(),
        std::path::Path::new("/bin/busybox")
    );
}

#[test]
fn standard_output_that_cannot_be_written_is_an_error_not_a_panic() {
    let p = TestProject::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = p
        .command(&["build", "smoke-tests"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("error: write to standard output: No space left on device"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    // What was built before the write stays a valid entry.
    p.run(&["verify"]).expect(0);
}
