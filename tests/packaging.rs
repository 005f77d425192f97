//! What vmbuild ships besides the binary: shell completions and manual pages generated
//! from its command line, and flake.nix.

mod common;

use common::TestProject;

#[test]
fn bash_completes_subcommands_and_the_man_page_renders() {
    let p = TestProject::new();
    let script = p.run(&["completions", "bash"]).expect(0).stdout;
    let file = p.path("vmbuild.bash");
    std::fs::write(&file, script).unwrap();
    // Loaded into a real bash, it completes `vmbuild te` to `test` and `vmbuild test --ju`
    // to `--junit`.
    let complete = |words: &str| -> String {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "source '{}' && COMP_WORDS=({words}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) \
                 && _vmbuild vmbuild \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\" \
                 && echo \"${{COMPREPLY[@]}}\"",
                file.display()
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(complete("vmbuild te"), "test");
    assert_eq!(complete("vmbuild test --ju"), "--junit");
    let shells = p.run(&["completions", "tcsh"]).expect(2);
    assert!(shells.stderr.contains("bash"), "{}", shells.stderr);

    let page = p.run(&["man"]).expect(0).stdout;
    assert!(page.contains(".TH vmbuild 1"), "{page}");
    for sub in ["build", "test", "completions"] {
        assert!(
            page.contains(&format!("vmbuild\\-{sub}(1)")),
            "{sub}: {page}"
        );
    }
    let dir = p.path("man1");
    p.run(&["man", "--dir", dir.to_str().unwrap()]).expect(0);
    let test_page = std::fs::read_to_string(dir.join("vmbuild-test.1")).unwrap();
    assert!(test_page.contains("\\-\\-junit"), "{test_page}");
    assert!(test_page.contains("Examples:"), "{test_page}");
}

#[test]
fn flake_nix_parses_and_names_the_lock_file_and_the_dev_tools() {
    let Some(nix) = common::which("nix-instantiate") else {
        common::skip("nix-instantiate is not installed (apt-get install nix-bin)");
        return;
    };
    let flake = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("flake.nix");
    let out = std::process::Command::new(nix)
        .arg("--parse")
        .arg(&flake)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flake.nix does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The parsed expression: the package is built from the Cargo.lock that is here, and
    // the dev shell has what the README's commands install.
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(parsed.contains("buildRustPackage"), "{parsed}");
    let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    assert!(
        parsed.contains(&lock.display().to_string()) && lock.is_file(),
        "the package is not built from {}: {parsed}",
        lock.display()
    );
    for tool in [
        "qemu",
        "mmdebstrap",
        "e2fsprogs",
        "busybox",
        "zstd",
        "flex",
        "bison",
    ] {
        assert!(parsed.contains(tool), "the dev shell lacks {tool}");
    }
}
