//! Tests on real data: bag-of-words counts over the 500 most frequent words of a class-balanced
//! AG News sample (2,000 train rows, 400 test rows), read from the raw Hugging Face Parquet files
//! in `LLMEMBED_DATA_DIR` (default `<workspace>/../shared/data`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use llmembed_core::{
    EmbeddingTable, Input, Predictions, Stage, VectorColumn, read_predictions, write_predictions,
};
use ndarray::Array2;

use crate::ensemble::EnsembleMethod;
use crate::lbfgs::sklearn_objective;
use crate::logreg_fit::fit_logreg;
use crate::*;

const VOCAB: usize = 500;

/// `(text, label)` of a raw AG News split, or why it is missing.
fn read_raw(split: &str) -> Result<Vec<(String, i64)>, String> {
    let (texts, labels) = llmembed_testkit::read_ag_news(split, usize::MAX)?;
    Ok(texts.into_iter().zip(labels).collect())
}

fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() >= 2)
        .map(|w| w.to_lowercase())
}

/// The first `per_class` rows of each class, in file order.
fn balanced(rows: &[(String, i64)], per_class: usize) -> Vec<(String, i64)> {
    let mut count = [0usize; 4];
    rows.iter()
        .filter(|(_, l)| {
            let c = &mut count[*l as usize];
            *c += 1;
            *c <= per_class
        })
        .cloned()
        .collect()
}

/// Train and test tables with two vector columns: `bow` (counts) and `bow_log` (`ln(1 + count)`).
struct Bow {
    train: EmbeddingTable,
    test: EmbeddingTable,
}

/// The bag-of-words tables, or `None` when AG News is missing: the test skips, or fails under
/// `LLMEMBED_REQUIRE_TEST_INPUTS=1` (every test that asks, not only the first).
fn bow() -> Option<&'static Bow> {
    static BOW: OnceLock<Result<Bow, String>> = OnceLock::new();
    let bow = BOW.get_or_init(|| {
        let train = balanced(&read_raw("train")?, 500);
        let test = balanced(&read_raw("test")?, 100);
        let mut freq: HashMap<String, usize> = HashMap::new();
        for (t, _) in &train {
            for w in tokens(t) {
                *freq.entry(w).or_default() += 1;
            }
        }
        let mut words: Vec<(String, usize)> = freq.into_iter().collect();
        words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let vocab: HashMap<String, usize> = words
            .into_iter()
            .take(VOCAB)
            .enumerate()
            .map(|(i, (w, _))| (w, i))
            .collect();
        let table = |rows: &[(String, i64)], prefix: &str| {
            let mut counts = vec![0f32; rows.len() * VOCAB];
            for (r, (t, _)) in rows.iter().enumerate() {
                for w in tokens(t) {
                    if let Some(&j) = vocab.get(&w) {
                        counts[r * VOCAB + j] += 1.0;
                    }
                }
            }
            let logs = counts.iter().map(|c| c.ln_1p()).collect();
            EmbeddingTable {
                ids: (0..rows.len()).map(|i| format!("{prefix}-{i}")).collect(),
                labels: rows.iter().map(|r| r.1).collect(),
                label_names: ["World", "Sports", "Business", "Sci/Tech"]
                    .map(String::from)
                    .to_vec(),
                columns: vec![
                    VectorColumn::new("bow", VOCAB, counts),
                    VectorColumn::new("bow_log", VOCAB, logs),
                ],
            }
        };
        Ok(Bow {
            train: table(&train, "train"),
            test: table(&test, "test"),
        })
    });
    llmembed_testkit::needs("AG News", bow.as_ref().map_err(String::clone))
}

fn take(t: &EmbeddingTable, rows: usize) -> EmbeddingTable {
    // Rows are grouped by class in file order; take an equal share of each class.
    let per = rows / 4;
    let mut idx = Vec::new();
    for c in 0..4 {
        idx.extend((0..t.len()).filter(|&i| t.labels[i] == c).take(per));
    }
    select_rows(t, &idx)
}

/// A temporary upstream artifact `bow` holding `train.parquet` and `test.parquet`.
fn artifact(train: &EmbeddingTable, test: &EmbeddingTable) -> (tempfile::TempDir, Input) {
    let dir = tempfile::tempdir().unwrap();
    let splits = [("train", train), ("test", test)];
    let input = llmembed_testkit::embedding_input(dir.path(), "bow", &splits);
    (dir, input)
}

/// Runs stage `S` into a fresh folder; returns the folder.
fn run_stage<S: Stage>(
    params: &S::Params,
    inputs: &[Input],
    seed: u64,
) -> llmembed_core::Result<tempfile::TempDir> {
    Ok(run_stage_summary::<S>(params, inputs, seed)?.0)
}

/// [`run_stage`], also returning the stage's summary (its notes hold the wall times).
use llmembed_testkit::run_stage as run_stage_summary;

use llmembed_testkit::assert_same_output_bytes;

/// No key of a written JSON file names a wall time (`fit_seconds`, `cv_seconds`, ...).
fn assert_no_timing_keys(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                assert!(!k.contains("seconds"), "timing key `{k}` in a written file");
                assert_no_timing_keys(x);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(assert_no_timing_keys),
        _ => {}
    }
}

/// A JSON file a stage wrote.
fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn model_json(dir: &Path) -> serde_json::Value {
    read_json(&dir.join("model.json"))
}

