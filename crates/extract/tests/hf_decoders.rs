//! The safetensors decoders (llama, mistral, qwen2, qwen3, phi) against transformers, on tiny
//! checkpoints this test writes itself: weights from a fixed formula (the same formula
//! `scripts/reference/make_tiny_decoder_reference.py` fed transformers), config.json and
//! tokenizer.json from the fixture. Checks token ids, every layer's mean-pooled vector and the
//! last-token pooling, alone and in one mixed-length batch, plus a sharded checkpoint served from
//! a hub cache laid out on disk (offline) through the extract stage.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{cosine, hub_cache, hub_matches_local, max_abs, write_input};
use llmembed_core::{External, Stage, TextTable, read_embedding_table};
use llmembed_extract::{
    ComputeDtype, Extract, ExtractParams, HubSpec, LoadSpec, LocalSpec, ModelParam, ModelSpec,
    Pooling, Tap, load,
};
use serde_json::Value;

/// Max abs error allowed between a Rust and a transformers pooled vector (f32 both sides; the
/// vectors' entries are O(0.1..1)), and the least cosine. Measured on AMD Zen 4 (2026-12-03,
/// `cargo test --release -p llmembed-extract --test hf_decoders -- --nocapture`, every layer,
/// alone, batched and last token, all five architectures): worst max abs error 1.5e-6 (qwen3),
/// worst 1 - cosine 1.4e-13 (qwen3). The bars are within 10x.
const MAX_ABS: f32 = 1.2e-5;
const MIN_COSINE: f64 = 1.0 - 1e-12;

fn fixture() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_decoders_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The formula of `det_weights` in the reference script (f64, then f32).
fn det_weights(name: &str, n: usize) -> Vec<f32> {
    let b = 0.01 * name.bytes().map(f64::from).sum::<f64>();
    (0..n)
        .map(|i| {
            let x = ((i as f64) * 12.9898 + b).sin() * 43758.5453;
            let v = 2.0 * (x - x.floor()) - 1.0;
            let v = if name.ends_with("norm.weight") {
                1.0 + 0.1 * v
            } else if name.ends_with(".bias") {
                0.02 * v
            } else {
                0.08 * v
            };
            v as f32
        })
        .collect()
}

