//! The Hugging Face hub: files of a repo at a revision, from the local hub cache first.

use std::fs;
use std::path::{Path, PathBuf};

use llmembed_core::{Env, Error, Result, resolve_path};

use crate::embedder::{ComputeDtype, LoadSpec};

use super::local::{NO_WEIGHT_FILE, is_weight_file};
use super::{HubSpec, is_hex};

pub(super) fn hub_cache_dir(spec: &HubSpec, env: &Env) -> PathBuf {
    if let Some(d) = &spec.cache_dir {
        return resolve_path(env, d);
    }
    if let Ok(d) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("HF_HOME") {
        return PathBuf::from(d).join("hub");
    }
    hf_hub::Cache::default().path().clone()
}

/// Resolves hub files from the local cache (`models--org--name/{refs,snapshots}`), downloading
/// the missing ones. Returns the files and the commit they are at.
pub(crate) fn resolve_hub(spec: &HubSpec, env: &Env) -> Result<(LoadSpec, String)> {
    let cache = hub_cache_dir(spec, env);
    let repo_dir = cache.join(format!("models--{}", spec.repo.replace('/', "--")));
    let cached_commit = || -> Option<String> {
        if is_hex(&spec.revision, 40) {
            return Some(spec.revision.to_ascii_lowercase());
        }
        let r = fs::read_to_string(repo_dir.join("refs").join(&spec.revision)).ok()?;
        let r = r.trim().to_string();
        is_hex(&r, 40).then_some(r)
    };
    let in_snapshot = |commit: &str| -> Option<Vec<PathBuf>> {
        let snap = repo_dir.join("snapshots").join(commit);
        spec.files
            .iter()
            .map(|f| {
                let p = snap.join(f);
                p.is_file().then_some(p)
            })
            .collect()
    };
    let api = || {
        hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(cache.clone()))
            .with_progress(!env.quiet)
            .build()
            .map_err(|e| Error::compute("open hub client", e))
            .map(|api| {
                api.repo(hf_hub::Repo::with_revision(
                    spec.repo.clone(),
                    hf_hub::RepoType::Model,
                    spec.revision.clone(),
                ))
            })
    };
    let download = |repo: &hf_hub::api::sync::ApiRepo, f: &str| {
        repo.get(f).map_err(|e| {
            Error::compute(
                "fetch from hub",
                format!(
                    "{}@{} file {f}: not in the local hub cache {} and download failed: {e}",
                    spec.repo,
                    spec.revision,
                    cache.display()
                ),
            )
        })
    };
    let (commit, paths) = match cached_commit().and_then(|c| in_snapshot(&c).map(|p| (c, p))) {
        Some(found) => found,
        None => {
            let repo = api()?;
            let mut paths = Vec::new();
            for f in &spec.files {
                paths.push(download(&repo, f)?);
            }
            let commit = cached_commit()
                .or_else(|| {
                    paths[0]
                        .parent()
                        .and_then(|d| d.file_name())
                        .map(|n| n.to_string_lossy().into_owned())
                        .filter(|c| is_hex(c, 40))
                })
                .ok_or_else(|| {
                    Error::compute(
                        "fetch from hub",
                        format!("{}@{}: cannot tell the commit", spec.repo, spec.revision),
                    )
                })?;
            (commit, paths)
        }
    };
    let pick = |pred: &dyn Fn(&str) -> bool| -> Option<PathBuf> {
        spec.files
            .iter()
            .zip(&paths)
            .find(|(f, _)| pred(f))
            .map(|(_, p)| p.clone())
    };
    let weights =
        pick(&|f| is_weight_file(f)).ok_or_else(|| Error::param("model.files", NO_WEIGHT_FILE))?;
    // A sharded checkpoint's index names its shards: fetch the ones the snapshot lacks (for
    // a single weight file, `weight_files` is that file, already here).
    let mut repo = None;
    for shard in crate::model::safetensors::weight_files(&weights)? {
        if !shard.is_file() {
            let name = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let repo = match repo {
                Some(ref r) => r,
                None => repo.insert(api()?),
            };
            download(repo, &name)?;
        }
    }
    let load = LoadSpec {
        weights,
        config: pick(&|f| Path::new(f).file_name().is_some_and(|n| n == "config.json")),
        tokenizer: pick(&|f| {
            Path::new(f)
                .file_name()
                .is_some_and(|n| n == "tokenizer.json")
        }),
        compute: ComputeDtype::F32,
    };
    Ok((load, commit))
}
