//! Validation: a recipe or module file, read with spans, checked field by field into
//! the `spec` types. Every complaint is a diagnostic at the offending value.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::project::file_stem;
use super::spec::*;
use super::units;
use super::{did_you_mean, grammar, raw, Diagnostic, Location, Project, RecipeError, Result};

mod bundle;
mod disk;
mod test_recipe;

impl Recipe {
    /// Reads and validates the recipe a reference points at.
    pub fn load(project: &Project, at: &RecipeRef) -> Result<Recipe> {
        let file = &at.file;
        // A FIFO or a device named `x.toml` must not block or spin here.
        if !fs_err::metadata(file).is_ok_and(|m| m.is_file()) {
            return Err(RecipeError::Read {
                path: file.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        let text = fs_err::read_to_string(file).map_err(|source| RecipeError::Read {
            path: file.clone(),
            source,
        })?;
        let doc = Document {
            file: file.clone(),
            text,
            project,
        };
        let (arch, spec) = doc.parse_spec()?;
        Ok(Recipe {
            name: at.name.clone(),
            file: file.clone(),
            arch,
            spec,
        })
    }
}

const KINDS: [&str; 5] = ["kernel", "rootfs", "bundle", "test", "disk"];

/// One TOML file being validated: recipe or module.
struct Document<'a> {
    file: PathBuf,
    text: String,
    project: &'a Project,
}

impl Document<'_> {
    fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }

    fn at<T>(&self, value: &Spanned<T>) -> Location {
        Location::from_span(&self.file, &self.text, value.span())
    }

    fn error<T>(&self, value: &Spanned<T>, message: impl Into<String>) -> RecipeError {
        Diagnostic::new(self.at(value), message).into()
    }

