//! The store under stress: builds killed with SIGKILL at many moments, and many vmbuild
//! processes building the same and overlapping recipes at once. Counted through the
//! programs vmbuild runs (a logging mke2fs, an HTTP server's access log) and the store's
//! own files, never through timing.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestProject;

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Folders that look like entries (`<64 hex>-name`) but lack a manifest: half entries.
fn half_entries(cache: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cache)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    name.len() > 65
                        && name[..64].bytes().all(|b| b.is_ascii_hexdigit())
                        && !p.join("manifest.json").exists()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Paths of the published outputs of each requested recipe, from `build --json`.
fn built_paths(p: &TestProject, args: &[&str]) -> Vec<PathBuf> {
    let run = p.run(args).expect(0);
    run.json_lines()
        .iter()
        .map(|l| PathBuf::from(l["path"].as_str().unwrap()))
        .collect()
}

/// A tiny deterministic generator: the kill moments are random but reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn sigkill_at_fifty_moments_never_leaves_a_half_entry_or_a_wrong_output() {
    let p = TestProject::new();
    // A root with a few MB of incompressible data and the smoke bundle: long enough to
    // be caught in every phase (keying, unpacking, packing, hashing, publishing).
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    p.write("files/big.bin", "");
    std::fs::write(p.path("files/big.bin"), data).unwrap();
    p.write(
        "recipes/big.toml",
        "kind = \"rootfs\"\ninclude = [\"base-files\"]\n[files]\n\"/big.bin\" = \"../files/big.bin\"\n",
    );
    let args = ["build", "--json", "big", "smoke-tests"];
    let started = Instant::now();
    let reference: Vec<String> = built_paths(&p, &args)
        .iter()
        .map(|dir| {
            let file = ["rootfs.cpio.gz", "bundle.cpio.gz"]
                .iter()
                .map(|f| dir.join(f))
                .find(|f| f.exists())
                .unwrap();
            sha256sum(&file)
        })
        .collect();
    // The first build fetched busybox too; a forced rebuild is the span to aim into.
    let forced = Instant::now();
    p.run(&["build", "-ff", "big", "smoke-tests"]).expect(0);
    let span = forced.elapsed().max(Duration::from_millis(50));
    eprintln!(
        "first build {:?}, forced rebuild {span:?}",
        started.elapsed()
    );

    let mut rng = Lcg(0x0076_6d62_7569_6c64);
    for round in 0..50 {
        // Even rounds replace existing entries (-ff), odd rounds build into a store
        // whose entries were deleted.
        if round % 2 == 1 {
            for dir in built_paths(&p, &args) {
                std::fs::remove_dir_all(dir).unwrap();
            }
        }
        let mut child = p
            .command(&["build", "-ff", "big", "smoke-tests"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = Duration::from_micros(rng.next() % (span.as_micros() as u64 * 6 / 5 + 1));
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        assert!(
            half_entries(&p.cache).is_empty(),
            "round {round} (killed after {delay:?}): half entries {:?}",
            half_entries(&p.cache)
        );
        let verify = p.run(&["verify"]);
        assert_eq!(verify.code, 0, "round {round}: {}", verify.stdout);
        let hashes: Vec<String> = built_paths(&p, &args)
            .iter()
            .map(|dir| {
                let file = ["rootfs.cpio.gz", "bundle.cpio.gz"]
                    .iter()
                    .map(|f| dir.join(f))
                    .find(|f| f.exists())
                    .unwrap();
                sha256sum(&file)
            })
            .collect();
        assert_eq!(hashes, reference, "round {round} (killed after {delay:?})");
    }
}

/// A folder holding an `mke2fs` that logs each run, then runs the real one.
fn counting_mke2fs() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let real = common::which("mke2fs")
        .or_else(|| Some(PathBuf::from("/sbin/mke2fs")).filter(|p| p.exists()))
        .expect("mke2fs is installed (apt-get install e2fsprogs)");
    let log = dir.path().join("mke2fs.log");
    let wrapper = dir.path().join("mke2fs");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$1\" in -V) ;; *) echo \"$*\" >> '{}' ;; esac\nexec '{}' \"$@\"\n",
            log.display(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, log)
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

/// Serves `dir` with Python's http.server, its access log going to `log`.
fn http_server(dir: &Path, log: &Path) -> (std::process::Child, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("python3 is installed");
    let mut child = child;
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (child, port);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("http.server did not start");
}

fn no_lock_held_and_tmp_empty(cache: &Path) {
    for lock in std::fs::read_dir(cache.join("locks")).unwrap().flatten() {
        let file = std::fs::File::open(lock.path()).unwrap();
        // SAFETY: flock on a descriptor we own.
        let free = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        assert!(free, "{} is still held", lock.path().display());
    }
    let left: Vec<_> = std::fs::read_dir(cache.join("tmp"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "left in tmp: {left:?}");
}

#[test]
fn many_processes_build_each_entry_once() {
    let p = TestProject::new();
    let (wrapper_dir, mke2fs_log) = counting_mke2fs();
    let served = tempfile::tempdir().unwrap();
    std::fs::write(served.path().join("bzImage"), b"not really a kernel").unwrap();
    let access_log = served.path().join("access.log");
    let (mut server, port) = http_server(served.path(), &access_log);
    let sha = sha256sum(&served.path().join("bzImage"));
    p.write(
        "recipes/shared-kernel.toml",
        &format!(
            "kind = \"kernel\"\n[prebuilt]\nurl = \"http://127.0.0.1:{port}/bzImage\"\nsha256 = \"{sha}\"\n"
        ),
    );
    for i in 1..=4 {
        p.write(&format!("files/f{i}"), &format!("image {i}\n"));
        p.write(
            &format!("recipes/image{i}.toml"),
            &format!(
                "kind = \"rootfs\"\nbase = \"none\"\nformat = \"ext4\"\nsize = \"16M\"\n\
                 kernel_modules = \"shared-kernel\"\n[files]\n\"/f\" = \"../files/f{i}\"\n"
            ),
        );
    }
    let spawn = |args: &[&str]| {
        let path = format!(
            "{}:{}",
            wrapper_dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        p.command(args)
            .env("PATH", path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };

    // Four processes, one recipe: one mke2fs, one kernel download, one path.
    let racers: Vec<_> = (0..4)
        .map(|_| spawn(&["build", "--json", "image1"]))
        .collect();
    let outs: Vec<_> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut paths = Vec::new();
    for out in &outs {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        paths.push(line["path"].as_str().unwrap().to_string());
    }
    paths.dedup();
    assert_eq!(paths.len(), 1, "{paths:?}");
    assert_eq!(lines(&mke2fs_log), 1, "image1 was made more than once");
    no_lock_held_and_tmp_empty(&p.cache);

    // Four processes, four recipes sharing the kernel: four images, the kernel once.
    let racers: Vec<_> = (1..=4)
        .map(|i| spawn(&["build", "--json", &format!("image{i}")]))
        .collect();
    for child in racers {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(lines(&mke2fs_log), 4, "each of the three new images once");
    let _ = server.kill();
    let _ = server.wait();
    let downloads = std::fs::read_to_string(&access_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("GET /bzImage"))
        .count();
    assert_eq!(downloads, 1, "the shared kernel was fetched more than once");
    assert_eq!(p.entries("shared-kernel").len(), 1);
    let run = p.run(&["verify"]).expect(0);
    assert!(
        run.stdout.contains("5 entries checked, 0 corrupt"),
        "{}",
        run.stdout
    );
    no_lock_held_and_tmp_empty(&p.cache);
}
