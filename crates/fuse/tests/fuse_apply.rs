//! `fuse` loaded from its artifact (`Fuse::applier`): applied to the test split of each input it
//! reproduces the artifact's `test.parquet` bit for bit, for every method, with and without
//! `standardize`, across two inputs whose rows come in different orders. Real (if simple) vectors:
//! bag-of-words counts of AG News texts over different vocabularies.

mod common;

use std::path::Path;

use common::*;
use llmembed_core::{
    ApplyEnv, EmbeddingTable, Input, Rows, SavedTensors, Stage, UNLABELLED, VectorColumn,
    read_embedding_table,
};
use llmembed_fuse::{
    CooccurrenceParams, Fuse, FuseParams, Gram, Layers, Method, Normalize, SourceSpec,
};

fn spec(layers: Option<&[i64]>, columns: &[&str]) -> SourceSpec {
    SourceSpec {
        layers: layers.map(|l| Layers::List(l.to_vec())),
        columns: columns.iter().map(|c| c.to_string()).collect(),
    }
}

fn params(sources: Vec<SourceSpec>, method: Method) -> FuseParams {
    let mut p: FuseParams = serde_saphyr::from_str("sources: []").unwrap();
    p.sources = sources;
    p.method = method;
    p
}

/// `llm`: three layers of width 24; `bert`: `layer_0` and `pooler` of width 16. Train: the
/// first 120 rows; test: the next 40, in reverse order for `bert` (rows are matched by id).
struct Data {
    llm: [EmbeddingTable; 2],
    bert: [EmbeddingTable; 2],
}

fn data() -> Option<Data> {
    let (texts, labels) = ag_news("train", 160)?;
    let ids = ids("r", 160);
    let make = |range: std::ops::Range<usize>,
                reverse: bool,
                cols: &dyn Fn(&[String]) -> Vec<VectorColumn>| {
        let mut rows: Vec<usize> = range.collect();
        if reverse {
            rows.reverse();
        }
        let texts: Vec<String> = rows.iter().map(|&i| texts[i].clone()).collect();
        EmbeddingTable {
            ids: rows.iter().map(|&i| ids[i].clone()).collect(),
            labels: rows.iter().map(|&i| labels[i]).collect(),
            label_names: label_names(),
            columns: cols(&texts),
        }
    };
    let llm = |t: &[String]| {
        vec![
            bow("layer_0", t, &vocabulary(&texts, 4, 0, 24)),
            bow("layer_1", t, &vocabulary(&texts, 4, 24, 24)),
            bow("layer_2", t, &vocabulary(&texts, 5, 0, 24)),
        ]
    };
    let bert = |t: &[String]| {
        vec![
            bow("layer_0", t, &vocabulary(&texts, 3, 0, 16)),
            bow("pooler", t, &vocabulary(&texts, 6, 0, 16)),
        ]
    };
    Some(Data {
        llm: [make(0..120, false, &llm), make(120..160, false, &llm)],
        bert: [make(0..120, false, &bert), make(120..160, true, &bert)],
    })
}

fn artifact(dir: &Path) -> Input {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    Input {
        stage_id: "fused".into(),
        dir: dir.to_path_buf(),
        files,
    }
}

fn apply_env(root: &Path) -> ApplyEnv {
    ApplyEnv {
        env: llmembed_testkit::stage_env(7),
        store_dir: root.join("store"),
    }
}

fn embedding(rows: Rows) -> EmbeddingTable {
    match rows {
        Rows::Embedding(t) => t,
        other => panic!("expected embeddings, got {}", other.kind()),
    }
}

fn bits(t: &EmbeddingTable) -> Vec<u32> {
    t.columns[0].values.iter().map(|v| v.to_bits()).collect()
}

/// Row `i` of `t` alone.
fn row(t: &EmbeddingTable, i: usize) -> EmbeddingTable {
    EmbeddingTable {
        ids: vec![t.ids[i].clone()],
        labels: vec![t.labels[i]],
        label_names: t.label_names.clone(),
        columns: t
            .columns
            .iter()
            .map(|c| VectorColumn::new(c.name.clone(), c.dim, c.row(i).to_vec()))
            .collect(),
    }
}

