//! Recipes: finding the project, reading recipe files, merging modules, and validating
//! everything into the `Recipe` types the rest of vmbuild works with. Nothing past
//! `Recipe::load` sees a half-checked recipe: paths exist, names resolve to files, sizes and
//! durations are parsed and range-checked, values handed to other programs follow their
//! grammar, and every complaint points at a file, line and column.
//!
//! - `project`: finding the project root and what the command line names;
//! - `spec`: the validated types;
//! - `validate`: raw TOML (with spans) -> spec, modules merged;
//! - `units`: sizes and durations, each with its range;
//! - `grammar`: names that become paths or other programs' arguments.

mod config;
mod diagnostic;
pub(crate) mod grammar;
mod project;
mod raw;
#[cfg(test)]
mod reference_tests;
mod spec;
pub mod units;
mod validate;

use std::path::PathBuf;

pub use config::{check_url, parse_public_key, redact, ProjectConfig, RemoteMode};
pub use diagnostic::{did_you_mean, Diagnostic, Location};
pub use project::{Project, PROJECT_FILE};
pub use spec::*;
pub use units::{parse_duration, parse_size};

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
    #[error("read recipe {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("find recipe `{name}`: no file {}{}", path.display(), suggestion.as_ref().map(|s| format!("\n  help: did you mean `{s}`?")).unwrap_or_default())]
    Unknown {
        name: String,
        path: PathBuf,
        suggestion: Option<String>,
    },
    #[error("recipe `{arg}`: {message}")]
    BadName { arg: String, message: String },
    #[error("{0}")]
    Reference(String),
    #[error("resolve dependencies: cycle {0}")]
    Cycle(String),
    #[error("find the project: no `{PROJECT_FILE}` or `recipes/` folder in {} or any parent", .0.display())]
    NoProject(PathBuf),
}

impl From<Diagnostic> for RecipeError {
    fn from(d: Diagnostic) -> Self {
        RecipeError::Invalid(Box::new(d))
    }
}

type Result<T> = std::result::Result<T, RecipeError>;
