//! `llmembed push P` / `pull P`: the remote cache moved by hand. A run does the same on its own
//! (it pulls what it lacks before computing and pushes what it computed); these commands fill a
//! remote from an existing cache, or a cache from a remote, without running anything.

use anyhow::{Result, bail};

use crate::cache::{FileHashes, Lookup, Manifest};
use crate::pipeline::Plan;
use crate::remote::{Pulled, RemoteLink};
use crate::runner::{Workspace, preimage};

/// What a push or pull moved.
#[derive(Debug, Default)]
pub struct Moved {
    /// Stage ids whose artifact moved.
    pub artifacts: Vec<String>,
    /// Stage ids already on the other side.
    pub present: Vec<String>,
    /// Stage ids that could not move (not cached, or their inputs are not), with why.
    pub missing: Vec<(String, String)>,
    pub store_files: usize,
}

fn link(plan: &Plan, ws: &Workspace) -> Result<RemoteLink> {
    let Some(link) = ws.remote(plan)? else {
        bail!(
            "no remote cache: give --remote URL, set LLMEMBED_REMOTE, or settings.remote in the pipeline"
        );
    };
    // By hand, a remote that fails is an error, not a warning.
    Ok(RemoteLink::new(link.remote, true))
}

fn kinds(plan: &Plan) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = plan.stages.iter().map(|s| s.kind.kind()).collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

/// The store folders of `kind` that the artifacts of `plan`'s stages of that kind name
/// (`manifests`: one per stage, `None` where it is not cached), or `None` (every folder of the
/// kind) where one of those stages is not cached or its manifest is older than the record: its
/// folder is not known, and an interrupted run's shards are worth moving.
fn named_folders(plan: &Plan, manifests: &[Option<&Manifest>], kind: &str) -> Option<Vec<String>> {
    let mut folders = Vec::new();
    for (stage, m) in plan.stages.iter().zip(manifests) {
        if stage.kind.kind() == kind {
            folders.extend(m.as_ref()?.stores.clone()?);
        }
    }
    folders.sort();
    folders.dedup();
    Some(folders)
}

/// Pushes every locally cached artifact of `plan`, and the store folders its artifacts name
/// ([`named_folders`]).
pub fn push(plan: &Plan, ws: &Workspace) -> Result<Moved> {
    let link = link(plan, ws)?;
    let _lock = crate::cache::Lock::acquire(&ws.cache, "push", true)?;
    let mut moved = Moved::default();
    let states = crate::status::states_with(plan, ws, Some(&link))?;
    let local: Vec<Option<&Manifest>> = states.iter().map(|s| s.manifest.as_ref()).collect();
    let folders: Vec<(&str, Option<Vec<String>>)> = kinds(plan)
        .into_iter()
        .map(|kind| (kind, named_folders(plan, &local, kind)))
        .collect();
    for state in states {
        match state.manifest.filter(|_| !state.in_remote) {
            Some(m) => {
                let written = link
                    .call("push", |r| r.push_artifact(&ws.cache, &m, false))?
                    .unwrap_or(0);
                if written > 0 {
                    moved.artifacts.push(state.id);
                } else {
                    moved.present.push(state.id);
                }
            }
            None if state.in_remote => moved.present.push(state.id),
            None => moved.missing.push((state.id, "not cached locally".into())),
        }
    }
    for (kind, folders) in folders {
        moved.store_files += link
            .call("push the store", |r| {
                r.push_store(&ws.cache, kind, folders.as_deref())
            })?
            .unwrap_or(0);
    }
    Ok(moved)
}

/// Pulls every artifact of `plan` the local cache lacks (checked, published atomically), in
/// plan order so that each pulled manifest gives the next stages their keys; and the store
/// folders its artifacts name ([`named_folders`]).
pub fn pull(plan: &Plan, ws: &Workspace) -> Result<Moved> {
    let link = link(plan, ws)?;
    let _lock = crate::cache::Lock::acquire(&ws.cache, "pull", true)?;
    let env = ws.env(plan);
    let mut hashes = FileHashes::open(&ws.cache);
    let mut manifests: Vec<Option<Manifest>> = vec![None; plan.stages.len()];
    let mut moved = Moved::default();
    for (i, stage) in plan.stages.iter().enumerate() {
        let pre = match preimage(stage, plan, &manifests, &env, &mut hashes) {
            Ok(pre) => pre,
            Err(why) => {
                moved.missing.push((stage.id.clone(), why));
                continue;
            }
        };
        let key = pre.key();
        if let Lookup::Hit(m) = ws.cache.lookup(&key) {
            manifests[i] = Some(*m);
            moved.present.push(stage.id.clone());
            continue;
        }
        match link.call("pull", |r| r.pull_artifact(&ws.cache, &key))? {
            Some(Pulled::Published(m)) => {
                ws.cache.record_run(plan, &stage.id, &m)?;
                manifests[i] = Some(*m);
                moved.artifacts.push(stage.id.clone());
            }
            Some(Pulled::Damaged(why)) => moved
                .missing
                .push((stage.id.clone(), format!("damaged in the remote: {why}"))),
            Some(Pulled::Absent) | None => moved
                .missing
                .push((stage.id.clone(), "not in the remote cache".into())),
        }
    }
    hashes.save()?;
    let local: Vec<Option<&Manifest>> = manifests.iter().map(Option::as_ref).collect();
    for kind in kinds(plan) {
        let folders = named_folders(plan, &local, kind);
        moved.store_files += link
            .call("pull the store", |r| {
                r.pull_store(&ws.cache, kind, folders.as_deref())
            })?
            .unwrap_or(0);
    }
    Ok(moved)
}

/// The text report of a push or pull.
pub fn print(moved: &Moved, verb: &str) {
    for id in &moved.artifacts {
        crate::outln!("{verb:<8} {id}");
    }
    for id in &moved.present {
        crate::outln!("present  {id}");
    }
    for (id, why) in &moved.missing {
        crate::outln!("missing  {id} ({why})");
    }
    crate::outln!(
        "{} artifact(s) {verb}, {} already there, {} missing; {} store file(s) {verb}",
        moved.artifacts.len(),
        moved.present.len(),
        moved.missing.len(),
        moved.store_files
    );
}
