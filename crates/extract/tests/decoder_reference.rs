//! The GGUF decoders against HF transformers (fixtures written by
//! `scripts/reference/make_decoder_reference.py`, float32, transformers dequantizing the same
//! GGUF weights): token ids must be identical; per tapped layer the mean-pooled vectors must have
//! a cosine and a max abs error relative to the vector's norm within the stated tolerances.

mod decoder_common;

use decoder_common::{
    GEMMA3, ModelFile, QWEN25_CODER_05B, QWEN25_CODER_15B, SMOLLM2, cosine, locate, max_abs,
};
use llmembed_extract::model::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap, load};
use std::sync::OnceLock;

use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    num_layers: usize,
    cases: Vec<Case>,
    tokenize: Vec<TokCase>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    layers: Vec<LayerRef>,
    last_token_final: Vec<f64>,
}

#[derive(Deserialize)]
struct LayerRef {
    norm: f64,
    sum: f64,
    head: Vec<f64>,
    full: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}

/// Tolerances: `abs` bounds the max abs error of a pooled vector relative to the reference
/// vector's L2 norm (on every layer: over all dimensions where the fixture stores the full vector,
/// over the stored head of 16 dimensions elsewhere; the norm itself too); `cos` bounds the cosine
/// wherever the fixture stores the full vector and on the last-token vectors. The fixtures store
/// every layer in full for four of the eight texts (plain English, mixed scripts, a paragraph, a
/// text longer than Gemma-3's window) and seven layers for the others, so every tapped layer is
/// compared in full.
struct Tol {
    cos: f64,
    abs: f64,
}

// Measured on AMD Zen 4 (2026-12-03, `cargo test --release -p llmembed-extract --test
// decoder_reference -- --nocapture`, every layer in full; references from torch 2.15,
// transformers 5.24): worst 1 - cosine 4.5e-12 (Gemma-3) and 2.9e-12 (SmolLM2); worst error /
// norm 7.7e-7 and 3.5e-6. The bars are within 10x (cosine: 1 - 4e-11; error: 2.5e-5), well inside
// issue 21's claim (cosine >= 0.99999, error <= 1e-4).
const F32_TOL: Tol = Tol {
    cos: 1.0 - 4e-11,
    abs: 2.5e-5,
};
// bf16 keeps 8 bits of mantissa (relative step 2^-8 = 3.9e-3 per rounding). Measured the same way
// (AVX512-BF16 kernel, every layer in full): worst 1 - cosine 6.6e-5 (Gemma-3) and 4.0e-5
// (SmolLM2); worst error / norm 5.1e-3 and 4.3e-3. The cosine bar is README's claim, 0.9999; the
// error bar 2e-2 (4x).
const BF16_TOL: Tol = Tol {
    cos: 0.9999,
    abs: 2e-2,
};

// Qwen2.5-Coder-0.5B (Q4_K_M GGUF: Q5_0, Q8_0, Q4_K, Q6_K tensors), measured the same way
// (AMD Zen 4, 2026-12-03): f32 worst 1 - cosine 6.5e-9, worst error / norm 6.1e-5 (on one text,
// the 73-token paragraph, from block 3 on; Qwen's residual stream has a few very large
// dimensions, so summation order shows more than in SmolLM2). Bars: cosine within 10x, error 4x.
const QWEN_F32_TOL: Tol = Tol {
    cos: 1.0 - 6.5e-8,
    abs: 2.5e-4,
};
// Qwen2.5-Coder-1.5B (Q4_K_M: Q4_K, Q6_K), measured the same way: worst 1 - cosine 7.9e-11, worst
// error / norm 9.1e-6, within the same bars.
// bf16, measured the same way: worst cosine 0.99962 (0.5B: the paragraph, block 23) and 0.99986
// (1.5B); worst error / norm 1.4e-2 and 2.05e-2. Below README's 0.9999 for the smaller models: the
// cosine bar is issue 18's, 0.999; the error bar 4e-2 (2x).
const QWEN_BF16_TOL: Tol = Tol {
    cos: 0.999,
    abs: 4e-2,
};

