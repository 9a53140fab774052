//! `cargo xtask gc`: removes artifacts that no pipeline uses.

use std::collections::BTreeSet;
use std::fs;

use anyhow::Result;

use crate::cache::{FileHashes, Lookup, Manifest};
use crate::pipeline::Plan;
use crate::runner::{Workspace, preimage, thousands};

/// The keys a pipeline uses now (its stages' current keys, as far as they can be computed from
/// cached inputs) and the keys of its stages' last runs.
fn live_keys(plan: &Plan, ws: &Workspace, hashes: &mut FileHashes) -> BTreeSet<String> {
    let env = ws.env(plan);
    let mut keys: BTreeSet<String> = ws.cache.recorded_keys(&plan.name).into_iter().collect();
    let mut manifests: Vec<Option<Manifest>> = vec![None; plan.stages.len()];
    for (i, stage) in plan.stages.iter().enumerate() {
        if stage.inputs.iter().any(|r| manifests[r.stage].is_none()) {
            continue;
        }
        if let Ok(pre) = preimage(stage, plan, &manifests, &env, hashes) {
            let key = pre.key();
            if let Lookup::Hit(m) = ws.cache.lookup(&key) {
                manifests[i] = Some(*m);
            }
            keys.insert(key);
        }
    }
    keys
}

pub struct GcReport {
    pub removed: Vec<(String, u64)>,
    pub kept: usize,
}

pub fn gc(plans: &[Plan], ws: &Workspace, dry_run: bool) -> Result<GcReport> {
    let mut hashes = FileHashes::open(&ws.cache);
    let mut live = BTreeSet::new();
    for plan in plans {
        live.extend(live_keys(plan, ws, &mut hashes));
    }
    let mut removed = Vec::new();
    let mut kept = 0;
    for (key, size) in ws.cache.artifacts()? {
        if live.contains(&key) {
            kept += 1;
            continue;
        }
        if !dry_run {
            fs::remove_dir_all(ws.cache.artifact_dir(&key))?;
        }
        removed.push((key, size));
    }
    Ok(GcReport { removed, kept })
}

pub fn print(report: &GcReport, dry_run: bool) {
    let total: u64 = report.removed.iter().map(|(_, s)| s).sum();
    for (key, size) in &report.removed {
        println!(
            "{} {key}  {} bytes",
            if dry_run { "would remove" } else { "removed" },
            thousands(*size as usize)
        );
    }
    println!(
        "{} {} artifact(s), {} bytes; kept {}",
        if dry_run { "would remove" } else { "removed" },
        report.removed.len(),
        thousands(total as usize),
        report.kept
    );
}
