//! vmbuild: build kernels, root images and test bundles from TOML recipes into a
//! content-addressed store, then boot them in VMs and run tests, caching the results like
//! any other build output. See docs/ for the design record and README.md for use.

pub mod builders;
pub mod engine;
pub mod fetch;
pub mod format;
pub mod fsio;
pub mod graph;
pub mod hashing;
pub mod process;
pub mod recipe;
pub mod report;
pub mod store;
pub mod testing;
pub mod tools;
pub mod vm;

pub mod cli;

pub use engine::{Engine, Error, Force};

/// Property tests' configuration: `default_cases` cases, unless `PROPTEST_CASES` asks
/// for more or fewer (`ProptestConfig::with_cases` alone would ignore it).
#[cfg(test)]
pub(crate) fn proptest_config(default_cases: u32) -> proptest::prelude::ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default_cases);
    proptest::prelude::ProptestConfig {
        cases,
        ..Default::default()
    }
}
