//! Debian packages through the host's apt: resolve a name to a pinned version and sha256
//! (`apt-cache show`), download exactly that version (`apt-get download`), verify it,
//! and unpack it without installing (`dpkg-deb -x`). The host's apt configuration decides
//! where packages come from.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::FetchError;
use crate::fsio::io_err;
use crate::hashing;
use crate::process::{self, ProcessError};

/// A Debian package pinned to one exact build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// What the recipe asked for (may be a meta package).
    pub name: String,
    /// The package actually fetched.
    pub package: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
}

/// The host's Debian codename (`bookworm`), from /etc/os-release: the release whose
/// package lists the host's apt has.
pub fn host_release() -> Option<String> {
    let text = fs_err::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The names among `packages` the host's apt knows nothing of: neither a package nor a
/// name other packages provide. One `apt-cache policy` for all of them: it prints a
/// `NAME:` section for each name it knows, and nothing for the others.
/// Empty when the host has no package lists to ask (`base-files`, in every release, is
/// unknown too): then nothing can be said before mmdebstrap fetches its own.
pub fn unknown_packages(packages: &[String]) -> Result<Vec<String>, FetchError> {
    const EVERY_RELEASE_HAS: &str = "base-files";
    if packages.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = Command::new("apt-cache");
    cmd.arg("policy")
        .arg("--")
        .args(packages)
        .arg(EVERY_RELEASE_HAS);
    let out = process::run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let known: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with(char::is_whitespace))
        .filter_map(|l| l.strip_suffix(':'))
        .collect();
    if !known.contains(&EVERY_RELEASE_HAS) {
        return Ok(Vec::new());
    }
    Ok(packages
        .iter()
        .filter(|p| !known.contains(&p.as_str()))
        .cloned()
        .collect())
}

