//! docs/recipes.md, the recipe reference, checked against the parser so that it cannot
//! drift: each `<!-- fields: SECTION -->` table lists exactly the fields the parser takes
//! there (asked of the parser itself, through the error a field it does not know gets),
//! each default is what the parser uses when the field is left out, and each
//! `<!-- example: KIND -->` recipe loads.

use std::collections::BTreeSet;

use super::validate::tests::fuzz_project;
use super::{Recipe, RecipeRef};

const REFERENCE: &str = include_str!("../../docs/recipes.md");

/// Where a section's fields go in a recipe that is otherwise valid: `{}` is the field.
fn context(section: &str) -> &'static str {
    match section {
        "kernel" => "kind = \"kernel\"\n{}\n[prebuilt]\npath = \"k.toml\"\n",
        "kernel.source" => "kind = \"kernel\"\n[prebuilt]\n{}\n",
        "kernel.config" => "kind = \"kernel\"\n[config]\n{}\n[source]\ndeb = \"linux-source-6.1\"\n",
        "rootfs" => "kind = \"rootfs\"\n{}\n",
        "disk" => "kind = \"disk\"\nkernel = \"k\"\nrootfs = \"r\"\n{}\n",
        "bundle" => "kind = \"bundle\"\ntests = \"../t\"\n{}\n",
        "bundle.build" => "kind = \"bundle\"\n[build]\ncommand = [\"true\"]\n{}\n",
        "test" => "kind = \"test\"\nkernel = \"k\"\nrootfs = \"r\"\n{}\n",
        "test.vm" => "kind = \"test\"\nkernel = \"k\"\nrootfs = \"r\"\n[vm]\n{}\n",
        "test.vm.disks" => {
            "kind = \"test\"\nkernel = \"k\"\nrootfs = \"r\"\n[[vm.disks]]\nname = \"a\"\nsize = \"1M\"\n{}\n"
        }
        other => panic!("docs/recipes.md has a section `{other}` this test does not know"),
    }
}

/// One documented field: its name and its default (a TOML value), if it has one.
struct Field {
    name: String,
    default: Option<String>,
}

/// `NAME` of a line `<!-- WHAT: NAME -->`.
fn marker<'a>(line: &'a str, what: &str) -> Option<&'a str> {
    line.strip_prefix("<!-- ")?
        .strip_prefix(what)?
        .strip_prefix(": ")?
        .strip_suffix(" -->")
}

/// The `<!-- fields: NAME -->` sections of the reference, in order.
fn sections() -> Vec<(String, Vec<Field>)> {
    let mut sections = Vec::new();
    let mut lines = REFERENCE.lines();
    while let Some(line) = lines.next() {
        let Some(name) = marker(line, "fields") else {
            continue;
        };
        let mut fields = Vec::new();
        // Up to the end of the first table after the marker.
        let mut in_table = false;
        for line in lines.by_ref() {
            if !line.starts_with('|') {
                if in_table {
                    break;
                }
                continue;
            }
            in_table = true;
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let (Some(field), Some(default)) = (cells.get(1), cells.get(3)) else {
                continue;
            };
            let Some(field) = field.strip_prefix('`').and_then(|f| f.strip_suffix('`')) else {
                continue; // the header and its rule
            };
            let default = default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .map(str::to_string);
            fields.push(Field {
                name: field.to_string(),
                default,
            });
        }
        sections.push((name.to_string(), fields));
    }
    sections
}

/// A project with a recipe of every kind to reference, and what the examples name.
struct Fixture {
    dir: tempfile::TempDir,
    project: super::Project,
}

impl Fixture {
    fn new() -> Fixture {
        let (dir, project) = fuzz_project();
        let fixture = Fixture { dir, project };
        fixture.write(
            "modules/kconfig/serial-console.config",
            "CONFIG_SERIAL_8250=y\n",
        );
        fixture.write("recipes/build.sh", "true\n");
        fixture
    }

    fn write(&self, rel: &str, text: &str) {
        let path = self.dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Loads `text` as the project's recipe `t`.
    fn load(&self, text: &str) -> Result<Recipe, String> {
        self.write("recipes/t.toml", text);
        let at = RecipeRef {
            name: "t".into(),
            file: self.dir.path().join("recipes/t.toml"),
            location: None,
        };
        Recipe::load(&self.project, &at).map_err(|e| e.to_string())
    }
}

/// The fields the parser takes in `section`, in its own words: the error a field it
/// does not know gets lists them ("expected one of `a`, `b`").
fn parser_fields(fixture: &Fixture, section: &str) -> BTreeSet<String> {
    let text = context(section).replace("{}", "zz_not_a_field = 1");
    let err = fixture
        .load(&text)
        .err()
        .unwrap_or_else(|| panic!("{section}: an unknown field loads"));
    let after = err
        .split_once("expected ")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("{section}: {err}"));
    let list = after.strip_prefix("one of ").unwrap_or(after);
    let list = list.lines().next().unwrap_or_default();
    list.replace(" or ", ", ")
        .split(", ")
        .filter_map(|f| f.trim().strip_prefix('`')?.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_section_lists_exactly_the_fields_the_parser_takes() {
    let fixture = Fixture::new();
    let sections = sections();
    let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "kernel.source",
            "kernel.config",
            "rootfs",
            "disk",
            "bundle",
            "bundle.build",
            "test",
            "test.vm",
            "test.vm.disks"
        ]
    );
    for (section, fields) in &sections {
        let documented: BTreeSet<String> = fields.iter().map(|f| f.name.clone()).collect();
        assert_eq!(
            documented,
            parser_fields(&fixture, section),
            "docs/recipes.md, section {section}: documented (left) and parsed (right) fields differ"
        );
    }
}

#[test]
fn every_documented_default_is_the_one_the_parser_uses() {
    let fixture = Fixture::new();
    let mut checked = 0;
    for (section, fields) in sections() {
        if fields.iter().all(|f| f.default.is_none()) {
            continue;
        }
        let base = fixture
            .load(&context(&section).replace("{}", ""))
            .unwrap_or_else(|e| panic!("{section}: the bare recipe does not load: {e}"));
        for field in fields.iter().filter(|f| f.default.is_some()) {
            let default = field.default.as_deref().unwrap_or_default();
            let line = format!("{} = {default}", field.name);
            let with = fixture
                .load(&context(&section).replace("{}", &line))
                .unwrap_or_else(|e| panic!("{section}: `{line}` does not load: {e}"));
            assert_eq!(
                format!("{:?}", with.spec),
                format!("{:?}", base.spec),
                "docs/recipes.md, section {section}: `{line}` is not the default"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} defaults found");
}

#[test]
fn every_example_recipe_loads() {
    let fixture = Fixture::new();
    let mut examples = 0;
    let mut lines = REFERENCE.lines();
    while let Some(line) = lines.next() {
        let Some(kind) = marker(line, "example") else {
            continue;
        };
        assert_eq!(lines.next(), Some("```toml"), "example {kind}");
        let text: String = lines
            .by_ref()
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        fixture
            .load(&text)
            .unwrap_or_else(|e| panic!("example {kind}: {e}\n{text}"));
        assert!(
            text.contains(&format!("kind = \"{kind}\"")),
            "example {kind} is of another kind"
        );
        examples += 1;
    }
    assert_eq!(examples, 5, "an example per kind");
}
