//! Disk recipes: a kernel and an ext4 rootfs made into a bootable GPT image.

use super::Document;
use crate::recipe::spec::{BootDiskSpec, ImageFormat};
use crate::recipe::{raw, units, Diagnostic, Result};

/// The longest `cmdline` a disk takes.
const MAX_CMDLINE: usize = 1024;

impl Document<'_> {
    pub(super) fn disk(&self) -> Result<BootDiskSpec> {
        let raw: raw::BootDisk = self.deserialize()?;
        let size = match &raw.size {
            Some(s) => Some(
                units::BOOT_DISK
                    .parse(s.get_ref())
                    .map_err(|e| self.error(s, e))?,
            ),
            None => None,
        };
        let format = match raw.format.as_ref().map(|f| f.get_ref().as_str()) {
            None | Some("raw") => ImageFormat::Raw,
            Some("qcow2") => ImageFormat::Qcow2,
            Some(other) => {
                let f = raw.format.as_ref().expect("set");
                return Err(
                    Diagnostic::new(self.at(f), format!("unknown format `{other}`"))
                        .with_help("expected `raw` (the default) or `qcow2`")
                        .into(),
                );
            }
        };
        let cmdline = match &raw.cmdline {
            Some(c) if c.get_ref().chars().any(char::is_control) => {
                return Err(self.error(c, "the kernel command line cannot hold control characters"))
            }
            // The EFI stub drops a command line past the kernel's 2048 bytes, and
            // vmbuild's own words take about 130 of them.
            Some(c) if c.get_ref().len() > MAX_CMDLINE => {
                return Err(self.error(
                    c,
                    format!(
                        "the command line is {} bytes; a disk's holds at most {MAX_CMDLINE}",
                        c.get_ref().len()
                    ),
                ))
            }
            Some(c) => {
                if let Some(word) = c
                    .get_ref()
                    .split_whitespace()
                    .find(|w| w.starts_with("vmbuild.") || w.starts_with("rdinit="))
                {
                    return Err(Diagnostic::new(
                        self.at(c),
                        format!("`{word}` is vmbuild's to set"),
                    )
                    .with_help("vmbuild sets rdinit= and vmbuild.* itself: leave them out")
                    .into());
                }
                c.get_ref().trim().to_string()
            }
            None => String::new(),
        };
        Ok(BootDiskSpec {
            kernel: self.reference(&raw.kernel)?,
            rootfs: self.reference(&raw.rootfs)?,
            size,
            format,
            cmdline,
        })
    }
}
