//! `cargo xtask gc`: removes artifacts that no pipeline uses, quarantined artifacts, and what
//! interrupted runs and fetches left behind; with `--stores`, also the folders of the stages'
//! stores (`cache/stores/<kind>/<folder>`: extraction's embedded texts, per model fingerprint)
//! that no artifact it keeps names. It holds the cache lock while it works, so it never removes
//! what a run in progress reads: it waits for that run to end.
//!
//! A store folder is the costliest thing in the cache to make again (hours of extraction) and
//! the only one an interrupted run leaves half made, so it is kept whenever there is doubt: while
//! a live artifact names it (`Manifest::stores`), while it holds work a rerun would resume
//! (`StageKind::unfinished`: an interrupted run has published no artifact yet), while anything
//! in it was written in the last [`STORE_GRACE`] (the workers of a `slurm` run finish the shards
//! before its last job publishes the artifact that names them), and, for a whole kind, while
//! some live artifact of that kind was made before manifests named their stores.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

use crate::cache::{FileHashes, Lock, LockOwner, Lookup, Manifest, dir_size, tree_stats};
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

/// How long after its last write a store folder that no artifact names is still kept.
pub const STORE_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What `gc` does besides removing unused artifacts.
#[derive(Clone, Copy, Debug, Default)]
pub struct GcOptions {
    /// Change nothing, take no lock: say what would be removed.
    pub dry_run: bool,
    /// Wait for a command that holds the cache (else fail at once).
    pub wait: bool,
    /// Remove the store folders that nothing keeps (see the module docs); without it they are
    /// only listed.
    pub stores: bool,
}

/// A store folder that no live artifact names, and what `gc` did with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreFolder {
    /// `cache/stores/<kind>/<folder>`.
    pub path: PathBuf,
    /// Bytes of every file in it.
    pub size: u64,
    pub fate: StoreFate,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreFate {
    /// Removed with `--stores` (or would be, with `--dry-run`).
    Removed,
    /// Left in place because `--stores` was not given.
    Removable,
    /// Kept: a rerun resumes from it (the stage's words).
    Unfinished(String),
    /// Kept: written within [`STORE_GRACE`].
    Recent,
}

/// A kind whose store folders are all kept because some live artifact of that kind does not
/// name the folders it read (its manifest is older than the record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoresUnattributed {
    pub kind: String,
    /// Folders of the kind's store no live artifact names, and their bytes.
    pub folders: usize,
    pub size: u64,
    /// The artifacts without the record: (stage id, key).
    pub artifacts: Vec<(String, String)>,
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
    /// Store folders no live artifact names, each with its fate.
    pub stores: Vec<StoreFolder>,
    /// Kinds whose store folders were all kept for want of a record.
    pub stores_unattributed: Vec<StoresUnattributed>,
}

