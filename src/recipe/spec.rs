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
    /// The machine the recipe's output is for (`arch`; x86_64 unless it says otherwise).
    /// Bundles of files run on any: see `target_arch`.
    pub arch: Arch,
    pub spec: Spec,
}

/// Debian's static busybox: the base of busybox roots, and what stage 1 and the guest
/// agent run on other roots.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The machine a kernel, a root or a test is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Arch {
    #[default]
    X86_64,
    Aarch64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// Its name in recipes and keys (and `uname -m` in the guest).
    pub const fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Its name in Debian (`dpkg --print-architecture`, package architectures).
    pub const fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    pub fn parse(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The machine vmbuild itself runs on: the one whose packages the host's apt fetches
    /// unqualified, and whose guests KVM can run.
    pub const fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The name of the kernel image in a kernel's entry: what its build makes
    /// (`arch/x86/boot/bzImage`, `arch/arm64/boot/Image`) and qemu's `-kernel` loads.
    pub const fn kernel_image(self) -> &'static str {
        match self {
            Arch::X86_64 => "bzImage",
            Arch::Aarch64 => "Image",
        }
    }

    /// Where the kernel's build leaves the image `kernel_image` names.
    pub const fn kbuild_image(self) -> &'static str {
        match self {
            Arch::X86_64 => "arch/x86/boot/bzImage",
            Arch::Aarch64 => "arch/arm64/boot/Image",
        }
    }

    /// The qemu machine a test VM is unless `[vm] machine` says otherwise.
    pub const fn default_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "q35",
            Arch::Aarch64 => "virt",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Spec {
    Kernel(KernelSpec),
    Rootfs(RootfsSpec),
    Bundle(BundleSpec),
    Test(TestSpec),
    Disk(BootDiskSpec),
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

impl RootfsSpec {
    /// Whether the entry carries Debian's static busybox beside the image: a disk image
    /// boots through a stage 1 that runs it, and the guest agent needs its awk and reboot
    /// on a Debian root (the essential set has neither).
    pub fn carries_busybox(&self) -> bool {
        self.format == RootfsFormat::Ext4 || matches!(self.base, RootfsBase::Debian(_))
    }
}

/// A bootable disk: a GPT image with an EFI system partition holding a unified kernel
/// image of `kernel` (its stage 1 and the guest agent inside), and `rootfs`'s ext4 image
/// as the root partition.
#[derive(Debug, Clone)]
pub struct BootDiskSpec {
    pub kernel: RecipeRef,
    pub rootfs: RecipeRef,
    /// The whole image's size in bytes; `None` fits it to its partitions.
    pub size: Option<u64>,
    pub format: ImageFormat,
    /// Added to the kernel command line the UKI carries.
    pub cmdline: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, Clone)]
pub enum BundleSpec {
    /// `tests = "folder"`: the folder's executable files are the tests.
    Folder(PathBuf),
    /// `[build]`: the folder a command writes.
    Build(BundleBuild),
}

/// A bundle's `[build]` table, validated.
#[derive(Debug, Clone)]
pub struct BundleBuild {
    /// The program and its arguments, run without a shell.
    pub command: Vec<String>,
    /// Local files and folders copied into the working folder, each under its `name`.
    pub inputs: Vec<BuildInput>,
    /// Recipes whose entries the command reads (`VMBUILD_INPUT_<NAME>`).
    pub recipes: Vec<RecipeRef>,
    /// Debian packages unpacked for the command (`VMBUILD_DEB_<NAME>`), pinned by
    /// `vmbuild.lock`.
    pub debs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInput {
    /// Its name in the working folder: the file name the recipe wrote.
    pub name: String,
    pub path: PathBuf,
}

/// The environment variable that gives a `[build]` command the path of a recipe's entry
/// (`prefix` `VMBUILD_INPUT_`) or of an unpacked Debian package (`VMBUILD_DEB_`): the name
/// uppercased, every character but letters and digits as `_`.
pub fn build_env_var(prefix: &str, name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{prefix}{tail}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    Qemu,
    Bhyve,
}

impl BackendKind {
    /// The program that runs `arch`'s VMs.
    pub const fn program(&self, arch: Arch) -> &'static str {
        match (self, arch) {
            (BackendKind::Qemu, Arch::X86_64) => "qemu-system-x86_64",
            (BackendKind::Qemu, Arch::Aarch64) => "qemu-system-aarch64",
            (BackendKind::Bhyve, _) => "bhyve",
        }
    }
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

/// How a test VM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// From the booted environment's snapshot in the store (made on first use): the
    /// default.
    Snapshot,
    /// A full boot, every time.
    Boot,
}

