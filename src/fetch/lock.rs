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
        self.pin_as(package.to_string(), package, None, follow_kernel_meta)
    }

    /// The pin for `package` built for `arch`: the host's own build is the unqualified
    /// name's pin (the lock's `busybox-static`), another's is pinned as `NAME:ARCH`
    /// (`busybox-static:arm64`), which the host's apt fetches once it has that
    /// architecture (`dpkg --add-architecture arm64`).
    pub fn pin_for(
        &self,
        package: &str,
        arch: Arch,
        follow_kernel_meta: bool,
    ) -> Result<Pin, FetchError> {
        if arch == Arch::host() {
            return self.pin(package, follow_kernel_meta);
        }
        let name = format!("{package}:{}", arch.debian());
        self.pin_as(name, package, Some(arch.debian()), follow_kernel_meta)
    }

    fn pin_as(
        &self,
        name: String,
        package: &str,
        architecture: Option<&str>,
        follow_kernel_meta: bool,
    ) -> Result<Pin, FetchError> {
        if let Some(pin) = self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Ok(pin.clone());
        }
        let pin = apt::resolve(&name, package, architecture, follow_kernel_meta)?;
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.insert(name, pin.clone());
        self.save(&pins)?;
        Ok(pin)
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

/// A pin's fields reach `apt-get download NAME=VERSION` and a path in the downloads
/// folder: each must follow its grammar, whatever the lock file says.
fn check_pin(pin: &Pin) -> Result<(), String> {
    // `NAME` or `NAME:ARCH`, as `pin_for` writes them.
    let (name, arch) = match pin.name.split_once(':') {
        Some((name, arch)) => (name, Some(arch)),
        None => (pin.name.as_str(), None),
    };
    grammar::debian_package(name)?;
    if arch.is_some_and(|a| a != pin.architecture) {
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
        assert!(check_pin(&pin("busybox static:arm64", "arm64")).is_err());
    }

    #[test]
    fn the_hosts_own_arch_is_the_unqualified_pin() {
        let dir = tempfile::tempdir().unwrap();
        let host = pin_text("busybox-static", Arch::host().debian(), 'b');
        let other = pin_text("busybox-static:arm64", "arm64", 'c');
        fs_err::write(dir.path().join(LOCK_FILE), format!("{host}\n{other}")).unwrap();
        let lock = Lock::open(dir.path(), false).unwrap();
        // Both are in the lock: apt is not asked.
        assert_eq!(
            lock.pin_for("busybox-static", Arch::host(), false)
                .unwrap()
                .sha256,
            "b".repeat(64)
        );
        if Arch::host() == Arch::X86_64 {
            let arm = lock
                .pin_for("busybox-static", Arch::Aarch64, false)
                .unwrap();
            assert_eq!(
                (arm.architecture.as_str(), arm.sha256),
                ("arm64", "c".repeat(64))
            );
        }
    }

    fn pin_text(name: &str, architecture: &str, digit: char) -> String {
        format!(
            "[[package]]\nname = \"{name}\"\npackage = \"busybox-static\"\nversion = \"1:1.35.0-4\"\n\
             architecture = \"{architecture}\"\nsha256 = \"{}\"\n",
            digit.to_string().repeat(64)
        )
    }
}
