//! `vmbuild.lock`: the exact Debian package versions and sha256s builds used, like
//! Cargo.lock. A package missing from the lock is resolved with apt once and written
//! back; `vmbuild lock` resolves everything again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::apt::{self, Pin};
use super::FetchError;
use crate::fsio::io_err;
use crate::recipe::{grammar, Arch};

pub const LOCK_FILE: &str = "vmbuild.lock";

#[derive(Serialize, Deserialize, Default)]
struct LockFile {
    #[serde(default, rename = "package")]
    packages: Vec<Pin>,
}

/// The project's pins, shared by every builder of one run.
pub struct Lock {
    path: PathBuf,
    pins: Mutex<BTreeMap<String, Pin>>,
    /// Set by `vmbuild lock`: ignore existing pins and resolve everything anew.
    refresh: bool,
}

impl Lock {
    pub fn open(project_root: &Path, refresh: bool) -> Result<Lock, FetchError> {
        let path = project_root.join(LOCK_FILE);
        let pins = match fs_err::read_to_string(&path) {
            Ok(text) if !refresh => {
                let file: LockFile =
                    toml::from_str(&text).map_err(|e| FetchError::BadLockfile {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                for pin in &file.packages {
                    check_pin(pin).map_err(|message| FetchError::BadLockfile {
                        path: path.clone(),
                        message,
                    })?;
                }
                file.packages
                    .into_iter()
                    .map(|p| (p.name.clone(), p))
                    .collect()
            }
            _ => BTreeMap::new(),
        };
        Ok(Lock {
            path,
            pins: Mutex::new(pins),
            refresh,
        })
    }

    /// The pin for a requested package, resolving (and recording) it when new.
    /// `follow_kernel_meta` follows a meta package such as `linux-image-amd64` to the
    /// real image package it depends on.
    pub fn pin(&self, package: &str, follow_kernel_meta: bool) -> Result<Pin, FetchError> {
        self.pin_as(package.to_string(), package, None, None, follow_kernel_meta)
    }

    /// The pin for `package` built for `arch`. The lock names an x86_64 (amd64) build by
    /// the package alone (`busybox-static`, as it always has) and any other as
    /// `NAME:ARCH` (`busybox-static:arm64`), so one lock means the same on every host;
    /// apt fetches another architecture's build once it has that architecture
    /// (`dpkg --add-architecture arm64`). A pin for another architecture is refused.
    pub fn pin_for(
        &self,
        package: &str,
        arch: Arch,
        follow_kernel_meta: bool,
    ) -> Result<Pin, FetchError> {
        let name = match arch {
            Arch::X86_64 => package.to_string(),
            _ => format!("{package}:{}", arch.debian()),
        };
        // The host's own builds are apt's unqualified names.
        let query = (arch != Arch::host()).then(|| arch.debian());
        self.pin_as(name, package, query, Some(arch), follow_kernel_meta)
    }

    /// Whether `pin` (from the lock file, or else fresh from apt) is a build for `arch`
    /// (or for every arch): why not, if it is not.
    fn check_build(&self, pin: &Pin, arch: Arch, from_lock: bool) -> Result<(), FetchError> {
        if pin.architecture == arch.debian() || pin.architecture == "all" {
            return Ok(());
        }
        let message = format!(
            "`{}` is a build for {}, and a build for {} is needed",
            pin.name,
            pin.architecture,
            arch.debian()
        );
        Err(match from_lock {
            true => FetchError::BadLockfile {
                path: self.path.clone(),
                message,
            },
            false => FetchError::WrongBuild {
                message: format!("apt offers the wrong build: {message}"),
            },
        })
    }

    /// The pin named `name`, from the lock or else resolved with apt (asking for the
    /// build for Debian's `query` architecture, when not the host's) and recorded; when
    /// `arch` is given, refused unless it is a build for it.
    fn pin_as(
        &self,
        name: String,
        package: &str,
        query: Option<&str>,
        arch: Option<Arch>,
        follow_kernel_meta: bool,
    ) -> Result<Pin, FetchError> {
        let locked = self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned();
        if let Some(pin) = locked {
            if let Some(arch) = arch {
                self.check_build(&pin, arch, true)?;
            }
            return Ok(pin);
        }
        let pin = apt::resolve(&name, package, query, follow_kernel_meta)?;
        if let Some(arch) = arch {
            self.check_build(&pin, arch, false)?;
        }
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.insert(name, pin.clone());
        // A refresh writes the lock once, whole (`finish_refresh`): one that fails half way
        // leaves the old lock as it was.
        if !self.refresh {
            self.save(&pins)?;
        }
        Ok(pin)
    }

    /// Writes what `vmbuild lock` resolved anew: every pin, and only those.
    pub fn finish_refresh(&self) -> Result<(), FetchError> {
        let pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        self.save(&pins)
    }

    pub fn pins(&self) -> Vec<Pin> {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn save(&self, pins: &BTreeMap<String, Pin>) -> Result<(), FetchError> {
        // Keep pins another process wrote meanwhile, unless refreshing.
        let mut all = if self.refresh {
            BTreeMap::new()
        } else {
            read_pins(&self.path)
        };
        all.extend(pins.iter().map(|(k, v)| (k.clone(), v.clone())));
        let file = LockFile {
            packages: all.into_values().collect(),
        };
        let body = toml::to_string(&file).expect("pins serialize");
        let text = format!("# Written by vmbuild: the exact Debian packages builds use. `vmbuild lock` refreshes it.\n\n{body}");
        let tmp = self
            .path
            .with_extension(format!("lock.tmp.{}", std::process::id()));
        fs_err::write(&tmp, text).map_err(io_err("write", &tmp))?;
        fs_err::rename(&tmp, &self.path).map_err(io_err("write", &self.path))?;
        Ok(())
    }
}

/// A pin's fields reach `apt-get download NAME:ARCH=VERSION` and a path in the downloads
/// folder: each must follow its grammar, whatever the lock file says.
fn check_pin(pin: &Pin) -> Result<(), String> {
    // `NAME` or `NAME:ARCH`, as `pin_for` writes them.
    let (name, arch) = match pin.name.split_once(':') {
        Some((name, arch)) => (name, Some(arch)),
        None => (pin.name.as_str(), None),
    };
    grammar::debian_package(name)?;
    if arch.is_some_and(|a| a != pin.architecture && pin.architecture != "all") {
        return Err(format!(
            "`{}` is pinned to a package for {}",
            pin.name, pin.architecture
        ));
    }
    grammar::debian_package(&pin.package)?;
    let version_ok = pin.version.starts_with(|c: char| c.is_ascii_digit())
        && pin
            .version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c));
    if !version_ok {
        return Err(format!(
            "`{}`: `{}` is not a Debian version",
            pin.name,
            pin.version.escape_debug()
        ));
    }
    if !pin
        .architecture
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(format!("`{}`: bad architecture", pin.name));
    }
    if pin.sha256.len() != 64 || !pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "`{}`: sha256 must be 64 hexadecimal digits",
            pin.name
        ));
    }
    Ok(())
}

