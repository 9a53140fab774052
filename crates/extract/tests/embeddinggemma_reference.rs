//! EmbeddingGemma-300M (the `embeddinggemma-300m` preset: `gemma3_text` safetensors with
//! bidirectional attention and its sentence-transformers modules) against sentence-transformers
//! on the same checkpoint (fixture written by
//! `scripts/reference/make_embeddinggemma_reference.py`, float32, eager attention): the same
//! token ids; per layer the mean-pooled hidden states, and the sentence embedding
//! (`Tap::Sentence`), within the stated cosine and error bounds, in `compute: f32` and `bf16`;
//! a text's vectors do not depend on its batch, bit for bit.

mod decoder_common;

use decoder_common::{ModelFile, cosine, locate, max_abs};
use llmembed_extract::model::{ComputeDtype, Embedder, LoadSpec, Pooling, Tap, load};
use serde::Deserialize;

const EMBEDDINGGEMMA: ModelFile = ModelFile {
    preset: "embeddinggemma-300m",
    env: "LLMEMBED_EMBEDDINGGEMMA_WEIGHTS",
    file_name: "model.safetensors",
    default: "/tmp/models/embeddinggemma-300m/model.safetensors",
};

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
    sentence: Vec<f64>,
}

#[derive(Deserialize)]
struct LayerRef {
    norm: f64,
    head: Vec<f64>,
    full: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
}

/// `cos` bounds the cosine of every fully stored vector (every layer of four of the seven
/// texts, seven layers of the others, and every sentence embedding); `abs` the max abs error
/// relative to the reference vector's L2 norm (every layer: all dims where stored in full, the
/// first 16 elsewhere; the sentence embeddings, of norm 1).
struct Tol {
    cos: f64,
    abs: f64,
}

// Measured (AMD Zen 5, 2026-12-03, `cargo test --release -p llmembed-extract --test
// embeddinggemma_reference -- --nocapture`; reference from torch 2.15, transformers 5.24,
// sentence-transformers 6.3): f32 worst 1 - cosine 1.0e-12 over every layer and 2.4e-12 over the
// sentence embeddings, worst error / norm 4.8e-7. Bars: cosine 1 - 1e-10 (100x; issue 18 asks
// for 0.999) and error 1e-5 (20x).
const F32_TOL: Tol = Tol {
    cos: 1.0 - 1e-10,
    abs: 1e-5,
};
// bf16 (8 mantissa bits), measured the same way (AVX512-BF16 kernel): worst cosine 0.9999923
// (layers) and 0.9999818 (sentence), worst error / norm 2.4e-3. Bars: README's bf16 cosine
// 0.9999 (issue 18 asks for 0.999), error 1e-2 (4x).
const BF16_TOL: Tol = Tol {
    cos: 0.9999,
    abs: 1e-2,
};

// int8 (the decoders' int8 products: weights per output column, activations per token, the
// outlier rule; f32 between them), measured the same way (AMD Zen 3, AVX2 int8 kernel,
// 2026-12-04; every int8 kernel gives the same bits): worst cosine 0.99966 (layers) and 0.99847
// (sentence), worst error / norm 1.24e-2. Bars: about twice that.
const INT8_TOL: Tol = Tol {
    cos: 0.997,
    abs: 2.5e-2,
};

