//! The kernel developer's loop on a local tree (`[source] path`): a copy of Debian's
//! linux-source-6.1 tree (hard links to the shared store's unpacked source), built once
//! with tinyconfig, then edited the way rsync -a, cp -p or tar x edit: new content, old
//! mtime. The next `vmbuild test` must boot a kernel built from the new content.

mod common;

use std::path::{Path, PathBuf};

use common::TestProject;

const MAIN_C: &str = "init/main.c";
const BANNER: &str = "\tpr_notice(\"%s\", linux_banner);\n";

/// A private copy of the unpacked linux-source tree: hard links, so it costs no space;
/// files the test edits are replaced, never written through a link.
fn kernel_tree(p: &TestProject) -> PathBuf {
    // Unpacks the source into the shared store (and builds tiny-kernel) if no test did yet.
    p.run(&["build", "tiny-kernel"]).expect(0);
    let source_entry = std::fs::read_dir(&p.cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|e| e.to_string_lossy().ends_with("-src-linux-source-6.1"))
        .expect("the unpacked linux-source entry");
    let tree = p.path("linux");
    let ok = std::process::Command::new("cp")
        .arg("-al")
        .arg(source_entry.join("linux-source-6.1"))
        .arg(&tree)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -al of the kernel tree");
    tree
}

/// Replaces init/main.c with one that prints `marker` at boot, giving it `mtime`.
fn set_marker(tree: &Path, original: &str, marker: &str, mtime: std::time::SystemTime) {
    assert!(original.contains(BANNER), "init/main.c prints the banner");
    let text = original.replacen(
        BANNER,
        &format!("{BANNER}\tpr_warn(\"vmbuild-marker: {marker}\\n\");\n"),
        1,
    );
    let path = tree.join(MAIN_C);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Asserts that `text` holds every one of `wanted`, showing it when not.
fn says(text: &str, wanted: &[&str]) {
    for want in wanted {
        assert!(text.contains(want), "no `{want}` in:\n{text}");
    }
}

fn console_of_last_run(p: &TestProject, recipe: &str) -> String {
    let run = p.run(&["results", "--json", recipe]).expect(0);
    let results: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let path = results["path"].as_str().expect("results name their entry");
    std::fs::read_to_string(Path::new(path).join("console.log")).unwrap()
}

#[test]
fn a_content_change_with_an_old_mtime_is_rebuilt_explained_and_booted() {
    let p = TestProject::shared();
    let tree = kernel_tree(&p);
    let original = std::fs::read_to_string(tree.join(MAIN_C)).unwrap();
    let long_ago =
        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    // Unique per run: the shared store outlives test runs, and these kernels must be new.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (one, two) = (format!("one-{nonce}"), format!("two-{nonce}"));
    set_marker(&tree, &original, &one, std::time::SystemTime::now());
    p.write(
        "recipes/my-kernel.toml",
        &format!(
            "kind = \"kernel\"\n[source]\npath = \"{}\"\n[config]\nbase = \"tinyconfig\"\nfragments = [\"../modules/kconfig/serial-console.config\", \"../modules/kconfig/initramfs.config\"]\n",
            tree.display()
        ),
    );
    p.write(
        "recipes/my-smoke.toml",
        "kind = \"test\"\nkernel = \"my-kernel\"\nrootfs = \"busybox-rootfs\"\nbundles = [\"smoke-tests\"]\ntimeout = \"60s\"\n",
    );
    let first = p.run(&["test", "my-smoke"]).expect(0);
    assert!(
        first.stdout.contains("PASS    my-smoke/hello"),
        "{}",
        first.stdout
    );
    assert!(console_of_last_run(&p, "my-smoke").contains(&format!("vmbuild-marker: {one}")));

    // New content, an mtime older than every object in the build folder.
    set_marker(&tree, &original, &two, long_ago);
    let explain = p.run(&["explain", "my-kernel"]).expect(0);
    says(
        &explain.stdout,
        &["status: not in the store", "  M init/main.c"],
    );

    let second = p.run(&["-v", "test", "my-smoke"]).expect(0);
    assert!(
        second
            .stderr
            .contains("touched so make rebuilds them: init/main.c"),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("reusing .config"),
        "a C edit keeps the .config: {}",
        second.stderr
    );
    let console = console_of_last_run(&p, "my-smoke");
    assert!(
        console.contains(&format!("vmbuild-marker: {two}")),
        "a stale kernel booted:\n{console}"
    );
    assert!(!console.contains(&format!("vmbuild-marker: {one}")));

    // After the rebuild, explain still says why it happened.
    let explain = p.run(&["explain", "my-kernel"]).expect(0);
    says(
        &explain.stdout,
        &["status: in the store", "built because:", "  M init/main.c"],
    );

    // The same inputs under another recipe name are a hit, not a rebuild.
    let copy = std::fs::read_to_string(p.path("recipes/my-kernel.toml")).unwrap();
    p.write("recipes/same-kernel.toml", &copy);
    let same = p.run(&["build", "--json", "same-kernel"]).expect(0);
    assert_eq!(same.json_lines()[0]["cached"], true, "{}", same.stderr);

    // -ff starts from an empty build folder (this recipe then fails fast: no host compiler).
    let built = p.run(&["build", "--json", "my-kernel"]).expect(0);
    let entry = PathBuf::from(built.json_lines()[0]["path"].as_str().unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.join("manifest.json")).unwrap()).unwrap();
    let kbuild = PathBuf::from(manifest["details"]["build_dir"].as_str().unwrap());
    std::fs::write(kbuild.join("sentinel"), "left by the test").unwrap();
    p.write(
        "recipes/broken-kernel.toml",
        &format!(
            "kind = \"kernel\"\nmake_flags = [\"HOSTCC=/bin/false\"]\n[source]\npath = \"{}\"\n[config]\nbase = \"tinyconfig\"\n",
            tree.display()
        ),
    );
    let broken = p.run(&["build", "-ff", "broken-kernel"]).expect(3);
    assert!(
        broken
            .stderr
            .contains("building from an empty build folder: asked for (-ff)"),
        "{}",
        broken.stderr
    );
    assert!(
        !kbuild.join("sentinel").exists(),
        "-ff left the build folder as it was"
    );
    // The failed build's message names a log that is still there.
    let log = common::named_log(&broken.stderr);
    assert!(log.is_file(), "{} is gone", log.display());
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("tinyconfig"));
}