/// Removes what no pipeline of `plans` uses. Without `dry_run` it takes the cache lock first
/// (waiting for a run in progress unless `wait` is false). With `dry_run` it takes nothing and
/// changes nothing; if a run holds the lock, that run's pipeline counts as live too.
pub fn gc(plans: &[Plan], ws: &Workspace, opts: GcOptions) -> Result<GcReport> {
    let GcOptions { dry_run, wait, .. } = opts;
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
    let mut named = NamedStores::default();
    for (key, size) in artifacts {
        if live.contains(&key) {
            kept += 1;
            if let Some(m) = ws.cache.manifest(&key) {
                named.add(&m);
            }
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
    let (stores, stores_unattributed) = store_folders(ws, &named, opts)?;
    Ok(GcReport {
        removed,
        kept,
        quarantined,
        leftovers,
        protected_by_run,
        stores,
        stores_unattributed,
    })
}

/// The store folders the live artifacts name, per kind, and the live artifacts that name none
/// because their manifests are older than the record.
#[derive(Default)]
struct NamedStores {
    folders: BTreeMap<String, BTreeSet<String>>,
    unrecorded: BTreeMap<String, Vec<(String, String)>>,
}

impl NamedStores {
    fn add(&mut self, m: &Manifest) {
        let kind = m.preimage.kind.clone();
        match &m.stores {
            Some(folders) => self
                .folders
                .entry(kind)
                .or_default()
                .extend(folders.iter().cloned()),
            None => self
                .unrecorded
                .entry(kind)
                .or_default()
                .push((m.stage_id.clone(), m.key.clone())),
        }
    }
}

/// Every folder of every kind's store that no live artifact names, with its fate; with
/// `--stores` and without `--dry-run`, removes those whose fate is [`StoreFate::Removed`].
fn store_folders(
    ws: &Workspace,
    named: &NamedStores,
    opts: GcOptions,
) -> Result<(Vec<StoreFolder>, Vec<StoresUnattributed>)> {
    let root = ws.cache.root.join("stores");
    let mut out = Vec::new();
    let mut unattributed = Vec::new();
    let Ok(kinds) = fs::read_dir(&root) else {
        return Ok((out, unattributed));
    };
    let mut kinds: Vec<PathBuf> = kinds.flatten().map(|e| e.path()).collect();
    kinds.sort();
    for kind_dir in kinds {
        let kind_name = kind_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // A folder of a kind this build does not know is not understood: left alone.
        let Some(kind) = crate::registry::find(&kind_name) else {
            continue;
        };
        let Ok(entries) = fs::read_dir(&kind_dir) else {
            continue;
        };
        let keep = named.folders.get(&kind_name);
        let mut free: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                // Names starting with a dot are a writer's temporaries, not store folders.
                !name.starts_with('.') && !keep.is_some_and(|k| k.contains(&name))
            })
            .map(|e| e.path())
            .collect();
        free.sort();
        if free.is_empty() {
            continue;
        }
        if let Some(artifacts) = named.unrecorded.get(&kind_name) {
            unattributed.push(StoresUnattributed {
                kind: kind_name.clone(),
                folders: free.len(),
                size: free.iter().map(|p| dir_size(p)).sum(),
                artifacts: artifacts.clone(),
            });
            continue;
        }
        for path in free {
            let (size, newest) = tree_stats(&path);
            let fate = if let Some(why) = kind
                .unfinished(&path)
                .with_context(|| format!("look for unfinished work in {}", path.display()))?
            {
                StoreFate::Unfinished(why)
            } else if newest.is_some_and(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .map_or(true, |age| age < STORE_GRACE)
            }) {
                StoreFate::Recent
            } else if opts.stores {
                StoreFate::Removed
            } else {
                StoreFate::Removable
            };
            if !opts.dry_run && fate == StoreFate::Removed {
                fs::remove_dir_all(&path).with_context(|| format!("remove {}", path.display()))?;
            }
            out.push(StoreFolder { path, size, fate });
        }
    }
    Ok((out, unattributed))
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
    print_stores(report, dry_run);
}

fn print_stores(report: &GcReport, dry_run: bool) {
    let hours = STORE_GRACE.as_secs() / 3600;
    for s in &report.stores {
        let (path, size) = (s.path.display(), thousands(s.size as usize));
        match &s.fate {
            StoreFate::Removed if dry_run => {
                crate::outln!("would remove store {path}  {size} bytes")
            }
            StoreFate::Removed => crate::outln!("removed store {path}  {size} bytes"),
            StoreFate::Removable => {
                crate::outln!("store {path}  {size} bytes: no artifact uses it")
            }
            StoreFate::Unfinished(why) => {
                crate::outln!("kept store {path}  {size} bytes: a rerun resumes from it ({why})")
            }
            StoreFate::Recent => {
                crate::outln!("kept store {path}  {size} bytes: written in the last {hours} hours")
            }
        }
    }
    for u in &report.stores_unattributed {
        let mut stages: Vec<String> = u
            .artifacts
            .iter()
            .take(3)
            .map(|(stage, key)| format!("`{stage}` ({})", &key[..key.len().min(12)]))
            .collect();
        if u.artifacts.len() > 3 {
            stages.push(format!("{} more", u.artifacts.len() - 3));
        }
        crate::outln!(
            "kept all {} folder(s) of stores/{} ({} bytes) that no artifact names: {} live {} artifact(s) were made before manifests named their store folders ({}); `cargo xtask run <pipeline> --force <stage> --only <stage>` records one (on a CPU whose kernel the store names, reading its texts from the store)",
            u.folders,
            u.kind,
            thousands(u.size as usize),
            u.artifacts.len(),
            u.kind,
            stages.join(", ")
        );
    }
    let free: Vec<&StoreFolder> = report
        .stores
        .iter()
        .filter(|s| matches!(s.fate, StoreFate::Removed | StoreFate::Removable))
        .collect();
    if free.is_empty() {
        return;
    }
    let bytes = thousands(free.iter().map(|s| s.size).sum::<u64>() as usize);
    match free[0].fate {
        StoreFate::Removable => crate::outln!(
            "{} store folder(s), {bytes} bytes, no artifact uses: `gc --stores` removes them (embedding those texts again costs the extraction time)",
            free.len()
        ),
        _ => crate::outln!(
            "{} {} store folder(s), {bytes} bytes",
            if dry_run { "would remove" } else { "removed" },
            free.len()
        ),
    }
}
