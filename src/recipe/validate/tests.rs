//! The recipe validator's tests: defaults, refusals, and a fuzzer that it never panics.

use super::*;

#[test]
fn unknown_field_gets_a_suggestion() {
    let help =
        unknown_field_help("unknown field `formt`, expected one of `kind`, `format`, `files`");
    assert_eq!(help.as_deref(), Some("did you mean `format`?"));
}

/// A project with every kind of recipe to reference, for the fuzzer below.
pub(in crate::recipe) fn fuzz_project() -> (tempfile::TempDir, Project) {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write(
        "recipes/k.toml",
        "kind = \"kernel\"\n[prebuilt]\npath = \"k.toml\"\n",
    );
    write("recipes/r.toml", "kind = \"rootfs\"\n");
    write("recipes/b.toml", "kind = \"bundle\"\ntests = \"../t\"\n");
    write("t/x", "");
    write("modules/m/module.toml", "packages = [\"fio\"]\n");
    write("modules/with-arch/module.toml", "arch = \"aarch64\"\n");
    let project = Project {
        root: dir.path().to_path_buf(),
    };
    (dir, project)
}

/// Loads `text` as `recipes/t.toml` of a fuzz project.
fn load_test_recipe(text: &str) -> Result<Recipe> {
    let (dir, project) = fuzz_project();
    let file = dir.path().join("recipes/t.toml");
    std::fs::write(&file, text).expect("write");
    let at = RecipeRef {
        name: "t".into(),
        file,
        location: None,
    };
    Recipe::load(&project, &at)
}

fn vm_of(recipe: Recipe) -> VmSpec {
    match recipe.spec {
        Spec::Test(t) => t.vm,
        other => panic!("not a test recipe: {other:?}"),
    }
}

const TEST_HEAD: &str = "kind = \"test\"\nkernel = \"k\"\nrootfs = \"r\"\n";

#[test]
fn arch_defaults_to_x86_64_sets_the_machine_and_is_refused_where_it_cannot_be() {
    let default = load_test_recipe(TEST_HEAD).expect("valid");
    assert_eq!(default.arch, Arch::X86_64);
    assert_eq!(vm_of(default).machine, "q35");
    let arm = load_test_recipe(&format!("{TEST_HEAD}arch = \"aarch64\"\n")).expect("valid");
    assert_eq!(arm.arch, Arch::Aarch64);
    let vm = vm_of(arm);
    assert_eq!((vm.arch, vm.machine.as_str()), (Arch::Aarch64, "virt"));
    let own_machine = load_test_recipe(&format!(
        "{TEST_HEAD}arch = \"aarch64\"\n[vm]\nmachine = \"virt-7.2\"\n"
    ))
    .expect("valid");
    assert_eq!(vm_of(own_machine).machine, "virt-7.2");
    let refused = |text: &str, what: &str| {
        let err = load_test_recipe(text).expect_err(text).to_string();
        assert!(err.contains(what), "{text}: {err}");
    };
    refused(
        &format!("{TEST_HEAD}arch = \"arm64\"\n"),
        "Debian's name: write arch = \"aarch64\"",
    );
    refused(
        &format!("{TEST_HEAD}arch = \"riscv64\"\n"),
        "expected one of \"x86_64\", \"aarch64\"",
    );
    refused(
        &format!("{TEST_HEAD}arch = \"aarch64\"\n[vm]\nbackend = \"bhyve\"\n"),
        "runs x86_64 guests",
    );
    refused(
        &format!("{TEST_HEAD}arch = \"aarch64\"\n[vm]\nmachine = \"q35\"\n"),
        "on qemu's `virt` machine (or a version of it, `virt-7.2`), not `q35`",
    );
    refused(
        &format!("{TEST_HEAD}[vm]\nmachine = \"virt\"\n"),
        "`virt` is qemu's aarch64 machine; this test is x86_64",
    );
    refused(
        &format!("{TEST_HEAD}arch = \"aarch64\"\n[vm]\nmachine = \"virtualbox\"\n"),
        "not `virtualbox`",
    );
    load_test_recipe(&format!("{TEST_HEAD}[vm]\nmachine = \"virtualbox\"\n"))
        .expect("x86_64 machines are qemu's to check");
    refused(
        &format!("{TEST_HEAD}arch = \"aarch64\"\n[vm]\ncpus = 9\n"),
        "at most 8 CPUs",
    );
    refused(
        "kind = \"rootfs\"\narch = \"aarch64\"\nbase = \"debian:bookworm\"\n",
        "not for aarch64",
    );
    refused(
        "kind = \"bundle\"\ntests = \"../t\"\narch = \"aarch64\"\n",
        "unknown field `arch`",
    );
    refused(
        "kind = \"disk\"\nkernel = \"k\"\nrootfs = \"r\"\narch = \"aarch64\"\n",
        "unknown field `arch`",
    );
    refused(
        "kind = \"rootfs\"\ninclude = [\"with-arch\"]\n",
        "a module does not set `arch`",
    );
    let kernel =
        load_test_recipe("kind = \"kernel\"\narch = \"aarch64\"\n[prebuilt]\npath = \"k.toml\"\n")
            .expect("valid");
    assert_eq!(kernel.target_arch(), Some(Arch::Aarch64));
    let bundle = load_test_recipe("kind = \"bundle\"\ntests = \"../t\"\n").expect("valid");
    assert_eq!(
        bundle.target_arch(),
        None,
        "a bundle of files runs on any guest"
    );
}

