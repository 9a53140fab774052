//! The Hugging Face hub: files of a repo at a revision, from the local hub cache first.

use std::path::{Path, PathBuf};

use llmembed_core::{Env, Error, Result, resolve_path};
use llmembed_hub::{HubClient, RepoKind};

use crate::embedder::{ComputeDtype, LoadSpec};

use super::HubSpec;
use super::local::{NO_WEIGHT_FILE, is_weight_file};

/// The hub client for `spec`: the Hugging Face environment (`HF_HOME`, `HF_HUB_CACHE`,
/// `HF_ENDPOINT`, `HF_TOKEN`, `HF_HUB_OFFLINE`, through `llmembed-hub`), with the spec's own
/// `cache_dir` first when it names one.
fn client(spec: &HubSpec, env: &Env) -> Result<HubClient> {
    let client = HubClient::from_env()?.with_progress(!env.quiet);
    Ok(match &spec.cache_dir {
        Some(d) => client.with_cache_dir(resolve_path(env, d)),
        None => client,
    })
}

/// Resolves `spec.revision` to a commit (a branch is asked of the hub unless offline) and
/// gives the spec's files at that commit, from the local hub cache first, downloading the
/// missing ones. Returns the files and the commit (which goes into the stage's key).
pub(crate) fn resolve_hub(spec: &HubSpec, env: &Env) -> Result<(LoadSpec, String)> {
    let client = client(spec, env)?;
    let at = client.resolve(&spec.repo, RepoKind::Model, &spec.revision)?;
    if let Some(note) = at.note() {
        log::info!("  {note}");
    }
    let paths = spec
        .files
        .iter()
        .map(|f| client.get(&at, f))
        .collect::<Result<Vec<PathBuf>>>()?;
    let commit = at.commit.clone();
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
    for shard in crate::model::safetensors::weight_files(&weights)? {
        if !shard.is_file() {
            let name = shard
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            client.get(&at, &name)?;
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
