//! `llmembed show` and `status --json`: where each stage's artifact is and what is in it, for
//! people and for scripts (`--json`: a Python user reads a stage's embeddings from the printed
//! path in one line).

use serde::Serialize;

use crate::pipeline::Plan;
use crate::report::{human_duration, thousands};
use crate::runner::Workspace;
use crate::status::{StageState, StageStatus};

#[derive(Serialize)]
pub struct ShownPipeline {
    pub pipeline: String,
    pub pipeline_file: String,
    pub cache: String,
    pub stages: Vec<ShownStage>,
}

#[derive(Serialize)]
pub struct ShownStage {
    pub id: String,
    pub kind: String,
    /// `cached`, `remote` (only in the remote cache), `stale` or `waiting` (an input is stale).
    pub state: &'static str,
    /// Why it is stale.
    pub reasons: Vec<String>,
    pub key: Option<String>,
    /// The artifact's folder (absolute), when cached.
    pub dir: Option<String>,
    pub files: Vec<ShownFile>,
    pub rows: Option<usize>,
    pub seconds: Option<f64>,
    pub notes: Vec<String>,
    /// Longer facts (a model's full description).
    pub details: Vec<String>,
    /// The store folders its run read or wrote (absolute; extraction: the embedded texts it
    /// reuses), absent for artifacts made before manifests named them.
    pub stores: Vec<String>,
}

#[derive(Serialize)]
pub struct ShownFile {
    pub name: String,
    /// Absolute path.
    pub path: String,
    pub bytes: u64,
    pub blake3: String,
}

/// The stages of `plan` (or only `stage`) as the cache holds them now.
pub fn show(
    plan: &Plan,
    ws: &Workspace,
    states: Vec<StageState>,
    stage: Option<&str>,
) -> anyhow::Result<ShownPipeline> {
    if let Some(id) = stage
        && plan.index_of(id).is_none()
    {
        let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
        anyhow::bail!(
            "no stage `{id}` in {} (stages: {})",
            plan.file.display(),
            ids.join(", ")
        );
    }
    let cache = std::path::absolute(&ws.cache.root).unwrap_or_else(|_| ws.cache.root.clone());
    let stages = states
        .into_iter()
        .filter(|s| stage.is_none_or(|id| id == s.id))
        .map(|s| {
            let (state, reasons) = match s.status {
                _ if s.in_remote => ("remote", vec![]),
                StageStatus::Cached => ("cached", vec![]),
                StageStatus::Stale(r) => ("stale", r),
                StageStatus::Waiting(w) => ("waiting", vec![w]),
            };
            let dir = s
                .manifest
                .as_ref()
                .map(|m| cache.join("artifacts").join(&m.key));
            let files = match (&s.manifest, &dir) {
                (Some(m), Some(dir)) => m
                    .files
                    .iter()
                    .map(|f| ShownFile {
                        name: f.name.clone(),
                        path: dir.join(&f.name).display().to_string(),
                        bytes: f.size,
                        blake3: f.blake3.clone(),
                    })
                    .collect(),
                _ => vec![],
            };
            let store_root = cache.join("stores").join(&s.kind);
            let stores = s
                .manifest
                .as_ref()
                .and_then(|m| m.stores.as_ref())
                .map(|folders| {
                    let named = folders.iter().map(|f| store_root.join(f));
                    named.map(|p| p.display().to_string()).collect()
                })
                .unwrap_or_default();
            ShownStage {
                id: s.id,
                kind: s.kind,
                state,
                reasons,
                key: s.key,
                dir: dir.map(|d| d.display().to_string()),
                files,
                rows: s.manifest.as_ref().map(|m| m.rows_out),
                seconds: s.manifest.as_ref().map(|m| m.seconds),
                notes: s
                    .manifest
                    .as_ref()
                    .map(|m| m.notes.clone())
                    .unwrap_or_default(),
                stores,
                details: s.manifest.map(|m| m.details).unwrap_or_default(),
            }
        })
        .collect();
    Ok(ShownPipeline {
        pipeline: plan.name.clone(),
        pipeline_file: plan.file.display().to_string(),
        cache: cache.display().to_string(),
        stages,
    })
}

/// The text form of [`show`].
pub fn print(shown: &ShownPipeline) {
    for s in &shown.stages {
        crate::outln!("{} ({}): {}", s.id, s.kind, s.state);
        for r in &s.reasons {
            crate::outln!("  {r}");
        }
        if let Some(key) = &s.key {
            crate::outln!("  key      {key}");
        }
        if let Some(dir) = &s.dir {
            crate::outln!("  folder   {dir}");
        }
        if let (Some(rows), Some(secs)) = (s.rows, s.seconds) {
            crate::outln!(
                "  made in  {} ({} rows)",
                human_duration(secs),
                thousands(rows)
            );
        }
        for f in &s.files {
            crate::outln!(
                "  file     {} ({} bytes)",
                f.name,
                thousands(f.bytes as usize)
            );
        }
        for n in &s.notes {
            crate::outln!("  note     {n}");
        }
        for d in &s.details {
            crate::outln!("  detail   {d}");
        }
        for folder in &s.stores {
            crate::outln!("  store    {folder}");
        }
    }
}
