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