/// What tests share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// The tests of one VM run one after another in it: the default.
    Vm,
    /// Every test gets a VM of its own, started from the snapshot: no test sees what
    /// another left.
    Test,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Vm => "vm",
            Isolation::Test => "test",
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
    /// The guest's machine: the test recipe's `arch`.
    pub arch: Arch,
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
    pub start: StartMode,
    pub isolation: Isolation,
}

impl VmSpec {
    /// The defaults for a guest of `arch`.
    pub fn for_arch(arch: Arch) -> VmSpec {
        VmSpec {
            arch,
            machine: arch.default_machine().into(),
            ..VmSpec::default()
        }
    }

    /// Each test gets a VM of its own: asked for (`isolation = "test"`), or needed for
    /// fresh scratch disks (disks not shared).
    pub fn vm_per_test(&self) -> bool {
        self.isolation == Isolation::Test || (!self.disks.is_empty() && !self.share_disks)
    }
}

/// A test recipe's `[vm]` defaults, also the VM of `vmbuild run --kernel K --rootfs R`.
impl Default for VmSpec {
    fn default() -> VmSpec {
        VmSpec {
            arch: Arch::X86_64,
            backend: BackendKind::Qemu,
            machine: Arch::X86_64.default_machine().into(),
            memory_mb: 512,
            cpus: 1,
            vms: 1,
            disks: vec![],
            share_disks: false,
            cmdline: String::new(),
            boot_timeout: Duration::from_secs(120),
            net: Network::None,
            start: StartMode::Snapshot,
            isolation: Isolation::Vm,
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
            Spec::Disk(_) => "disk",
        }
    }

    /// The machine the recipe's output is for; `None` for a bundle of files, which any
    /// guest runs. A `[build]` bundle is built on this host, for it.
    pub fn target_arch(&self) -> Option<Arch> {
        match self.spec {
            Spec::Bundle(BundleSpec::Folder(_)) => None,
            _ => Some(self.arch),
        }
    }

    /// The recipes this one needs built first, in a stable order, each with the field
    /// that names it and the kind that field requires.
    pub fn dependencies(&self) -> Vec<Dependency<'_>> {
        let dep = |field, kinds, recipe| Dependency {
            field,
            kinds,
            recipe,
        };
        match &self.spec {
            Spec::Kernel(_) | Spec::Bundle(BundleSpec::Folder(_)) => vec![],
            Spec::Bundle(BundleSpec::Build(b)) => b
                .recipes
                .iter()
                .map(|r| dep("recipes", BUILT_KINDS, r))
                .collect(),
            Spec::Rootfs(r) => r
                .kernel_modules
                .iter()
                .map(|k| dep("kernel_modules", &["kernel"], k))
                .collect(),
            Spec::Disk(d) => vec![
                dep("kernel", &["kernel"], &d.kernel),
                dep("rootfs", &["rootfs"], &d.rootfs),
            ],
            Spec::Test(t) => {
                let mut deps = vec![
                    dep("kernel", &["kernel"], &t.kernel),
                    dep("rootfs", &["rootfs", "disk"], &t.rootfs),
                ];
                deps.extend(t.bundles.iter().map(|b| dep("bundles", &["bundle"], b)));
                deps.extend(t.after.iter().map(|a| dep("after", &["test"], a)));
                deps
            }
        }
    }
}

/// The kinds whose entries a `[build]` command may read: everything but test results.
const BUILT_KINDS: &[&str] = &["kernel", "rootfs", "bundle", "disk"];

/// One reference from a recipe to another, with the kinds the referring field accepts.
pub struct Dependency<'a> {
    pub field: &'static str,
    pub kinds: &'static [&'static str],
    pub recipe: &'a RecipeRef,
}