/// The CV accuracy a member recorded for what it kept, read here independently of `select.rs`.
fn recorded_cv(dir: &Path) -> f64 {
    // The row of `table` whose `key` equals `chosen`, and its `score`.
    let chosen_row = |table: &serde_json::Value, key: &str, chosen: &serde_json::Value, score| {
        let rows = table.as_array().unwrap();
        let row = rows.iter().find(|r| &r[key] == chosen).unwrap();
        row[score].as_f64().unwrap()
    };
    if dir.join("sweep.json").exists() {
        let s = read_json(&dir.join("sweep.json"));
        return chosen_row(&s["layers"], "layer", &s["chosen_layer"], "cv_accuracy");
    }
    let sel = &model_json(dir)["select"];
    match sel.get("best_epochs") {
        Some(epochs) => chosen_row(&sel["table"], "epochs", epochs, "mean_accuracy"),
        None => chosen_row(&sel["table"], "c", &sel["best_c"], "mean_accuracy"),
    }
}

/// A member's out-of-fold file (`cv_predictions.parquet`): each of its `rows` training rows
/// once, with probabilities (summing to 1) from the fit that did not see it, so its accuracy is
/// the recorded CV accuracy (pooled over the folds, which differ in size by a row or so) and
/// below the fit on all rows.
fn assert_out_of_fold(dir: &Path, rows: usize) {
    let oof = read_predictions(&dir.join("cv_predictions.parquet")).unwrap();
    let mut ids = oof.ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), rows);
    assert!(oof.probs.chunks_exact(oof.num_classes()).all(|p| {
        let sum: f32 = p.iter().sum();
        (sum - 1.0).abs() < 1e-4
    }));
    let pooled = acc(&oof);
    let cv = recorded_cv(dir);
    assert!(
        (pooled - cv).abs() < 0.005,
        "pooled {pooled} vs mean of folds {cv}"
    );
    let in_sample = model_json(dir)["train_accuracy"].as_f64().unwrap();
    assert!(
        pooled < in_sample,
        "out of fold {pooled}, in sample {in_sample}"
    );
}

fn acc(p: &Predictions) -> f64 {
    p.labels
        .iter()
        .zip(&p.preds)
        .filter(|(a, b)| a == b)
        .count() as f64
        / p.len() as f64
}

fn check_predictions(p: &Predictions, test: &EmbeddingTable) {
    assert_eq!(p.ids, test.ids);
    assert_eq!(p.labels, test.labels);
    assert_eq!(p.label_names, test.label_names);
    for i in 0..p.len() {
        let r = p.row_probs(i);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-4, "row {i}: {r:?}");
        assert_eq!(p.preds[i], llmembed_core::argmax(r) as i64);
    }
}

/// A stage's published folder as the runner and an applier are given it: every file in it.
pub(super) fn fitted(stage_id: &str, dir: &Path) -> Input {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    Input {
        stage_id: stage_id.into(),
        dir: dir.to_path_buf(),
        files,
    }
}

/// What an applier is given: temporary folders (no applier here reads them).
pub(super) fn apply_env() -> llmembed_core::ApplyEnv {
    let dir = std::env::temp_dir();
    llmembed_core::ApplyEnv {
        env: llmembed_core::Env {
            data_dir: dir.clone(),
            models_dir: dir.clone(),
            pipeline_dir: dir.clone(),
            seed: 0,
            quiet: true,
        },
        store_dir: dir,
    }
}

/// The rows `idx` of `t`, in that order.
fn select_rows(t: &EmbeddingTable, idx: &[usize]) -> EmbeddingTable {
    EmbeddingTable {
        ids: idx.iter().map(|&i| t.ids[i].clone()).collect(),
        labels: idx.iter().map(|&i| t.labels[i]).collect(),
        label_names: t.label_names.clone(),
        columns: t
            .columns
            .iter()
            .map(|c| {
                let mut v = Vec::new();
                idx.iter().for_each(|&i| v.extend_from_slice(c.row(i)));
                VectorColumn::new(c.name.clone(), c.dim, v)
            })
            .collect(),
    }
}

/// An extract-shaped table from real AG News features: `layer_<i>` columns of increasing and
/// then different vocabulary (log counts of the 8 most frequent words, the top 60, the top 250,
/// words 250..500), plus a `final_norm` column (all 500) that the sweep must ignore.
fn layered(t: &EmbeddingTable) -> EmbeddingTable {
    let logs = t.columns.iter().find(|c| c.name == "bow_log").unwrap();
    let slice = |name: &str, lo: usize, hi: usize| {
        let mut v = Vec::with_capacity(t.len() * (hi - lo));
        (0..t.len()).for_each(|i| v.extend_from_slice(&logs.row(i)[lo..hi]));
        VectorColumn::new(name, hi - lo, v)
    };
    EmbeddingTable {
        ids: t.ids.clone(),
        labels: t.labels.clone(),
        label_names: t.label_names.clone(),
        columns: vec![
            slice("layer_0", 0, 8),
            slice("layer_1", 0, 60),
            slice("layer_2", 0, 250),
            slice("layer_3", 250, VOCAB),
            slice("final_norm", 0, VOCAB),
        ],
    }
}

mod ensemble;
mod folds;
mod layer_sweep;
mod logreg;
mod mlp;
mod saved;
mod select;
mod sparse;
