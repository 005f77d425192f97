//! What a VM boots from: its initramfs (the rootfs cpio, each bundle's cpio and a small
//! cpio holding the guest agent, concatenated: the kernel unpacks them in order) and its
//! scratch disks (fresh sparse files, thrown away with the work folder).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::agent::{AGENT, AGENT_PATH};
use super::runner::{Artifacts, TestError};
use crate::format::bundle::BUNDLE_CPIO;
use crate::format::cpio::CpioWriter;
use crate::fsio::io_err;
use crate::recipe::DiskSpec;

/// The compressed cpio archives that make up the VM's initramfs, in order: the kernel
/// unpacks them one after the other, later files replacing earlier ones.
pub(crate) fn initrd_parts(artifacts: &Artifacts) -> Result<Vec<PathBuf>, TestError> {
    let rootfs = artifacts.rootfs.path.join("rootfs.cpio.gz");
    if !rootfs.is_file() {
        return Err(TestError::Unsupported(format!(
            "rootfs `{}` is not a cpio initramfs; the test phase boots format = \"cpio\" roots",
            artifacts.rootfs.manifest.name
        )));
    }
    let mut parts = vec![rootfs];
    parts.extend(
        artifacts
            .bundles
            .iter()
            .map(|(_, e)| e.path.join(BUNDLE_CPIO)),
    );
    Ok(parts)
}

/// Concatenates the parts and appends the agent's own archive.
pub(crate) fn write_initrd(path: &Path, parts: &[PathBuf]) -> Result<(), TestError> {
    let mut out = fs_err::File::create(path).map_err(io_err("create", path))?;
    for part in parts {
        let mut input = fs_err::File::open(part).map_err(io_err("read", part))?;
        std::io::copy(&mut input, &mut out).map_err(io_err("write", path))?;
    }
    let mut agent = CpioWriter::new(Vec::new());
    let write_agent = |agent: &mut CpioWriter<Vec<u8>>| -> std::io::Result<()> {
        agent.dir("/vmbuild", 0o755)?;
        agent.file(AGENT_PATH, 0o755, AGENT.as_bytes())?;
        agent.char_device("/dev/console", 0o600, 5, 1)
    };
    write_agent(&mut agent).map_err(io_err("write", path))?;
    let bytes = agent.finish().map_err(io_err("write", path))?;
    out.write_all(&bytes).map_err(io_err("write", path))?;
    Ok(())
}

/// Creates the recipe's scratch disks in `work` (`disk-<prefix>-<name>.img`, sparse).
pub(crate) fn scratch_disks(
    disks: &[DiskSpec],
    work: &Path,
    prefix: &str,
) -> Result<Vec<PathBuf>, TestError> {
    let mut paths = Vec::new();
    for disk in disks {
        let path = work.join(format!("disk-{prefix}-{}.img", disk.name));
        let file = fs_err::File::create(&path).map_err(io_err("create", &path))?;
        file.set_len(disk.size).map_err(io_err("size", &path))?;
        paths.push(path);
    }
    Ok(paths)
}
