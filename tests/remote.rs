//! The remote cache against a real nginx (WebDAV PUT, from Debian): builds, test results
//! and per-test results shared between empty stores; shards joined from the server; and
//! everything a bad server can do (corrupt blobs, bad signatures, dying mid-pull) costing
//! a rebuild, never a wrong entry or a failed build.

mod common;

use std::path::Path;
use std::time::Duration;

use common::nginx::Nginx;
use common::suites::{results_of, suite, test};
use common::{boots, counting_qemu, nonce, Run, TestProject};

/// Runs vmbuild on store `cache` with `args` (remote flags among them).
fn run(p: &TestProject, cache: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--cache-dir", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    p.run(&all)
}

/// The `outputs` of the manifest of the only entry named `name` in `cache`.
fn outputs(cache: &Path, name: &str) -> serde_json::Value {
    let entries: Vec<_> = std::fs::read_dir(cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().get(65..) == Some(name))
        .collect();
    assert_eq!(entries.len(), 1, "entries of {name} in {}", cache.display());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entries[0].join("manifest.json")).unwrap()).unwrap();
    manifest["outputs"].clone()
}

fn verify_clean(p: &TestProject, cache: &Path) {
    let v = run(p, cache, &["verify"]).expect(0);
    assert!(v.stdout.contains(" 0 corrupt"), "{}", v.stdout);
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// A CI fleet on one server: shard 1 on a warm store, shard 2 on an empty one (its kernel
/// and root pulled), the merge on a third; a fresh runner then boots nothing, and after
/// one test changes, reruns only that one (which fails: nothing of it is uploaded).
#[test]
fn a_ci_matrix_shares_builds_shards_and_per_test_results() {
    let Some(server) = Nginx::start() else { return };
    let url = server.url();
    let remote = ["--remote-cache", url.as_str()];
    let p = TestProject::shared();
    let tag = nonce();
    let scripts: Vec<(String, String)> = ["alpha", "beta", "gamma", "delta"]
        .iter()
        .map(|t| (t.to_string(), format!("#!/bin/sh\necho {t}\n# {tag}\n")))
        .collect();
    let pairs: Vec<(&str, &str)> = scripts
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    suite(&p, "fleet", &pairs, "vms = 1");
    let warm = p.cache.clone();
    let stores = tempfile::tempdir().unwrap();
    let store = |name: &str| stores.path().join(name);

    // Shard 1 where the kernel is built; then everything the recipe needs goes up.
    let one = run(
        &p,
        &warm,
        &[&remote[..], &["test", "fleet", "--shard", "1/2"]].concat(),
    );
    let one = one.expect(0);
    let push = run(&p, &warm, &[&remote[..], &["push", "fleet"]].concat()).expect(0);
    assert!(
        push.stderr.contains("0 damaged, 0 failed"),
        "{}",
        push.stderr
    );
    // Whether the shard's run built the kernel and root (and so uploaded them) or
    // found them in the store (and push sent them) depends on what ran before; either
    // way, push counts them as on the server: "N entries pushed, M already there, ...".
    let summary = push
        .stderr
        .lines()
        .find(|l| l.contains(" entries pushed, "))
        .expect("push's summary");
    let counts: Vec<usize> = summary
        .split(", ")
        .take(2)
        .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(counts[0] + counts[1] >= 2, "{}", push.stderr);
    let kernel = run(&p, &warm, &["build", "--json", "debian-kernel"]).expect(0);
    let kernel_key = kernel.json_lines()[0]["key"].as_str().unwrap().to_string();
    assert!(
        server.has(&format!("ac/{kernel_key}")),
        "the kernel was pushed"
    );

    // Shard 2 on an empty store: kernel, root and bundle come from the server.
    let two = run(
        &p,
        &store("b"),
        &[&remote[..], &["test", "fleet", "--shard", "2/2"]].concat(),
    );
    let two = two.expect(0);
    assert!(!two.stderr.contains("(kernel): building"), "{}", two.stderr);
    assert!(!two.stderr.contains("(rootfs): building"), "{}", two.stderr);
    assert!(two.stderr.contains("entries pulled"), "{}", two.stderr);
    for name in ["debian-kernel", "busybox-rootfs"] {
        assert_eq!(outputs(&store("b"), name), outputs(&warm, name), "{name}");
    }
    verify_clean(&p, &store("b"));
    let ran = |r: &Run| r.stdout.lines().filter(|l| l.contains("PASS")).count();
    assert_eq!(ran(&one) + ran(&two), 4, "{}\n{}", one.stdout, two.stdout);
    // Its copy of Debian's kernel (390 MiB) is not needed again: CI disks are small.
    std::fs::remove_dir_all(store("b")).unwrap();

    // The merge on a third empty store finds both parts on the server.
    let merge = run(
        &p,
        &store("m"),
        &[
            &remote[..],
            &["results", "--merge", "fleet", "--shards", "2"],
        ]
        .concat(),
    );
    let merge = merge.expect(0);
    assert!(
        merge.stdout.contains("4 passed, 0 failed"),
        "{}",
        merge.stdout
    );

    // A fresh runner: the joined results are a hit, no VM starts.
    let (qemu, log) = counting_qemu();
    let (f_store, g_store) = (store("f"), store("g"));
    let fresh = [
        "--cache-dir",
        f_store.to_str().unwrap(),
        "--remote-cache",
        &url,
        "test",
        "fleet",
    ];
    let f = p.run_with_path(qemu.path(), &fresh).expect(0);
    assert_eq!(boots(&log), 0, "{}", f.stderr);
    assert_eq!(count(&f.stdout, "[cached]"), 4, "{}", f.stdout);
    assert!(f.stdout.contains("4 passed, 0 failed"), "{}", f.stdout);

    // One test changes (and now fails): a fresh runner runs it alone; the others passed
    // on some runner already.
    p.write_exec(
        "tests/fleet/beta",
        &format!("#!/bin/sh\necho broken\nexit 3\n# {tag}\n"),
    );
    let changed = [
        "--cache-dir",
        g_store.to_str().unwrap(),
        "--remote-cache",
        &url,
        "test",
        "fleet",
        "--json",
    ];
    let g = p.run_with_path(qemu.path(), &changed).expect(1);
    assert_eq!(boots(&log), 1, "one VM for the changed test: {}", g.stderr);
    let results = results_of(&g);
    for name in ["alpha", "gamma", "delta"] {
        assert_eq!(test(&results, name)["status"], "pass");
        assert_eq!(test(&results, name)["cached"], true, "{name}");
        let key = test(&results, name)["key"].as_str().unwrap();
        assert!(
            server.has(&format!("ac/{key}")),
            "{name}'s result is shared"
        );
    }
    let beta = test(&results, "beta");
    assert_eq!(beta["status"], "fail");
    let beta_key = beta["key"].as_str().unwrap();
    assert!(
        !server.has(&format!("ac/{beta_key}")),
        "a failed result is never uploaded"
    );
    let line = &g.json_lines()[0];
    if let Some(key) = line["key"].as_str() {
        assert!(
            !server.has(&format!("ac/{key}")),
            "failed results are never uploaded"
        );
    }
}

/// The secret key file and public key `vmbuild keygen NAME` makes in `dir`.
fn keygen(p: &TestProject, dir: &Path, name: &str) -> (String, String) {
    let file = dir.join(format!("{name}.secret"));
    let made = p.run(&["keygen", name, file.to_str().unwrap()]).expect(0);
    (
        file.to_str().unwrap().to_string(),
        made.stdout.trim().to_string(),
    )
}

/// A bundle named `name` whose build writes a file of `mib` MiB from `source` (with
/// `/dev/urandom` the bundle's packing cannot shrink it, and every build differs; with
/// `/dev/zero` every build gives the same bytes) and a test echoing `tag`.
fn bundle(p: &TestProject, name: &str, mib: u32, source: &str, tag: &str) {
    p.write(
        &format!("recipes/{name}.toml"),
        &format!(
            "kind = \"bundle\"\n[build]\ncommand = [\"sh\", \"-c\", \"head -c {} {source} > $VMBUILD_OUT/data; printf '#!/bin/sh\\\\necho {tag}\\\\n' > $VMBUILD_OUT/t; chmod +x $VMBUILD_OUT/t\"]\n",
            u64::from(mib) << 20
        ),
    );
}

#[test]
fn signatures_and_corrupt_blobs_are_checked_and_a_bad_server_never_fails_a_build() {
    let Some(server) = Nginx::start() else { return };
    let url = server.url();
    let p = TestProject::new();
    let tmp = tempfile::tempdir().unwrap();
    let store = |name: &str| tmp.path().join(name);
    let (secret, public) = keygen(&p, tmp.path(), "ci-1");
    let (_, stranger) = keygen(&p, tmp.path(), "ci-2");
    // Another key under the writer's name: its signatures are the writer's name's, and
    // do not match.
    let impostor_dir = tempfile::tempdir().unwrap();
    let (_, impostor) = keygen(&p, impostor_dir.path(), "ci-1");
    let tag = nonce();
    bundle(&p, "signed", 1, "/dev/urandom", &format!("signed {tag}"));
    bundle(&p, "plain", 4, "/dev/zero", &format!("plain {tag}"));
    let remote = |extra: &[&str]| -> Vec<String> {
        let mut args = vec!["--remote-cache".to_string(), url.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let build = |cache: &str, extra: &[&str], recipe: &str| -> Run {
        let mut args = remote(extra);
        args.extend(["build".to_string(), recipe.to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&p, &store(cache), &args).expect(0)
    };

    // Signed by the writer; a reader trusting its key pulls it, byte for byte.
    build("writer", &["--signing-key", &secret], "signed");
    build("writer", &[], "plain");
    let r = build("trusting", &["--trusted-key", &public], "signed");
    assert!(r.stderr.contains("1 entries pulled"), "{}", r.stderr);
    assert!(!r.stderr.contains("building"), "{}", r.stderr);
    assert_eq!(
        outputs(&store("trusting"), "signed"),
        outputs(&store("writer"), "signed")
    );

    // Trusting another key, or none that signed: a miss with a warning, built here.
    let r = build("stranger", &["--trusted-key", &stranger], "signed");
    assert!(
        r.stderr.contains("`ci-1`, which is not trusted"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("building"), "{}", r.stderr);
    let r = build("unsigned", &["--trusted-key", &public], "plain");
    assert!(r.stderr.contains("it is not signed"), "{}", r.stderr);
    assert!(r.stderr.contains("building"), "{}", r.stderr);

    // A signature under the trusted name by another key does not match.
    let r = build("impostor", &["--trusted-key", &impostor], "signed");
    assert!(
        r.stderr
            .contains("a signature by `ci-1` that does not match"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("building"), "{}", r.stderr);

    // A blob overwritten on the server (same size, other bytes): named, refused, rebuilt,
    // and sent again (the bundle's bytes are the same each build).
    let files = outputs(&store("writer"), "plain");
    let (expected, size) = files
        .as_object()
        .unwrap()
        .values()
        .filter(|f| f["type"] == "file")
        .map(|f| {
            (
                f["sha256"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .max_by_key(|(_, size)| *size)
        .unwrap();
    let largest = &server.root().join("cas").join(&expected);
    std::fs::write(largest, vec![b'y'; size as usize]).unwrap();
    let r = build("corrupt", &[], "plain");
    assert!(r.stderr.contains("does not match its hash"), "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("expected sha256 {expected}")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("building"), "{}", r.stderr);
    verify_clean(&p, &store("corrupt"));
    let sum = std::process::Command::new("sha256sum")
        .arg(largest)
        .output()
        .unwrap();
    let actual = String::from_utf8_lossy(&sum.stdout)[..64].to_string();
    assert_eq!(actual, expected, "the corrupt blob was sent again");
    // The rebuilt entry replaced the broken record: the next reader pulls it.
    let r = build("healed", &[], "plain");
    assert!(r.stderr.contains("1 entries pulled"), "{}", r.stderr);
    assert_eq!(
        outputs(&store("healed"), "plain"),
        outputs(&store("corrupt"), "plain")
    );
    for cache in ["trusting", "stranger", "unsigned", "impostor"] {
        verify_clean(&p, &store(cache));
    }

    // --remote read uploads nothing.
    bundle(&p, "read-only", 1, "/dev/urandom", &format!("read {tag}"));
    let r = build("reader", &["--remote", "read"], "read-only");
    assert!(!r.stderr.contains("pushed"), "{}", r.stderr);
    let json = run(&p, &store("reader"), &["build", "--json", "read-only"]).expect(0);
    let key = json.json_lines()[0]["key"].as_str().unwrap().to_string();
    assert!(!server.has(&format!("ac/{key}")));

    // Nobody listening: said once, for all the lookups and uploads, and built here.
    bundle(&p, "offline-a", 1, "/dev/urandom", &format!("a {tag}"));
    bundle(&p, "offline-b", 1, "/dev/urandom", &format!("b {tag}"));
    let mut args = vec!["--remote-cache", "http://127.0.0.1:9/cache", "build"];
    args.extend(["offline-a", "offline-b"]);
    let r = run(&p, &store("offline"), &args).expect(0);
    assert_eq!(count(&r.stderr, "cannot be used"), 1, "{}", r.stderr);
}

/// Waits until a pull into `cache` has written part of the bundle's archive (and not all).
fn wait_for_partial(cache: &Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let staged = std::fs::read_dir(cache.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .filter(|f| f.file_name() == "bundle.cpio.gz")
            .filter_map(|f| f.metadata().ok())
            .map(|m| m.len())
            .any(|len| len > 0 && len < 40 << 20);
        if staged {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no pull started in {}",
            cache.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server that dies while an entry streams in, and a vmbuild killed in the middle of
/// a pull: the build goes on locally, the store stays valid, the next pull completes.
#[test]
fn a_pull_cut_short_leaves_the_store_valid() {
    let Some(mut server) = Nginx::start_limited(Some("4m")) else {
        return;
    };
    let url = server.url();
    let p = TestProject::new();
    let tmp = tempfile::tempdir().unwrap();
    let store = |name: &str| tmp.path().join(name);
    bundle(&p, "big", 40, "/dev/urandom", &format!("big {}", nonce()));
    let with_remote = |cache: &str, args: &[&str]| -> std::process::Command {
        let mut all = vec![
            "--cache-dir".to_string(),
            store(cache).display().to_string(),
        ];
        all.extend(["--remote-cache".to_string(), url.clone()]);
        all.extend(args.iter().map(|s| s.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let mut cmd = p.command(&all);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    run(
        &p,
        &store("writer"),
        &["--remote-cache", &url, "build", "big"],
    )
    .expect(0);

    // kill -9 in the middle of a pull (10 s of it): nothing published, nothing damaged.
    let mut child = with_remote("killed", &["pull", "big"]).spawn().unwrap();
    wait_for_partial(&store("killed"));
    child.kill().unwrap();
    child.wait().unwrap();
    verify_clean(&p, &store("killed"));
    assert!(
        !store("killed")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with("-big")),
        "no entry from a pull cut short"
    );
    let again = Run::from(with_remote("killed", &["pull", "big"]).output().unwrap()).expect(0);
    assert!(
        again.stderr.contains("1 entries pulled"),
        "{}",
        again.stderr
    );
    verify_clean(&p, &store("killed"));

    // The server dies mid-pull: one warning, the bundle is built here.
    let child = with_remote("orphaned", &["build", "big"]).spawn().unwrap();
    wait_for_partial(&store("orphaned"));
    server.kill();
    let r = Run::from(child.wait_with_output().unwrap()).expect(0);
    assert_eq!(count(&r.stderr, "cannot be used"), 1, "{}", r.stderr);
    assert!(r.stderr.contains("building"), "{}", r.stderr);
    verify_clean(&p, &store("orphaned"));
}
