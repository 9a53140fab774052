//! The real datasets of the shared data folder: AG News and SST-2.

use std::path::Path;

use llmembed_core::{External, Stage};
use llmembed_ingest::{Ingest, IngestParams, Sample};
use polars::prelude::{DataType, ParquetReader, SerReader};

use crate::common::*;

#[test]
fn ag_news_class_balanced_sample_is_deterministic() {
    let Some(data) = data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let p = IngestParams {
        dataset: Some("ag_news".into()),
        splits: splits(&[
            ("train", Some(Sample::Total(2000))),
            ("test", Some(Sample::PerClass(125))),
        ]),
        ..Default::default()
    };
    let e = env(&data, root, 13);
    let out = run(&p, &e, root, "a").unwrap();
    let train = read(&out, "train");
    let test = read(&out, "test");
    assert_eq!(
        train.label_names,
        ["World", "Sports", "Business", "Sci/Tech"]
    );
    assert_eq!(per_class_counts(&train), [500; 4]);
    assert_eq!(per_class_counts(&test), [125; 4]);
    assert_eq!(train.len(), 2000);
    assert_eq!(test.len(), 500);

    // Ids name source rows: `<split>-<index>`, increasing, and the text/label are that row's.
    let src = ParquetReader::new(std::fs::File::open(data.join("ag_news/train.parquet")).unwrap())
        .finish()
        .unwrap();
    let src_text = src.column("text").unwrap().str().unwrap().clone();
    let src_label = src.column("label").unwrap().cast(&DataType::Int64).unwrap();
    let src_label = src_label.i64().unwrap();
    let mut last = None;
    for i in 0..train.len() {
        let idx: usize = train.ids[i]
            .strip_prefix("train-")
            .unwrap()
            .parse()
            .unwrap();
        assert!(last.is_none_or(|l| l < idx), "ids in source order");
        last = Some(idx);
        assert_eq!(src_text.get(idx).unwrap(), train.texts[i]);
        assert_eq!(src_label.get(idx).unwrap(), train.labels[i]);
    }
    assert!(test.ids.iter().all(|id| id.starts_with("test-")));

    // Same params and seed: same bytes.
    let again = run(&p, &e, root, "b").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&again, "train"));
    assert_eq!(bytes(&out, "test"), bytes(&again, "test"));

    // Another pipeline seed: another sample.
    let other = run(&p, &env(&data, root, 14), root, "c").unwrap();
    let other_train = read(&other, "train");
    assert_ne!(other_train.ids, train.ids);
    assert_eq!(per_class_counts(&other_train), [500; 4]);

    // The stage's own seed overrides the pipeline's.
    let pinned = IngestParams {
        seed: Some(13),
        ..p.clone()
    };
    let overridden = run(&pinned, &env(&data, root, 99), root, "d").unwrap();
    assert_eq!(bytes(&out, "train"), bytes(&overridden, "train"));

    // Externals: every local file read.
    let ext = Ingest::externals(&p, &e).unwrap();
    let files: Vec<&Path> = ext
        .iter()
        .map(|x| match x {
            External::File { path, .. } => path.as_path(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(files.len(), 3, "{ext:?}");
    assert!(files.iter().any(|f| f.ends_with("ag_news/train.parquet")));
    assert!(files.iter().any(|f| f.ends_with("ag_news/test.parquet")));
    assert!(files.iter().any(|f| f.ends_with("ag_news/labels.txt")));
}

#[test]
fn sst2_all_splits_and_ids_survive_resampling() {
    let Some(data) = data_dir() else { return };
    if llmembed_testkit::needs("SST-2", llmembed_testkit::dataset_dir("sst2", "train")).is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = env(&data, root, 1);
    let all = IngestParams {
        dataset: Some("sst2".into()),
        ..Default::default()
    };
    let out = run(&all, &e, root, "all").unwrap();
    let (train, dev, test) = (read(&out, "train"), read(&out, "dev"), read(&out, "test"));
    assert_eq!((train.len(), dev.len(), test.len()), (6920, 872, 1821));
    assert_eq!(per_class_counts(&dev), [428, 444]);
    assert_eq!(train.label_names, ["negative", "positive"]);
    assert_eq!(train.ids[17], "train-17");

    let sampled = IngestParams {
        splits: splits(&[("dev", Some(Sample::PerClass(100)))]),
        ..all
    };
    let out = run(&sampled, &e, root, "sampled").unwrap();
    assert!(!out.join("train.parquet").exists());
    let small = read(&out, "dev");
    assert_eq!(per_class_counts(&small), [100, 100]);
    for (i, id) in small.ids.iter().enumerate() {
        let j = dev.ids.iter().position(|x| x == id).unwrap();
        assert_eq!(
            (&dev.texts[j], dev.labels[j]),
            (&small.texts[i], small.labels[i])
        );
    }
}
