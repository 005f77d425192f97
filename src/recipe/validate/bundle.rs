//! Bundle recipes: a folder of tests (`tests = "..."`) or a folder a command writes
//! (`[build]`), exactly one of the two.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use toml::Spanned;

use super::Document;
use crate::recipe::spec::{build_env_var, BuildInput, BundleBuild, BundleSpec};
use crate::recipe::{grammar, raw, Diagnostic, Location, Result};

impl Document<'_> {
    pub(super) fn bundle(&self) -> Result<BundleSpec> {
        let raw: raw::Bundle = self.deserialize()?;
        match (raw.tests, raw.build) {
            (Some(tests), None) => {
                let tests_dir = self.local_path(&tests)?;
                if !tests_dir.is_dir() {
                    return Err(self.error(&tests, "`tests` must be a folder of test scripts"));
                }
                Ok(BundleSpec::Folder(tests_dir))
            }
            (None, Some(build)) => self.bundle_build(build.into_inner()).map(BundleSpec::Build),
            (Some(tests), Some(_)) => Err(Diagnostic::new(
                self.at(&tests),
                "a bundle has either `tests` or a [build] table, not both",
            )
            .with_help("`tests` names a folder of tests; [build] makes that folder with a command")
            .into()),
            (None, None) => Err(Diagnostic::new(
                Location::from_span(&self.file, &self.text, 0..0),
                "missing field `tests` (or a [build] table)",
            )
            .with_help("tests = \"../tests/smoke\", or [build] command = [\"sh\", \"build.sh\"]")
            .into()),
        }
    }

    fn bundle_build(&self, raw: raw::BundleBuild) -> Result<BundleBuild> {
        let Some(program) = raw.command.get_ref().first() else {
            return Err(Diagnostic::new(
                self.at(&raw.command),
                "`command` is empty: it needs at least the program to run",
            )
            .with_help("command = [\"sh\", \"build.sh\"]")
            .into());
        };
        if program.get_ref().is_empty() {
            return Err(self.error(program, "the program to run is an empty string"));
        }
        let mut command = Vec::new();
        for arg in raw.command.get_ref() {
            if arg.get_ref().contains('\0') {
                return Err(self.error(arg, "a command argument cannot hold a NUL character"));
            }
            command.push(arg.get_ref().clone());
        }

        let mut inputs: Vec<BuildInput> = Vec::new();
        for value in &raw.inputs {
            let path = self.local_path(value)?;
            let name = input_name(value.get_ref(), &path)
                .ok_or_else(|| self.error(value, "an input needs a file or folder name"))?;
            if inputs.iter().any(|i| i.name == name) {
                return Err(self.error(
                    value,
                    format!(
                        "a second input named `{name}`: inputs are copied into the working \
                         folder by name, so names must differ"
                    ),
                ));
            }
            inputs.push(BuildInput { name, path });
        }

        let mut recipes = Vec::new();
        let mut recipe_vars = BTreeMap::new();
        for value in &raw.recipes {
            let reference = self.reference(value)?;
            self.unique_var("VMBUILD_INPUT_", &reference.name, value, &mut recipe_vars)?;
            recipes.push(reference);
        }
        let mut debs = Vec::new();
        let mut deb_vars = BTreeMap::new();
        for value in &raw.debs {
            let package = value.get_ref();
            grammar::debian_package(package).map_err(|e| self.error(value, e))?;
            self.unique_var("VMBUILD_DEB_", package, value, &mut deb_vars)?;
            debs.push(package.clone());
        }
        Ok(BundleBuild {
            command,
            inputs,
            recipes,
            debs,
        })
    }

    /// Two names that give the command the same variable (`a-b` and `a.b`) would hide one
    /// of them: refused at the second.
    fn unique_var(
        &self,
        prefix: &str,
        name: &str,
        value: &Spanned<String>,
        seen: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        let var = build_env_var(prefix, name);
        match seen.insert(var.clone(), name.to_string()) {
            None => Ok(()),
            Some(first) if first == name => {
                Err(self.error(value, format!("`{name}` is listed twice")))
            }
            Some(first) => Err(self.error(
                value,
                format!("`{name}` and `{first}` would both be given to the command as {var}"),
            )),
        }
    }
}