/// The stanza fields of `apt-cache show --no-all-versions`.
fn show(package: &str) -> Result<Vec<(String, String)>, FetchError> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", package])
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProcessError::Missing {
                command: format!("apt-cache show {package}"),
                tool: "apt-cache".into(),
                package: "apt".into(),
            }
            .into())
        }
        Err(source) => {
            return Err(ProcessError::Spawn {
                command: format!("apt-cache show {package}"),
                source,
            }
            .into())
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.trim().is_empty() {
        return Err(FetchError::UnknownPackage {
            package: package.to_string(),
        });
    }
    // Only the first stanza: the candidate version.
    let stanza = text.split("\n\n").next().unwrap_or("");
    Ok(stanza
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        })
        .collect())
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// The real kernel image package a meta package like `linux-image-amd64` depends on.
fn kernel_image_dependency(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| {
            d.strip_prefix("linux-image-")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .map(str::to_string)
}

/// Resolves `package` (for Debian's `architecture`, when not the host's) to the
/// candidate version apt would fetch now, as the pin named `request`.
pub fn resolve(
    request: &str,
    package: &str,
    architecture: Option<&str>,
    follow_kernel_meta: bool,
) -> Result<Pin, FetchError> {
    let qualified = |name: &str| match architecture {
        Some(arch) => format!("{name}:{arch}"),
        None => name.to_string(),
    };
    let show = |name: &str| {
        show(&qualified(name)).map_err(|e| match (e, architecture) {
            // No such package, or none the host's apt can see: it lacks the architecture.
            (FetchError::UnknownPackage { package }, Some(arch)) if !apt_has_architecture(arch) => {
                FetchError::UnknownForeignPackage {
                    package,
                    arch: arch.to_string(),
                }
            }
            (e, _) => e,
        })
    };
    let mut package = package.to_string();
    let mut fields = show(&package)?;
    if follow_kernel_meta {
        if let Some(real) = field(&fields, "Depends").and_then(kernel_image_dependency) {
            package = real;
            fields = show(&package)?;
        }
    }
    let get = |name: &str| {
        field(&fields, name)
            .map(str::to_string)
            .ok_or_else(|| FetchError::UnknownPackage {
                package: package.clone(),
            })
    };
    Ok(Pin {
        name: request.to_string(),
        version: get("Version")?,
        architecture: get("Architecture")?,
        sha256: get("SHA256")?,
        package: package.clone(),
    })
}

/// The pinned .deb, downloaded once into `downloads` and verified against the pin: its
/// sha256, and the package and architecture its control file names (a pin whose sha256
/// names another build, already downloaded, is refused).
pub fn download(pin: &Pin, downloads: &Path) -> Result<PathBuf, FetchError> {
    let target = downloads.join(format!("{}.deb", pin.sha256));
    if !target.is_file() {
        fetch(pin, downloads, &target)?;
    }
    check_control(pin, &target)?;
    Ok(target)
}

/// Whether the .deb at `deb` is the package and build `pin` names.
fn check_control(pin: &Pin, deb: &Path) -> Result<(), FetchError> {
    let out = process::run(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .args(["Package", "Architecture"]),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let (package, architecture) = (field("Package"), field("Architecture"));
    if package == pin.package && architecture == pin.architecture {
        return Ok(());
    }
    Err(FetchError::WrongBuild {
        message: format!(
            "vmbuild.lock pins `{}` to {} for {} (sha256 {}), but that file is {package} for \
             {architecture}",
            pin.name, pin.package, pin.architecture, pin.sha256
        ),
    })
}

/// Downloads the pinned .deb to `target`, verified against its sha256.
fn fetch(pin: &Pin, downloads: &Path, target: &Path) -> Result<(), FetchError> {
    fs_err::create_dir_all(downloads).map_err(io_err("create", downloads))?;
    let tmp = tempfile::Builder::new()
        .prefix(".apt-")
        .tempdir_in(downloads)
        .map_err(io_err("create a temp folder in", downloads))?;
    // A pin for an architecture the host's apt lacks: say so, not apt's "Unable to
    // locate package".
    if pin.architecture != "all" && !apt_has_architecture(&pin.architecture) {
        return Err(FetchError::UnknownForeignPackage {
            package: format!("{}:{}", pin.package, pin.architecture),
            arch: pin.architecture.clone(),
        });
    }
    let spec = download_spec(pin);
    process::run(
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(tmp.path()),
    )?;
    let deb = fs_err::read_dir(tmp.path())
        .map_err(io_err("read", tmp.path()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| FetchError::UnknownPackage {
            package: spec.clone(),
        })?;
    let (actual, _) = hashing::sha256_file(&deb).map_err(io_err("hash", &deb))?;
    if actual != pin.sha256 {
        return Err(FetchError::HashMismatch {
            what: format!("Debian package {spec}"),
            expected: pin.sha256.clone(),
            actual,
        });
    }
    fs_err::rename(&deb, target).map_err(io_err("store", target))?;
    Ok(())
}

/// Whether the host's apt fetches packages for Debian's `arch`: its own, or one
/// `dpkg --add-architecture` added.
fn apt_has_architecture(arch: &str) -> bool {
    let ask = |flag: &str| {
        Command::new("dpkg")
            .arg(flag)
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    };
    ask("--print-architecture").trim() == arch
        || ask("--print-foreign-architectures")
            .split_whitespace()
            .any(|a| a == arch)
}

/// What `apt-get download` is asked for: the exact build, for its architecture (an
/// `all` package has one build, which apt names without it).
fn download_spec(pin: &Pin) -> String {
    match pin.architecture.as_str() {
        "all" => format!("{}={}", pin.package, pin.version),
        arch => format!("{}:{arch}={}", pin.package, pin.version),
    }
}

/// Unpacks a .deb's files into `dest` without installing it.
pub fn extract(deb: &Path, dest: &Path) -> Result<(), FetchError> {
    process::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_package_dependency_is_the_versioned_image() {
        let deps = "linux-image-6.1.0-56-amd64 (= 6.1.192-2), linux-base";
        assert_eq!(
            kernel_image_dependency(deps).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(kernel_image_dependency("libc6 (>= 2.36)"), None);
    }

    #[test]
    fn a_download_names_the_pinned_build_and_its_architecture() {
        let pin = |architecture: &str| Pin {
            name: "busybox-static:arm64".into(),
            package: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            architecture: architecture.into(),
            sha256: "0".repeat(64),
        };
        assert_eq!(
            download_spec(&pin("arm64")),
            "busybox-static:arm64=1:1.35.0-4"
        );
        assert_eq!(download_spec(&pin("all")), "busybox-static=1:1.35.0-4");
    }
}
