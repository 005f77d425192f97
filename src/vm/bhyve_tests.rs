use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::vm::{Disk, ImageFormat, RootDisk, RootLayer};

fn kernel_launch() -> Launch {
    Launch {
        boot: Boot::Kernel {
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0 rdinit=/vmbuild/init".into(),
        },
        machine: "q35".into(),
        memory_mb: 512,
        cpus: 1,
        root_disk: None,
        disks: vec![Disk {
            path: "/w/d.img".into(),
            serial: "scratch".into(),
            read_only: false,
        }],
        net: Net::None,
        wiring: Wiring::Agent {
            socket: "/w/agent.sock".into(),
            shell: None,
        },
        control: None,
        incoming: None,
    }
}

fn script_of(launch: &Launch) -> String {
    let b = Bhyve::with_pid(42);
    let names = b.names();
    b.script(launch, &names)
        .expect("a launch bhyve runs")
        .into_string()
        .unwrap()
}

#[test]
fn a_kernel_boot_is_grub_bhyve_then_bhyve_with_the_agent_bridged() {
    assert_eq!(
        script_of(&kernel_launch()),
        "vm='vmbuild-42-0'\n\
         dir=$(mktemp -d \"${TMPDIR:-/tmp}/vmbuild-bhyve.XXXXXX\") || exit 1\n\
         exec 3<&0\n\
         bridges=\n\
         cleanup() { bhyvectl --destroy --vm=\"$vm\" >/dev/null 2>&1; [ -z \"$bridges\" ] || kill $bridges 2>/dev/null; rm -rf \"$dir\"; }\n\
         trap 'cleanup; exit 143' TERM\n\
         trap 'cleanup; exit 130' INT\n\
         trap 'cleanup; exit 129' HUP\n\
         for stale in /dev/vmm/vmbuild-*; do [ -e \"$stale\" ] || continue; name=${stale##*/}; pid=${name#vmbuild-}; pid=${pid%%-*}; kill -0 \"$pid\" 2>/dev/null || bhyvectl --destroy --vm=\"$name\" >/dev/null 2>&1; done\n\
         socat '/dev/nmdm84000B,raw,echo=0' UNIX-CONNECT:'/w/agent.sock' & bridges=\"$bridges $!\"\n\
         printf '%s' 'linux (host)/s/bzImage console=ttyS0 rdinit=/vmbuild/init\n\
         initrd (host)/w/initrd\n\
         boot\n\
         ' > \"$dir/grub.cfg\"\n\
         : > \"$dir/device.map\"\n\
         grub-bhyve -m \"$dir/device.map\" -r host -d \"$dir\" -M 512M \"$vm\" </dev/null || { cleanup; exit 1; }\n\
         bhyve -c 1 -m 512M -H -A -P -s 0:0,hostbridge -s 1:0,lpc -l com1,stdio -l 'com2,/dev/nmdm84000A' -s '2:0,virtio-blk,/w/d.img,ser=scratch' \"$vm\" <&3 3<&- &\n\
         wait $!\n\
         status=$?\n\
         cleanup\n\
         exit $status\n"
    );
}

#[test]
fn keep_alive_gets_com3_bridged_to_the_shell_socket() {
    let launch = Launch {
        wiring: Wiring::Agent {
            socket: "/w/agent.sock".into(),
            shell: Some("/w/shell.sock".into()),
        },
        ..kernel_launch()
    };
    let script = script_of(&launch);
    assert!(
        script.contains("-l com1,stdio -l 'com2,/dev/nmdm84000A' -l 'com3,/dev/nmdm84001A' "),
        "{script}"
    );
    assert!(
        script.contains("socat UNIX-LISTEN:'/w/shell.sock',fork '/dev/nmdm84001B,raw,echo=0' &"),
        "{script}"
    );
}

#[test]
fn each_vm_has_its_own_name_and_nullmodem_units() {
    let b = Bhyve::with_pid(7);
    let (first, second) = (b.names(), b.names());
    assert_eq!(first.vm, "vmbuild-7-0");
    assert_eq!(second.vm, "vmbuild-7-1");
    let units = [
        first.agent_unit,
        first.shell_unit,
        second.agent_unit,
        second.shell_unit,
    ];
    let mut unique = units.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "{units:?}");
    // Another vmbuild's VMs never share them.
    let other = Bhyve::with_pid(8).names();
    assert!(!units.contains(&other.agent_unit) && !units.contains(&other.shell_unit));
}

