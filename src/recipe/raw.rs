//! Raw recipe files as serde reads them: every field optional or defaulted, unknown keys
//! rejected, and the values later checks complain about kept with their spans.
//! Nothing outside `recipe` sees these types: `validate` turns them into `Recipe`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type Text = Spanned<String>;

/// Just enough of any recipe to pick the right schema for the rest.
#[derive(Deserialize)]
pub struct Kind {
    pub kind: Option<Text>,
}

/// A recipe's `arch`, read beside its kind: kernels, roots and tests declare it.
#[derive(Deserialize)]
pub struct ArchField {
    pub arch: Option<Text>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub deb: Option<Text>,
    pub url: Option<Text>,
    pub sha256: Option<Text>,
    pub path: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelConfig {
    pub base: Option<Text>,
    #[serde(default)]
    pub fragments: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub kind: Text,
    /// Read through `ArchField`; declared so `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub arch: Option<Text>,
    pub source: Option<Spanned<Source>>,
    pub config: Option<KernelConfig>,
    pub prebuilt: Option<Spanned<Source>>,
    /// Extra arguments for the kernel's make (e.g. `LLVM=1`).
    #[serde(default)]
    pub make_flags: Vec<Text>,
}

/// A rootfs recipe, and also the shape of a rootfs module (`modules/<name>/module.toml`),
/// which may not set `kind`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    pub kind: Option<Text>,
    /// Read through `ArchField` for a recipe; a module may not set it.
    pub arch: Option<Text>,
    pub base: Option<Text>,
    #[serde(default)]
    pub packages: Vec<Text>,
    #[serde(default)]
    pub include: Vec<Text>,
    pub format: Option<Text>,
    pub size: Option<Text>,
    pub kernel_modules: Option<Text>,
    #[serde(default)]
    pub files: BTreeMap<Spanned<String>, Text>,
}

/// A bootable disk recipe: a kernel and an ext4 root, as a GPT image.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDisk {
    /// Read through `Kind`; declared so `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub kind: Text,
    pub kernel: Text,
    pub rootfs: Text,
    pub size: Option<Text>,
    pub format: Option<Text>,
    pub cmdline: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Read through `Kind`; declared so `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub kind: Text,
    pub tests: Option<Text>,
    pub build: Option<Spanned<BundleBuild>>,
}

/// A bundle's `[build]` table: the bundle is what its command writes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBuild {
    pub command: Spanned<Vec<Text>>,
    #[serde(default)]
    pub inputs: Vec<Text>,
    #[serde(default)]
    pub recipes: Vec<Text>,
    #[serde(default)]
    pub debs: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub name: Text,
    pub size: Text,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub backend: Option<Text>,
    pub machine: Option<Text>,
    pub memory: Option<Text>,
    pub cpus: Option<Spanned<i64>>,
    pub vms: Option<Spanned<i64>>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    pub share_disks: Option<bool>,
    pub cmdline: Option<Text>,
    pub boot_timeout: Option<Text>,
    pub net: Option<Text>,
    pub start: Option<Text>,
    pub isolation: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Test {
    /// Read through `Kind`; declared so `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub kind: Text,
    /// Read through `ArchField`; declared so `deny_unknown_fields` accepts it.
    #[allow(dead_code)]
    pub arch: Option<Text>,
    pub kernel: Text,
    pub rootfs: Text,
    #[serde(default)]
    pub bundles: Vec<Text>,
    #[serde(default)]
    pub after: Vec<Text>,
    pub timeout: Option<Text>,
    #[serde(default)]
    pub vm: Vm,
}
