//! `llmembed status`: for each stage, cached or stale, and for a stale one which field of
//! its preimage differs from the last run.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::Value;

use crate::cache::{FileHashes, Lookup, Manifest, Preimage};
use crate::pipeline::{self, Plan};
use crate::remote::RemoteLink;
use crate::runner::{Workspace, preimage};

pub enum StageStatus {
    Cached,
    /// Stale, with the reasons (one line each).
    Stale(Vec<String>),
    /// Cannot tell yet: an input is itself stale.
    Waiting(String),
}

/// One stage as the cache sees it now.
pub struct StageState {
    pub id: String,
    pub kind: String,
    /// The key the stage has now, when its inputs are cached (so that it can be computed).
    pub key: Option<String>,
    /// The artifact, when cached (locally, or in the remote cache when `in_remote`).
    pub manifest: Option<Manifest>,
    pub status: StageStatus,
    /// Not cached locally, but the remote cache has it (the next run pulls it).
    pub in_remote: bool,
}

/// For each stage: cached, or stale and why.
pub fn status(plan: &Plan, ws: &Workspace) -> Result<Vec<(String, StageStatus)>> {
    Ok(states(plan, ws)?
        .into_iter()
        .map(|s| (s.id, s.status))
        .collect())
}

/// For each stage: its key, its artifact if cached, and why it is stale if it is.
pub fn states(plan: &Plan, ws: &Workspace) -> Result<Vec<StageState>> {
    states_with(plan, ws, ws.remote(plan)?.as_ref())
}

/// [`states`], looking stages up in `remote` (an open remote cache) rather than opening one.
pub fn states_with(
    plan: &Plan,
    ws: &Workspace,
    remote: Option<&RemoteLink>,
) -> Result<Vec<StageState>> {
    let env = ws.env(plan);
    let mut hashes = FileHashes::open(&ws.cache);
    let mut manifests: Vec<Option<Manifest>> = vec![None; plan.stages.len()];
    let mut out = Vec::new();
    for (i, stage) in plan.stages.iter().enumerate() {
        let state = |key: Option<String>, manifest: Option<Manifest>, status| StageState {
            id: stage.id.clone(),
            kind: stage.kind.kind().to_string(),
            key,
            manifest,
            status,
            in_remote: false,
        };
        if let Some(r) = stage.inputs.iter().find(|r| manifests[r.stage].is_none()) {
            out.push(state(
                None,
                None,
                StageStatus::Waiting(format!(
                    "stale because input `{}` is stale",
                    plan.stages[r.stage].id
                )),
            ));
            continue;
        }
        let current = match preimage(stage, plan, &manifests, &env, &mut hashes) {
            Ok(p) => p,
            Err(e) => {
                out.push(state(None, None, StageStatus::Stale(vec![e])));
                continue;
            }
        };
        let key = current.key();
        let status = match ws.cache.lookup(&key) {
            Lookup::Hit(m) => {
                manifests[i] = Some(*m);
                StageStatus::Cached
            }
            Lookup::Corrupt(why) => StageStatus::Stale(vec![format!("artifact damaged: {why}")]),
            Lookup::Missing => match ws.cache.last_run(&plan.name, &stage.id) {
                None => StageStatus::Stale(vec!["never run".into()]),
                Some(last) if last.key == key => {
                    StageStatus::Stale(vec!["artifact removed from the cache".into()])
                }
                Some(last) => {
                    let input_ids: Vec<&str> = stage
                        .inputs
                        .iter()
                        .map(|r| plan.stages[r.stage].id.as_str())
                        .collect();
                    let mut reasons = diff(&last.preimage, &current, &input_ids);
                    if let Some(other) = last
                        .pipeline_file
                        .as_deref()
                        .filter(|f| pipeline::is_another_file(f, &plan.file))
                    {
                        reasons.insert(
                            0,
                            format!(
                                "compared with its last run, which {} made (another file with \
                                 the same `name: {}`)",
                                other.display(),
                                plan.name
                            ),
                        );
                    }
                    StageStatus::Stale(reasons)
                }
            },
        };
        if manifests[i].is_none()
            && let Some(link) = remote
            && let Some(Some(m)) = link.call("look up", |r| r.manifest(&key))?
        {
            // Its manifest gives the stages after it their keys: the chain can be followed
            // through the remote cache.
            manifests[i] = Some(m);
            let mut st = state(Some(key), manifests[i].clone(), status);
            st.in_remote = true;
            out.push(st);
            continue;
        }
        out.push(state(Some(key), manifests[i].clone(), status));
    }
    hashes.save()?;
    Ok(out)
}

