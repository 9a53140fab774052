//! Helpers shared by the integration tests: real AG News texts, simple real per-layer vectors
//! (bag-of-words counts over different vocabularies) and running a stage in a temp folder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmembed_core::{EmbeddingTable, Input, Stage, Summary, VectorColumn};

pub const AG_LABELS: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];

/// `$LLMEMBED_DATA_DIR` or the shared data folder next to the repository.
pub fn data_dir() -> PathBuf {
    llmembed_testkit::data_dir()
}

/// The first `n` rows (text, label) of an AG News split, or `None` when the data file is absent:
/// the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
pub fn ag_news(split: &str, n: usize) -> Option<(Vec<String>, Vec<i64>)> {
    llmembed_testkit::needs("AG News", llmembed_testkit::read_ag_news(split, n))
}

/// Lowercased alphabetic words of a text.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Words of at least `min_len` letters ranked by document frequency over `texts` (ties:
/// alphabetical), skipping the first `skip`.
pub fn vocabulary(texts: &[String], min_len: usize, skip: usize, take: usize) -> Vec<String> {
    let mut df: HashMap<String, usize> = HashMap::new();
    for t in texts {
        let mut seen: Vec<String> = words(t).filter(|w| w.chars().count() >= min_len).collect();
        seen.sort();
        seen.dedup();
        for w in seen {
            *df.entry(w).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = df.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked
        .into_iter()
        .skip(skip)
        .take(take)
        .map(|(w, _)| w)
        .collect()
}

/// Bag-of-words counts of `texts` over `vocab`: a real (if simple) vector per text.
pub fn bow(name: &str, texts: &[String], vocab: &[String]) -> VectorColumn {
    let index: HashMap<&str, usize> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_str(), i))
        .collect();
    let mut values = vec![0f32; texts.len() * vocab.len()];
    for (r, t) in texts.iter().enumerate() {
        for w in words(t) {
            if let Some(&j) = index.get(w.as_str()) {
                values[r * vocab.len() + j] += 1.0;
            }
        }
    }
    VectorColumn::new(name, vocab.len(), values)
}

pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

pub fn label_names() -> Vec<String> {
    AG_LABELS.iter().map(|s| s.to_string()).collect()
}

/// Writes `tables` as the splits of an upstream artifact `root/stage_id` and returns it.
pub fn write_input(root: &Path, stage_id: &str, tables: &[(&str, &EmbeddingTable)]) -> Input {
    llmembed_testkit::embedding_input(&root.join(stage_id), stage_id, tables)
}

/// Runs a stage into a fresh folder `root/out_name` with seed 7.
pub fn run_stage<S: Stage>(
    root: &Path,
    out_name: &str,
    params: &S::Params,
    inputs: &[Input],
) -> llmembed_core::Result<(PathBuf, Summary)> {
    let out_dir = root.join(out_name);
    let summary =
        llmembed_testkit::run_stage_at::<S>(params, inputs, 7, &out_dir, &root.join("store"))?;
    Ok((out_dir, summary))
}