    /// Deserializes the whole file, turning serde's complaint into a diagnostic.
    fn deserialize<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_string();
            let mut diag = Diagnostic::new(
                Location::from_span(&self.file, &self.text, span),
                message.clone(),
            );
            if let Some(help) = unknown_field_help(&message) {
                diag = diag.with_help(help);
            }
            diag.into()
        })
    }

    /// The recipe's `arch`: x86_64 unless it names another.
    fn arch(&self) -> Result<Arch> {
        let raw: raw::ArchField = self.deserialize()?;
        let Some(arch) = raw.arch else {
            return Ok(Arch::default());
        };
        let names: Vec<&str> = Arch::ALL.iter().map(|a| a.name()).collect();
        Arch::parse(arch.get_ref()).ok_or_else(|| {
            let debian = Arch::ALL.into_iter().find(|a| a.debian() == arch.get_ref());
            Diagnostic::new(self.at(&arch), format!("unknown arch `{}`", arch.get_ref()))
                .with_help(match debian {
                    Some(a) => format!(
                        "`{}` is Debian's name: write arch = \"{}\"",
                        a.debian(),
                        a.name()
                    ),
                    None => format!("expected one of {}", quoted_list(&names)),
                })
                .into()
        })
    }

    /// The recipe's arch and spec.
    fn parse_spec(&self) -> Result<(Arch, Spec)> {
        let kind: raw::Kind = self.deserialize()?;
        let Some(kind) = kind.kind else {
            let loc = Location::from_span(&self.file, &self.text, 0..0);
            return Err(Diagnostic::new(loc, "missing field `kind`")
                .with_help(format!("add one of: kind = {}", quoted_list(&KINDS)))
                .into());
        };
        match kind.get_ref().as_str() {
            "kernel" => Ok((self.arch()?, Spec::Kernel(self.kernel()?))),
            "rootfs" => {
                let arch = self.arch()?;
                Ok((arch, Spec::Rootfs(self.rootfs(arch)?)))
            }
            // A `[build]` bundle's command runs here, for this host.
            "bundle" => Ok((Arch::host(), Spec::Bundle(self.bundle()?))),
            "test" => {
                let arch = self.arch()?;
                Ok((arch, Spec::Test(self.test(arch)?)))
            }
            // Bootable disks are UEFI x86-64 images (`format::disk`).
            "disk" => Ok((Arch::X86_64, Spec::Disk(self.disk()?))),
            other => {
                let mut d = Diagnostic::new(self.at(&kind), format!("unknown kind `{other}`"));
                d = d.with_help(match did_you_mean(other, KINDS) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("expected one of {}", quoted_list(&KINDS)),
                });
                Err(d.into())
            }
        }
    }

    fn kernel(&self) -> Result<KernelSpec> {
        let raw: raw::Kernel = self.deserialize()?;
        let make_flags = raw
            .make_flags
            .iter()
            .map(|f| {
                grammar::make_assignment(f.get_ref())
                    .map(|()| f.get_ref().clone())
                    .map_err(|e| self.error(f, e))
            })
            .collect::<Result<_>>()?;
        match (raw.source, raw.prebuilt) {
            (Some(source), None) => {
                let config = raw.config.ok_or_else(|| {
                    self.error(
                        &raw.kind,
                        "a kernel built from [source] needs a [config] table",
                    )
                })?;
                let base = match config.base.as_ref().map(|b| b.get_ref().as_str()) {
                    None => ConfigBase::Target("tinyconfig".into()),
                    Some(t @ ("tinyconfig" | "defconfig" | "allnoconfig")) => {
                        ConfigBase::Target(t.into())
                    }
                    Some(_) => ConfigBase::File(
                        self.local_path(config.base.as_ref().unwrap_or(&raw.kind))?,
                    ),
                };
                let fragments = config
                    .fragments
                    .iter()
                    .map(|f| self.local_path(f))
                    .collect::<Result<_>>()?;
                Ok(KernelSpec::FromSource {
                    source: self.fetch(&source)?,
                    base,
                    fragments,
                    make_flags,
                })
            }
            (None, Some(prebuilt)) => {
                if let Some(config) = raw.config.as_ref().and_then(|c| c.base.as_ref()) {
                    return Err(self.error(
                        config,
                        "[config] only applies to kernels built from [source]",
                    ));
                }
                Ok(KernelSpec::Prebuilt(self.fetch(&prebuilt)?))
            }
            (Some(source), Some(_)) => Err(self.error(
                &source,
                "a kernel has either [source] or [prebuilt], not both",
            )),
            (None, None) => Err(Diagnostic::new(
                self.at(&raw.kind),
                "a kernel needs a [source] or a [prebuilt] table",
            )
            .with_help("for Debian's kernel: [prebuilt] deb = \"linux-image-amd64\"")
            .into()),
        }
    }

    /// Exactly one of `deb`, `url` + `sha256`, `path`.
    fn fetch(&self, table: &Spanned<raw::Source>) -> Result<Fetch> {
        let src = table.get_ref();
        let given = [src.deb.is_some(), src.url.is_some(), src.path.is_some()];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(Diagnostic::new(
                self.at(table),
                "expected exactly one of `deb`, `url` (with `sha256`) or `path`",
            )
            .into());
        }
        if let Some(deb) = &src.deb {
            let package = deb.get_ref();
            grammar::debian_package(package).map_err(|e| self.error(deb, e))?;
            return Ok(Fetch::Deb {
                package: package.clone(),
                location: self.at(deb),
            });
        }
        if let Some(url) = &src.url {
            let Some(sha) = &src.sha256 else {
                return Err(Diagnostic::new(
                    self.at(url),
                    "a `url` needs a `sha256` to pin its content",
                )
                .with_help("run `sha256sum` on the file and add sha256 = \"...\"")
                .into());
            };
            let hex = sha.get_ref().to_ascii_lowercase();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(self.error(sha, "`sha256` must be 64 hexadecimal digits"));
            }
            grammar::url(url.get_ref()).map_err(|e| self.error(url, e))?;
            return Ok(Fetch::Url {
                url: url.get_ref().clone(),
                sha256: hex,
            });
        }
        let path = src.path.as_ref().expect("one of the three is set");
        Ok(Fetch::Path(self.local_path(path)?))
    }

    /// A path relative to this file that must exist.
    fn local_path(&self, value: &Spanned<String>) -> Result<PathBuf> {
        let path = self.dir().join(value.get_ref());
        if !path.exists() {
            return Err(self.error(value, format!("no such file or folder: {}", path.display())));
        }
        Ok(fs_err::canonicalize(&path).unwrap_or(path))
    }

    /// A `[files]` source: like `local_path`, but a symlink is kept as the link (only its
    /// parent folders are resolved), so an image can carry links such as
    /// `/linuxrc -> /bin/busybox` that point at paths existing only inside it.
    fn image_source(&self, value: &Spanned<String>) -> Result<PathBuf> {
        let path = self.dir().join(value.get_ref());
        if path.symlink_metadata().is_err() {
            return Err(self.error(value, format!("no such file or folder: {}", path.display())));
        }
        let resolved = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => fs_err::canonicalize(parent).map(|p| p.join(name)),
            _ => fs_err::canonicalize(&path),
        };
        Ok(resolved.unwrap_or(path))
    }

    /// A reference to another recipe: a name in `recipes/` or a path to a `.toml`.
    fn reference(&self, value: &Spanned<String>) -> Result<RecipeRef> {
        let location = Some(self.at(value));
        let text = value.get_ref();
        if text.ends_with(".toml") {
            let file = self.local_path(value)?;
            let name = file_stem(&file);
            grammar::recipe_name(&name).map_err(|e| self.error(value, e))?;
            return Ok(RecipeRef {
                name,
                file,
                location,
            });
        }
        grammar::recipe_name(text).map_err(|e| self.error(value, e))?;
        let file = self.project.recipes_dir().join(format!("{text}.toml"));
        if !file.is_file() {
            let names = self.project.recipe_names();
            let mut d = Diagnostic::new(self.at(value), format!("no recipe named `{text}`"));
            if let Some(s) = did_you_mean(text, names.iter().map(String::as_str)) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            return Err(d.into());
        }
        Ok(RecipeRef {
            name: text.clone(),
            file,
            location,
        })
    }

    fn rootfs(&self, arch: Arch) -> Result<RootfsSpec> {
        let raw: raw::Rootfs = self.deserialize()?;
        let mut merged = MergedRootfs::default();
        let mut modules = Vec::new();
        for include in &raw.include {
            let name = include.get_ref();
            let module = self.module(include)?;
            let module_raw: raw::Rootfs = module.deserialize()?;
            if let Some(kind) = &module_raw.kind {
                return Err(module.error(
                    kind,
                    "a module does not set `kind`; the recipe that includes it does",
                ));
            }
            if let Some(arch) = &module_raw.arch {
                return Err(module.error(
                    arch,
                    "a module does not set `arch`; the recipe that includes it does",
                ));
            }
            if let Some(nested) = module_raw.include.first() {
                return Err(module.error(nested, "modules cannot include other modules"));
            }
            module.merge_rootfs(module_raw, &mut merged)?;
            modules.push(name.clone());
        }
        self.merge_rootfs(raw, &mut merged)?;

        let base = match merged.base.as_ref().map(|(b, _)| b.as_str()) {
            None | Some("busybox") => RootfsBase::Busybox,
            Some("none") => RootfsBase::Empty,
            Some(b) if b.starts_with("debian:") => {
                let release = &b["debian:".len()..];
                let loc = || merged.base.as_ref().map(|(_, l)| l.clone()).expect("set");
                if let Err(e) = grammar::debian_release(release) {
                    return Err(Diagnostic::new(loc(), e).into());
                }
                // mmdebstrap would run the packages' scripts, built for the guest's
                // machine, on this one.
                if arch != Arch::host() {
                    return Err(Diagnostic::new(
                        loc(),
                        format!(
                            "a Debian root is made on this {} host, and vmbuild makes Debian \
                             roots for it only, not for {}",
                            Arch::host().name(),
                            arch.name()
                        ),
                    )
                    .with_help("use base = \"busybox\" (Debian's static busybox for that arch)")
                    .into());
                }
                RootfsBase::Debian(release.to_string())
            }
            Some(b) => {
                let loc = merged.base.as_ref().map(|(_, l)| l.clone()).expect("set");
                return Err(Diagnostic::new(loc, format!("unknown base `{b}`"))
                    .with_help(
                        "expected `busybox`, `debian:<release>` (e.g. `debian:bookworm`) or `none`",
                    )
                    .into());
            }
        };
        let format = match merged.format.as_ref().map(|(f, _)| f.as_str()) {
            None | Some("cpio") => RootfsFormat::Cpio,
            Some("ext4") => RootfsFormat::Ext4,
            Some("tar") => RootfsFormat::Tar,
            Some("dir") => RootfsFormat::Dir,
            Some(f) => {
                let loc = merged.format.as_ref().map(|(_, l)| l.clone()).expect("set");
                return Err(Diagnostic::new(loc, format!("unknown format `{f}`"))
                    .with_help("expected `cpio`, `ext4`, `tar` or `dir`")
                    .into());
            }
        };
        for (package, loc) in &merged.packages {
            if let Err(e) = grammar::debian_package(package) {
                return Err(Diagnostic::new(loc.clone(), e).into());
            }
        }
        if let (Some(first), RootfsBase::Busybox | RootfsBase::Empty) =
            (merged.packages.first(), &base)
        {
            return Err(
                Diagnostic::new(first.1.clone(), "`packages` needs a Debian base")
                    .with_help("set base = \"debian:bookworm\"")
                    .into(),
            );
        }
        let size = match &merged.size {
            None => None,
            Some((_, loc)) if format != RootfsFormat::Ext4 => {
                return Err(Diagnostic::new(
                    loc.clone(),
                    "`size` only applies to format = \"ext4\"",
                )
                .into())
            }
            Some((text, loc)) => Some(
                units::EXT4_IMAGE
                    .parse(text)
                    .map_err(|e| RecipeError::from(Diagnostic::new(loc.clone(), e)))?,
            ),
        };
        Ok(RootfsSpec {
            base,
            packages: merged.packages.into_iter().map(|(p, _)| p).collect(),
            format,
            size,
            kernel_modules: merged.kernel_modules,
            files: merged.files,
            modules,
        })
    }

    /// Opens `modules/<name>/module.toml` for an `include` entry.
    fn module(&self, include: &Spanned<String>) -> Result<Document<'_>> {
        let name = include.get_ref();
        let file = self.project.modules_dir().join(name).join("module.toml");
        let safe = Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !safe || !file.is_file() {
            let available: Vec<String> = std::fs::read_dir(self.project.modules_dir())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join("module.toml").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            let mut d = Diagnostic::new(
                self.at(include),
                format!("no module `{name}` (looked for {})", file.display()),
            );
            if let Some(s) = did_you_mean(name, available.iter().map(String::as_str)) {
                d = d.with_help(format!("did you mean `{s}`?"));
            }
            return Err(d.into());
        }
        let text = fs_err::read_to_string(&file).map_err(|source| RecipeError::Read {
            path: file.clone(),
            source,
        })?;
        Ok(Document {
            file,
            text,
            project: self.project,
        })
    }

    /// Merges one file's rootfs fields into `into`: lists append, tables merge, and a later
    /// file (the recipe, merged last) wins on scalars.
    fn merge_rootfs(&self, raw: raw::Rootfs, into: &mut MergedRootfs) -> Result<()> {
        let scalar =
            |v: &Option<Spanned<String>>| v.as_ref().map(|v| (v.get_ref().clone(), self.at(v)));
        if raw.base.is_some() {
            into.base = scalar(&raw.base);
        }
        if raw.format.is_some() {
            into.format = scalar(&raw.format);
        }
        if raw.size.is_some() {
            into.size = scalar(&raw.size);
        }
        if let Some(r) = &raw.kernel_modules {
            into.kernel_modules = Some(self.reference(r)?);
        }
        for p in &raw.packages {
            into.packages.push((p.get_ref().clone(), self.at(p)));
        }
        for (dest, source) in &raw.files {
            let dest_text = dest.get_ref();
            let dest_ok = dest_text.starts_with('/')
                && Path::new(dest_text)
                    .components()
                    .all(|c| !matches!(c, Component::ParentDir | Component::CurDir));
            if !dest_ok || dest_text == "/" {
                return Err(Diagnostic::new(
                    self.at(dest),
                    format!("destination `{dest_text}` must be an absolute path in the image without `..`"),
                )
                .into());
            }
            let path = self.image_source(source)?;
            if !path.starts_with(&self.project.root) {
                return Err(self.error(
                    source,
                    format!(
                        "source {} is outside the project {}",
                        path.display(),
                        self.project.root.display()
                    ),
                ));
            }
            into.files.insert(dest_text.clone(), path);
        }
        Ok(())
    }
}

#[derive(Default)]
struct MergedRootfs {
    base: Option<(String, Location)>,
    format: Option<(String, Location)>,
    size: Option<(String, Location)>,
    kernel_modules: Option<RecipeRef>,
    packages: Vec<(String, Location)>,
    files: BTreeMap<String, PathBuf>,
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|i| format!("\"{i}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde says "unknown field `formt`, expected one of `a`, `b`": turn it into a did-you-mean.
fn unknown_field_help(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match did_you_mean(field, candidates.iter().copied()) {
        Some(s) => Some(format!("did you mean `{s}`?")),
        None if !candidates.is_empty() => {
            Some(format!("expected one of {}", candidates.join(", ")))
        }
        None => None,
    }
}

#[cfg(test)]
pub(in crate::recipe) mod tests;
