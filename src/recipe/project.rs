//! The project: the folder holding `recipes/` and `modules/`, and resolving what the
//! command line names.

use std::path::{Path, PathBuf};

use super::{did_you_mean, grammar, RecipeError, RecipeRef, Result};

/// The file that marks a project root, besides a `recipes/` folder.
pub const PROJECT_FILE: &str = "vmbuild.toml";

/// A vmbuild project: the folder holding `recipes/` and `modules/`.
#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
}

impl Project {
    /// The nearest folder upward from `start` holding `vmbuild.toml` or `recipes/`.
    pub fn discover(start: &Path) -> Result<Project> {
        let start = fs_err::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
        start
            .ancestors()
            .find(|dir| dir.join(PROJECT_FILE).is_file() || dir.join("recipes").is_dir())
            .map(|root| Project {
                root: root.to_path_buf(),
            })
            .ok_or(RecipeError::NoProject(start))
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("recipes")
    }

    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// Names of every recipe in `recipes/`, sorted.
    pub fn recipe_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.recipes_dir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".toml").map(str::to_string)
            })
            .collect();
        names.sort();
        names
    }

    /// Resolves what a user typed on the command line: a recipe name or a path to a `.toml`.
    /// The name must follow the recipe-name grammar: it becomes a store folder's name.
    pub fn locate(&self, arg: &str) -> Result<RecipeRef> {
        if arg.ends_with(".toml") {
            let file = PathBuf::from(arg);
            if !file.is_file() {
                return Err(RecipeError::Unknown {
                    name: arg.into(),
                    path: file,
                    suggestion: None,
                });
            }
            let file = fs_err::canonicalize(&file).unwrap_or(file);
            let name = file_stem(&file);
            grammar::recipe_name(&name).map_err(|message| RecipeError::BadName {
                arg: arg.into(),
                message,
            })?;
            return Ok(RecipeRef {
                name,
                file,
                location: None,
            });
        }
        grammar::recipe_name(arg).map_err(|message| RecipeError::BadName {
            arg: arg.into(),
            message,
        })?;
        let file = self.recipes_dir().join(format!("{arg}.toml"));
        if file.is_file() {
            return Ok(RecipeRef {
                name: arg.to_string(),
                file,
                location: None,
            });
        }
        let names = self.recipe_names();
        let suggestion = did_you_mean(arg, names.iter().map(String::as_str)).map(str::to_string);
        Err(RecipeError::Unknown {
            name: arg.into(),
            path: file,
            suggestion,
        })
    }
}

pub(super) fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