fn compact(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(v) => serde_json::to_string(v).unwrap_or_default(),
    }
}

/// Human-readable differences between the last run's preimage and the current one.
pub fn diff(old: &Preimage, new: &Preimage, input_ids: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    if old.kind != new.kind {
        out.push(format!("kind changed: {} -> {}", old.kind, new.kind));
    }
    if old.version != new.version {
        out.push(format!(
            "implementation version changed: {} -> {}",
            old.version, new.version
        ));
    }
    let empty = serde_json::Map::new();
    let (po, pn) = (
        old.params.as_object().unwrap_or(&empty),
        new.params.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = po.keys().chain(pn.keys()).collect();
    for k in keys {
        if po.get(k) != pn.get(k) {
            out.push(format!(
                "param `{k}` changed: {} -> {}",
                compact(po.get(k)),
                compact(pn.get(k))
            ));
        }
    }
    if old.seed != new.seed {
        out.push(format!("seed changed: {:?} -> {:?}", old.seed, new.seed));
    }
    if old.pipeline_seed != new.pipeline_seed {
        out.push(format!(
            "pipeline seed changed: {:?} -> {:?}",
            old.pipeline_seed, new.pipeline_seed
        ));
    }
    if old.inputs.len() != new.inputs.len() {
        out.push(format!(
            "number of inputs changed: {} -> {}",
            old.inputs.len(),
            new.inputs.len()
        ));
    } else {
        for (i, (a, b)) in old.inputs.iter().zip(&new.inputs).enumerate() {
            if a != b {
                let changed: Vec<&str> = a
                    .keys()
                    .chain(b.keys())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .filter(|f| a.get(*f) != b.get(*f))
                    .map(String::as_str)
                    .collect();
                out.push(format!(
                    "input `{}` content changed ({})",
                    input_ids.get(i).copied().unwrap_or("?"),
                    changed.join(", ")
                ));
            }
        }
    }
    let names: BTreeSet<&String> = old.externals.keys().chain(new.externals.keys()).collect();
    for name in names {
        match (old.externals.get(name), new.externals.get(name)) {
            (Some(a), Some(b)) if a != b => {
                out.push(format!("external `{name}` changed: {a} -> {b}"))
            }
            (None, Some(_)) => out.push(format!("external `{name}` added")),
            (Some(_), None) => out.push(format!("external `{name}` removed")),
            _ => {}
        }
    }
    if out.is_empty() {
        out.push("not cached".into());
    }
    out
}

/// The cached artifacts of stage `target` and of every stage it depends on, in plan order, each
/// checked in full (its bytes are about to be read); or an error naming the stages that are not
/// cached locally, why, and the command that makes them (`program`: `cargo xtask` or
/// `llmembed`). Nothing is run: `predict` and `serve` never train.
pub fn path_artifacts(
    plan: &Plan,
    ws: &Workspace,
    target: usize,
    program: &str,
) -> Result<Vec<(usize, Manifest)>> {
    let on_path = plan.upstream_of(target);
    let states = states(plan, ws)?;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for (i, state) in states.into_iter().enumerate().filter(|(i, _)| on_path[*i]) {
        match (state.manifest, &state.status) {
            (Some(m), _) if !state.in_remote => found.push((i, m)),
            (_, StageStatus::Stale(why)) => missing.push(format!(
                "`{}` ({}): {}",
                state.id,
                state.kind,
                why.join("; ")
            )),
            (_, StageStatus::Waiting(why)) => {
                missing.push(format!("`{}` ({}): {why}", state.id, state.kind))
            }
            _ => missing.push(format!(
                "`{}` ({}): only in the remote cache",
                state.id, state.kind
            )),
        }
    }
    if !missing.is_empty() {
        anyhow::bail!(
            "stage `{}` needs {} stage(s) that are not cached:\n  {}\nmake them with `{program} run {} --until {}` (predict and serve never train)",
            plan.stages[target].id,
            missing.len(),
            missing.join("\n  "),
            plan.file.display(),
            plan.stages[target].id,
        );
    }
    for (i, m) in &found {
        if let Err(why) = ws.cache.verify_files(m, None) {
            anyhow::bail!(
                "the cached artifact of `{}` is damaged ({why}); `{program} verify --repair` removes it, then `{program} run {} --until {}` makes it again",
                plan.stages[*i].id,
                plan.file.display(),
                plan.stages[target].id,
            );
        }
    }
    Ok(found)
}
