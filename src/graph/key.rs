//! Cache keys: SHA-256 over a canonical JSON serialization of explicit input structs
//! (object keys sorted, no raw TOML text, no absolute paths, no mtimes).
//!
//! | input                      | why it is in the key                                        |
//! |----------------------------|-------------------------------------------------------------|
//! | `schema`                   | bumped when a builder changes its output for the same inputs |
//! | `kind`, `arch`             | the same files make different things per kind and arch       |
//! | resolved recipe fields     | base, format, size, packages, config base, VM settings, ...  |
//! | local files, by content    | bytes, exec bit, symlink target, relative path; never mtime, |
//! |                            | owner or absolute path, so clones on other hosts share keys  |
//! | Debian packages            | name, version and sha256 from `vmbuild.lock`                 |
//! | URLs                       | only their pinned sha256: a mirror move changes nothing      |
//! | dependencies' keys         | a change anywhere below rebuilds everything above (Merkle)   |
//! | tool identity              | compiler/linker/make (and git for checkouts) for kernels,    |
//! |                            | mke2fs for ext4, mmdebstrap, qemu for                        |
//! |                            | tests: a different tool can make a different output          |
//! | name (bundles, tests)      | a bundle's name is its guest folder; results name the recipe |
//! | bundles' `[build]`         | the command, each input's name and content, the Debian pins, |
//! |                            | the read recipes' keys (deps), gcc and make: what it can see |
//! | disks: stub, guest, tools   | the systemd-boot-efi pin (the UKI's stub), stage 1 and the   |
//! |                            | agent, size, format, cmdline; mkfs.fat, mcopy, objcopy      |
//! | tests: agent, VM settings  | the guest agent script, machine, memory, cpus, disks, net,   |
//! |                            | cmdline, timeout and backend change what a test observes     |
//!
//! Out of the key, in the manifest instead: KVM or TCG, host name, times, cache path.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::fetch::lock::Lock;
use crate::fetch::FetchError;
use crate::hashing::{self, TreeEntry};
use crate::process::ProcessError;
use crate::recipe::{
    Arch, BackendKind, BundleBuild, BundleSpec, ConfigBase, Fetch, ImageFormat, Isolation,
    KernelSpec, Recipe, RootfsBase, RootfsFormat, Spec, BUSYBOX_PACKAGE,
};
use crate::tools::Tools;

/// Bump when any builder's output changes for identical inputs.
pub const KEY_SCHEMA: u32 = 2;
/// The `arch` of a bundle of files, which any guest runs.
const ANY_ARCH: &str = "any";
/// A tool's identity in a key when this host does not have it.
const ABSENT: &str = "absent";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Tool(#[from] ProcessError),
    /// An input that cannot be one (a FIFO, a device, a name that is not UTF-8): exit 2.
    #[error("{0}")]
    BadInput(String),
    #[error("hash {}: {source}", path.display())]
    Hash {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What computing keys needs besides the recipes.
pub struct KeyContext<'a> {
    pub tools: &'a Tools,
    pub lock: &'a Lock,
    /// Where stat caches for large local source trees live.
    pub stat_cache_dir: std::path::PathBuf,
    /// Where the listings of local source trees are kept, by digest.
    pub trees_dir: std::path::PathBuf,
}

/// Everything a key covers. Serialized canonically (serde_json maps are sorted).
#[derive(Debug, Clone, Serialize)]
pub struct KeyInputs {
    pub schema: u32,
    pub kind: &'static str,
    /// `Arch::name`, or `any` for a bundle of files.
    pub arch: &'static str,
    pub recipe: Value,
    pub deps: BTreeMap<String, String>,
    pub tools: BTreeMap<String, String>,
}

/// The digest of a local kernel tree's listing in a kernel's key inputs (as `to_value`
/// gives them), if it builds from one.
pub(crate) fn tree_digest(inputs: &Value) -> Option<&str> {
    inputs
        .pointer("/recipe/source/tree")
        .and_then(Value::as_str)
}

/// The keyed content of a `[build]` bundle's input `name` (as `hash_path` gives it), in
/// its key inputs (as `to_value` gives them).
pub(crate) fn build_input_content<'a>(inputs: &'a Value, name: &str) -> Option<&'a Value> {
    inputs.pointer("/recipe/build/inputs")?.get(name)
}

