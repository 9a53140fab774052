//! The MPNet encoder (all-mpnet-base-v2) against HF transformers' MPNetModel (fixture written by
//! scripts/reference/make_mpnet_reference.py): token ids equal, and per layer, mean-pooled
//! vectors within the measured bars below (cosine, max |difference| relative to the vector's
//! norm), the first token and the pooler. Plus padding invariance and bf16.

mod common;

use common::{
    EncoderFixture, compare_layers, encoder_batch_gives_same_bits, encoder_fixture,
    encoder_stays_close, layer_taps, load_encoder, mpnet_dir,
};
use llmembed_extract::{ComputeDtype, Pooling, Tap};

// Measured on AMD Zen 5 (2026-12-04, all 10 cases, every layer, first token and pooler; `cargo
// test --release -p llmembed-extract --test mpnet_reference -- --nocapture`; packed rows on the
// kernels crate): f32 worst 1 - cosine 3.4e-12, worst max |difference| / norm 7.9e-7 (2.4e-12 and
// 6.1e-7 on candle's ops before). The bar is cosine >= 0.999; these bars are within 10x
// of the worst measured, far above it.
/// Smallest cosine allowed between our f32 vectors and the torch f32 ones.
const MIN_COS: f64 = 1.0 - 3e-11;
/// Largest absolute difference allowed relative to the reference vector's L2 norm.
const MAX_REL: f64 = 8e-6;
// bf16 products with f32 sums and f32 activations (the decoders' `compute: bf16`), measured the
// same way: worst 1 - cosine 4.5e-5, worst max |difference| / norm 1.3e-3 (on candle's bf16
// tensors, which held the residual stream in bf16 through 12 blocks: 1.17e-3 and 1.3e-2). The
// bars are within 10x.
const BF16_MIN_COS: f64 = 1.0 - 4.5e-4;
const BF16_MAX_REL: f64 = 1.3e-2;
// int8 products (weights per output column, each row per token, the outlier rule; f32 between the
// products), measured the same way (2026-12-04, AMD Zen 3): worst 1 - cosine 1.1e-2 (layer 4 of the
// five-token "before <pad> after"; every other text of the fixture within 1 - cosine 4e-3), worst
// max |difference| / norm 9.6e-2 (the same on every CPU: the int8 kernels give the same bits). The
// bars are about twice that.
const INT8_MIN_COS: f64 = 1.0 - 2e-2;
const INT8_MAX_REL: f64 = 0.2;

fn fixture() -> EncoderFixture {
    encoder_fixture("mpnet_base_reference.json")
}

#[test]
fn mpnet_matches_transformers_ids_and_every_layer() {
    let Some(dir) = mpnet_dir() else { return };
    let fx = fixture();
    let m = load_encoder(&dir, ComputeDtype::F32);
    assert_eq!((m.num_layers(), m.hidden_size()), (12, 768));
    let taps = layer_taps(m.as_ref());
    let (mut worst_cos, mut worst_rel) = (1f64, 0f64);
    for case in &fx.cases {
        let (ids, truncated) = m.tokenize(&case.text, fx.max_tokens).unwrap();
        assert_eq!(ids, case.ids, "token ids of {:?}", case.text);
        assert_eq!(
            truncated, case.truncated,
            "truncation flag of {:?}",
            case.text
        );
        let got = m.embed(&[&ids], &taps, Pooling::Mean).unwrap();
        let (c, r) = compare_layers(
            &format!("{:?}", case.text),
            &got,
            &case.mean,
            MIN_COS,
            MAX_REL,
        );
        worst_cos = worst_cos.min(c);
        worst_rel = worst_rel.max(r);
        let first = m.embed(&[&ids], &[Tap::Layer(12)], Pooling::First).unwrap();
        let want = std::slice::from_ref(&case.first_last_layer);
        let (c, r) = compare_layers("first token", &first, want, MIN_COS, MAX_REL);
        worst_cos = worst_cos.min(c);
        worst_rel = worst_rel.max(r);
        let pooler = m.embed(&[&ids], &[Tap::Pooler], Pooling::Mean).unwrap();
        let (c, r) = compare_layers(
            "pooler",
            &pooler,
            std::slice::from_ref(&case.pooler),
            MIN_COS,
            MAX_REL,
        );
        worst_cos = worst_cos.min(c);
        worst_rel = worst_rel.max(r);
    }
    eprintln!(
        "f32 worst over cases and layers: 1 - cosine {:e}, max abs diff / norm {worst_rel:e}",
        1.0 - worst_cos
    );
}

