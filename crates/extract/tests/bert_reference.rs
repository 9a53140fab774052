//! The BERT encoder against HF transformers (fixture written by
//! scripts/reference/make_bert_reference.py): token ids equal, and per layer, mean-pooled
//! vectors within the measured bars below (cosine, max |difference|, and max |difference| relative
//! to the vector's norm). Plus padding invariance.

mod common;

use common::{
    EncoderFixture, cosine, encoder_batch_gives_same_bits, encoder_fixture, encoder_stays_close,
    layer_taps, load_encoder, max_abs, minilm_dir, norm,
};
use llmembed_extract::{ComputeDtype, Pooling, Tap};

// Measured on AMD Zen 5 (2026-12-04, all 8 cases, every layer; `cargo test --release -p
// llmembed-extract --test bert_reference -- --nocapture`; packed rows on the kernels crate): f32
// worst 1 - cosine 1.1e-12, worst max |difference| 1.8e-6 (2026-12-03 on candle's ops, Zen 4:
// 1.2e-12, 2.9e-6 mean-pooled layers, 4.3e-6 first token, 2.3e-7 pooler, 4.0e-7 of the norm).
// Every bar is within 10x of the worst measured.
/// Largest absolute difference allowed between our f32 vectors and the torch f32 ones.
const MAX_ABS: f32 = 4e-5;
/// The same relative to the reference vector's L2 norm.
const MAX_REL: f64 = 4e-6;
const MIN_COS: f64 = 1.0 - 1e-11;
// bf16 products with f32 sums and f32 activations (as the decoders), measured the same way:
// worst 1 - cosine 3.1e-5, worst max |difference| / norm 1.3e-3 (candle's bf16 tensors before:
// 2.25e-4 and 3.5e-3).
const BF16_MIN_COS: f64 = 1.0 - 3e-4;
const BF16_MAX_REL: f64 = 1.3e-2;
// int8 products (weights per output column, each row per token, the outlier rule; f32 between the
// products), measured the same way (2026-12-04, AMD Zen 3): worst 1 - cosine 3.8e-3, worst max
// |difference| / norm 2.5e-2 (the same on every CPU: the int8 kernels give the same bits). The bars
// are about twice that.
const INT8_MIN_COS: f64 = 1.0 - 8e-3;
const INT8_MAX_REL: f64 = 5e-2;

fn fixture() -> EncoderFixture {
    encoder_fixture("minilm_l6_reference.json")
}

#[test]
fn minilm_matches_transformers_ids_and_every_layer() {
    let Some(dir) = minilm_dir() else { return };
    let fx = fixture();
    let m = load_encoder(&dir, ComputeDtype::F32);
    assert_eq!((m.num_layers(), m.hidden_size()), (6, 384));
    let taps = layer_taps(m.as_ref());
    let (mut worst_cos, mut worst_abs) = (1f64, 0f32);
    for case in &fx.cases {
        let (ids, truncated) = m.tokenize(&case.text, fx.max_tokens).unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        assert_eq!(
            truncated, case.truncated,
            "truncation flag of {:?}",
            case.text
        );
        let got = m.embed(&[&ids], &taps, Pooling::Mean).unwrap();
        assert_eq!(got.len(), case.mean.len());
        for (layer, (g, want)) in got.iter().zip(&case.mean).enumerate() {
            let c = cosine(g, want);
            let d = max_abs(g, want);
            let rel = d as f64 / norm(want);
            worst_cos = worst_cos.min(c);
            worst_abs = worst_abs.max(d);
            assert!(
                c >= MIN_COS && d <= MAX_ABS && rel <= MAX_REL,
                "layer {layer} of {:?}: cosine {c}, max abs diff {d} ({rel:.2e} of the norm)",
                case.text
            );
        }
        let first = m.embed(&[&ids], &[Tap::Layer(6)], Pooling::First).unwrap();
        let d = max_abs(&first[0], &case.first_last_layer);
        assert!(d <= MAX_ABS, "first-token pooling of {:?}: {d}", case.text);
        let pooler = m.embed(&[&ids], &[Tap::Pooler], Pooling::Mean).unwrap();
        let d = max_abs(&pooler[0], &case.pooler);
        assert!(d <= MAX_ABS, "pooler of {:?}: {d}", case.text);
    }
    eprintln!("worst over cases and layers: cosine {worst_cos}, max abs diff {worst_abs:e}");
}

#[test]
fn minilm_fixture_covers_truncation_and_non_ascii() {
    // Guards the fixture itself: the cases the brief asks for are really in it.
    let fx = fixture();
    assert!(
        fx.cases
            .iter()
            .any(|c| c.truncated && c.ids.len() == fx.max_tokens)
    );
    assert!(fx.cases.iter().any(|c| !c.text.is_ascii()));
    assert!(fx.cases.iter().any(|c| c.ids.len() <= 3));
    assert!(
        fx.cases
            .iter()
            .all(|c| c.mean.len() == 7 && c.mean[0].len() == 384)
    );
}

/// A text alone and the same text inside a mixed-length batch give the same vectors, bit for
/// bit, for every layer and every pooling, in f32, bf16 and int8: the batch is packed row after row,
/// and no row's arithmetic depends on another's.
#[test]
fn minilm_padding_does_not_change_vectors() {
    let Some(dir) = minilm_dir() else { return };
    let fx = fixture();
    for compute in [ComputeDtype::F32, ComputeDtype::Bf16, ComputeDtype::Int8] {
        encoder_batch_gives_same_bits(load_encoder(&dir, compute).as_ref(), &fx);
    }
}

#[test]
fn minilm_bf16_compute_stays_close() {
    stays_close(ComputeDtype::Bf16, BF16_MIN_COS, BF16_MAX_REL);
}

#[test]
fn minilm_int8_compute_stays_close() {
    stays_close(ComputeDtype::Int8, INT8_MIN_COS, INT8_MAX_REL);
}

/// Every layer's mean-pooled vector with `compute`'s products against the transformers f32
/// ones, within the bars; prints the worst.
fn stays_close(compute: ComputeDtype, min_cos: f64, max_rel: f64) {
    let Some(dir) = minilm_dir() else { return };
    encoder_stays_close(
        load_encoder(&dir, compute).as_ref(),
        &fixture(),
        min_cos,
        max_rel,
    );
}

#[test]
fn minilm_taps_and_errors() {
    let Some(dir) = minilm_dir() else { return };
    let m = load_encoder(&dir, ComputeDtype::F32);
    assert!(m.supports(Tap::Layer(0)) && m.supports(Tap::Layer(6)));
    assert!(!m.supports(Tap::Layer(7)));
    assert!(!m.supports(Tap::FinalNorm));
    assert!(m.supports(Tap::Pooler));
    assert!(m.describe().starts_with("bert(hidden=384, blocks=6"));
    let ids = m.tokenize("hello", 16).unwrap().0;
    let err = m
        .embed(&[&ids], &[Tap::Layer(7)], Pooling::Mean)
        .unwrap_err();
    assert!(err.to_string().contains("Layer(7)"), "{err}");
    let err = m
        .embed(&[&ids], &[Tap::Layer(1)], Pooling::Pooler)
        .unwrap_err();
    assert!(err.to_string().contains("pooler"), "{err}");
    // max_tokens above max_position_embeddings is capped at 512.
    let long = "word ".repeat(2000);
    let (ids, truncated) = m.tokenize(&long, 100_000).unwrap();
    assert_eq!((ids.len(), truncated), (512, true));
}
