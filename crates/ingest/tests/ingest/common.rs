//! What the ingest tests share: the stage run into a temporary folder, small tables written
//! in every format, and error texts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmembed_core::{Context, Env, Stage, TextTable, read_text_table};
use llmembed_ingest::{Ingest, IngestParams, Sample, SplitSpec};
use polars::prelude::*;

/// The shared data folder (`LLMEMBED_DATA_DIR`, else `<repo>/../shared/data`) holding AG News,
/// or `None`: the test skips, or fails under `LLMEMBED_REQUIRE_TEST_INPUTS=1`.
pub fn data_dir() -> Option<PathBuf> {
    llmembed_testkit::needs("AG News", llmembed_testkit::ag_news_dir())
}

pub fn env(data_dir: &Path, pipeline_dir: &Path, seed: u64) -> Env {
    Env {
        data_dir: data_dir.to_path_buf(),
        models_dir: pipeline_dir.join("models"),
        pipeline_dir: pipeline_dir.to_path_buf(),
        seed,
        quiet: true,
    }
}

/// Checks and runs the stage into a fresh `out` folder under `root`.
pub fn run(p: &IngestParams, env: &Env, root: &Path, out: &str) -> llmembed_core::Result<PathBuf> {
    Ingest::check(p)?;
    let out_dir = root.join(out);
    std::fs::create_dir_all(&out_dir).unwrap();
    let ctx = Context {
        env,
        out_dir: out_dir.clone(),
        store_dir: root.join("store"),
        seed: llmembed_testkit::seed_for::<Ingest>(p, env.seed),
        store_ready: None,
    };
    Ingest::run(p, &[], &ctx)?;
    Ok(out_dir)
}

pub fn splits(items: &[(&str, Option<Sample>)]) -> BTreeMap<String, SplitSpec> {
    items
        .iter()
        .map(|(s, sample)| {
            (
                s.to_string(),
                SplitSpec {
                    sample: *sample,
                    ..Default::default()
                },
            )
        })
        .collect()
}

pub fn per_class_counts(t: &TextTable) -> Vec<usize> {
    let mut counts = vec![0; t.label_names.len()];
    for &l in &t.labels {
        counts[l as usize] += 1;
    }
    counts
}

pub fn read(out: &Path, split: &str) -> TextTable {
    read_text_table(&out.join(format!("{split}.parquet"))).unwrap()
}

pub fn bytes(out: &Path, split: &str) -> Vec<u8> {
    std::fs::read(out.join(format!("{split}.parquet"))).unwrap()
}

pub const ROWS: &[(&str, &str, &str)] = &[
    (
        "Stocks rally",
        "Markets rose on Friday, \"sharply\".",
        "Business",
    ),
    ("Cup final", "A late goal won it", "Sports"),
    ("New chip", "Faster and cooler", "Sci/Tech"),
    ("Cup final", "A late goal won it", "Sports"),
    ("Summit ends", "Leaders agree, tabs and\tall", "World"),
    ("Überraschung", "Grüße aus Köln — ok", "World"),
];
pub const NAMES: [&str; 4] = ["World", "Sports", "Business", "Sci/Tech"];

pub fn label_id(name: &str) -> i64 {
    NAMES.iter().position(|n| *n == name).unwrap() as i64
}

pub fn csv_field(s: &str, sep: char) -> String {
    if s.contains(sep) || s.contains('"') || s.contains('\n') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn write_delimited(path: &Path, sep: char, names_as_labels: bool) {
    let mut s = format!("title{sep}description{sep}label\n");
    for (t, d, l) in ROWS {
        let label = if names_as_labels {
            l.to_string()
        } else {
            label_id(l).to_string()
        };
        s.push_str(&format!(
            "{}{sep}{}{sep}{}\n",
            csv_field(t, sep),
            csv_field(d, sep),
            csv_field(&label, sep)
        ));
    }
    std::fs::write(path, s).unwrap();
}

pub fn write_jsonl(path: &Path) {
    let mut s = String::new();
    for (t, d, l) in ROWS {
        s.push_str(
            &serde_json::json!({"title": t, "description": d, "label": label_id(l), "extra": 1.5})
                .to_string(),
        );
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

pub fn write_parquet(path: &Path) {
    let mut df = polars::df!(
        "title" => ROWS.iter().map(|r| r.0).collect::<Vec<_>>(),
        "description" => ROWS.iter().map(|r| r.1).collect::<Vec<_>>(),
        "label" => ROWS.iter().map(|r| label_id(r.2) as i32).collect::<Vec<_>>(),
    )
    .unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap())
        .finish(&mut df)
        .unwrap();
}

pub fn local(files: &[(&str, &Path)]) -> IngestParams {
    IngestParams {
        files: Some(
            files
                .iter()
                .map(|(s, p)| (s.to_string(), p.to_path_buf()))
                .collect(),
        ),
        text_columns: vec!["title".into(), "description".into()],
        label_names: Some(NAMES.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

pub fn err(p: &IngestParams, root: &Path) -> String {
    let e = env(&root.join("no-data"), root, 0);
    let out = format!("err-{}", rand_suffix());
    run(p, &e, root, &out).unwrap_err().to_string()
}

pub fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Writes `content` to `root/name` and ingests it as split `test` (label names neg, pos unless
/// `names` is false), returning the error and its text with `root` shortened to `<dir>`.
pub fn refuse(root: &Path, name: &str, content: &[u8], names: bool) -> String {
    let path = root.join(name);
    std::fs::write(&path, content).unwrap();
    let p = IngestParams {
        files: Some([("test".to_string(), path)].into()),
        label_names: names.then(|| vec!["neg".into(), "pos".into()]),
        ..Default::default()
    };
    let e = env(&root.join("no-data"), root, 0);
    let out = format!("err-{}", rand_suffix());
    let e = run(&p, &e, root, &out).unwrap_err();
    // One message: nothing chained below it that a caller would print a second time.
    assert!(std::error::Error::source(&e).is_none(), "{e:?}");
    e.to_string().replace(&root.display().to_string(), "<dir>")
}
