//! Fetching inputs from outside the project: Debian packages through the host's apt
//! (pinned in `vmbuild.lock`), and URLs pinned by sha256. Everything fetched is verified
//! against its pin before use and kept in `<store>/downloads/<sha256>` so that a rebuild
//! does not fetch again.

pub mod apt;
pub mod http;
pub mod lock;

use std::path::PathBuf;

use crate::fsio::IoError;
use crate::process::ProcessError;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("find Debian package `{package}`: apt knows no such package\n  help: check the name with `apt-cache search {package}`, or run `apt-get update`")]
    UnknownPackage { package: String },
    #[error("find Debian package `{package}`: the host's apt fetches no packages for {arch}\n  help: add the architecture: dpkg --add-architecture {arch} && apt-get update")]
    UnknownForeignPackage { package: String, arch: String },
    /// A Debian package that is another build than the one needed.
    #[error("{message}")]
    WrongBuild { message: String },
    #[error("Debian {release} has no package {}: apt knows none by {}\n  help: check the names with `apt-cache search NAME`, or run `apt-get update`", packages.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", "), if packages.len() == 1 { "that name" } else { "those names" })]
    UnknownPackages {
        release: String,
        packages: Vec<String>,
    },
    #[error("verify {what}: sha256 mismatch\n  expected: {expected}\n  actual:   {actual}")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("download {url}: {message}")]
    Http { url: String, message: String },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("read {}: {message}", path.display())]
    BadLockfile { path: PathBuf, message: String },
}
