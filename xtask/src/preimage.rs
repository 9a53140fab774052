//! A stage's preimage: what its cache key is the hash of (see ARCHITECTURE.md, "The cache").

use std::collections::BTreeMap;

use llmembed_core::{Env, External};

use crate::cache::{FileHashes, Manifest, Preimage};
use crate::pipeline::{Plan, PlannedStage};

/// The content of the files a stage takes from each of its inputs.
pub(crate) fn input_files(
    stage: &PlannedStage,
    plan: &Plan,
    manifests: &[Option<Manifest>],
) -> std::result::Result<Vec<BTreeMap<String, String>>, String> {
    let mut out = Vec::new();
    for r in &stage.inputs {
        let upstream = &plan.stages[r.stage];
        let manifest = manifests[r.stage]
            .as_ref()
            .ok_or_else(|| format!("input `{}` is not available", upstream.id))?;
        let files: BTreeMap<String, String> = manifest
            .files
            .iter()
            .filter(|f| match &r.output {
                None => true,
                Some(out) => file_stem(&f.name) == out,
            })
            .map(|f| (f.name.clone(), f.blake3.clone()))
            .collect();
        if files.is_empty() {
            return Err(format!(
                "stage `{}` has no output `{}` (it has: {})",
                upstream.id,
                r.output.as_deref().unwrap_or(""),
                manifest
                    .files
                    .iter()
                    .map(|f| file_stem(&f.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        out.push(files);
    }
    Ok(out)
}

fn file_stem(name: &str) -> &str {
    name.split_once('.').map(|(s, _)| s).unwrap_or(name)
}

/// Computes a stage's preimage, given its inputs' manifests.
pub fn preimage(
    stage: &PlannedStage,
    plan: &Plan,
    manifests: &[Option<Manifest>],
    env: &Env,
    hashes: &mut FileHashes,
) -> std::result::Result<Preimage, String> {
    let inputs = input_files(stage, plan, manifests)?;
    let mut externals = BTreeMap::new();
    let declared = stage
        .kind
        .externals(&stage.params, env)
        .map_err(|e| format!("stage `{}`: {e}", stage.id))?;
    for ext in declared {
        match ext {
            External::File { name, path } => {
                let h = hashes
                    .hash(&path)
                    .map_err(|e| format!("stage `{}`: {e:#}", stage.id))?;
                externals.insert(name, format!("blake3:{h}"));
            }
            External::Value { name, value } => {
                externals.insert(name, value);
            }
        }
    }
    Ok(Preimage {
        kind: stage.kind.kind().to_string(),
        version: stage.kind.version(),
        params: stage.params.clone(),
        seed: stage.kind.seeded().then_some(stage.seed),
        pipeline_seed: (stage.kind.seeded()
            && stage.kind.reads_pipeline_seed()
            && stage.seed != plan.seed)
            .then_some(plan.seed),
        inputs,
        externals,
    })
}