#[test]
fn a_git_checkout_whose_ignore_rules_hide_the_tree_is_refused_naming_the_rule() {
    let p = TestProject::new();
    let tree = p.path("linux");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join(".gitignore"), "/*\n").unwrap();
    std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
    std::fs::write(tree.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
    common::git(&tree, &["init", "-q"]);
    p.write(
        "recipes/my-kernel.toml",
        "kind = \"kernel\"\n[source]\npath = \"../linux\"\n[config]\nbase = \"tinyconfig\"\n",
    );
    let run = p.run(&["build", "my-kernel"]).expect(2);
    assert!(
        run.stderr.contains("no top-level `Makefile`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(".gitignore:1:/*"), "{}", run.stderr);
}

#[test]
fn symlinks_out_of_the_tree_and_nested_repositories_are_refused() {
    let p = TestProject::new();
    let tree = p.path("linux");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("Makefile"), "all:\n").unwrap();
    std::fs::write(tree.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
    p.write(
        "recipes/my-kernel.toml",
        "kind = \"kernel\"\n[source]\npath = \"../linux\"\n[config]\nbase = \"tinyconfig\"\n",
    );
    std::os::unix::fs::symlink("../../etc", tree.join("escape")).unwrap();
    let run = p.run(&["explain", "my-kernel"]).expect(2);
    assert!(run.stderr.contains("outside"), "{}", run.stderr);
    std::fs::remove_file(tree.join("escape")).unwrap();
    std::os::unix::fs::symlink("Makefile", tree.join("inside")).unwrap();
    p.run(&["explain", "my-kernel"]).expect(0);

    let git = common::git;
    git(&tree, &["init", "-q"]);
    let nested = tree.join("drivers/extra");
    std::fs::create_dir_all(&nested).unwrap();
    git(&nested, &["init", "-q"]);
    std::fs::write(nested.join("extra.c"), "int x;\n").unwrap();
    let run = p.run(&["explain", "my-kernel"]).expect(2);
    assert!(run.stderr.contains("nested repository"), "{}", run.stderr);
}