#[test]
fn net_defaults_to_none_and_user_is_an_opt_in() {
    let default = load_test_recipe(TEST_HEAD).expect("valid");
    assert_eq!(vm_of(default).net, Network::None);
    let none = load_test_recipe(&format!("{TEST_HEAD}[vm]\nnet = \"none\"\n")).expect("valid");
    assert_eq!(vm_of(none).net, Network::None);
    let user = load_test_recipe(&format!("{TEST_HEAD}[vm]\nnet = \"user\"\n")).expect("valid");
    assert_eq!(vm_of(user).net, Network::User);
}

#[test]
fn unknown_net_values_and_user_on_bhyve_are_refused_at_the_value() {
    let err = load_test_recipe(&format!("{TEST_HEAD}[vm]\nnet = \"bridge\"\n"))
        .expect_err("refused")
        .to_string();
    assert!(err.starts_with("unknown net `bridge`"), "{err}");
    assert!(err.contains("t.toml:5:7"), "{err}");
    assert!(err.contains("expected `none`"), "{err}");

    let err = load_test_recipe(&format!(
        "{TEST_HEAD}[vm]\nbackend = \"bhyve\"\nnet = \"user\"\n"
    ))
    .expect_err("refused")
    .to_string();
    assert!(
        err.contains("not available with backend = \"bhyve\""),
        "{err}"
    );
    assert!(err.contains("t.toml:6:7"), "{err}");
    let bhyve = load_test_recipe(&format!(
        "{TEST_HEAD}[vm]\nbackend = \"bhyve\"\nnet = \"none\"\n"
    ));
    assert_eq!(vm_of(bhyve.expect("valid")).net, Network::None);
}

#[test]
fn start_and_isolation_default_to_snapshot_and_vm_and_refuse_other_values() {
    let default = vm_of(load_test_recipe(TEST_HEAD).expect("valid"));
    assert_eq!(
        (default.start, default.isolation),
        (StartMode::Snapshot, Isolation::Vm)
    );
    let set = vm_of(
        load_test_recipe(&format!(
            "{TEST_HEAD}[vm]\nstart = \"boot\"\nisolation = \"test\"\n"
        ))
        .expect("valid"),
    );
    assert_eq!(
        (set.start, set.isolation),
        (StartMode::Boot, Isolation::Test)
    );
    for (line, said, help) in [
        (
            "start = \"resume\"",
            "unknown start `resume`",
            "expected `snapshot`",
        ),
        (
            "isolation = \"vms\"",
            "unknown isolation `vms`",
            "expected `vm`",
        ),
    ] {
        let err = load_test_recipe(&format!("{TEST_HEAD}[vm]\n{line}\n"))
            .expect_err("refused")
            .to_string();
        assert!(err.starts_with(said), "{err}");
        assert!(err.contains("t.toml:5:"), "{err}");
        assert!(err.contains(help), "{err}");
    }
}

/// Pieces of recipes, good and bad, for the fuzzer to assemble.
const FRAGMENTS: [&str; 29] = [
    "kind = \"kernel\"\n",
    "kind = \"rootfs\"\n",
    "kind = \"bundle\"\n",
    "kind = \"test\"\n",
    "kernel = \"k\"\n",
    "rootfs = \"r\"\n",
    "bundles = [\"b\", \"k\"]\n",
    "after = [\"..\"]\n",
    "timeout = \"99999999999999999999d\"\n",
    "timeout = \"0s\"\n",
    "[vm]\nmemory = \"1K\"\n",
    "[vm]\ndisks = [{ name = \"a,b\", size = \"1T\" }]\n",
    "[source]\npath = \"/dev/zero\"\n",
    "[prebuilt]\ndeb = \"-x\"\n",
    "[config]\nbase = \"../../etc/passwd\"\n",
    "base = \"debian:\"\n",
    "format = \"ext4\"\nsize = \"18446744073709551615T\"\n",
    "include = [\"m\", \"../m\"]\n",
    "[files]\n\"/\" = \".\"\n",
    "packages = [\"--x\"]\n",
    "tests = \"../t\"\n",
    "cpus = -9\n",
    "make_flags = [\"O=/\"]\n",
    "\u{feff}[[x]]\n",
    "[vm]\nnet = \"user\"\nbackend = \"bhyve\"\n",
    "net = \"\"\n",
    "[build]\ncommand = []\n",
    "[build]\ncommand = [\"sh\", \"\\u0000\"]\ninputs = [\"..\", \"/\", \".\"]\n",
    "[build]\ncommand = [\"x\"]\nrecipes = [\"t\", \"b\", \"k\"]\ndebs = [\"a.b\", \"a-b\"]\n",
];

proptest::proptest! {
    #![proptest_config(crate::proptest_config(256))]

    #[test]
    fn the_recipe_parser_never_panics(
        picks in proptest::collection::vec(0usize..FRAGMENTS.len(), 0..8),
        noise in "\\PC{0,40}",
    ) {
        let (dir, project) = fuzz_project();
        let mut text: String = picks.iter().map(|&i| FRAGMENTS[i]).collect();
        text.push_str(&noise);
        let file = dir.path().join("recipes/fuzz.toml");
        std::fs::write(&file, &text).expect("write");
        let at = RecipeRef { name: "fuzz".into(), file, location: None };
        // Ok or a diagnostic; a panic fails the test.
        let _ = Recipe::load(&project, &at);
    }
}
