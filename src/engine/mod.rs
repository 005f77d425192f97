//! The engine: loads the graph for the requested recipes, computes every node's key,
//! then walks the graph in waves (independent nodes in parallel), reusing store entries
//! and building what is missing; for test recipes it decides the order (`after`) and
//! hands each to `testing::phase`, which reuses or runs and publishes its results.

mod error;
mod keys;
mod test;

pub use error::Error;
pub use keys::NamedKey;
pub use test::TestOptions;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::Instant;

use crate::builders::{self, BuildContext};
use crate::fetch::lock::Lock;
use crate::fsio::io_err;
use crate::graph::{compute_key, explain_change, Graph, KeyContext, KeyInputs};
use crate::recipe::{units::approx_size, Project, Spec};
use crate::report::{Event, Reporter};
use crate::store::{Build, Entry, Manifest, Store, StoreError};
use crate::testing::RunResults;
use crate::tools::Tools;
use crate::vm;

pub type Result<T> = std::result::Result<T, Error>;

/// How much `-f` asks to redo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Force {
    #[default]
    None,
    /// `-f`: the named recipes.
    Named,
    /// `-ff`: the named recipes and their whole closure.
    Closure,
}

pub struct Engine<'a> {
    pub project: Project,
    pub store: Store,
    pub tools: Tools,
    pub lock: Lock,
    pub reporter: &'a dyn Reporter,
}

/// Whatever a command did, the store's last notices (uploads of the final results among
/// them) and the remote cache's traffic are said as the engine goes.
impl Drop for Engine<'_> {
    fn drop(&mut self) {
        self.report_notices();
        self.report_traffic();
    }
}

/// A loaded graph with a key for every node.
pub struct Plan {
    pub graph: Graph,
    pub inputs: Vec<KeyInputs>,
    pub keys: Vec<String>,
}

/// The outcome for one requested build recipe.
pub struct Built {
    pub name: String,
    pub kind: &'static str,
    pub entry: Entry,
    pub cached: bool,
}

/// The outcome for one test recipe.
pub struct Tested {
    pub name: String,
    pub results: RunResults,
    /// The results entry; `None` when the tests did not run (an unmet `after`) or only
    /// some of them did (`--filter`, `--iterate`).
    pub entry: Option<Entry>,
    /// Where the results' logs are (the entry, or a folder of the cache's logs); `None`
    /// when the tests did not run.
    pub folder: Option<std::path::PathBuf>,
    pub cached: bool,
}

