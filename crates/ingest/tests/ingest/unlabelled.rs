//! Splits without labels (`label_column: null`, `unlabelled: true`) and the applier that gives
//! new texts the dataset's class names.

use std::path::{Path, PathBuf};

use llmembed_core::{ApplyEnv, Input, Rows, Stage, TextTable, UNLABELLED};
use llmembed_ingest::{Ingest, IngestParams, Sample, SplitSpec};

use crate::common::*;

fn file(root: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = root.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

const TRAIN: &[u8] = b"text,label\ngood film,pos\nbad film,neg\nfine film,pos\n";

fn labelled_and_new(root: &Path, new: &[u8]) -> IngestParams {
    IngestParams {
        files: Some(
            [
                ("train".to_string(), file(root, "train.csv", TRAIN)),
                ("new".to_string(), file(root, "new.csv", new)),
            ]
            .into(),
        ),
        splits: [
            ("train".to_string(), SplitSpec::default()),
            (
                "new".to_string(),
                SplitSpec {
                    unlabelled: true,
                    ..Default::default()
                },
            ),
        ]
        .into(),
        ..Default::default()
    }
}

#[test]
fn a_split_marked_unlabelled_gets_unlabelled_rows_and_the_labelled_splits_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = env(&root.join("no-data"), root, 0);
    // No label column at all, and a GLUE-style column of -1: both read as unlabelled.
    for (k, new) in [
        &b"text\nwhat a film\nso so\n"[..],
        &b"text,label\nwhat a film,-1\nso so,-1\n"[..],
    ]
    .into_iter()
    .enumerate()
    {
        let p = labelled_and_new(root, new);
        let out = run(&p, &e, root, &format!("out{k}")).unwrap();
        let new = read(&out, "new");
        assert_eq!(new.ids, ["new-0", "new-1"]);
        assert_eq!(new.texts, ["what a film", "so so"]);
        assert_eq!(new.labels, [UNLABELLED, UNLABELLED]);
        assert_eq!(new.label_names, ["neg", "pos"]);
        assert_eq!(read(&out, "train").labels, [1, 0, 1]);
    }
    // The labelled split's bytes do not depend on an unlabelled split beside it.
    let alone = IngestParams {
        files: Some([("train".to_string(), root.join("train.csv"))].into()),
        ..Default::default()
    };
    let alone = run(&alone, &e, root, "alone").unwrap();
    assert_eq!(bytes(&alone, "train"), bytes(&root.join("out0"), "train"));

    // Not marked, the -1 column is refused with a hint; a missing column too.
    let mut p = labelled_and_new(root, b"text,label\nwhat a film,-1\n");
    p.splits.get_mut("new").unwrap().unlabelled = false;
    p.label_names = Some(vec!["neg".into(), "pos".into()]);
    let msg = err(&p, root);
    assert!(
        msg.contains(
            "new.csv: row 0, field `label`: label id -1 is outside the 2 label names [\"neg\", \
             \"pos\"] (a split whose labels are hidden as -1: mark it `unlabelled: true`"
        ),
        "{msg}"
    );
    let mut p = labelled_and_new(root, b"text\nwhat a film\n");
    p.splits.get_mut("new").unwrap().unlabelled = false;
    let msg = err(&p, root);
    assert!(
        msg.contains("column `label`: missing (columns: text); for texts without labels, mark the split `unlabelled: true`"),
        "{msg}"
    );
}

#[test]
fn label_column_null_needs_class_names_from_somewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = env(&root.join("no-data"), root, 0);
    let mut p = IngestParams {
        files: Some(
            [(
                "test".to_string(),
                file(root, "t.jsonl", b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n"),
            )]
            .into(),
        ),
        label_column: None,
        ..Default::default()
    };
    let msg = err(&p, root);
    assert!(
        msg.contains("no split has labels to take the class names from: give `label_names`"),
        "{msg}"
    );
    p.label_names = Some(vec!["x".into(), "y".into()]);
    let t = read(&run(&p, &e, root, "named").unwrap(), "test");
    assert_eq!(t.labels, [UNLABELLED, UNLABELLED]);
    assert_eq!(t.label_names, ["x", "y"]);

    // Class-balanced sampling of rows without labels is refused before anything is read.
    p.splits = splits(&[("test", Some(Sample::PerClass(1)))]);
    let msg = Ingest::check(&p).unwrap_err().to_string();
    assert!(
        msg.contains("splits.test.sample") && msg.contains("class-balanced sampling needs labels, and split `test` has none (`label_column` is null)"),
        "{msg}"
    );
    let mut p = labelled_and_new(root, b"text\nc\n");
    p.splits.get_mut("new").unwrap().sample = Some(Sample::Total(2));
    let msg = Ingest::check(&p).unwrap_err().to_string();
    assert!(msg.contains("(the split is marked `unlabelled`)"), "{msg}");
}

#[test]
fn params_that_mark_nothing_serialize_as_before() {
    // The canonical params (and so the cache keys) of existing pipelines stay what they were.
    let spec = serde_json::to_value(SplitSpec {
        sample: Some(Sample::PerClass(3)),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(spec, serde_json::json!({"sample": {"per_class": 3}}));
    let p = serde_json::to_value(IngestParams::default()).unwrap();
    assert_eq!(p["label_column"], "label");
    let null: IngestParams =
        serde_json::from_value(serde_json::json!({"dataset": "d", "label_column": null})).unwrap();
    assert_eq!(null.label_column, None);
}

#[test]
fn the_applier_gives_new_texts_the_dataset_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let e = env(&root.join("no-data"), root, 0);
    let p = labelled_and_new(root, b"text\nc\n");
    let out = run(&p, &e, root, "out").unwrap();
    let fitted = Input {
        stage_id: "data".into(),
        dir: out.clone(),
        files: vec!["new.parquet".into(), "train.parquet".into()],
    };
    let apply_env = ApplyEnv {
        env: e.clone(),
        store_dir: root.join("store"),
    };
    let apply = Ingest::applier(&p, &fitted, &apply_env).unwrap().unwrap();
    let new = TextTable::new(
        vec!["a".into(), "b".into()],
        vec!["great".into(), "awful".into()],
        vec![UNLABELLED, UNLABELLED],
        vec![],
    );
    let Rows::Text(got) = apply.apply(&[Rows::Text(new.clone())]).unwrap() else {
        panic!("not text");
    };
    assert_eq!(got.label_names, ["neg", "pos"]);
    assert_eq!(
        (got.ids, got.texts, got.labels),
        (new.ids.clone(), new.texts.clone(), new.labels.clone())
    );

    let mut other = new.clone();
    other.label_names = vec!["a".into(), "b".into()];
    let msg = apply.apply(&[Rows::Text(other)]).unwrap_err().to_string();
    assert!(
        msg.contains(
            "the new rows' classes [\"a\", \"b\"] are not the dataset's [\"neg\", \"pos\"]"
        ),
        "{msg}"
    );
    let mut bad = new.clone();
    bad.labels[1] = 2;
    let msg = apply.apply(&[Rows::Text(bad)]).unwrap_err().to_string();
    assert!(
        msg.contains("row 1 (`b`): label 2 is neither one of the 2 classes"),
        "{msg}"
    );
    let msg = apply
        .apply(&[Rows::Text(new.clone()), Rows::Text(new)])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("expected one table of texts, got [text, text]"),
        "{msg}"
    );
}