#[test]
fn mpnet_fixture_covers_truncation_padding_token_and_long_distances() {
    // Guards the fixture itself: the cases the brief asks for are really in it.
    let fx = fixture();
    assert!(
        fx.cases
            .iter()
            .any(|c| c.truncated && c.ids.len() == fx.max_tokens)
    );
    // Distances past 128: the last relative bucket.
    assert!(fx.cases.iter().any(|c| c.ids.len() > 129));
    assert!(fx.cases.iter().any(|c| !c.text.is_ascii()));
    assert!(fx.cases.iter().any(|c| c.ids.len() <= 3));
    // `<pad>` inside a text: id 1, which takes no position of its own.
    assert!(
        fx.cases
            .iter()
            .any(|c| c.ids[1..c.ids.len() - 1].contains(&1))
    );
    assert!(
        fx.cases
            .iter()
            .all(|c| c.mean.len() == 13 && c.mean[0].len() == 768)
    );
}

/// A text alone and the same text inside a mixed-length batch give the same vectors, bit for
/// bit, for every layer and every pooling, in f32, bf16 and int8: the batch is packed row after row,
/// and no row's arithmetic depends on another's.
#[test]
fn mpnet_padding_does_not_change_vectors() {
    let Some(dir) = mpnet_dir() else { return };
    let fx = fixture();
    for compute in [ComputeDtype::F32, ComputeDtype::Bf16, ComputeDtype::Int8] {
        encoder_batch_gives_same_bits(load_encoder(&dir, compute).as_ref(), &fx);
    }
}

#[test]
fn mpnet_bf16_compute_stays_close() {
    stays_close(ComputeDtype::Bf16, BF16_MIN_COS, BF16_MAX_REL);
}

#[test]
fn mpnet_int8_compute_stays_close() {
    stays_close(ComputeDtype::Int8, INT8_MIN_COS, INT8_MAX_REL);
}

/// Every layer's mean-pooled vector with `compute`'s products against the transformers f32
/// ones, within the bars; prints the worst.
fn stays_close(compute: ComputeDtype, min_cos: f64, max_rel: f64) {
    let Some(dir) = mpnet_dir() else { return };
    encoder_stays_close(
        load_encoder(&dir, compute).as_ref(),
        &fixture(),
        min_cos,
        max_rel,
    );
}

#[test]
fn mpnet_taps_and_errors() {
    let Some(dir) = mpnet_dir() else { return };
    let m = load_encoder(&dir, ComputeDtype::F32);
    assert!(m.supports(Tap::Layer(0)) && m.supports(Tap::Layer(12)));
    assert!(!m.supports(Tap::Layer(13)));
    assert!(!m.supports(Tap::FinalNorm));
    assert!(m.supports(Tap::Pooler));
    // The config values, then the arithmetic: the engine and the product's kernel, which
    // depends on the CPU.
    let d = m.describe();
    assert!(
        d.starts_with(
            "mpnet(hidden=768, blocks=12, heads=12, intermediate=3072, vocab=30527, max_pos=514, \
             pad=1, buckets=32/128, eps=1e-5, act=gelu, pooler=true, engine=packed-rows-v1,matmul="
        ) && d.ends_with(",compute=F32)"),
        "{d}"
    );
    let ids = m.tokenize("hello", 16).unwrap().0;
    let err = m
        .embed(&[&ids], &[Tap::Layer(13)], Pooling::Mean)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("mpnet with 12 blocks has no tap Layer(13)"),
        "{err}"
    );
    let err = m.tokenize("hello", 1).unwrap_err();
    assert!(err.to_string().contains("MPNet (<s> and </s>)"), "{err}");
    // max_tokens above the positions is capped at 512: positions 2..=513 of 514.
    let long = "word ".repeat(2000);
    let (ids, truncated) = m.tokenize(&long, 100_000).unwrap();
    assert_eq!((ids.len(), truncated), (512, true));
    let out = m.embed(&[&ids], &[Tap::Layer(1)], Pooling::Mean).unwrap();
    assert!(out[0].iter().all(|x| x.is_finite()));
    let mut over = ids.clone();
    over.push(2);
    let err = m
        .embed(&[&over], &[Tap::Layer(1)], Pooling::Mean)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("513 tokens exceeds the 512 positions"),
        "{err}"
    );
}