/// An input's name in the working folder: the last part of the path as written
/// (`../tests/x` is `x`), or of the folder it resolved to when the path ends in `..`.
fn input_name(written: &str, resolved: &Path) -> Option<String> {
    let last = match Path::new(written).components().next_back() {
        Some(Component::Normal(name)) => Some(name),
        _ => resolved.file_name(),
    }?;
    last.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::super::tests::fuzz_project;
    use crate::recipe::{BundleSpec, Recipe, RecipeRef, Spec};

    /// Loads `text` as `recipes/t.toml` of a project that also has `recipes/build.sh`,
    /// `tests/x` and the fuzz project's recipes.
    fn load(text: &str) -> Result<crate::recipe::BundleBuild, String> {
        let (dir, project) = fuzz_project();
        std::fs::write(dir.path().join("recipes/build.sh"), "echo hi\n").unwrap();
        std::fs::create_dir_all(dir.path().join("tests/x")).unwrap();
        let file = dir.path().join("recipes/t.toml");
        std::fs::write(&file, text).unwrap();
        let at = RecipeRef {
            name: "t".into(),
            file,
            location: None,
        };
        match Recipe::load(&project, &at).map_err(|e| e.to_string())?.spec {
            Spec::Bundle(BundleSpec::Build(b)) => Ok(b),
            other => panic!("not a built bundle: {other:?}"),
        }
    }

    const HEAD: &str = "kind = \"bundle\"\n[build]\n";

    #[test]
    fn a_build_table_gives_command_inputs_recipes_and_debs() {
        let b = load(&format!(
            "{HEAD}command = [\"sh\", \"build.sh\"]\ninputs = [\"build.sh\", \"../tests/x\"]\nrecipes = [\"k\"]\ndebs = [\"linux-source-6.1\"]\n"
        ))
        .expect("valid");
        assert_eq!(b.command, ["sh", "build.sh"]);
        let names: Vec<&str> = b.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["build.sh", "x"]);
        assert_eq!(b.recipes[0].name, "k");
        assert_eq!(b.debs, ["linux-source-6.1"]);
    }

    #[test]
    fn bad_build_tables_are_refused_at_the_value() {
        let cases = [
            (
                "kind = \"bundle\"\n",
                "missing field `tests` (or a [build] table)",
                "t.toml:1:1",
            ),
            (
                "kind = \"bundle\"\ntests = \"../tests/x\"\n[build]\ncommand = [\"true\"]\n",
                "either `tests` or a [build] table",
                "t.toml:2:9",
            ),
            (
                &format!("{HEAD}command = []\n"),
                "`command` is empty",
                "t.toml:3:11",
            ),
            (
                &format!("{HEAD}inputs = [\"build.sh\"]\n"),
                "missing field `command`",
                "t.toml:2:1",
            ),
            (
                &format!("{HEAD}command = [\"\"]\n"),
                "an empty string",
                "t.toml:3:12",
            ),
            (
                &format!("{HEAD}command = [\"true\"]\ninputs = [\"nope.sh\"]\n"),
                "no such file or folder",
                "t.toml:4:11",
            ),
            (
                &format!("{HEAD}command = [\"true\"]\ninputs = [\"build.sh\", \"./build.sh\"]\n"),
                "a second input named `build.sh`",
                "t.toml:4:23",
            ),
            (
                &format!("{HEAD}command = [\"true\"]\ncomand = [\"true\"]\n"),
                "unknown field `comand`",
                "t.toml:4:1",
            ),
            (
                &format!("{HEAD}command = [\"true\"]\ndebs = [\"a-b\", \"a.b\"]\n"),
                "would both be given to the command as VMBUILD_DEB_A_B",
                "t.toml:4:16",
            ),
            (
                &format!("{HEAD}command = [\"true\"]\nrecipes = [\"nosuch\"]\n"),
                "no recipe named `nosuch`",
                "t.toml:4:12",
            ),
        ];
        for (text, message, at) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(message), "{text}: {err}");
            assert!(err.contains(at), "{text}: {err}");
        }
    }
}
