//! Helpers shared by the integration tests: real AG News texts, simple real per-layer vectors
//! (bag-of-words counts over different vocabularies) and running a stage in a temp folder.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use llmembed_core::{
    Context, EmbeddingTable, Env, Input, Precision, Stage, Summary, VectorColumn,
    write_embedding_table,
};

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

/// Writes `tables` as the splits of an upstream artifact and returns it as an [`Input`].
pub fn write_input(root: &Path, stage_id: &str, tables: &[(&str, &EmbeddingTable)]) -> Input {
    let dir = root.join(stage_id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (split, t) in tables {
        let f = format!("{split}.parquet");
        write_embedding_table(&dir.join(&f), t, Precision::F32).unwrap();
        files.push(f);
    }
    Input {
        stage_id: stage_id.to_string(),
        dir,
        files,
    }
}

/// Runs a stage into a fresh folder `root/out_name` with seed 7.
pub fn run_stage<S: Stage>(
    root: &Path,
    out_name: &str,
    params: &S::Params,
    inputs: &[Input],
) -> llmembed_core::Result<(PathBuf, Summary)> {
    let env = Env {
        data_dir: data_dir(),
        models_dir: root.join("models"),
        pipeline_dir: root.to_path_buf(),
        seed: 7,
        quiet: true,
    };
    let out_dir = root.join(out_name);
    std::fs::create_dir_all(&out_dir).unwrap();
    let store_dir = root.join("store");
    std::fs::create_dir_all(&store_dir).unwrap();
    let ctx = Context {
        env: &env,
        out_dir: out_dir.clone(),
        store_dir,
        seed: 7,
    };
    let summary = S::run(params, inputs, &ctx)?;
    Ok((out_dir, summary))
}