#[test]
fn applied_to_the_test_split_it_reproduces_the_artifact_for_every_method() {
    let Some(d) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let il = write_input(root, "llm", &[("train", &d.llm[0]), ("test", &d.llm[1])]);
    let ib = write_input(root, "bert", &[("train", &d.bert[0]), ("test", &d.bert[1])]);

    let two = || vec![spec(Some(&[0, 1, 2]), &[]), spec(None, &["pooler"])];
    let mut cases: Vec<(&str, FuseParams)> = vec![
        ("mean", params(two(), Method::Mean)),
        ("max", params(two(), Method::Max)),
        (
            "concat",
            params(
                vec![spec(Some(&[1, -1]), &[]), spec(Some(&[0]), &["pooler"])],
                Method::Concat,
            ),
        ),
        (
            "weighted",
            params(
                vec![spec(Some(&[0, 1, 2]), &[]), spec(Some(&[0]), &["pooler"])],
                Method::Weighted,
            ),
        ),
        ("cooccurrence", params(two(), Method::Cooccurrence)),
    ];
    for (_, p) in &mut cases {
        p.weighted.epochs = 5;
        // 24 wide: the LLM layers are used as they are, the 16-wide BERT vectors projected.
        p.cooccurrence = CooccurrenceParams {
            width: 24,
            sigma: 2.0,
            gram: Gram::Upper,
        };
    }
    let with_standardize: Vec<(&str, FuseParams)> = cases
        .iter()
        .map(|(name, p)| {
            let mut p = p.clone();
            p.standardize = true;
            p.normalize = Normalize::L2;
            (*name, p)
        })
        .collect();
    cases.extend(with_standardize);

    let inputs = [il, ib];
    for (k, (name, p)) in cases.iter().enumerate() {
        let what = format!("{name} (standardize: {})", p.standardize);
        let (out, _) = run_stage::<Fuse>(root, &format!("o{k}"), p, &inputs).unwrap();
        let apply = Fuse::applier(p, &artifact(&out), &apply_env(root))
            .unwrap()
            .unwrap();
        let new = [
            Rows::Embedding(d.llm[1].clone()),
            Rows::Embedding(d.bert[1].clone()),
        ];
        let got = embedding(apply.apply(&new).unwrap());
        let want = read_embedding_table(&out.join("test.parquet"), None).unwrap();
        assert_eq!(got.ids, want.ids, "{what}");
        assert_eq!(got.labels, want.labels, "{what}");
        assert_eq!(got.label_names, want.label_names, "{what}");
        assert_eq!(got.column_names(), ["embedding"], "{what}");
        assert!(
            bits(&got) == bits(&want),
            "{what}: differs from test.parquet"
        );

        // One row at a time gives the same bits here. (The co-occurrence projection is candle's
        // matmul over the batch's rows; at these widths its rounding does not depend on the
        // number of rows, which contrastive's wider head shows it can.)
        for i in [0, 17, 39] {
            let j = d.bert[1]
                .ids
                .iter()
                .position(|x| *x == d.llm[1].ids[i])
                .unwrap();
            let one = embedding(
                apply
                    .apply(&[
                        Rows::Embedding(row(&d.llm[1], i)),
                        Rows::Embedding(row(&d.bert[1], j)),
                    ])
                    .unwrap(),
            );
            let alone: Vec<u32> = one.columns[0].values.iter().map(|v| v.to_bits()).collect();
            let batched: Vec<u32> = got.columns[0].row(i).iter().map(|v| v.to_bits()).collect();
            assert!(alone == batched, "{what}: row {i} alone differs");
        }

        // What was fitted, readable without this crate.
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
        assert_eq!(meta["kind"], "fuse");
        assert_eq!(meta["sources"][0]["input"], "llm");
        assert_eq!(meta["sources"][1]["input"], "bert");
        assert_eq!(meta["width"], want.columns[0].dim);
        assert_eq!(meta["train_rows"], 120);
        let tensors = SavedTensors::load(&out.join("model.safetensors")).unwrap();
        let width = want.columns[0].dim;
        if p.standardize {
            assert!(
                tensors.get_f64("standardizer.mean", &[width]).is_ok(),
                "{what}"
            );
            assert!(
                tensors.get_f64("standardizer.scale", &[width]).is_ok(),
                "{what}"
            );
        } else {
            assert!(tensors.shape("standardizer.mean").is_none(), "{what}");
        }
        match p.method {
            Method::Weighted => {
                let report: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(out.join("weights.json")).unwrap())
                        .unwrap();
                let w: Vec<f32> = report["sources"][1]["weights"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(tensors.get("weights.1", &[2]).unwrap(), &w[..], "{what}");
            }
            Method::Cooccurrence => {
                assert!(
                    tensors.get("projection.1.pooler", &[16, 24]).is_ok(),
                    "{what}"
                );
                assert!(tensors.shape("projection.0.layer_0").is_none(), "{what}");
            }
            _ => assert_eq!(
                meta["tensors"].as_array().unwrap().len(),
                2 * p.standardize as usize
            ),
        }
    }
}

