//! `cargo xtask gc`: removes artifacts that no pipeline uses, quarantined artifacts, and what
//! interrupted runs and fetches left behind. It holds the cache lock while it works, so it never
//! removes what a run in progress reads: it waits for that run to end.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::cache::{FileHashes, Lock, LockOwner, Lookup, Manifest};
use crate::pipeline::{self, Plan};
use crate::runner::{Workspace, preimage, thousands};

/// The keys a pipeline uses now (its stages' current keys, as far as they can be computed from
/// cached inputs) and the keys of its stages' last runs.
pub fn live_keys(plan: &Plan, ws: &Workspace, hashes: &mut FileHashes) -> BTreeSet<String> {
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
    /// Quarantined (damaged) artifacts removed, with their sizes.
    pub quarantined: Vec<(PathBuf, u64)>,
    /// Temporary files and folders of dead processes removed (not listed by `--dry-run`).
    pub leftovers: Vec<PathBuf>,
    /// With `--dry-run` while a run holds the lock: who, and how many artifacts its pipeline
    /// keeps (they count as kept).
    pub protected_by_run: Option<(LockOwner, usize)>,
}

/// Removes what no pipeline of `plans` uses. Without `dry_run` it takes the cache lock first
/// (waiting for a run in progress unless `wait` is false). With `dry_run` it takes nothing and
/// changes nothing; if a run holds the lock, that run's pipeline counts as live too.
pub fn gc(plans: &[Plan], ws: &Workspace, dry_run: bool, wait: bool) -> Result<GcReport> {
    let mut protected_by_run = None;
    let mut running_plan = None;
    let _lock = if dry_run {
        if let Some(owner) = Lock::holder(&ws.cache)? {
            if let Some(file) = &owner.pipeline {
                running_plan = Some(pipeline::load(file).with_context(|| {
                    format!("read the pipeline of the run in progress ({owner})")
                })?);
            }
            protected_by_run = Some((owner, 0));
        }
        None
    } else {
        Some(Lock::acquire(&ws.cache, "gc", wait)?)
    };
    let leftovers = if dry_run {
        Vec::new()
    } else {
        ws.cache.clean_leftovers()?
    };
    let mut hashes = FileHashes::open(&ws.cache);
    let mut live = BTreeSet::new();
    for plan in plans {
        live.extend(live_keys(plan, ws, &mut hashes));
    }
    let artifacts = ws.cache.artifacts()?;
    if let (Some(plan), Some((_, protected))) = (&running_plan, &mut protected_by_run) {
        let keys = live_keys(plan, ws, &mut hashes);
        *protected = artifacts.iter().filter(|(k, _)| keys.contains(k)).count();
        live.extend(keys);
    }
    let mut removed = Vec::new();
    let mut kept = 0;
    for (key, size) in artifacts {
        if live.contains(&key) {
            kept += 1;
            continue;
        }
        if !dry_run {
            let dir = ws.cache.artifact_dir(&key);
            fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        removed.push((key, size));
    }
    let quarantined = ws.cache.quarantined()?;
    if !dry_run {
        for (path, _) in &quarantined {
            fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(GcReport {
        removed,
        kept,
        quarantined,
        leftovers,
        protected_by_run,
    })
}

pub fn print(report: &GcReport, dry_run: bool) {
    let total: u64 = report.removed.iter().map(|(_, s)| s).sum();
    for (key, size) in &report.removed {
        crate::outln!(
            "{} {key}  {} bytes",
            if dry_run { "would remove" } else { "removed" },
            thousands(*size as usize)
        );
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    for (path, size) in &report.quarantined {
        crate::outln!(
            "{verb} quarantined {}  {} bytes",
            path.display(),
            thousands(*size as usize)
        );
    }
    for path in &report.leftovers {
        crate::outln!("removed leftover {}", path.display());
    }
    if let Some((owner, protected)) = &report.protected_by_run {
        match &owner.pipeline {
            Some(file) => crate::outln!(
                "a run in progress holds the cache ({owner}): its {protected} cached artifact(s) of {} are kept; gc without --dry-run waits for it to end",
                file.display()
            ),
            None => {
                crate::outln!(
                    "the cache is held by {owner}; gc without --dry-run waits for it to end"
                )
            }
        }
    }
    crate::outln!(
        "{verb} {} artifact(s), {} bytes; kept {}",
        report.removed.len(),
        thousands(total as usize),
        report.kept
    );
}
