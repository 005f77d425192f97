//! Validated recipes: what the rest of vmbuild works with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::Location;

/// A reference from one recipe (or the command line) to another recipe's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeRef {
    pub name: String,
    pub file: PathBuf,
    /// Where the reference was written, when it came from a recipe.
    pub location: Option<Location>,
}

/// A validated recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub name: String,
    pub file: PathBuf,
    pub spec: Spec,
}

#[derive(Debug, Clone)]
pub enum Spec {
    Kernel(KernelSpec),
    Rootfs(RootfsSpec),
    Bundle(BundleSpec),
    Test(TestSpec),
}

/// Where an input comes from. Debian packages are pinned by `vmbuild.lock`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    Deb { package: String, location: Location },
    Url { url: String, sha256: String },
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub enum KernelSpec {
    Prebuilt(Fetch),
    FromSource {
        source: Fetch,
        base: ConfigBase,
        fragments: Vec<PathBuf>,
        make_flags: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigBase {
    /// A make target: tinyconfig, defconfig or allnoconfig.
    Target(String),
    /// A full `.config` file.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsBase {
    Busybox,
    Debian(String),
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootfsFormat {
    Cpio,
    Ext4,
    Tar,
    Dir,
}

impl RootfsFormat {
    pub fn name(self) -> &'static str {
        match self {
            RootfsFormat::Cpio => "cpio",
            RootfsFormat::Ext4 => "ext4",
            RootfsFormat::Tar => "tar",
            RootfsFormat::Dir => "dir",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RootfsSpec {
    pub base: RootfsBase,
    pub packages: Vec<String>,
    pub format: RootfsFormat,
    /// ext4 image size in bytes; `None` sizes the image from its content.
    pub size: Option<u64>,
    pub kernel_modules: Option<RecipeRef>,
    /// Destination path in the image -> source file on the host.
    pub files: BTreeMap<String, PathBuf>,
    /// Modules merged in, in order.
    pub modules: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub tests_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    Qemu,
    Bhyve,
}

/// The network a test VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// No network device at all: the default, so a test cannot reach anything.
    None,
    /// One NIC on the hypervisor's user-mode NAT (qemu's slirp): the guest reaches what
    /// the host reaches, nothing reaches the guest.
    User,
}

impl Network {
    pub fn name(self) -> &'static str {
        match self {
            Network::None => "none",
            Network::User => "user",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone)]
pub struct VmSpec {
    pub backend: BackendKind,
    pub machine: String,
    pub memory_mb: u64,
    pub cpus: u32,
    pub vms: u32,
    pub disks: Vec<DiskSpec>,
    /// The tests of one VM boot share its scratch disks; by default each test gets
    /// fresh ones, and so a boot of its own.
    pub share_disks: bool,
    pub cmdline: String,
    pub boot_timeout: Duration,
    pub net: Network,
}

/// A test recipe's `[vm]` defaults, also the VM of `vmbuild run --kernel K --rootfs R`.
impl Default for VmSpec {
    fn default() -> VmSpec {
        VmSpec {
            backend: BackendKind::Qemu,
            machine: "q35".into(),
            memory_mb: 512,
            cpus: 1,
            vms: 1,
            disks: vec![],
            share_disks: false,
            cmdline: String::new(),
            boot_timeout: Duration::from_secs(120),
            net: Network::None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TestSpec {
    pub kernel: RecipeRef,
    pub rootfs: RecipeRef,
    pub bundles: Vec<RecipeRef>,
    pub after: Vec<RecipeRef>,
    pub timeout: Duration,
    pub vm: VmSpec,
}

/// Default per-test timeout, when neither the recipe nor the test header sets one.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Recipe {
    pub fn kind(&self) -> &'static str {
        match self.spec {
            Spec::Kernel(_) => "kernel",
            Spec::Rootfs(_) => "rootfs",
            Spec::Bundle(_) => "bundle",
            Spec::Test(_) => "test",
        }
    }

    /// The recipes this one needs built first, in a stable order, each with the field
    /// that names it and the kind that field requires.
    pub fn dependencies(&self) -> Vec<Dependency<'_>> {
        let dep = |field, kind, recipe| Dependency {
            field,
            kind,
            recipe,
        };
        match &self.spec {
            Spec::Kernel(_) | Spec::Bundle(_) => vec![],
            Spec::Rootfs(r) => r
                .kernel_modules
                .iter()
                .map(|k| dep("kernel_modules", "kernel", k))
                .collect(),
            Spec::Test(t) => {
                let mut deps = vec![
                    dep("kernel", "kernel", &t.kernel),
                    dep("rootfs", "rootfs", &t.rootfs),
                ];
                deps.extend(t.bundles.iter().map(|b| dep("bundles", "bundle", b)));
                deps.extend(t.after.iter().map(|a| dep("after", "test", a)));
                deps
            }
        }
    }
}

/// One reference from a recipe to another, with the kind the referring field requires.
pub struct Dependency<'a> {
    pub field: &'static str,
    pub kind: &'static str,
    pub recipe: &'a RecipeRef,
}