#[test]
fn unlabelled_train_rows_are_fused_but_not_fitted_on() {
    let Some(d) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The same train rows, plus 30 unlabelled rows (the test rows again, under other ids).
    let mut extra = d.llm[1].clone();
    extra.ids = extra.ids.iter().map(|id| format!("u-{id}")).collect();
    extra.labels = vec![UNLABELLED; extra.ids.len()];
    let mut train = d.llm[0].clone();
    train.ids.extend(extra.ids.clone());
    train.labels.extend(extra.labels.clone());
    for (c, e) in train.columns.iter_mut().zip(&extra.columns) {
        c.values.extend_from_slice(&e.values);
    }
    let labelled = write_input(root, "l", &[("train", &d.llm[0]), ("test", &d.llm[1])]);
    let mixed = write_input(root, "m", &[("train", &train), ("test", &d.llm[1])]);
    let mut p = params(vec![spec(Some(&[0, 1, 2]), &[])], Method::Weighted);
    p.weighted.epochs = 5;
    p.standardize = true;
    let (a, _) = run_stage::<Fuse>(root, "a", &p, &[labelled]).unwrap();
    let (b, _) = run_stage::<Fuse>(root, "b", &p, &[mixed]).unwrap();
    // Same weights and standardiser, so the same test bytes; the unlabelled rows are fused too.
    for f in ["test.parquet", "model.safetensors"] {
        let bytes = |dir: &Path| std::fs::read(dir.join(f)).unwrap();
        assert!(bytes(&a) == bytes(&b), "{f} differs");
    }
    let fused = read_embedding_table(&b.join("train.parquet"), None).unwrap();
    assert_eq!(fused.ids.len(), 160);
    assert_eq!(fused.labels[159], UNLABELLED);
}

#[test]
fn the_applier_refuses_other_params_and_the_wrong_inputs() {
    let Some(d) = data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let il = write_input(root, "llm", &[("train", &d.llm[0]), ("test", &d.llm[1])]);
    let p = params(vec![spec(Some(&[0, 1]), &[])], Method::Mean);
    let (out, _) = run_stage::<Fuse>(root, "o", &p, &[il]).unwrap();
    let mut other = p.clone();
    other.method = Method::Max;
    let err = Fuse::applier(&other, &artifact(&out), &apply_env(root))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.json: fitted with method Mean, the params now say Max"),
        "{err}"
    );
    let apply = Fuse::applier(&p, &artifact(&out), &apply_env(root))
        .unwrap()
        .unwrap();
    let rows = Rows::Embedding(d.llm[1].clone());
    let err = apply
        .apply(&[rows.clone(), rows])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("expected 1 embedding table(s) (from llm), got [embedding, embedding]"),
        "{err}"
    );
    let err = apply
        .apply(&[Rows::Embedding(d.bert[1].clone())])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("input 0 (`llm`): column `layer_0`: width 16 here but 24 when fitted"),
        "{err}"
    );
}
