//! The file formats read alike, and the params' serde form.

use std::path::Path;

use llmembed_core::{External, Stage};
use llmembed_ingest::{Ingest, IngestParams, Sample};

use crate::common::*;

#[test]
fn reads_csv_tsv_jsonl_and_parquet_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    write_delimited(&root.join("a.csv"), ',', true);
    write_delimited(&root.join("b.tsv"), '\t', false);
    write_jsonl(&root.join("c.jsonl"));
    write_parquet(&root.join("d.parquet"));
    let e = env(&root.join("no-data"), root, 0);
    // Relative paths resolve against the pipeline folder.
    let p = local(&[
        ("csv", Path::new("a.csv")),
        ("tsv", Path::new("b.tsv")),
        ("jsonl", Path::new("c.jsonl")),
        ("parquet", &root.join("d.parquet")),
    ]);
    let out = run(&p, &e, root, "out").unwrap();
    let expected_texts: Vec<String> = ROWS.iter().map(|(t, d, _)| format!("{t} {d}")).collect();
    let expected_labels: Vec<i64> = ROWS.iter().map(|r| label_id(r.2)).collect();
    for split in ["csv", "tsv", "jsonl", "parquet"] {
        let t = read(&out, split);
        assert_eq!(t.texts, expected_texts, "{split}");
        assert_eq!(t.labels, expected_labels, "{split}");
        assert_eq!(t.ids[5], format!("{split}-5"));
        assert_eq!(t.label_names, NAMES);
    }
    let ext = Ingest::externals(&p, &e).unwrap();
    assert_eq!(ext.len(), 4);
    assert!(ext.contains(&External::File {
        name: "split:csv".into(),
        path: root.join("a.csv")
    }));

    // Dedup drops the repeated row 3 and keeps ids of the others.
    let dedup = IngestParams {
        dedup: true,
        ..local(&[("train", &root.join("a.csv"))])
    };
    let out = run(&dedup, &e, root, "dedup").unwrap();
    let t = read(&out, "train");
    assert_eq!(
        t.ids,
        ["train-0", "train-1", "train-2", "train-4", "train-5"]
    );

    // No label names given: string labels give the sorted names, integer ids "0".."max".
    let derived = IngestParams {
        label_names: None,
        ..local(&[("train", &root.join("a.csv"))])
    };
    let t = read(&run(&derived, &e, root, "derived").unwrap(), "train");
    assert_eq!(t.label_names, ["Business", "Sci/Tech", "Sports", "World"]);
    assert_eq!(t.texts[0], expected_texts[0]);
    assert_eq!(t.labels[0], 0);
    let derived = IngestParams {
        label_names: None,
        ..local(&[("train", &root.join("c.jsonl"))])
    };
    let t = read(&run(&derived, &e, root, "derived_ids").unwrap(), "train");
    assert_eq!(t.label_names, ["0", "1", "2", "3"]);
}

#[test]
fn params_parse_with_defaults_and_reject_unknown_fields() {
    let json = serde_json::json!({
        "dataset": "ag_news",
        "splits": {"train": {"sample": {"total": 2000}}, "test": {"sample": {"per_class": 125}}, "dev": {}},
    });
    let p: IngestParams = serde_json::from_value(json).unwrap();
    assert_eq!(p.text_columns, ["text"]);
    assert_eq!(p.label_column.as_deref(), Some("label"));
    assert_eq!(p.splits["train"].sample, Some(Sample::Total(2000)));
    assert_eq!(p.splits["test"].sample, Some(Sample::PerClass(125)));
    assert_eq!(p.splits["dev"].sample, None);
    let e = serde_json::from_value::<IngestParams>(serde_json::json!({"dataset": "x", "sed": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `sed`"), "{e}");
}
