//! The files of a disk entry (`kind = "disk"`), and what its image holds: the test phase
//! boots the image through UEFI firmware and finds the root by its partition number.

/// The raw GPT image.
pub(crate) const RAW_IMAGE: &str = "disk.img";
/// The same image as qcow2, for `format = "qcow2"`.
pub(crate) const QCOW2_IMAGE: &str = "disk.qcow2";
/// The kind of a disk recipe, and of its entries.
pub(crate) const KIND: &str = "disk";
/// The Debian package whose EFI stub the unified kernel image is made from (pinned in
/// `vmbuild.lock`), and the stub's path in it.
pub(crate) const STUB_PACKAGE: &str = "systemd-boot-efi";
pub(crate) const STUB_PATH: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where the unified kernel image lies on the ESP: the removable-media boot path, which
/// firmware starts without any boot entry in its variables.
pub(crate) const UKI_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// The root partition's number (the ESP is 1): stage 1 mounts `vmbuild.rootpart=`.
pub(crate) const ROOT_PARTITION: u32 = 2;