fn fixture(name: &str) -> Fixture {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn open(m: &ModelFile, compute: ComputeDtype) -> Option<Box<dyn Embedder>> {
    let path = locate(m)?;
    let spec = LoadSpec {
        weights: path,
        config: None,
        tokenizer: None,
        compute,
    };
    Some(load(&spec).expect("load model"))
}

/// A model loaded once in f32 for this binary: each model's tokenizer test and f32 test share
/// it (loading Qwen2.5-Coder-1.5B takes half a minute on 2 cores).
type Shared = OnceLock<Option<Box<dyn Embedder>>>;
static SMOLLM2_F32: Shared = OnceLock::new();
static GEMMA3_F32: Shared = OnceLock::new();
static QWEN25_CODER_05B_F32: Shared = OnceLock::new();
static QWEN25_CODER_15B_F32: Shared = OnceLock::new();

fn f32_model(cell: &'static Shared, m: &ModelFile) -> Option<&'static dyn Embedder> {
    cell.get_or_init(|| open(m, ComputeDtype::F32)).as_deref()
}

fn check_tokens(model: &dyn Embedder, fx: &Fixture) {
    let mut bad = Vec::new();
    let all = fx
        .cases
        .iter()
        .map(|c| (&c.text, &c.ids))
        .chain(fx.tokenize.iter().map(|c| (&c.text, &c.ids)));
    let mut n = 0;
    for (text, ids) in all {
        n += 1;
        let (got, truncated) = model.tokenize(text, 1 << 20).expect("tokenize");
        assert!(!truncated);
        if &got != ids {
            bad.push(format!("{text:?}\n  hf:   {ids:?}\n  rust: {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {n} texts tokenized differently:\n{}",
        bad.len(),
        bad.join("\n")
    );
    // Truncation keeps the first max_tokens ids and says so.
    let long = fx.cases.iter().max_by_key(|c| c.ids.len()).unwrap();
    let (got, truncated) = model.tokenize(&long.text, 16).unwrap();
    assert!(truncated);
    assert_eq!(got, long.ids[..16]);
    let (got, truncated) = model.tokenize(&long.text, long.ids.len()).unwrap();
    assert!(!truncated);
    assert_eq!(got, long.ids);
}

fn check_vectors(model: &dyn Embedder, fx: &Fixture, tol: &Tol, label: &str) {
    let n = model.num_layers();
    assert_eq!(n, fx.num_layers);
    // Every tapped layer is compared in full (cosine and every dimension), not only a sample.
    let unchecked: Vec<usize> = (0..=n)
        .filter(|&k| fx.cases.iter().all(|c| c.layers[k].full.is_none()))
        .collect();
    assert!(
        unchecked.is_empty(),
        "{label}: layers {unchecked:?} have no full reference vector"
    );
    let h = model.hidden_size();
    let taps: Vec<Tap> = (0..=n).map(Tap::Layer).chain([Tap::FinalNorm]).collect();
    let batch: Vec<&[u32]> = fx.cases.iter().map(|c| c.ids.as_slice()).collect();
    // All texts in one mixed-length batch: padding and masking are part of what is checked.
    let out = model.embed(&batch, &taps, Pooling::Mean).expect("embed");
    assert_eq!(out.len(), taps.len());
    let (mut worst_cos, mut worst_rel) = (1f64, 0f64);
    let mut failures = Vec::new();
    for (ci, case) in fx.cases.iter().enumerate() {
        for (k, r) in case.layers.iter().enumerate() {
            let v = &out[k][ci * h..(ci + 1) * h];
            // Relative to the reference vector's norm: a few outlier dimensions (Gemma-3's reach
            // ~1e4) must not hide errors in the others.
            let scale = r.norm.max(1e-6);
            let norm: f64 = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let sum: f64 = v.iter().map(|x| *x as f64).sum();
            let mut errs = vec![max_abs(&v[..16], &r.head) / scale];
            let mut cos = None;
            if let Some(full) = &r.full {
                errs.push(max_abs(v, full) / scale);
                cos = Some(cosine(v, full));
            }
            let rel = errs.iter().copied().fold(0f64, f64::max);
            let norm_rel = (norm - r.norm).abs() / r.norm.max(1e-6);
            worst_rel = worst_rel.max(rel);
            if let Some(c) = cos {
                worst_cos = worst_cos.min(c);
            }
            if rel > tol.abs || cos.is_some_and(|c| c < tol.cos) || norm_rel > tol.abs {
                failures.push(format!(
                    "case {ci} ({} tokens) layer {k}: rel max abs {rel:.3e}, cos {cos:?}, norm {norm} vs {} (sum {sum} vs {})",
                    case.ids.len(),
                    r.norm,
                    r.sum
                ));
            }
        }
        // FinalNorm is HF's last hidden_states entry, identical to Layer(n).
        assert_eq!(
            out[n + 1][ci * h..(ci + 1) * h],
            out[n][ci * h..(ci + 1) * h]
        );
    }
    // Last-token pooling of the final entry, on the cases under 100 tokens: the pooling does
    // not depend on the length, and a second forward of the long case (mean pooling checked it
    // above) was a third of the test's time.
    let short: Vec<&Case> = fx.cases.iter().filter(|c| c.ids.len() < 100).collect();
    assert!(short.len() >= 5, "{label}: too few short cases");
    let batch: Vec<&[u32]> = short.iter().map(|c| c.ids.as_slice()).collect();
    let last = model
        .embed(&batch, &[Tap::Layer(n)], Pooling::Last)
        .expect("embed last");
    for (ci, case) in short.iter().enumerate() {
        let v = &last[0][ci * h..(ci + 1) * h];
        let scale = case
            .last_token_final
            .iter()
            .map(|x| x * x)
            .sum::<f64>()
            .sqrt()
            .max(1e-6);
        let rel = max_abs(v, &case.last_token_final) / scale;
        let c = cosine(v, &case.last_token_final);
        worst_rel = worst_rel.max(rel);
        worst_cos = worst_cos.min(c);
        if rel > tol.abs || c < tol.cos {
            failures.push(format!(
                "case {ci} last token: rel max abs {rel:.3e}, cos {c}"
            ));
        }
    }
    println!(
        "{label}: worst cosine {worst_cos:.7} (1 - cos {:.1e}), worst max abs error / norm {worst_rel:.3e}",
        1.0 - worst_cos
    );
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

#[test]
fn smollm2_tokenizer_matches_hf() {
    let Some(model) = f32_model(&SMOLLM2_F32, &SMOLLM2) else {
        return;
    };
    check_tokens(model, &fixture("smollm2_reference.json"));
}

#[test]
fn smollm2_f32_matches_hf() {
    let Some(model) = f32_model(&SMOLLM2_F32, &SMOLLM2) else {
        return;
    };
    check_vectors(
        model,
        &fixture("smollm2_reference.json"),
        &F32_TOL,
        "smollm2 f32",
    );
}

#[test]
fn smollm2_bf16_matches_hf() {
    let Some(model) = open(&SMOLLM2, ComputeDtype::Bf16) else {
        return;
    };
    check_vectors(
        model.as_ref(),
        &fixture("smollm2_reference.json"),
        &BF16_TOL,
        "smollm2 bf16",
    );
}

#[test]
fn gemma3_tokenizer_matches_hf() {
    let Some(model) = f32_model(&GEMMA3_F32, &GEMMA3) else {
        return;
    };
    check_tokens(model, &fixture("gemma3_reference.json"));
}

#[test]
fn gemma3_f32_matches_hf() {
    let Some(model) = f32_model(&GEMMA3_F32, &GEMMA3) else {
        return;
    };
    check_vectors(
        model,
        &fixture("gemma3_reference.json"),
        &F32_TOL,
        "gemma3 f32",
    );
}

#[test]
fn gemma3_bf16_matches_hf() {
    let Some(model) = open(&GEMMA3, ComputeDtype::Bf16) else {
        return;
    };
    check_vectors(
        model.as_ref(),
        &fixture("gemma3_reference.json"),
        &BF16_TOL,
        "gemma3 bf16",
    );
}

#[test]
fn qwen25_coder_05b_tokenizer_matches_hf() {
    let Some(model) = f32_model(&QWEN25_CODER_05B_F32, &QWEN25_CODER_05B) else {
        return;
    };
    check_tokens(model, &fixture("qwen2.5-coder-0.5b_reference.json"));
}

#[test]
fn qwen25_coder_05b_f32_matches_hf() {
    let Some(model) = f32_model(&QWEN25_CODER_05B_F32, &QWEN25_CODER_05B) else {
        return;
    };
    check_vectors(
        model,
        &fixture("qwen2.5-coder-0.5b_reference.json"),
        &QWEN_F32_TOL,
        "qwen2.5-coder-0.5b f32",
    );
}

#[test]
fn qwen25_coder_05b_bf16_matches_hf() {
    let Some(model) = open(&QWEN25_CODER_05B, ComputeDtype::Bf16) else {
        return;
    };
    check_vectors(
        model.as_ref(),
        &fixture("qwen2.5-coder-0.5b_reference.json"),
        &QWEN_BF16_TOL,
        "qwen2.5-coder-0.5b bf16",
    );
}

#[test]
fn qwen25_coder_15b_tokenizer_matches_hf() {
    let Some(model) = f32_model(&QWEN25_CODER_15B_F32, &QWEN25_CODER_15B) else {
        return;
    };
    check_tokens(model, &fixture("qwen2.5-coder-1.5b_reference.json"));
}

#[test]
fn qwen25_coder_15b_f32_matches_hf() {
    let Some(model) = f32_model(&QWEN25_CODER_15B_F32, &QWEN25_CODER_15B) else {
        return;
    };
    check_vectors(
        model,
        &fixture("qwen2.5-coder-1.5b_reference.json"),
        &QWEN_F32_TOL,
        "qwen2.5-coder-1.5b f32",
    );
}

#[test]
fn qwen25_coder_15b_bf16_matches_hf() {
    let Some(model) = open(&QWEN25_CODER_15B, ComputeDtype::Bf16) else {
        return;
    };
    check_vectors(
        model.as_ref(),
        &fixture("qwen2.5-coder-1.5b_reference.json"),
        &QWEN_BF16_TOL,
        "qwen2.5-coder-1.5b bf16",
    );
}
