//! The files of a rootfs entry that the test phase boots: the image in one of its formats,
//! and for a disk image the static busybox its boot initramfs runs (stage 1 mounts the
//! disk with it; the guest agent falls back on its applets where the root lacks a tool).

/// A gzip cpio initramfs: the whole root, unpacked into the kernel's rootfs.
pub(crate) const CPIO: &str = "rootfs.cpio.gz";
/// An ext4 filesystem image, booted as a read-only virtio-blk disk with an overlay.
pub(crate) const EXT4: &str = "rootfs.ext4";
/// A ustar/GNU tar of the root.
pub(crate) const TAR: &str = "rootfs.tar";
/// The root as a folder.
pub(crate) const DIR: &str = "root";
/// Debian's static busybox, beside a disk image: what its boot initramfs runs.
pub(crate) const BOOT_BUSYBOX: &str = "boot/busybox";
