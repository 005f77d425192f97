//! Hostile and careless input, as a table: recipes, modules, bundles, archives, lock files
//! and command lines that once made vmbuild write outside its cache, hang, panic or use
//! wrong bytes. Each case must end under a deadline with its promised exit code and a
//! message that names the problem, with no panic and nothing written outside the project's
//! cache (the whole folder around the project is compared before and after).

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::TestProject;

/// Every case: a name, what it sets up, the command, the exit code, and text the error
/// must contain.
struct Case {
    name: &'static str,
    setup: fn(&TestProject),
    args: &'static [&'static str],
    code: i32,
    needle: &'static str,
}

fn recipe(p: &TestProject, name: &str, text: &str) {
    p.write(&format!("recipes/{name}.toml"), text);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn test_recipe(p: &TestProject, name: &str, extra_vm: &str, extra: &str) {
    recipe(
        p,
        name,
        &format!(
            "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\n\
             bundles = [\"smoke-tests\"]\n{extra}\n[vm]\n{extra_vm}\n"
        ),
    );
}

const CASES: &[Case] = &[
    // Names from the command line that would become paths.
    Case {
        name: "dotdot name",
        setup: |_| {},
        args: &["build", "../../../tmp/evil"],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "slash name",
        setup: |_| {},
        args: &["build", "a/b"],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "empty name",
        setup: |_| {},
        args: &["build", ""],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "dash name",
        setup: |_| {},
        args: &["build", "--", "-x"],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "toml path with a bad stem",
        setup: |p| {
            p.write(
                "elsewhere/bad name.toml",
                "kind = \"bundle\"\ntests = \"../tests/smoke\"\n",
            );
        },
        args: &["build", "elsewhere/bad name.toml"],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "reference with dotdot",
        setup: |p| test_recipe(p, "t", "", "after = [\"../../etc/passwd\"]"),
        args: &["test", "t"],
        code: 2,
        needle: "is not a recipe name",
    },
    Case {
        name: "recipe file is a FIFO",
        setup: |p| mkfifo(&p.path("recipes/fifo.toml")),
        args: &["build", "recipes/fifo.toml"],
        code: 2,
        needle: "fifo.toml",
    },
    // Special files as inputs.
    Case {
        name: "FIFO under [files]",
        setup: |p| {
            mkfifo(&p.path("recipes/pipe"));
            recipe(
                p,
                "r",
                "kind = \"rootfs\"\n[files]\n\"/etc/pipe\" = \"pipe\"\n",
            );
        },
        args: &["build", "r"],
        code: 2,
        needle: "pipe is a FIFO",
    },
    Case {
        name: "FIFO in a bundle",
        setup: |p| {
            std::fs::create_dir_all(p.path("b")).unwrap();
            p.write_exec("b/t1", "#!/bin/sh\n");
            mkfifo(&p.path("b/pipe"));
            recipe(p, "b", "kind = \"bundle\"\ntests = \"../b\"\n");
        },
        args: &["build", "b"],
        code: 2,
        needle: "is a FIFO",
    },
    Case {
        name: "FIFO in a folder under [files]",
        setup: |p| {
            std::fs::create_dir_all(p.path("tree/sub")).unwrap();
            mkfifo(&p.path("tree/sub/pipe"));
            recipe(
                p,
                "r",
                "kind = \"rootfs\"\n[files]\n\"/opt\" = \"../tree\"\n",
            );
        },
        args: &["build", "r"],
        code: 2,
        needle: "is a FIFO",
    },
    Case {
        name: "character device as a prebuilt kernel",
        setup: |p| {
            recipe(
                p,
                "k",
                "kind = \"kernel\"\n[prebuilt]\npath = \"/dev/zero\"\n",
            )
        },
        args: &["build", "k"],
        code: 2,
        needle: "character device",
    },
    Case {
        name: "FIFO as a kconfig fragment",
        setup: |p| {
            mkfifo(&p.path("recipes/frag.config"));
            recipe(p, "k", "kind = \"kernel\"\n[source]\ndeb = \"linux-source-6.1\"\n[config]\nfragments = [\"frag.config\"]\n");
        },
        args: &["build", "k"],
        code: 2,
        needle: "is a FIFO",
    },
    Case {
        name: "non-UTF-8 names in a bundle",
        setup: |p| {
            std::fs::create_dir_all(p.path("b")).unwrap();
            let odd = std::ffi::OsStr::from_bytes(b"t\xe9");
            std::fs::write(p.path("b").join(odd), "#!/bin/sh\n").unwrap();
            recipe(p, "b", "kind = \"bundle\"\ntests = \"../b\"\n");
        },
        args: &["build", "b"],
        code: 2,
        needle: "not UTF-8",
    },
    Case {
        name: "test header with a zero timeout",
        setup: |p| {
            p.write_exec("b/t1", "#!/bin/sh\n# vmbuild: timeout=0s\n");
            recipe(p, "b", "kind = \"bundle\"\ntests = \"../b\"\n");
        },
        args: &["build", "b"],
        code: 2,
        needle: "between 1s and 7d",
    },
    Case {
        name: "test header asking for 999 disks",
        setup: |p| {
            p.write_exec("b/t1", "#!/bin/sh\n# vmbuild: disks=999\n");
            recipe(p, "b", "kind = \"bundle\"\ntests = \"../b\"\n");
        },
        args: &["build", "b"],
        code: 2,
        needle: "from 0 to 16",
    },
    Case {
        name: "test header with an option for a kconfig name",
        setup: |p| {
            p.write_exec("b/t1", "#!/bin/sh\n# vmbuild: kconfig=--all\n");
            recipe(p, "b", "kind = \"bundle\"\ntests = \"../b\"\n");
        },
        args: &["build", "b"],
        code: 2,
        needle: "is not a kernel option",
    },
    // Numbers.
    Case {
        name: "zero timeout",
        setup: |p| test_recipe(p, "t", "", "timeout = \"0s\""),
        args: &["test", "t"],
        code: 2,
        needle: "between 1s and 7d",
    },
    Case {
        name: "huge timeout",
        setup: |p| test_recipe(p, "t", "", "timeout = \"99999999999999999d\""),
        args: &["test", "t"],
        code: 2,
        needle: "too long",
    },
    Case {
        name: "u64 max timeout",
        setup: |p| test_recipe(p, "t", "", "timeout = \"18446744073709551615\""),
        args: &["test", "t"],
        code: 2,
        needle: "too long",
    },
    Case {
        name: "sub-second timeout",
        setup: |p| test_recipe(p, "t", "", "timeout = \"1500ms\""),
        args: &["test", "t"],
        code: 2,
        needle: "whole number of seconds",
    },
    Case {
        name: "zero boot timeout",
        setup: |p| test_recipe(p, "t", "boot_timeout = \"0s\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "boot timeout",
    },
    Case {
        name: "tiny memory",
        setup: |p| test_recipe(p, "t", "memory = \"1K\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "between 32M and 1T",
    },
    Case {
        name: "absurd memory",
        setup: |p| test_recipe(p, "t", "memory = \"99999T\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "out of range",
    },
    Case {
        name: "zero cpus",
        setup: |p| test_recipe(p, "t", "cpus = 0", ""),
        args: &["test", "t"],
        code: 2,
        needle: "between 1 and 256",
    },
    Case {
        name: "negative vms",
        setup: |p| test_recipe(p, "t", "vms = -1", ""),
        args: &["test", "t"],
        code: 2,
        needle: "between 1 and 256",
    },
    Case {
        name: "zero disk",
        setup: |p| test_recipe(p, "t", "disks = [{ name = \"d\", size = \"0\" }]", ""),
        args: &["test", "t"],
        code: 2,
        needle: "disk size",
    },
    Case {
        name: "tiny ext4",
        setup: |p| {
            recipe(
                p,
                "r",
                "kind = \"rootfs\"\nformat = \"ext4\"\nsize = \"1K\"\n",
            )
        },
        args: &["build", "r"],
        code: 2,
        needle: "ext4 image size",
    },
    Case {
        name: "gc with an absurd age",
        setup: |_| {},
        args: &["gc", "--older-than", "99999999999999999d"],
        code: 2,
        needle: "too long",
    },
    // References of the wrong kind.
    Case {
        name: "bundles naming a test",
        setup: |p| {
            recipe(p, "t2", "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke\"]\n")
        },
        args: &["test", "t2"],
        code: 2,
        needle: "`bundles` needs a bundle recipe, but `smoke` is a test recipe",
    },
    Case {
        name: "kernel naming a rootfs",
        setup: |p| {
            recipe(
                p,
                "t",
                "kind = \"test\"\nkernel = \"busybox-rootfs\"\nrootfs = \"busybox-rootfs\"\n",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "`kernel` needs a kernel recipe",
    },
    Case {
        name: "rootfs naming a kernel",
        setup: |p| {
            recipe(
                p,
                "t",
                "kind = \"test\"\nkernel = \"debian-kernel\"\nrootfs = \"debian-kernel\"\n",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "`rootfs` needs a rootfs or disk recipe",
    },
    Case {
        name: "kernel_modules naming a rootfs",
        setup: |p| {
            recipe(
                p,
                "r",
                "kind = \"rootfs\"\nkernel_modules = \"busybox-rootfs\"\n",
            )
        },
        args: &["build", "r"],
        code: 2,
        needle: "r.toml:2:18",
    },
    Case {
        name: "after naming a bundle",
        setup: |p| test_recipe(p, "t", "", "after = [\"smoke-tests\"]"),
        args: &["test", "t"],
        code: 2,
        needle: "`after` needs a test recipe",
    },
    Case {
        name: "after cycle",
        setup: |p| {
            test_recipe(p, "a", "", "after = [\"b\"]");
            test_recipe(p, "b", "", "after = [\"a\"]");
        },
        args: &["test", "a"],
        code: 2,
        needle: "cycle a -> b -> a",
    },
    Case {
        name: "include escaping modules/",
        setup: |p| recipe(p, "r", "kind = \"rootfs\"\ninclude = [\"../recipes\"]\n"),
        args: &["build", "r"],
        code: 2,
        needle: "no module",
    },
    Case {
        name: "module including a module",
        setup: |p| {
            p.write("modules/m/module.toml", "include = [\"base-files\"]\n");
            recipe(p, "r", "kind = \"rootfs\"\ninclude = [\"m\"]\n");
        },
        args: &["build", "r"],
        code: 2,
        needle: "modules cannot include other modules",
    },
    // Values that other programs would read as options or extra fields.
    Case {
        name: "release as an option",
        setup: |p| {
            recipe(
                p,
                "r",
                "kind = \"rootfs\"\nbase = \"debian:--variant=extract\"\n",
            )
        },
        args: &["build", "r"],
        code: 2,
        needle: "not a Debian release name",
    },
    Case {
        name: "package as an option",
        setup: |p| {
            recipe(p, "r", "kind = \"rootfs\"\nbase = \"debian:bookworm\"\npackages = [\"--allow-unauthenticated\"]\n")
        },
        args: &["build", "r"],
        code: 2,
        needle: "not a Debian package name",
    },
    Case {
        name: "deb as an option",
        setup: |p| {
            recipe(
                p,
                "k",
                "kind = \"kernel\"\n[prebuilt]\ndeb = \"-oAPT::x=1\"\n",
            )
        },
        args: &["build", "k"],
        code: 2,
        needle: "not a Debian package name",
    },
    Case {
        name: "disk name with a comma",
        setup: |p| {
            test_recipe(
                p,
                "t",
                "disks = [{ name = \"d,file=/etc/passwd\", size = \"1M\" }]",
                "",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "is not a disk name",
    },
    Case {
        name: "duplicate disk names",
        setup: |p| {
            test_recipe(
                p,
                "t",
                "disks = [{ name = \"d\", size = \"1M\" }, { name = \"d\", size = \"1M\" }]",
                "",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "a second disk named",
    },
    Case {
        name: "disk names that give the guest one variable",
        setup: |p| {
            test_recipe(
                p,
                "t",
                "disks = [{ name = \"data-1\", size = \"1M\" }, { name = \"data_1\", size = \"1M\" }]",
                "",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "would both be VMBUILD_DISK_DATA_1",
    },
    Case {
        name: "disk named like vmbuild's own root disk",
        setup: |p| {
            test_recipe(
                p,
                "t",
                "disks = [{ name = \"vmbuild-root\", size = \"1M\" }]",
                "",
            )
        },
        args: &["test", "t"],
        code: 2,
        needle: "names starting with `vmbuild` are vmbuild's own",
    },
    Case {
        name: "machine with options",
        setup: |p| test_recipe(p, "t", "machine = \"q35,accel=kvm\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "not a machine type",
    },
    Case {
        name: "unknown net",
        setup: |p| test_recipe(p, "t", "net = \"bridge,br0\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "unknown net `bridge,br0`",
    },
    Case {
        name: "user net on bhyve",
        setup: |p| test_recipe(p, "t", "backend = \"bhyve\"\nnet = \"user\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "not available with backend = \"bhyve\"",
    },
    Case {
        name: "make flag moving the output",
        setup: |p| {
            recipe(p, "k", "kind = \"kernel\"\nmake_flags = [\"O=/tmp/elsewhere\"]\n[source]\ndeb = \"linux-source-6.1\"\n[config]\n")
        },
        args: &["build", "k"],
        code: 2,
        needle: "set by vmbuild itself",
    },
    Case {
        name: "make flag as an option",
        setup: |p| {
            recipe(p, "k", "kind = \"kernel\"\nmake_flags = [\"-C/\"]\n[source]\ndeb = \"linux-source-6.1\"\n[config]\n")
        },
        args: &["build", "k"],
        code: 2,
        needle: "not a variable assignment",
    },
    Case {
        name: "file url",
        setup: |p| {
            recipe(p, "k", &format!("kind = \"kernel\"\n[prebuilt]\nurl = \"file:///etc/passwd\"\nsha256 = \"{}\"\n", "0".repeat(64)))
        },
        args: &["build", "k"],
        code: 2,
        needle: "not an http:// or https:// address",
    },
    Case {
        name: "control characters in cmdline",
        setup: |p| test_recipe(p, "t", "cmdline = \"a\\nb\"", ""),
        args: &["test", "t"],
        code: 2,
        needle: "control characters",
    },
    // Lock files are input too.
    Case {
        name: "lock file with a path in sha256",
        setup: |p| {
            p.write("vmbuild.lock", "[[package]]\nname = \"busybox-static\"\npackage = \"busybox-static\"\nversion = \"1:1.35.0-4\"\narchitecture = \"amd64\"\nsha256 = \"../../../../tmp/x\"\n");
        },
        args: &["build", "busybox-rootfs"],
        code: 2,
        needle: "sha256 must be 64 hexadecimal digits",
    },
    // Malformed files.
    Case {
        name: "malformed toml",
        setup: |p| recipe(p, "r", "kind = \"rootfs\"\nbase = [\n"),
        args: &["build", "r"],
        code: 2,
        needle: "r.toml:3",
    },
    Case {
        name: "unknown key",
        setup: |p| recipe(p, "r", "kind = \"rootfs\"\nformt = \"cpio\"\n"),
        args: &["build", "r"],
        code: 2,
        needle: "did you mean `format`?",
    },
    // The store itself.
    Case {
        name: "cache dir is a file",
        setup: |p| {
            p.write("cache", "not a folder");
        },
        args: &["build", "smoke-tests"],
        code: 4,
        needle: "cannot be used",
    },
];

/// Every path under `root` with its size and content hash, leaving out `skip`.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, (u64, String)> {
    let mut all = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| !e.path().starts_with(skip))
        .flatten()
    {
        let meta = match entry.path().symlink_metadata() {
            Ok(m) => m,
            Err(_) => continue,
        };
        let digest = if meta.is_file() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            format!("{:x}", bytes.len()) + &String::from_utf8_lossy(&bytes[..bytes.len().min(64)])
        } else {
            String::new()
        };
        all.insert(entry.path().to_path_buf(), (meta.len(), digest));
    }
    all
}

fn run_case(case: &Case) -> Result<(), String> {
    let p = TestProject::new();
    (case.setup)(&p);
    let watched = p.dir.path().to_path_buf();
    let before = snapshot(&watched, &p.cache);
    let outside_before = snapshot(Path::new("/tmp/evil"), Path::new("/nonexistent"));
    let mut child = p
        .command(case.args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("hung: still running after 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    if stderr.contains("panicked") {
        return Err(format!("panicked:\n{stderr}"));
    }
    if code != case.code {
        return Err(format!("exit {code}, expected {}:\n{stderr}", case.code));
    }
    if !stderr.contains(case.needle) {
        return Err(format!("the message lacks {:?}:\n{stderr}", case.needle));
    }
    let after = snapshot(&watched, &p.cache);
    let changed: Vec<_> = after
        .iter()
        .filter(|(path, v)| before.get(*path) != Some(v))
        .map(|(path, _)| path.display().to_string())
        .chain(
            before
                .keys()
                .filter(|k| !after.contains_key(*k))
                .map(|k| format!("{} (removed)", k.display())),
        )
        .collect();
    if !changed.is_empty() {
        return Err(format!("wrote outside the cache: {changed:?}"));
    }
    if snapshot(Path::new("/tmp/evil"), Path::new("/nonexistent")) != outside_before {
        return Err("wrote /tmp/evil".into());
    }
    Ok(())
}

#[test]
fn hostile_inputs_get_clear_errors_and_the_promised_exit_codes() {
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|case| run_case(case).err().map(|e| format!("[{}] {e}", case.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n\n")
    );
}