impl<'a> Engine<'a> {
    pub fn open(
        project: Project,
        store_root: &Path,
        reporter: &'a dyn Reporter,
        refresh_lock: bool,
    ) -> Result<Engine<'a>> {
        let store = Store::open(store_root)?;
        let tools = Tools::new(store.root());
        let lock = Lock::open(&project.root, refresh_lock).map_err(|e| Error::Key {
            name: crate::fetch::lock::LOCK_FILE.into(),
            source: e.into(),
        })?;
        Ok(Engine {
            project,
            store,
            tools,
            lock,
            reporter,
        })
    }

    /// Loads the named recipes and everything they need, and keys every node.
    pub fn plan(&self, names: &[String]) -> Result<Plan> {
        let refs = names
            .iter()
            .map(|n| self.project.locate(n))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let graph = Graph::load(&self.project, &refs)?;
        let ctx = KeyContext {
            tools: &self.tools,
            lock: &self.lock,
            stat_cache_dir: self.store.statcache_dir(),
            trees_dir: self.store.trees_dir(),
        };
        let mut inputs: Vec<KeyInputs> = Vec::with_capacity(graph.nodes.len());
        let mut keys: Vec<String> = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let deps: BTreeMap<String, String> = node
                .deps
                .iter()
                .map(|&d| (graph.nodes[d].recipe.name.clone(), keys[d].clone()))
                .collect();
            let mut input = compute_key(&node.recipe, deps, &ctx).map_err(|source| Error::Key {
                name: node.recipe.name.clone(),
                source,
            })?;
            if let Some(firmware) = self.firmware_of(&graph, node) {
                input.tools.insert("firmware".into(), firmware);
            }
            keys.push(input.key());
            inputs.push(input);
        }
        Ok(Plan {
            graph,
            inputs,
            keys,
        })
    }

    /// For a test booting a disk: the sha256 of the firmware that starts it, which the
    /// graph cannot know (the backend finds it on the host). `None` for other nodes, or
    /// where there is no firmware (the boot says so).
    fn firmware_of(&self, graph: &Graph, node: &crate::graph::Node) -> Option<String> {
        let Spec::Test(test) = &node.recipe.spec else {
            return None;
        };
        let rootfs = graph.index_of(&test.rootfs.name)?;
        if graph.nodes[rootfs].recipe.kind() != crate::format::disk::KIND {
            return None;
        }
        // The accelerator plays no part in where the firmware is.
        let backend = vm::backend(&test.vm, vm::Accel::Tcg).ok()?;
        let code = backend.firmware().ok()?.code;
        self.tools.file_digest(&code).ok()
    }

    /// Says which damaged entries the last lookups passed over (they are rebuilt).
    fn report_notices(&self) {
        for line in self.store.take_notices() {
            self.reporter.event(Event::Notice(&line));
        }
    }

    /// What went over the wire to and from the remote cache, when anything did.
    fn report_traffic(&self) {
        let Some(remote) = self.store.remote() else {
            return;
        };
        let t = &remote.traffic;
        let (pulled, pushed) = (t.pulled.load(Relaxed), t.pushed.load(Relaxed));
        if pulled + pushed > 0 {
            self.reporter.event(Event::Notice(&format!(
                "remote cache {}: {pulled} entries pulled ({}), {pushed} pushed ({} uploaded)",
                remote.url(),
                approx_size(t.bytes_down.load(Relaxed)),
                approx_size(t.bytes_up.load(Relaxed)),
            )));
        }
    }

    fn forced(&self, plan: &Plan, index: usize, force: Force) -> bool {
        match force {
            Force::None => false,
            Force::Named => plan.graph.roots.contains(&index),
            Force::Closure => true,
        }
    }

    /// Builds the non-test nodes `wanted` needs; returns an entry for each built node.
    fn build_closure(
        &self,
        plan: &Plan,
        wanted: &[usize],
        force: Force,
    ) -> Result<BTreeMap<usize, (Entry, bool)>> {
        let mut closure: Vec<usize> = wanted.iter().flat_map(|&w| plan.graph.closure(w)).collect();
        closure.sort_unstable();
        closure.dedup();
        closure.retain(|&i| !matches!(plan.graph.nodes[i].recipe.spec, Spec::Test(_)));
        // Cache hits first, without threads, top-down: what is needed is each wanted build
        // node, the build deps of each wanted test, and the deps of every needed node that
        // is no hit. A dep of a hit is not looked up (nor pulled from a remote cache: a
        // bundle's entry is enough, not the kernel it was built against). Deps come before
        // their dependents in the graph, so walking it backwards sees every dependent first.
        let build_deps = |i: usize| {
            plan.graph.nodes[i]
                .deps
                .iter()
                .copied()
                .filter(|&d| !matches!(plan.graph.nodes[d].recipe.spec, Spec::Test(_)))
        };
        let mut needed: BTreeSet<usize> = BTreeSet::new();
        for &w in wanted {
            match plan.graph.nodes[w].recipe.spec {
                Spec::Test(_) => needed.extend(build_deps(w)),
                _ => {
                    needed.insert(w);
                }
            }
        }
        let mut cached: BTreeMap<usize, (Entry, bool)> = BTreeMap::new();
        for &i in closure.iter().rev() {
            if !needed.contains(&i) {
                continue;
            }
            if !self.forced(plan, i, force) {
                let recipe = &plan.graph.nodes[i].recipe;
                if let Some(entry) =
                    self.store
                        .lookup(&plan.keys[i], &recipe.name, recipe.kind())?
                {
                    self.reporter.event(Event::Cached {
                        name: &recipe.name,
                        kind: recipe.kind(),
                        path: &entry.path,
                    });
                    cached.insert(i, (entry, true));
                    continue;
                }
            }
            needed.extend(build_deps(i));
        }
        self.report_notices();
        let missing: Vec<usize> = closure
            .iter()
            .copied()
            .filter(|i| needed.contains(i) && !cached.contains_key(i))
            .collect();
        let done: Mutex<BTreeMap<usize, (Entry, bool)>> = Mutex::new(cached);
        let build_one = |i: usize| -> Result<()> {
            let deps: BTreeMap<String, Entry> = {
                let done = done.lock().unwrap_or_else(|e| e.into_inner());
                plan.graph.nodes[i]
                    .deps
                    .iter()
                    .filter_map(|d| {
                        done.get(d)
                            .map(|(e, _)| (plan.graph.nodes[*d].recipe.name.clone(), e.clone()))
                    })
                    .collect()
            };
            let forced = self.forced(plan, i, force);
            let fresh = forced && force == Force::Closure;
            let (entry, cached) = self.ensure(plan, i, &deps, forced, fresh)?;
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(i, (entry, cached));
            Ok(())
        };
        // Independent nodes build in parallel, a wave at a time.
        for wave in plan.graph.waves(&missing) {
            if let [only] = wave.as_slice() {
                build_one(*only)?;
                continue;
            }
            let results: Vec<Result<()>> = std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .iter()
                    .map(|&i| scope.spawn(move || build_one(i)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(Error::Usage("a build thread panicked".into())))
                    })
                    .collect()
            });
            results.into_iter().collect::<Result<Vec<()>>>()?;
        }
        Ok(done.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// The entry for one build node: from the store, or built now.
    fn ensure(
        &self,
        plan: &Plan,
        index: usize,
        deps: &BTreeMap<String, Entry>,
        force: bool,
        fresh: bool,
    ) -> Result<(Entry, bool)> {
        let recipe = &plan.graph.nodes[index].recipe;
        let (name, kind, key) = (
            recipe.name.as_str(),
            recipe.kind(),
            plan.keys[index].as_str(),
        );
        let started = Instant::now();
        let (entry, reused) = self.store.get_or_build(
            key,
            name,
            kind,
            match force {
                true => Build::Forced,
                false => Build::IfMissing,
            },
            || self.reporter.event(Event::Waiting { name }),
            |out| {
                self.reporter.event(Event::Started { name, kind });
                let work = WorkDir::new(&self.store, key, name)?;
                let progress = |line: &str| self.reporter.event(Event::Progress { name, line });
                let inputs = plan.inputs[index].to_value();
                let log = self.store.kept_log(key, name, "build.log");
                let ctx = BuildContext {
                    store: &self.store,
                    lock: &self.lock,
                    deps,
                    work: &work.0,
                    progress: &progress,
                    notice: &|line: &str| {
                        self.reporter
                            .event(Event::Notice(&format!("{name}: {line}")))
                    },
                    inputs: &inputs,
                    fresh,
                    log: &log,
                };
                let rebuilt_because = self.why_built(name, key, &inputs, force);
                let details =
                    builders::build(recipe, &ctx, out).map_err(|source| Error::Build {
                        name: name.to_string(),
                        source,
                    })?;
                let mut manifest = Manifest::new(name, kind, key, inputs);
                manifest.head.details = details;
                manifest.rebuilt_because = rebuilt_because;
                manifest.head.build_seconds = started.elapsed().as_secs_f64();
                Ok::<_, Error>(manifest)
            },
        )?;
        self.report_notices();
        if reused {
            self.reporter.event(Event::Cached {
                name,
                kind,
                path: &entry.path,
            });
        } else {
            self.reporter.event(Event::Built {
                name,
                kind,
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        Ok((entry, reused))
    }

    /// Why `name` is built now rather than reused: what changed since its latest entry.
    fn why_built(
        &self,
        name: &str,
        key: &str,
        inputs: &serde_json::Value,
        force: bool,
    ) -> Vec<String> {
        if force {
            return vec!["forced (-f)".into()];
        }
        match self.store.latest(name) {
            Ok(Some(previous)) if previous.manifest.key == key => {
                vec!["the entry under this key was missing outputs or damaged".into()]
            }
            Ok(Some(previous)) => match self.store.manifest(&previous) {
                Ok(old) => {
                    let mut lines = vec![format!(
                        "changed since the entry {}:",
                        previous.manifest.key
                    )];
                    lines.extend(explain_change(&old.inputs, inputs, &self.store.trees_dir()));
                    lines
                }
                Err(e) => vec![format!("the previous entry cannot be read: {e}")],
            },
            Ok(None) => vec![format!("no earlier entry of `{name}`")],
            Err(e) => vec![format!("the store cannot be listed: {e}")],
        }
    }

    /// `vmbuild build`: the requested recipes' entries, in request order.
    pub fn build(&self, plan: &Plan, force: Force) -> Result<Vec<Built>> {
        for &root in &plan.graph.roots {
            let recipe = &plan.graph.nodes[root].recipe;
            if matches!(recipe.spec, Spec::Test(_)) {
                return Err(Error::Usage(format!(
                    "`{}` is a test recipe: run it with `vmbuild test {}`",
                    recipe.name, recipe.name
                )));
            }
        }
        let built = self.build_closure(plan, &plan.graph.roots, force)?;
        Ok(plan
            .graph
            .roots
            .iter()
            .map(|&r| {
                let (entry, cached) = built[&r].clone();
                Built {
                    name: plan.graph.nodes[r].recipe.name.clone(),
                    kind: plan.graph.nodes[r].recipe.kind(),
                    entry,
                    cached,
                }
            })
            .collect())
    }

    /// The built (non-test) dependencies of a test node, by recipe name.
    pub fn artifacts(&self, plan: &Plan, test: usize) -> Result<BTreeMap<String, Entry>> {
        let built = self.build_closure(plan, &[test], Force::None)?;
        Ok(built
            .into_iter()
            .map(|(i, (e, _))| (plan.graph.nodes[i].recipe.name.clone(), e))
            .collect())
    }
}

/// Scratch space for one build, inside the store's tmp (same filesystem, so outputs can
/// be moved into the staged entry), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(store: &Store, key: &str, name: &str) -> Result<WorkDir> {
        let path = store.temp_path(key, name, &format!(".{}.work", std::process::id()))?;
        fs_err::create_dir_all(&path).map_err(|e| StoreError::from(io_err("create", &path)(e)))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