/// The make variables that build a kernel for `arch` on this host, then the recipe's
/// own `make_flags` (which may override them: another `CROSS_COMPILE=`). Nothing for the
/// host's own arch. The key holds the compiler and linker these pick (`kernel_toolchain`).
pub(crate) fn kbuild_flags(arch: Arch, make_flags: &[String]) -> Vec<String> {
    let mut flags = Vec::new();
    if arch != Arch::host() {
        // Debian's cross compiler (gcc-aarch64-linux-gnu), else Nix's
        // (pkgsCross.aarch64-multiplatform); neither here, Debian's is what a build
        // asks to install.
        let (kernel_arch, prefixes) = match arch {
            Arch::X86_64 => ("x86", ["x86_64-linux-gnu-", "x86_64-unknown-linux-gnu-"]),
            Arch::Aarch64 => (
                "arm64",
                ["aarch64-linux-gnu-", "aarch64-unknown-linux-gnu-"],
            ),
        };
        let cross = prefixes
            .into_iter()
            .find(|p| crate::process::which(&format!("{p}gcc")).is_some())
            .unwrap_or(prefixes[0]);
        flags.push(format!("ARCH={kernel_arch}"));
        flags.push(format!("CROSS_COMPILE={cross}"));
    }
    flags.extend(make_flags.iter().cloned());
    flags
}

/// The compiler and linker a kernel's make flags select: `CC=`/`LD=` name them,
/// `LLVM=1` (or `LLVM=-15`, `LLVM=/opt/llvm/bin/`) picks clang and ld.lld; else gcc, ld.
pub(crate) fn kernel_toolchain(make_flags: &[String]) -> (String, String) {
    let var = |name: &str| {
        make_flags
            .iter()
            .rev()
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
    };
    // `CROSS_COMPILE=/opt/x/bin/x86_64-linux-gnu-` prefixes gcc and ld; `CC=ccache gcc`
    // runs its first word.
    let prefix = var("CROSS_COMPILE").unwrap_or_default();
    let first_word = |v: &str| v.split_whitespace().next().unwrap_or(v).to_string();
    let (mut cc, mut ld) = (format!("{prefix}gcc"), format!("{prefix}ld"));
    if let Some(llvm) = var("LLVM").filter(|v| !v.is_empty() && *v != "0") {
        (cc, ld) = match llvm {
            "1" => ("clang".into(), "ld.lld".into()),
            prefix if prefix.ends_with('/') => {
                (format!("{prefix}clang"), format!("{prefix}ld.lld"))
            }
            suffix => (format!("clang{suffix}"), format!("ld.lld{suffix}")),
        };
    }
    if let Some(v) = var("CC").filter(|v| !v.trim().is_empty()) {
        cc = first_word(v);
    }
    if let Some(v) = var("LD").filter(|v| !v.trim().is_empty()) {
        ld = first_word(v);
    }
    (cc, ld)
}

impl KeyInputs {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("key inputs serialize")
    }

    pub fn key(&self) -> String {
        let canonical = serde_json::to_vec(&self.to_value()).expect("key inputs serialize");
        hashing::sha256_hex(&canonical)
    }
}