fn fixture() -> Fixture {
    let path = format!(
        "{}/tests/fixtures/embeddinggemma_reference.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn open(compute: ComputeDtype) -> Option<Box<dyn Embedder>> {
    let weights = locate(&EMBEDDINGGEMMA)?;
    Some(
        load(&LoadSpec {
            weights,
            config: None,
            tokenizer: None,
            compute,
        })
        .expect("load embeddinggemma"),
    )
}

#[test]
fn embeddinggemma_tokens_match_hf() {
    let Some(model) = open(ComputeDtype::F32) else {
        return;
    };
    let fx = fixture();
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
    assert!(n > 200, "{n}");
    // The tokenizer adds <bos> (2) and <eos> (1), as sentence-transformers does.
    let first = &fx.cases[0].ids;
    assert_eq!((first[0], *first.last().unwrap()), (2, 1));
}

fn check_vectors(model: &dyn Embedder, tol: &Tol, label: &str) {
    let fx = fixture();
    let n = model.num_layers();
    assert_eq!(n, fx.num_layers);
    let h = model.hidden_size();
    let taps: Vec<Tap> = (0..=n)
        .map(Tap::Layer)
        .chain([Tap::FinalNorm, Tap::Sentence])
        .collect();
    let batch: Vec<&[u32]> = fx.cases.iter().map(|c| c.ids.as_slice()).collect();
    // All texts in one mixed-length batch (3 to 609 tokens: the longest is past the
    // bidirectional sliding window).
    let out = model.embed(&batch, &taps, Pooling::Mean).expect("embed");
    let (mut worst_cos, mut worst_rel, mut worst_sentence) = (1f64, 0f64, 1f64);
    let mut failures = Vec::new();
    for (ci, case) in fx.cases.iter().enumerate() {
        for (k, r) in case.layers.iter().enumerate() {
            let v = &out[k][ci * h..(ci + 1) * h];
            let scale = r.norm.max(1e-6);
            let mut rel = max_abs(&v[..16], &r.head) / scale;
            let mut cos = None;
            if let Some(full) = &r.full {
                rel = rel.max(max_abs(v, full) / scale);
                cos = Some(cosine(v, full));
            }
            worst_rel = worst_rel.max(rel);
            if let Some(c) = cos {
                worst_cos = worst_cos.min(c);
            }
            if rel > tol.abs || cos.is_some_and(|c| c < tol.cos) {
                failures.push(format!(
                    "case {ci} ({} tokens) layer {k}: rel max abs {rel:.3e}, cos {cos:?}",
                    case.ids.len()
                ));
            }
        }
        // FinalNorm is HF's last hidden_states entry, identical to Layer(n).
        assert_eq!(
            out[n + 1][ci * h..(ci + 1) * h],
            out[n][ci * h..(ci + 1) * h]
        );
        let width = case.sentence.len();
        let s = &out[n + 2][ci * width..(ci + 1) * width];
        let cos = cosine(s, &case.sentence);
        let rel = max_abs(s, &case.sentence);
        worst_sentence = worst_sentence.min(cos);
        worst_rel = worst_rel.max(rel);
        if cos < tol.cos || rel > tol.abs {
            failures.push(format!(
                "case {ci} ({} tokens) sentence: cos {cos}, max abs {rel:.3e}",
                case.ids.len()
            ));
        }
        let norm: f64 = s.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{label}: sentence norm {norm}");
    }
    println!(
        "{label}: worst layer cosine {worst_cos:.12} (1 - {:.2e}), worst sentence cosine \
         {worst_sentence:.12} (1 - {:.2e}), worst error / norm {worst_rel:.3e}",
        1.0 - worst_cos,
        1.0 - worst_sentence
    );
    assert!(failures.is_empty(), "{label}:\n{}", failures.join("\n"));
}

#[test]
fn embeddinggemma_f32_matches_sentence_transformers() {
    let Some(model) = open(ComputeDtype::F32) else {
        return;
    };
    let d = model.describe();
    assert!(
        d.contains("attention=bidirectional") && d.contains("sentence=mean,dense(768x3072)"),
        "{d}"
    );
    check_vectors(model.as_ref(), &F32_TOL, "embeddinggemma f32");
}

#[test]
fn embeddinggemma_bf16_matches_sentence_transformers() {
    let Some(model) = open(ComputeDtype::Bf16) else {
        return;
    };
    check_vectors(model.as_ref(), &BF16_TOL, "embeddinggemma bf16");
}

#[test]
fn embeddinggemma_int8_stays_close_to_sentence_transformers() {
    let Some(model) = open(ComputeDtype::Int8) else {
        return;
    };
    check_vectors(model.as_ref(), &INT8_TOL, "embeddinggemma int8");
}

/// A text's vectors (every layer, mean and last pooling, and the sentence embedding) are the
/// same bits alone as inside a mixed-length batch, and a rerun gives the same bytes.
#[test]
fn embeddinggemma_padding_invariant_and_deterministic() {
    let Some(model) = open(ComputeDtype::F32) else {
        return;
    };
    let fx = fixture();
    let n = model.num_layers();
    let batch: Vec<&[u32]> = fx.cases.iter().map(|c| c.ids.as_slice()).collect();
    let taps: Vec<Tap> = (0..=n).map(Tap::Layer).chain([Tap::Sentence]).collect();
    for pooling in [Pooling::Mean, Pooling::Last] {
        let together = model.embed(&batch, &taps, pooling).unwrap();
        for (i, one) in batch.iter().enumerate() {
            let alone = model.embed(&[one], &taps, pooling).unwrap();
            for (k, a) in alone.iter().enumerate() {
                let w = a.len();
                let b = &together[k][i * w..(i + 1) * w];
                assert!(
                    a.iter()
                        .map(|x| x.to_bits())
                        .eq(b.iter().map(|x| x.to_bits())),
                    "{pooling:?}: text {i} ({} tokens) tap {:?}: alone vs batch differ",
                    one.len(),
                    taps[k]
                );
            }
        }
        let again = model.embed(&batch, &taps, pooling).unwrap();
        assert!(together == again, "rerun changed the output");
    }
    // The sentence embedding does not depend on the pooling asked for the layers.
    let mean = model
        .embed(&batch, &[Tap::Sentence], Pooling::Mean)
        .unwrap();
    let last = model
        .embed(&batch, &[Tap::Sentence], Pooling::Last)
        .unwrap();
    assert_eq!(mean, last);
    assert!(model.supports(Tap::Sentence) && !model.supports(Tap::Pooler));
}