/// Writes config.json, tokenizer.json and the weights (under the `model.` prefix, as the hub's
/// `*ForCausalLM` checkpoints have them) into `dir`; with `shards > 1`, as
/// `model-0000k-of-0000n.safetensors` files plus `model.safetensors.index.json`.
fn write_checkpoint(fx: &Value, arch: &str, dir: &Path, shards: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let m = &fx["models"][arch];
    std::fs::write(dir.join("config.json"), m["config"].to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), fx["tokenizer_json"].to_string()).unwrap();
    let params = m["params"].as_array().unwrap();
    let mut files: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); shards];
    let mut weight_map = serde_json::Map::new();
    for (i, p) in params.iter().enumerate() {
        let name = p["name"].as_str().unwrap();
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let n = shape.iter().product();
        let t = Tensor::from_vec(det_weights(name, n), shape, &Device::Cpu).unwrap();
        let shard = i * shards / params.len();
        files[shard].insert(format!("model.{name}"), t);
        weight_map.insert(
            format!("model.{name}"),
            Value::String(shard_name(shard, shards)),
        );
    }
    if shards == 1 {
        candle_core::safetensors::save(&files[0], dir.join("model.safetensors")).unwrap();
        return;
    }
    for (k, f) in files.iter().enumerate() {
        candle_core::safetensors::save(f, dir.join(shard_name(k, shards))).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn shard_name(k: usize, n: usize) -> String {
    format!("model-{:05}-of-{:05}.safetensors", k + 1, n)
}

fn spec(weights: PathBuf) -> LoadSpec {
    LoadSpec {
        weights,
        config: None,
        tokenizer: None,
        compute: ComputeDtype::F32,
    }
}

fn ids_of(case: &Value) -> Vec<u32> {
    case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The error `load` gives for these weights, as text.
fn load_error(weights: PathBuf) -> String {
    match load(&spec(weights)) {
        Ok(_) => panic!("the checkpoint loaded"),
        Err(e) => e.to_string(),
    }
}

fn check_close(what: &str, got: &[f32], want: &[f32]) -> (f32, f64) {
    let (err, cos) = (max_abs(got, want), cosine(got, want));
    assert!(
        err <= MAX_ABS && cos >= MIN_COSINE,
        "{what}: max abs error {err:e}, cosine {cos}"
    );
    (err, cos)
}

/// One architecture: ids, all layers alone and batched, last-token pooling of the final norm.
fn check_arch(arch: &str, shards: usize) {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(&fx, arch, tmp.path(), shards);
    let weights = if shards == 1 {
        tmp.path().join("model.safetensors")
    } else {
        tmp.path().join("model.safetensors.index.json")
    };
    let model = load(&spec(weights)).unwrap();
    let cases = fx["models"][arch]["cases"].as_array().unwrap();
    let n_layers = model.num_layers();
    assert_eq!(
        n_layers + 1,
        cases[0]["layer_means"].as_array().unwrap().len()
    );
    assert_eq!(model.hidden_size(), 64);
    assert!(model.describe().starts_with(arch), "{}", model.describe());
    let taps: Vec<Tap> = (0..=n_layers).map(Tap::Layer).collect();
    let ids: Vec<Vec<u32>> = cases.iter().map(ids_of).collect();
    for (case, want) in cases.iter().zip(&ids) {
        let text = case["text"].as_str().unwrap();
        let (got, truncated) = model.tokenize(text, 256).unwrap();
        assert_eq!(&got, want, "{arch}: ids of {text:?}");
        assert!(!truncated);
    }
    let mut worst = (0f32, 1f64);
    // Alone, then all texts in one right-padded batch of mixed lengths.
    let alone: Vec<Vec<Vec<f32>>> = ids
        .iter()
        .map(|s| model.embed(&[s.as_slice()], &taps, Pooling::Mean).unwrap())
        .collect();
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let together = model.embed(&batch, &taps, Pooling::Mean).unwrap();
    for (c, case) in cases.iter().enumerate() {
        for (l, want) in case["layer_means"].as_array().unwrap().iter().enumerate() {
            let want = floats(want);
            let (e, cos) = check_close(
                &format!("{arch} text {c} layer {l} alone"),
                &alone[c][l],
                &want,
            );
            worst = (worst.0.max(e), worst.1.min(cos));
            let row = &together[l][c * 64..(c + 1) * 64];
            let (e, cos) = check_close(&format!("{arch} text {c} layer {l} in batch"), row, &want);
            worst = (worst.0.max(e), worst.1.min(cos));
        }
    }
    let last = model
        .embed(&batch, &[Tap::FinalNorm], Pooling::Last)
        .unwrap();
    for (c, case) in cases.iter().enumerate() {
        let want = floats(&case["last_token_final"]);
        let (e, cos) = check_close(
            &format!("{arch} text {c} last token"),
            &last[0][c * 64..(c + 1) * 64],
            &want,
        );
        worst = (worst.0.max(e), worst.1.min(cos));
    }
    eprintln!(
        "{arch}: worst max abs error {:e}, worst 1 - cosine {:e}",
        worst.0,
        1.0 - worst.1
    );
}

#[test]
fn llama_matches_transformers() {
    check_arch("llama", 1);
}

#[test]
fn mistral_sliding_window_matches_transformers() {
    check_arch("mistral", 1);
}

#[test]
fn qwen2_matches_transformers() {
    check_arch("qwen2", 1);
}

#[test]
fn qwen3_sharded_matches_transformers() {
    check_arch("qwen3", 3);
}

#[test]
fn phi_matches_transformers() {
    check_arch("phi", 2);
}

#[test]
fn unsupported_config_is_named() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    write_checkpoint(&fx, "llama", tmp.path(), 1);
    let mut cfg = fx["models"]["llama"]["config"].clone();
    cfg["rope_parameters"] = serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5});
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_error(tmp.path().join("model.safetensors"));
    assert!(
        err.contains("config.json") && err.contains("rope_type") && err.contains("llama3"),
        "{err}"
    );

    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = load_error(tmp.path().join("model.safetensors"));
    assert!(
        err.contains("model_type") && err.contains("gpt_neox"),
        "{err}"
    );

    // A shard the index lists but the folder lacks.
    let sharded = tmp.path().join("sharded");
    write_checkpoint(&fx, "phi", &sharded, 2);
    std::fs::remove_file(sharded.join(shard_name(1, 2))).unwrap();
    let err = load_error(sharded.join("model.safetensors.index.json"));
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A sharded qwen3 checkpoint served from a hub cache laid out as huggingface_hub lays it out
/// (blobs + snapshot symlinks), resolved offline through the extract stage, gives the same bytes
/// as the same folder given as a local path, and its vectors are the reference's.
#[test]
fn sharded_checkpoint_from_hub_cache_through_the_stage() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write_checkpoint(&fx, "qwen3", &src, 2);
    let files: Vec<String> = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let hub = hub_cache(&tmp.path().join("hub"), "tiny/qwen3", COMMIT, &src, &files);
    let cases = fx["models"]["qwen3"]["cases"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let n = texts.len();
    let table = TextTable::new(
        (0..n).map(|i| format!("t{i}")).collect(),
        texts,
        vec![0; n],
        vec!["only".into()],
    );
    let input = write_input(&tmp.path().join("in"), &[("test", &table)]);
    let hub_param = ModelParam::Spec(ModelSpec::Hub(HubSpec {
        repo: "tiny/qwen3".into(),
        revision: "main".into(),
        files: vec![
            "model.safetensors.index.json".into(),
            "config.json".into(),
            "tokenizer.json".into(),
        ],
        cache_dir: Some(hub.clone()),
    }));
    let params = ExtractParams::new(hub_param);
    let ext = Extract::externals(&params, &common::env(tmp.path())).unwrap();
    assert!(
        matches!(&ext[..], [External::Value { value, .. }] if value.contains(COMMIT)),
        "{ext:?}"
    );
    let local = ExtractParams::new(ModelParam::Spec(ModelSpec::Local(LocalSpec { path: src })));
    let out_hub = hub_matches_local(&params, &local, &input, tmp.path());
    let got = read_embedding_table(&out_hub.join("test.parquet"), None).unwrap();
    for (c, case) in cases.iter().enumerate() {
        for (l, want) in case["layer_means"].as_array().unwrap().iter().enumerate() {
            let col = got.column(&format!("layer_{l}")).unwrap();
            let row = &col.values[c * col.dim..(c + 1) * col.dim];
            check_close(
                &format!("stage qwen3 row {c} layer {l}"),
                row,
                &floats(want),
            );
        }
    }
}
