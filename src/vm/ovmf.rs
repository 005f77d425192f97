//! Where qemu's UEFI firmware is on this host.

use std::path::{Path, PathBuf};

use super::Firmware;

/// Debian's OVMF (package `ovmf`), 4 MiB flash first; Fedora's and Arch's paths after.
/// `VMBUILD_OVMF_CODE` (with `VMBUILD_OVMF_VARS`) names another build.
const OVMF: [(&str, &str); 4] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
        "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
    ),
];

pub(crate) fn find(
    code: Option<std::ffi::OsString>,
    vars: Option<std::ffi::OsString>,
) -> Result<Firmware, String> {
    if let Some(code) = code {
        let code = PathBuf::from(code);
        let vars = vars.map(PathBuf::from);
        for file in std::iter::once(&code).chain(vars.as_ref()) {
            if !file.is_file() {
                return Err(format!(
                    "the UEFI firmware file {} (VMBUILD_OVMF_CODE, VMBUILD_OVMF_VARS) {}",
                    file.display(),
                    if file.exists() {
                        "is not a file"
                    } else {
                        "does not exist"
                    }
                ));
            }
        }
        return Ok(Firmware { code, vars });
    }
    OVMF.iter()
        .find(|(code, vars)| Path::new(code).is_file() && Path::new(vars).is_file())
        .map(|(code, vars)| Firmware {
            code: code.into(),
            vars: Some(vars.into()),
        })
        .ok_or_else(|| {
            format!(
                "qemu needs UEFI firmware to boot a disk image, and none is installed (looked \
                 for {})\n  help: install it with `apt-get install ovmf`, or name the files in \
                 VMBUILD_OVMF_CODE and VMBUILD_OVMF_VARS",
                OVMF[0].0
            )
        })
}
