//! The dependency graph: the requested recipes and everything they reach, loaded once,
//! checked for cycles (the cycle is printed), in topological order, with a cache key for
//! every node computed bottom-up (a Merkle tree: each key covers its dependencies' keys).

mod environment;
mod explain;
mod key;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

pub(crate) use environment::{environment_key, Environment};
pub(crate) use explain::explain_change;
pub(crate) use key::{build_input_content, hash_path, kbuild_flags, kernel_toolchain, tree_digest};
pub use key::{compute_key, KeyContext, KeyError, KeyInputs, KEY_SCHEMA};

use crate::recipe::{Diagnostic, Project, Recipe, RecipeError, RecipeRef, RootfsFormat, Spec};

pub struct Node {
    pub recipe: Recipe,
    /// Indices of the nodes this one needs, in the recipe's order.
    pub deps: Vec<usize>,
}

pub struct Graph {
    /// Nodes in topological order: every node comes after its dependencies.
    pub nodes: Vec<Node>,
    pub roots: Vec<usize>,
}

enum Mark {
    Visiting,
    Done(usize),
}

impl Graph {
    /// Loads `roots` and their whole closure.
    pub fn load(project: &Project, roots: &[RecipeRef]) -> Result<Graph, RecipeError> {
        let mut loader = Loader {
            project,
            marks: HashMap::new(),
            stack: Vec::new(),
            nodes: Vec::new(),
        };
        let roots = roots
            .iter()
            .map(|r| loader.visit(r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Graph {
            nodes: loader.nodes,
            roots,
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.recipe.name == name)
    }

    /// Every node `root` reaches, itself included, in topological order.
    pub fn closure(&self, root: usize) -> Vec<usize> {
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = vec![root];
        while let Some(i) = stack.pop() {
            if !std::mem::replace(&mut seen[i], true) {
                stack.extend(&self.nodes[i].deps);
            }
        }
        (0..self.nodes.len()).filter(|i| seen[*i]).collect()
    }

    /// Groups node indices into waves: each wave depends only on earlier waves, so the
    /// nodes of one wave can be built in parallel.
    pub fn waves(&self, wanted: &[usize]) -> Vec<Vec<usize>> {
        let mut depth = vec![0usize; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            depth[i] = node.deps.iter().map(|d| depth[*d] + 1).max().unwrap_or(0);
        }
        let mut waves: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in wanted {
            waves.entry(depth[i]).or_default().push(i);
        }
        waves.into_values().collect()
    }
}

struct Loader<'a> {
    project: &'a Project,
    marks: HashMap<PathBuf, Mark>,
    stack: Vec<String>,
    nodes: Vec<Node>,
}

impl Loader<'_> {
    fn visit(&mut self, at: &RecipeRef) -> Result<usize, RecipeError> {
        match self.marks.get(&at.file) {
            Some(Mark::Done(i)) => return Ok(*i),
            Some(Mark::Visiting) => {
                let start = self.stack.iter().position(|n| *n == at.name).unwrap_or(0);
                let mut cycle: Vec<String> = self.stack[start..].to_vec();
                cycle.push(at.name.clone());
                let mut text = cycle.join(" -> ");
                if let Some(loc) = &at.location {
                    text.push_str(&format!(
                        "\n  --> {}:{}:{}",
                        loc.file.display(),
                        loc.line,
                        loc.column
                    ));
                }
                return Err(RecipeError::Cycle(text));
            }
            None => {}
        }
        self.marks.insert(at.file.clone(), Mark::Visiting);
        self.stack.push(at.name.clone());
        let recipe = Recipe::load(self.project, at)?;
        let wanted: Vec<(&'static str, &'static [&'static str], RecipeRef)> = recipe
            .dependencies()
            .into_iter()
            .map(|d| (d.field, d.kinds, d.recipe.clone()))
            .collect();
        let mut deps = Vec::with_capacity(wanted.len());
        for (field, kinds, reference) in &wanted {
            let index = self.visit(reference)?;
            let found = self.nodes[index].recipe.kind();
            if !kinds.contains(&found) {
                return Err(wrong_kind(field, kinds, found, reference));
            }
            if let Some(message) = mismatch(&recipe, field, &self.nodes[index].recipe) {
                return Err(match &reference.location {
                    Some(location) => Diagnostic::new(location.clone(), message).into(),
                    None => RecipeError::Reference(message),
                });
            }
            deps.push(index);
        }
        self.stack.pop();
        let index = self.nodes.len();
        self.nodes.push(Node { recipe, deps });
        self.marks.insert(at.file.clone(), Mark::Done(index));
        Ok(index)
    }
}

/// What a reference of the right kind still cannot name: a disk's root must be an ext4
/// image; a test booting a disk boots the disk's kernel, with the disk's command line.
fn mismatch(recipe: &Recipe, field: &str, dep: &Recipe) -> Option<String> {
    if let Some(message) = arch_mismatch(recipe, field, dep) {
        return Some(message);
    }
    match (&recipe.spec, field, &dep.spec) {
        (Spec::Disk(_), "rootfs", Spec::Rootfs(root)) if root.format != RootfsFormat::Ext4 => {
            Some(format!(
                "a disk's root partition is an ext4 image, but rootfs `{}` is format = \"{}\": \
                 set format = \"ext4\" in it",
                dep.name,
                root.format.name()
            ))
        }
        (Spec::Test(test), "rootfs", Spec::Disk(disk)) => {
            if test.kernel.file != disk.kernel.file {
                Some(format!(
                    "disk `{}` boots the kernel in its unified kernel image, `{}`; set \
                     kernel = \"{}\" here (the test names `{}`)",
                    dep.name, disk.kernel.name, disk.kernel.name, test.kernel.name
                ))
            } else if !test.vm.cmdline.is_empty() {
                Some(format!(
                    "disk `{}` boots with the command line in its unified kernel image: move \
                     [vm] cmdline to the disk recipe's `cmdline`",
                    dep.name
                ))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// A kernel, root or bundle for another machine than the recipe that boots it or puts it
/// in an image. A test may come `after` a test of any arch, and a `[build]` bundle may read
/// any entry.
fn arch_mismatch(recipe: &Recipe, field: &str, dep: &Recipe) -> Option<String> {
    let (Some(want), Some(have)) = (recipe.target_arch(), dep.target_arch()) else {
        return None;
    };
    if want == have || !matches!(field, "kernel" | "rootfs" | "bundles" | "kernel_modules") {
        return None;
    }
    let help = match (&recipe.spec, &dep.spec) {
        (Spec::Disk(_), _) => "bootable disks are x86_64 UEFI images".to_string(),
        (_, Spec::Disk(_)) => format!(
            "bootable disks are x86_64 UEFI images; an {} test boots a rootfs recipe",
            want.name()
        ),
        (_, Spec::Bundle(_)) => format!(
            "a [build] bundle is built on this host, for {have}; a bundle of files \
             (tests = \"FOLDER\") runs on any guest",
            have = have.name()
        ),
        _ => format!(
            "set arch = \"{}\" in `{}`, or name an {} recipe here",
            have.name(),
            recipe.name,
            want.name()
        ),
    };
    Some(format!(
        "`{}` is for {}, but `{}` (its `{field}`) is for {}: {help}",
        recipe.name,
        want.name(),
        dep.name,
        have.name()
    ))
}

/// `bundles = ["smoke"]` naming a test recipe, a kernel naming a rootfs, ...: said at the
/// reference, before anything is built or booted.
fn wrong_kind(field: &str, wanted: &[&str], found: &str, at: &RecipeRef) -> RecipeError {
    let wanted = match wanted.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    let message = format!(
        "`{field}` needs a {wanted} recipe, but `{}` is a {found} recipe",
        at.name
    );
    match &at.location {
        Some(location) => Diagnostic::new(location.clone(), message).into(),
        None => RecipeError::Reference(message),
    }
}
