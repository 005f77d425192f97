//! File formats that both the builders and the test phase read or write: the initramfs
//! cpio writer, kernel config files, kernel module files and their initramfs layer, a
//! test bundle's layout and test headers, a rootfs entry's and a disk entry's layout, GPT
//! partition tables, the PE headers of EFI binaries, TAP/KTAP and fio output, and JUnit
//! XML. A leaf: it imports only std, external crates, `fsio` and `hashing`, so `builders`
//! and `testing` share it without importing each other.

pub(crate) mod bundle;
pub(crate) mod complaint;
pub(crate) mod cpio;
pub(crate) mod disk;
pub mod fio;
pub(crate) mod gpt;
pub mod guest;
pub(crate) mod junit;
pub(crate) mod kconfig;
pub(crate) mod ktest;
pub(crate) mod modinfo;
pub(crate) mod modules;
pub(crate) mod pe;
pub(crate) mod rootfs;
pub(crate) mod tap;