/// Hashing errors: a refused input is the recipe's fault, anything else the host's.
fn hash_error(path: &Path, source: std::io::Error) -> KeyError {
    if source.kind() == std::io::ErrorKind::InvalidInput {
        KeyError::BadInput(source.to_string())
    } else {
        KeyError::Hash {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A local file's or folder's content as keys hold it.
pub(crate) fn hash_path(path: &Path) -> Result<Value, KeyError> {
    let err = |source| hash_error(path, source);
    if path.is_dir() {
        let tree = hashing::hash_tree(path, |_| true).map_err(err)?;
        Ok(serde_json::to_value(tree).expect("trees serialize"))
    } else {
        Ok(serde_json::to_value(TreeEntry::of(path).map_err(err)?).expect("entries serialize"))
    }
}

/// A fetched input's identity; a Debian package's is its pin for `arch` (`None`: an
/// architecture-independent package, such as a kernel's source).
fn fetch_inputs(
    fetch: &Fetch,
    ctx: &KeyContext,
    arch: Option<Arch>,
    kernel_meta: bool,
) -> Result<Value, KeyError> {
    Ok(match fetch {
        Fetch::Deb { package, .. } => json!({ "deb": match arch {
            Some(arch) => ctx.lock.pin_for(package, arch, kernel_meta)?,
            None => ctx.lock.pin(package, kernel_meta)?,
        } }),
        Fetch::Url { sha256, .. } => json!({ "sha256": sha256 }),
        Fetch::Path(path) => json!({ "path": hash_path(path)? }),
    })
}

/// The tools of another arch than the host's that `recipe` uses (a kernel's cross
/// compiler and linker, a test's qemu): a host with nothing of that arch to build may lack
/// them. Its keys say `absent`, and a build or test says what to install (exit 4);
/// commands that key every recipe (`gc`, `lock`) work there.
fn foreign_arch_tools(recipe: &Recipe) -> Vec<String> {
    if recipe.target_arch().is_none_or(|a| a == Arch::host()) {
        return Vec::new();
    }
    match &recipe.spec {
        Spec::Kernel(KernelSpec::FromSource { make_flags, .. }) => {
            let (compiler, linker) = kernel_toolchain(&kbuild_flags(recipe.arch, make_flags));
            vec![compiler, linker]
        }
        Spec::Test(t) => vec![t.vm.backend.program(t.vm.arch).to_string()],
        _ => Vec::new(),
    }
}

/// The key inputs of one recipe, given its dependencies' keys by recipe name.
pub fn compute_key(
    recipe: &Recipe,
    deps: BTreeMap<String, String>,
    ctx: &KeyContext,
) -> Result<KeyInputs, KeyError> {
    let mut tools = BTreeMap::new();
    let may_be_absent = foreign_arch_tools(recipe);
    let mut tool = |name: &str, args: &[&str]| -> Result<(), KeyError> {
        let version = match ctx.tools.version(name, args) {
            Err(ProcessError::Missing { .. }) if may_be_absent.iter().any(|t| t == name) => {
                ABSENT.to_string()
            }
            other => other?,
        };
        tools.insert(name.to_string(), version);
        Ok(())
    };
    let mut by_digest = Vec::new();
    let recipe_inputs = match &recipe.spec {
        Spec::Disk(d) => {
            // The ESP's file system and files, the UKI's sections, the root's growth.
            // mkfs.fat has no --version: its binary is its identity.
            by_digest.push(("mkfs.fat", ctx.tools.binary_digest("mkfs.fat")?));
            tool("mcopy", &["--version"])?;
            tool("objcopy", &["--version"])?;
            if d.size.is_some() {
                // resize2fs prints its version only with a usage error: mke2fs speaks for
                // e2fsprogs.
                tool("mke2fs", &["-V"])?;
            }
            if d.format == ImageFormat::Qcow2 {
                tool("qemu-img", &["--version"])?;
            }
            // The kernel's and rootfs's keys are in `deps`; their names stay out.
            json!({
                "size": d.size,
                "format": d.format.name(),
                "cmdline": d.cmdline,
                // The UKI's EFI stub, and stage 1 and the agent in its initramfs.
                "stub": ctx.lock.pin_for(crate::format::disk::STUB_PACKAGE, Arch::X86_64, false)?,
                "guest_sha256": crate::format::guest::fingerprint(),
            })
        }
        Spec::Kernel(KernelSpec::Prebuilt(fetch)) => {
            json!({ "prebuilt": fetch_inputs(fetch, ctx, Some(recipe.arch), true)? })
        }
        Spec::Kernel(KernelSpec::FromSource {
            source,
            base,
            fragments,
            make_flags,
        }) => {
            // The compiler the make flags pick (`CC=`, `LLVM=`), else gcc; the linker and
            // make: each can change the kernel, and Kconfig probes them.
            let (compiler, linker) = kernel_toolchain(&kbuild_flags(recipe.arch, make_flags));
            tool(&compiler, &["--version"])?;
            tool(&linker, &["--version"])?;
            tool("make", &["--version"])?;
            let base = match base {
                ConfigBase::Target(t) => json!(t),
                ConfigBase::File(path) => json!({ "file": hash_path(path)? }),
            };
            let fragments = fragments
                .iter()
                .map(|f| Ok(json!({ "name": f.file_name().map(|n| n.to_string_lossy()), "content": hash_path(f)? })))
                .collect::<Result<Vec<_>, KeyError>>()?;
            let source = match source {
                // A kernel tree: leave out .git and ignored files, reuse hashes of unchanged files.
                Fetch::Path(tree) => {
                    if tree.join(".git").exists() {
                        // git decides which files of a checkout are keyed.
                        tool("git", &["--version"])?;
                    }
                    let listing = hashing::kernel_tree_listing(tree, &ctx.stat_cache_dir)
                        .map_err(|source| hash_error(tree, source))?;
                    // Kept so `explain` and the builder can name the files that changed.
                    listing
                        .save(&ctx.trees_dir)
                        .map_err(|source| hash_error(&ctx.trees_dir, source))?;
                    json!({ "tree": listing.digest })
                }
                other => fetch_inputs(other, ctx, None, false)?,
            };
            json!({
                "source": source,
                "config": { "base": base, "fragments": fragments },
                "make_flags": make_flags,
            })
        }
        Spec::Rootfs(r) => {
            let base = match &r.base {
                RootfsBase::Busybox => {
                    json!({ "busybox": ctx.lock.pin_for(BUSYBOX_PACKAGE, recipe.arch, false)? })
                }
                RootfsBase::Debian(release) => {
                    tool("mmdebstrap", &["--version"])?;
                    json!({ "debian": release })
                }
                RootfsBase::Empty => json!("none"),
            };
            if r.format == RootfsFormat::Ext4 {
                tool("mke2fs", &["-V"])?;
            }
            let boot_busybox = if r.carries_busybox() {
                Some(ctx.lock.pin_for(BUSYBOX_PACKAGE, recipe.arch, false)?)
            } else {
                None
            };
            let files = r
                .files
                .iter()
                .map(|(dest, src)| Ok((dest.clone(), hash_path(src)?)))
                .collect::<Result<BTreeMap<_, _>, KeyError>>()?;
            let mut inputs = json!({
                "base": base,
                "packages": r.packages,
                "format": r.format.name(),
                "size": r.size,
                "files": files,
                "modules": r.modules,
                "kernel_modules": r.kernel_modules.as_ref().map(|k| &k.name),
            });
            if let Some(pin) = boot_busybox {
                inputs["boot_busybox"] = json!(pin);
            }
            // Where another arch's applets are linked is what the host's busybox lists.
            if r.base == RootfsBase::Busybox && recipe.arch != Arch::host() {
                inputs["applets_listed_by"] =
                    json!(ctx.lock.pin_for(BUSYBOX_PACKAGE, Arch::host(), false)?);
            }
            inputs
        }
        // The bundle's name is its folder in the guest (`/vmbuild/bundles/<name>`).
        Spec::Bundle(BundleSpec::Folder(tests)) => {
            json!({ "name": recipe.name, "tests": hash_path(tests)? })
        }
        Spec::Bundle(BundleSpec::Build(build)) => {
            // Which tools a command runs cannot be known: the compiler and make, which
            // most builds use, are keyed always, as for kernels.
            tool("gcc", &["--version"])?;
            tool("make", &["--version"])?;
            json!({ "name": recipe.name, "build": build_inputs(build, ctx)? })
        }
        Spec::Test(t) => {
            match t.vm.backend {
                BackendKind::Qemu => tool(BackendKind::Qemu.program(t.vm.arch), &["--version"])?,
                // bhyve and grub-bhyve print no version: their binaries are their identity.
                // A host without them has no results made with them to find: its key says
                // so, and the test phase says what to install (exit 4).
                BackendKind::Bhyve => {
                    for program in [BackendKind::Bhyve.program(t.vm.arch), "grub-bhyve"] {
                        let digest = ctx.tools.binary_digest(program);
                        by_digest.push((program, digest.unwrap_or_else(|_| ABSENT.into())));
                    }
                }
            }
            let mut inputs = json!({
                // Results name their recipe (results.json, junit.xml).
                "name": recipe.name,
                "kernel": t.kernel.name,
                "rootfs": t.rootfs.name,
                "bundles": t.bundles.iter().map(|b| &b.name).collect::<Vec<_>>(),
                "after": t.after.iter().map(|b| &b.name).collect::<Vec<_>>(),
                "timeout_ms": t.timeout.as_millis() as u64,
                // The agent, stage 1 and the kernel modules vmbuild adds to the guest.
                "guest_sha256": crate::format::guest::fingerprint(),
                "vm": {
                    "backend": format!("{:?}", t.vm.backend).to_lowercase(),
                    "machine": t.vm.machine,
                    "memory_mb": t.vm.memory_mb,
                    "cpus": t.vm.cpus,
                    "disks": t.vm.disks.iter().map(|d| json!({"name": d.name, "size": d.size})).collect::<Vec<_>>(),
                    "share_disks": t.vm.share_disks,
                    "cmdline": t.vm.cmdline,
                    "net": t.vm.net.name(),
                },
            });
            // Only when asked for, so keys of recipes that do not ask stay as they were.
            if t.vm.isolation != Isolation::Vm {
                inputs["vm"]["isolation"] = json!(t.vm.isolation.name());
            }
            inputs
        }
    };
    for (name, digest) in by_digest {
        tools.insert(name.to_string(), digest);
    }
    Ok(KeyInputs {
        schema: KEY_SCHEMA,
        kind: recipe.kind(),
        arch: recipe.target_arch().map_or(ANY_ARCH, Arch::name),
        recipe: recipe_inputs,
        deps,
        tools,
    })
}

/// What a `[build]` command sees: its argv, each input's content by the name it has in
/// the working folder, and each Debian package's pin by name (maps, so that `explain`
/// names the one that changed). The recipes it reads are in `deps` by their keys; their
/// names (the variables it gets) here.
fn build_inputs(build: &BundleBuild, ctx: &KeyContext) -> Result<Value, KeyError> {
    let inputs = build
        .inputs
        .iter()
        .map(|i| Ok((i.name.clone(), hash_path(&i.path)?)))
        .collect::<Result<BTreeMap<_, _>, KeyError>>()?;
    let debs = build
        .debs
        .iter()
        .map(|d| Ok((d.clone(), ctx.lock.pin_for(d, Arch::host(), false)?)))
        .collect::<Result<BTreeMap<_, _>, KeyError>>()?;
    Ok(json!({
        "command": build.command,
        "inputs": inputs,
        "debs": debs,
        "recipes": build.recipes.iter().map(|r| &r.name).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::recipe::{Project, RecipeRef};

    #[test]
    fn the_toolchain_is_the_one_the_make_flags_pick() {
        let pick = |flags: &[&str]| {
            kernel_toolchain(&flags.iter().map(|f| f.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(pick(&[]), ("gcc".into(), "ld".into()));
        assert_eq!(pick(&["LLVM=1"]), ("clang".into(), "ld.lld".into()));
        assert_eq!(pick(&["LLVM=-15"]), ("clang-15".into(), "ld.lld-15".into()));
        assert_eq!(
            pick(&["CROSS_COMPILE=/opt/x/bin/x86_64-linux-gnu-"]),
            (
                "/opt/x/bin/x86_64-linux-gnu-gcc".into(),
                "/opt/x/bin/x86_64-linux-gnu-ld".into()
            )
        );
        assert_eq!(pick(&["CC=ccache gcc"]).0, "ccache");
    }

    #[test]
    fn a_build_bundle_is_keyed_by_what_its_command_sees_and_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        let recipe = |command: &str| {
            format!("kind = \"bundle\"\n[build]\ncommand = {command}\ninputs = [\"build.sh\", \"../src\"]\n")
        };
        write("recipes/b.toml", &recipe("[\"sh\", \"build.sh\"]"));
        write("recipes/build.sh", "cc -o $VMBUILD_OUT/t t.c\n");
        write("src/t.c", "int main(void) { return 0; }\n");
        let project = Project {
            root: root.to_path_buf(),
        };
        let tools = Tools::new(&root.join("cache"));
        let lock = Lock::open(root, false).unwrap();
        let ctx = KeyContext {
            tools: &tools,
            lock: &lock,
            stat_cache_dir: root.join("cache/statcache"),
            trees_dir: root.join("cache/trees"),
        };
        let key_with = |deps: &[(&str, &str)]| {
            let at = RecipeRef {
                name: "b".into(),
                file: root.join("recipes/b.toml"),
                location: None,
            };
            let recipe = Recipe::load(&project, &at).unwrap();
            let deps = deps
                .iter()
                .map(|(n, k)| (n.to_string(), k.to_string()))
                .collect();
            compute_key(&recipe, deps, &ctx).unwrap()
        };
        let key = || key_with(&[]).key();
        let first = key_with(&[]);
        assert!(first.tools.contains_key("gcc") && first.tools.contains_key("make"));
        let k0 = first.key();

        // Files beside the recipe and the inputs are not the command's business.
        write("recipes/secret", "not an input");
        write("notes.txt", "nor this");
        assert_eq!(key(), k0);

        // Each input's content, exec bit and the files of an input folder are.
        write("recipes/build.sh", "cc -O2 -o $VMBUILD_OUT/t t.c\n");
        let k1 = key();
        assert_ne!(k1, k0);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("recipes/build.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let k2 = key();
        assert_ne!(k2, k1);
        write("src/t.h", "#define X 1\n");
        let k3 = key();
        assert_ne!(k3, k2);

        // So are the command and the keys of the recipes it reads.
        write("recipes/b.toml", &recipe("[\"sh\", \"-e\", \"build.sh\"]"));
        let k4 = key();
        assert_ne!(k4, k3);
        assert_ne!(key_with(&[("k", &"a".repeat(64))]).key(), k4);
    }
}
