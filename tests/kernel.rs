//! Kernels from source: the shipped tiny-kernel (tinyconfig + fragments, from Debian's
//! linux-source-6.1) is built once into the shared store and boots the smoke tests; a
//! fragment option that cannot be set fails the build naming it; keys change exactly
//! where a rebuild is needed.

mod common;

use common::TestProject;

#[test]
fn tiny_kernel_from_source_boots_the_smoke_tests() {
    let p = TestProject::shared();
    let run = p.run(&["test", "tiny-smoke"]).expect(0);
    assert!(
        run.stdout.contains("PASS    tiny-smoke/hello"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("SKIP    tiny-smoke/sysrq (0.00s): kernel lacks CONFIG_MAGIC_SYSRQ"),
        "{}",
        run.stdout
    );
    let kernel = p.run(&["build", "tiny-kernel"]).expect(0).stdout;
    let entry = std::path::Path::new(kernel.trim());
    for file in ["bzImage", "config", "System.map", "vmlinux", "build.log"] {
        assert!(
            entry.join(file).is_file(),
            "{file} missing from the kernel entry"
        );
    }
    let config = std::fs::read_to_string(entry.join("config")).unwrap();
    assert!(config.contains("CONFIG_SERIAL_8250_CONSOLE=y"));
}

#[test]
fn a_fragment_option_that_cannot_be_set_fails_naming_it() {
    let p = TestProject::shared();
    // EXT4 depends on BLOCK, which tinyconfig leaves out.
    p.write("modules/kconfig/wants-ext4.config", "CONFIG_EXT4_FS=y\n");
    p.write(
        "recipes/bad-kernel.toml",
        "kind = \"kernel\"\n[source]\ndeb = \"linux-source-6.1\"\n[config]\nbase = \"tinyconfig\"\nfragments = [\"../modules/kconfig/wants-ext4.config\"]\n",
    );
    let run = p.run(&["build", "bad-kernel"]).expect(3);
    assert!(
        run.stderr
            .contains("CONFIG_EXT4_FS: asked y in wants-ext4.config, got n"),
        "{}",
        run.stderr
    );
    assert!(p.entries("bad-kernel").is_empty());
}

fn key_of(p: &TestProject, recipe: &str) -> String {
    let run = p.run(&["explain", recipe]).expect(0);
    run.stdout
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn a_fragment_change_rekeys_the_kernel_and_its_tests_but_not_the_rootfs() {
    let p = TestProject::new();
    let names = ["tiny-kernel", "busybox-rootfs", "smoke-tests", "tiny-smoke"];
    let before: Vec<String> = names.iter().map(|n| key_of(&p, n)).collect();

    let fragment = p.path("modules/kconfig/initramfs.config");
    let mut text = std::fs::read_to_string(&fragment).unwrap();
    text.push_str("CONFIG_RD_XZ=y\n");
    std::fs::write(&fragment, text).unwrap();
    let after: Vec<String> = names.iter().map(|n| key_of(&p, n)).collect();
    assert_ne!(before[0], after[0], "tiny-kernel");
    assert_eq!(before[1], after[1], "busybox-rootfs");
    assert_eq!(before[2], after[2], "smoke-tests");
    assert_ne!(before[3], after[3], "tiny-smoke");

    // A changed test script rekeys the bundle and the test, never the kernel.
    p.write_exec("tests/smoke/hello", "#!/bin/sh\necho changed\n");
    let edited: Vec<String> = names.iter().map(|n| key_of(&p, n)).collect();
    assert_eq!(after[0], edited[0], "tiny-kernel");
    assert_ne!(after[2], edited[2], "smoke-tests");
    assert_ne!(after[3], edited[3], "tiny-smoke");
}
