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
use crate::recipe::grammar;

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
        if let Some(pin) = self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(package)
        {
            return Ok(pin.clone());
        }
        let pin = apt::resolve(package, follow_kernel_meta)?;
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        pins.insert(package.to_string(), pin.clone());
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
    grammar::debian_package(&pin.name)?;
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
