//! Every failure vmbuild reports, and the exit code each maps to (the CLI contract).

use crate::builders::BuildError;
use crate::graph::KeyError;
use crate::recipe::RecipeError;
use crate::store::StoreError;
use crate::testing::runner::TestError;

/// Every failure vmbuild reports, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("compute the key of `{name}`: {source}")]
    Key { name: String, source: KeyError },
    #[error("build `{name}`: {source}")]
    Build { name: String, source: BuildError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("test `{name}`: {source}")]
    Test { name: String, source: TestError },
    /// A VM booted outside a test run (`vmbuild run`, `vmbuild shell`).
    #[error("boot `{name}`: {source}")]
    Boot { name: String, source: TestError },
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The exit code contract: 2 bad usage or recipe, 3 build failed, 4 VM or infrastructure.
    pub fn exit_code(&self) -> i32 {
        use crate::fetch::FetchError;
        use crate::process::ProcessError;
        match self {
            Error::Recipe(_) | Error::Usage(_) => 2,
            Error::Key {
                source: KeyError::BadInput(_) | KeyError::Fetch(FetchError::BadLockfile { .. }),
                ..
            }
            | Error::Build {
                source: BuildError::BadInput(_),
                ..
            } => 2,
            Error::Build {
                source: BuildError::HostMissing(_),
                ..
            } => 4,
            // The host lacks a tool (qemu, mke2fs, ...) or it will not say its version, or
            // the store cannot be used: infrastructure, not a bad recipe.
            Error::Key {
                source: KeyError::Tool(_),
                ..
            }
            | Error::Store(StoreError::Unusable { .. })
            | Error::Build {
                source: BuildError::Process(ProcessError::Missing { .. }),
                ..
            }
            // The host's apt lacks a guest's architecture (`dpkg --add-architecture`).
            | Error::Key {
                source: KeyError::Fetch(FetchError::UnknownForeignPackage { .. }),
                ..
            }
            | Error::Build {
                source: BuildError::Fetch(FetchError::UnknownForeignPackage { .. }),
                ..
            } => 4,
            Error::Key {
                source: KeyError::Fetch(FetchError::UnknownPackage { .. }),
                ..
            } => 2,
            Error::Build {
                source:
                    BuildError::Fetch(
                        FetchError::UnknownPackage { .. } | FetchError::UnknownPackages { .. },
                    ),
                ..
            } => 2,
            Error::Test {
                source: TestError::Unsupported(_),
                ..
            }
            | Error::Boot {
                source: TestError::Unsupported(_),
                ..
            } => 2,
            Error::Test {
                source: TestError::Store(_),
                ..
            }
            | Error::Boot {
                source: TestError::Store(_),
                ..
            } => 3,
            Error::Test { .. } | Error::Boot { .. } => 4,
            Error::Key { .. } | Error::Build { .. } | Error::Store(_) => 3,
        }
    }
}
