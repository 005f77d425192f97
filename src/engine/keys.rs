//! The keys of entries the plan's next runs would look up: what `gc` keeps, and what
//! `push` and `pull` carry (each recipe's entry, the tests' own results, the booted
//! environments).

use std::collections::BTreeSet;

use super::{Engine, Error, Plan, Result};
use crate::recipe::Spec;
use crate::store::Entry;
use crate::testing::cases;
use crate::vm;

/// A store entry's key, and the name and kind it is looked up under.
pub struct NamedKey {
    pub name: String,
    pub kind: &'static str,
    pub key: String,
}

impl Engine<'_> {
    /// The keys of the own result entries of every test of the plan's test recipes whose
    /// bundles are built: what their next runs would reuse, so what `gc` keeps.
    pub fn test_case_keys(&self, plan: &Plan) -> Result<BTreeSet<String>> {
        Ok(self.test_cases(plan)?.into_iter().map(|c| c.key).collect())
    }

    /// Each recipe's entry the plan's next runs would look up (a test recipe's results
    /// among them), by key and name, for `push` and `pull`.
    pub fn recipe_keys(&self, plan: &Plan) -> Vec<NamedKey> {
        plan.graph
            .nodes
            .iter()
            .zip(&plan.keys)
            .map(|(node, key)| NamedKey {
                name: node.recipe.name.clone(),
                kind: node.recipe.kind(),
                key: key.clone(),
            })
            .collect()
    }

    /// Every test's own result entry the plan's next runs would look up, of the test
    /// recipes whose bundles are in the store.
    pub fn case_keys(&self, plan: &Plan) -> Result<Vec<NamedKey>> {
        Ok(self
            .test_cases(plan)?
            .into_iter()
            .map(|c| NamedKey {
                name: c.name,
                kind: cases::CASE_KIND,
                key: c.key,
            })
            .collect())
    }

    fn test_cases(&self, plan: &Plan) -> Result<Vec<cases::CaseKey>> {
        let mut keys = Vec::new();
        for (i, node) in plan.graph.nodes.iter().enumerate() {
            let Spec::Test(spec) = &node.recipe.spec else {
                continue;
            };
            let mut bundles = Vec::new();
            for bundle in &spec.bundles {
                let entry = plan
                    .graph
                    .index_of(&bundle.name)
                    .and_then(|idx| self.store.get(&plan.keys[idx], &bundle.name).ok().flatten());
                bundles.extend(entry.map(|e| (bundle.name.as_str(), e)));
            }
            if bundles.len() != spec.bundles.len() {
                continue;
            }
            let refs: Vec<(&str, &Entry)> = bundles.iter().map(|(n, e)| (*n, e)).collect();
            let inputs = plan.inputs[i].to_value();
            let found = cases::all_keys(
                &self.store,
                &node.recipe.name,
                &plan.keys[i],
                &inputs,
                &refs,
            )
            .map_err(|source| Error::Test {
                name: node.recipe.name.clone(),
                source,
            })?;
            keys.extend(found);
        }
        Ok(keys)
    }

    /// The keys of the booted environments the plan's test recipes start from, under
    /// either accelerator: what `gc` keeps of environment entries.
    pub fn environment_keys(&self, plan: &Plan) -> BTreeSet<String> {
        (0..plan.graph.nodes.len())
            .flat_map(|node| {
                [vm::Accel::Kvm, vm::Accel::Tcg]
                    .map(|accel| self.environment_inputs(plan, node, accel))
            })
            .flatten()
            .map(|inputs| inputs.key())
            .collect()
    }
}
