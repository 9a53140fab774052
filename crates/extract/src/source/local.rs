//! Local model files: which files of a path or folder make a model.

use std::fs;
use std::path::{Path, PathBuf};

use llmembed_core::{Error, Result};

use crate::embedder::{ComputeDtype, LoadSpec};

/// The files of a local model: a `.gguf` file, a `.safetensors` file (config/tokenizer next to
/// it), or a folder with `model.safetensors` + `config.json` + `tokenizer.json` or one `.gguf`.
pub(crate) fn local_spec(path: &Path) -> Result<LoadSpec> {
    let with = |weights: PathBuf, dir: &Path| -> Result<LoadSpec> {
        let config = dir.join("config.json");
        let tokenizer = dir.join("tokenizer.json");
        if is_safetensors(&weights) {
            for f in [&config, &tokenizer] {
                if !f.is_file() {
                    return Err(Error::param(
                        "model",
                        format!("{}: missing next to {}", f.display(), weights.display()),
                    ));
                }
            }
        }
        Ok(LoadSpec {
            weights,
            config: config.is_file().then_some(config),
            tokenizer: tokenizer.is_file().then_some(tokenizer),
            compute: ComputeDtype::F32,
        })
    };
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        if path.extension().is_some_and(|e| e == "gguf") {
            return Ok(LoadSpec {
                weights: path.to_path_buf(),
                config: None,
                tokenizer: None,
                compute: ComputeDtype::F32,
            });
        }
        return with(path.to_path_buf(), dir);
    }
    if path.is_dir() {
        for name in ["model.safetensors", "model.safetensors.index.json"] {
            let st = path.join(name);
            if st.is_file() {
                return with(st, path);
            }
        }
        let ggufs: Vec<PathBuf> = fs::read_dir(path)
            .map_err(|e| Error::io("list", path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
            .collect();
        if let [one] = ggufs.as_slice() {
            return local_spec(one);
        }
        return Err(Error::param(
            "model",
            format!(
                "{}: expected model.safetensors or model.safetensors.index.json (+ config.json, tokenizer.json) or exactly one .gguf, found {} .gguf files",
                path.display(),
                ggufs.len()
            ),
        ));
    }
    Err(Error::param(
        "model",
        format!("{}: no such file or folder", path.display()),
    ))
}

/// A hub spec's `files` must name one of these.
pub(super) const NO_WEIGHT_FILE: &str =
    "needs a .gguf, .safetensors or .safetensors.index.json weight file";

/// GGUF, safetensors, or a sharded checkpoint's index.
pub(super) fn is_weight_file(name: &str) -> bool {
    name.ends_with(".gguf") || is_safetensors(Path::new(name))
}

/// A single safetensors file or the index of a sharded checkpoint.
pub(super) fn is_safetensors(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
}