fn read_pins(path: &Path) -> BTreeMap<String, Pin> {
    fs_err::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<LockFile>(&t).ok())
        .map(|f| {
            f.packages
                .into_iter()
                .filter(|p| check_pin(p).is_ok())
                .map(|p| (p.name.clone(), p))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_for_another_arch_is_named_by_it_and_must_be_a_build_for_it() {
        let pin = |name: &str, architecture: &str| Pin {
            name: name.into(),
            package: "busybox-static".into(),
            version: "1:1.35.0-4".into(),
            architecture: architecture.into(),
            sha256: "a".repeat(64),
        };
        assert!(check_pin(&pin("busybox-static", "amd64")).is_ok());
        assert!(check_pin(&pin("busybox-static:arm64", "arm64")).is_ok());
        let err = check_pin(&pin("busybox-static:arm64", "amd64")).unwrap_err();
        assert!(err.contains("pinned to a package for amd64"), "{err}");
        assert!(check_pin(&pin("base-files:arm64", "all")).is_ok());
        assert!(check_pin(&pin("busybox static:arm64", "arm64")).is_err());
    }

    #[test]
    fn x86_64_is_the_unqualified_pin_on_every_host_and_a_wrong_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let x86 = pin_text("busybox-static", "amd64", 'b');
        let arm = pin_text("busybox-static:arm64", "arm64", 'c');
        let wrong = pin_text("fio", "arm64", 'd');
        fs_err::write(dir.path().join(LOCK_FILE), format!("{x86}\n{arm}\n{wrong}")).unwrap();
        let lock = Lock::open(dir.path(), false).unwrap();
        // All are in the lock: apt is not asked.
        let pin = |arch| lock.pin_for("busybox-static", arch, false).unwrap();
        assert_eq!(pin(Arch::X86_64).sha256, "b".repeat(64));
        assert_eq!(
            (pin(Arch::Aarch64).architecture, pin(Arch::Aarch64).sha256),
            ("arm64".to_string(), "c".repeat(64))
        );
        let err = lock
            .pin_for("fio", Arch::X86_64, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`fio` is a build for arm64, and a build for amd64 is needed"),
            "{err}"
        );
    }

    fn pin_text(name: &str, architecture: &str, digit: char) -> String {
        let package = name.split(':').next().unwrap();
        format!(
            "[[package]]\nname = \"{name}\"\npackage = \"{package}\"\nversion = \"1:1.35.0-4\"\n\
             architecture = \"{architecture}\"\nsha256 = \"{}\"\n",
            digit.to_string().repeat(64)
        )
    }
}