#[test]
fn what_bhyve_cannot_give_is_refused() {
    let b = Bhyve::with_pid(1);
    let networked = Launch {
        net: Net::User,
        ..kernel_launch()
    };
    let refused = b.command(&networked).expect_err("no user-mode network");
    assert!(refused.to_string().contains("qemu backend"), "{refused}");
    let disk_root = Launch {
        root_disk: Some(RootDisk {
            image: "/store/rootfs.ext4".into(),
            layer: RootLayer::Throwaway,
            format: ImageFormat::Raw,
        }),
        ..kernel_launch()
    };
    let refused = b.command(&disk_root).expect_err("no copy-on-write root");
    assert!(refused.to_string().contains("qemu backend"), "{refused}");
    let firmware = Launch {
        boot: Boot::Firmware(Firmware {
            code: "/fw/BHYVE_UEFI.fd".into(),
            vars: None,
        }),
        ..kernel_launch()
    };
    assert!(b.command(&firmware).is_err(), "a disk image's boot");
    assert!(b.firmware().unwrap_err().contains("disk images"));
    // What grub, bhyve's options or socat would split or read otherwise.
    for path in ["/w/a b.img", "/w/a,b.img", "/w/it's.img", "/w/$x.img"] {
        let odd = Launch {
            disks: vec![Disk {
                path: path.into(),
                serial: "scratch".into(),
                read_only: false,
            }],
            ..kernel_launch()
        };
        let refused = b.command(&odd).expect_err(path).to_string();
        assert!(refused.contains(path), "{refused}");
    }
    let cmdline = Launch {
        boot: Boot::Kernel {
            kernel: "/s/bzImage".into(),
            initrd: "/w/initrd".into(),
            cmdline: "console=ttyS0 init=\"$(reboot)\"".into(),
        },
        ..kernel_launch()
    };
    assert!(b.command(&cmdline).is_err());
}

#[test]
fn on_a_host_without_bhyve_the_backend_says_what_is_missing() {
    if crate::process::which("bhyve").is_some() {
        // A FreeBSD host: nothing missing to say (CI's hosts are Linux).
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true, yet this test would be skipped: the host has bhyve"
        );
        eprintln!("skipping: this host has bhyve");
        return;
    }
    let why = Bhyve::on_this_host().err().expect("no bhyve on this host");
    assert!(why.contains("bhyve (the base system)"), "{why}");
    assert!(why.contains("backend = \"qemu\""), "{why}");
}

/// A folder of stand-ins for bhyve's programs, each logging its arguments (grub-bhyve
/// also the grub.cfg it was given), and bhyve running `bhyve_does`.
fn stand_ins(bhyve_does: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let programs = [
        ("bhyvectl", String::new()),
        ("socat", String::new()),
        (
            "grub-bhyve",
            "while [ $# -gt 0 ]; do [ \"$1\" = -d ] && cat \"$2/grub.cfg\" >> \"$LOG\"; shift; done\n"
                .to_string(),
        ),
        ("bhyve", format!("{bhyve_does}\n")),
    ];
    for (name, body) in programs {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\necho \"{name} $*\" >> \"$LOG\"\n{body}"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    (dir, log)
}

fn run_with(dir: &Path, log: &Path) -> Command {
    let mut cmd = Bhyve::with_pid(3).command(&kernel_launch()).unwrap();
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path).env("LOG", log);
    cmd
}

#[test]
fn the_script_loads_runs_and_destroys_the_vm_and_passes_on_its_exit_code() {
    let (dir, log) = stand_ins("echo 'console: Linux version'; exit 3");
    let out = run_with(dir.path(), &log).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "bhyve's own exit code");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "console: Linux version\n"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // socat runs in the background: its line may come before or after grub-bhyve's.
    assert!(
        lines.contains(&"socat /dev/nmdm6000B,raw,echo=0 UNIX-CONNECT:/w/agent.sock"),
        "{log}"
    );
    assert!(
        log.contains("linux (host)/s/bzImage console=ttyS0 rdinit=/vmbuild/init\ninitrd (host)/w/initrd\nboot\n"),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("bhyve -c 1 -m 512M")),
        "{log}"
    );
    assert_eq!(
        lines.last(),
        Some(&"bhyvectl --destroy --vm=vmbuild-3-0"),
        "{log}"
    );
}

#[test]
fn a_signal_destroys_the_vm_at_once() {
    let (dir, log) = stand_ins("exec sleep 30");
    let mut guard =
        crate::process::GroupGuard::spawn(&mut run_with(dir.path(), &log), Duration::from_secs(5))
            .unwrap();
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("bhyve -c")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "bhyve never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = guard.child().id() as i32;
    // SAFETY: a signal to the process group this test just spawned.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let status = guard
        .wait_timeout(Duration::from_secs(5))
        .expect("ended by the signal");
    assert_eq!(status.code(), Some(143));
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.lines().last(),
        Some("bhyvectl --destroy --vm=vmbuild-3-0"),
        "destroyed on the signal: {log}"
    );
}

#[test]
fn the_terminal_reaches_bhyve() {
    // `vmbuild shell`: bhyve's console is the user's terminal, input included.
    let (dir, log) = stand_ins("cat");
    let mut cmd = run_with(dir.path(), &log);
    let out = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"typed\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "typed\n");
}
