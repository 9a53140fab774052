//! The `fuse` stage end to end: real inputs written as Parquet, `Stage::run`, outputs read back.

mod common;

use common::*;
use llmembed_core::{EmbeddingTable, Stage, VectorColumn, read_embedding_table};
use llmembed_fuse::{
    CooccurrenceParams, Fuse, FuseParams, Gram, Layers, Method, Normalize, SourceSpec,
    WeightedParams,
};

fn layers(list: &[i64]) -> SourceSpec {
    SourceSpec {
        layers: Some(Layers::List(list.to_vec())),
        columns: Vec::new(),
    }
}

fn params(sources: Vec<SourceSpec>, method: Method) -> FuseParams {
    let mut p: FuseParams = serde_saphyr::from_str("sources: []").unwrap();
    p.sources = sources;
    p.method = method;
    p
}

fn table(ids: &[&str], labels: &[i64], cols: Vec<VectorColumn>) -> EmbeddingTable {
    EmbeddingTable {
        ids: ids.iter().map(|s| s.to_string()).collect(),
        labels: labels.to_vec(),
        label_names: label_names(),
        columns: cols,
    }
}

fn embedding(dir: &std::path::Path, split: &str) -> EmbeddingTable {
    read_embedding_table(&dir.join(format!("{split}.parquet")), None).unwrap()
}

/// Two rows, two layers of width 3: numbers that can be checked by hand.
fn small() -> EmbeddingTable {
    table(
        &["a", "b"],
        &[0, 1],
        vec![
            VectorColumn::new("layer_0", 3, vec![1., 2., 3., 4., 5., 6.]),
            VectorColumn::new("layer_1", 3, vec![3., 0., 3., -4., 7., 0.5]),
            VectorColumn::new("pooler", 2, vec![9., 8., 7., 6.]),
        ],
    )
}

#[test]
fn yaml_params_have_explicit_defaults_and_reject_unknown_fields() {
    let p: FuseParams = serde_saphyr::from_str(
        "sources:\n  - {layers: all}\n  - {layers: [6, -1], columns: [pooler]}\n",
    )
    .unwrap();
    assert_eq!(p.sources[0].layers, Some(Layers::All));
    assert_eq!(p.sources[1].layers, Some(Layers::List(vec![6, -1])));
    assert_eq!(p.sources[1].columns, vec!["pooler".to_string()]);
    assert_eq!(p.method, Method::Mean);
    assert_eq!(p.normalize, Normalize::None);
    assert!(!p.standardize);
    assert_eq!(p.weighted, WeightedParams::default());
    assert_eq!(p.weighted.epochs, 50);
    assert_eq!(p.cooccurrence.width, 1024);
    assert_eq!(p.cooccurrence.gram, Gram::Full);
    assert_eq!(p.seed, None);
    let full: FuseParams = serde_saphyr::from_str(
        "sources: [{columns: [final_norm]}]\nmethod: cooccurrence\nnormalize: l2\n\
         standardize: true\ncooccurrence: {width: 256, sigma: 0.5, gram: upper}\nseed: 3\n",
    )
    .unwrap();
    assert_eq!(full.method, Method::Cooccurrence);
    assert_eq!(full.cooccurrence.sigma, 0.5);
    let err = serde_saphyr::from_str::<FuseParams>("sources: [{layers: all}]\nmethd: max\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `methd`"), "{err}");
    let err = serde_saphyr::from_str::<FuseParams>("sources: [{layers: all}]\nmethod: median\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown variant `median`"), "{err}");
    let err = Fuse::check(&params(
        vec![SourceSpec {
            layers: None,
            columns: vec![],
        }],
        Method::Mean,
    ))
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `sources[0]`: select `layers` and/or `columns`");
}

#[test]
fn mean_max_concat_on_hand_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "x", &[("train", &small()), ("test", &small())]);
    let run = |name: &str, p: &FuseParams| {
        let (out, _) =
            run_stage::<Fuse>(dir.path(), name, p, std::slice::from_ref(&input)).unwrap();
        embedding(&out, "test")
    };
    let mean = run("mean", &params(vec![layers(&[0, 1])], Method::Mean));
    assert_eq!(mean.ids, vec!["a", "b"]);
    assert_eq!(mean.labels, vec![0, 1]);
    assert_eq!(mean.label_names, label_names());
    assert_eq!(mean.column_names(), vec!["embedding"]);
    assert_eq!(mean.columns[0].values, vec![2., 1., 3., 0., 6., 3.25]);

    let max = run("max", &params(vec![layers(&[0, 1])], Method::Max));
    assert_eq!(max.columns[0].values, vec![3., 2., 3., 4., 7., 6.]);

    // concat keeps selection order: layer 1, then layer 0 (via -2), then pooler.
    let spec = SourceSpec {
        layers: Some(Layers::List(vec![1, -2])),
        columns: vec!["pooler".into()],
    };
    let cat = run("concat", &params(vec![spec], Method::Concat));
    assert_eq!(cat.columns[0].dim, 8);
    assert_eq!(
        cat.columns[0].values,
        vec![
            3., 0., 3., 1., 2., 3., 9., 8., -4., 7., 0.5, 4., 5., 6., 7., 6.
        ]
    );

    // l2 per source vector before fusing: rows of layer_0 and layer_1 scaled to unit length.
    let mut p = params(vec![layers(&[0])], Method::Mean);
    p.normalize = Normalize::L2;
    let l2 = run("l2", &p);
    let n = 14f64.sqrt();
    for (g, w) in l2.columns[0].values[..3]
        .iter()
        .zip([1. / n, 2. / n, 3. / n])
    {
        assert!((f64::from(*g) - w).abs() < 1e-7, "{g} vs {w}");
    }
}

#[test]
fn mean_of_layers_needs_one_width_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(
        dir.path(),
        "extract_x",
        &[("train", &small()), ("test", &small())],
    );
    let spec = SourceSpec {
        layers: Some(Layers::List(vec![0])),
        columns: vec!["pooler".into()],
    };
    let err = run_stage::<Fuse>(dir.path(), "o", &params(vec![spec], Method::Mean), &[input])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("extract_x") && err.contains("layer_0=3") && err.contains("pooler=2"),
        "{err}"
    );
}

#[test]
fn missing_layer_is_named_with_what_the_file_has() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "x", &[("train", &small()), ("test", &small())]);
    let err = run_stage::<Fuse>(
        dir.path(),
        "o",
        &params(vec![layers(&[5])], Method::Mean),
        &[input],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("layer 5") && err.contains("layer_1") && err.contains("train.parquet"),
        "{err}"
    );
}

/// Two models over the same real AG News rows, stored in different row orders: rows are
/// matched by id, each source is averaged over its layers, and the sources are concatenated.
#[test]
fn several_sources_are_matched_by_id_and_concatenated() {
    let Some((texts, labels)) = ag_news("train", 60) else {
        return;
    };
    let ids = ids("ag", texts.len());
    let v1 = vocabulary(&texts, 4, 0, 16);
    let v2 = vocabulary(&texts, 4, 16, 16);
    let v3 = vocabulary(&texts, 6, 0, 8);
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let a = table(
        &id_refs,
        &labels,
        vec![bow("layer_0", &texts, &v1), bow("layer_1", &texts, &v2)],
    );
    // Model B: reversed row order.
    let rev: Vec<usize> = (0..texts.len()).rev().collect();
    let rtexts: Vec<String> = rev.iter().map(|&i| texts[i].clone()).collect();
    let rids: Vec<&str> = rev.iter().map(|&i| id_refs[i]).collect();
    let rlabels: Vec<i64> = rev.iter().map(|&i| labels[i]).collect();
    let b = table(&rids, &rlabels, vec![bow("pooler", &rtexts, &v3)]);

    let dir = tempfile::tempdir().unwrap();
    let ia = write_input(dir.path(), "llm", &[("train", &a), ("test", &a)]);
    let ib = write_input(dir.path(), "bert", &[("train", &b), ("test", &b)]);
    let spec_b = SourceSpec {
        layers: None,
        columns: vec!["pooler".into()],
    };
    let p = params(vec![layers(&[0, 1]), spec_b], Method::Mean);
    let (out, summary) = run_stage::<Fuse>(dir.path(), "o", &p, &[ia, ib]).unwrap();
    assert_eq!(summary.rows_out, 120);
    let got = embedding(&out, "train");
    assert_eq!(got.ids, ids);
    assert_eq!(got.labels, labels);
    let e = &got.columns[0];
    assert_eq!(e.dim, 24);
    let (l0, l1, pb) = (&a.columns[0], &a.columns[1], bow("p", &texts, &v3));
    for r in 0..texts.len() {
        let want: Vec<f32> = (0..16)
            .map(|j| ((f64::from(l0.row(r)[j]) + f64::from(l1.row(r)[j])) / 2.0) as f32)
            .chain(pb.row(r).iter().copied())
            .collect();
        assert_eq!(e.row(r), &want[..], "row {r}");
    }
}

#[test]
fn differing_row_sets_name_the_first_differing_id() {
    let dir = tempfile::tempdir().unwrap();
    let a = small();
    let mut b = small();
    b.ids[1] = "zz".into();
    let ia = write_input(dir.path(), "a", &[("train", &a), ("test", &a)]);
    let ib = write_input(dir.path(), "b", &[("train", &b), ("test", &b)]);
    let p = params(vec![layers(&[0]), layers(&[0])], Method::Concat);
    let err = run_stage::<Fuse>(dir.path(), "o", &p, &[ia.clone(), ib])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("id `b`") && err.contains("b/train.parquet"),
        "{err}"
    );

    // Same ids but b has one more row: that extra id is named.
    let mut c = small();
    c.ids.push("extra".into());
    c.labels.push(0);
    for col in &mut c.columns {
        let first = col.row(0).to_vec();
        col.values.extend(first);
    }
    let ic = write_input(dir.path(), "c", &[("train", &c), ("test", &c)]);
    let err = run_stage::<Fuse>(dir.path(), "o2", &p, &[ia.clone(), ic])
        .unwrap_err()
        .to_string();
    assert!(err.contains("id `extra`"), "{err}");

    // Label names must agree.
    let mut d = small();
    d.label_names.swap(0, 1);
    let id = write_input(dir.path(), "d", &[("train", &d), ("test", &d)]);
    let err = run_stage::<Fuse>(dir.path(), "o3", &p, &[ia.clone(), id])
        .unwrap_err()
        .to_string();
    assert!(err.contains("label names differ"), "{err}");

    // One entry per input.
    let err = run_stage::<Fuse>(
        dir.path(),
        "o4",
        &params(vec![layers(&[0])], Method::Mean),
        &[ia.clone(), ia],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("1 entries for 2 inputs"), "{err}");
}

#[test]
fn standardize_is_fitted_on_train_and_applied_to_test() {
    let Some((texts, labels)) = ag_news("train", 80) else {
        return;
    };
    let (tr, te) = texts.split_at(60);
    let v = vocabulary(&texts, 4, 0, 12);
    let ids = ids("r", 80);
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    let train = table(&idr[..60], &labels[..60], vec![bow("layer_0", tr, &v)]);
    let test = table(&idr[60..], &labels[60..], vec![bow("layer_0", te, &v)]);
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "x", &[("train", &train), ("test", &test)]);
    let mut p = params(vec![layers(&[0])], Method::Mean);
    p.standardize = true;
    let (out, _) = run_stage::<Fuse>(dir.path(), "o", &p, &[input]).unwrap();
    let (otr, ote) = (embedding(&out, "train"), embedding(&out, "test"));
    let col = |t: &VectorColumn, j: usize| -> Vec<f64> {
        (0..t.rows()).map(|r| f64::from(t.row(r)[j])).collect()
    };
    for j in 0..12 {
        let raw = col(&train.columns[0], j);
        let mu = raw.iter().sum::<f64>() / 60.0;
        let sd = (raw.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / 60.0).sqrt();
        let z = col(&otr.columns[0], j);
        let zmean = z.iter().sum::<f64>() / 60.0;
        assert!(zmean.abs() < 1e-5, "column {j}: train mean {zmean}");
        // Test rows use the train statistics.
        let raw_te = col(&test.columns[0], j);
        let z_te = col(&ote.columns[0], j);
        let scale = if sd > 0.0 { sd } else { 1.0 };
        for (x, zt) in raw_te.iter().zip(&z_te) {
            assert!(((x - mu) / scale - zt).abs() < 1e-5, "column {j}");
        }
    }
}

/// Per-layer vectors for the weighted test: layer 1 is real (bag of words over frequent AG News
/// words), layers 0 and 2 are seeded Gaussian noise of the same width.
fn informative_and_noise(texts: &[String], seed: u64) -> Vec<VectorColumn> {
    use rand::Rng;
    let v = vocabulary(texts, 4, 0, 48);
    let real = bow("layer_1", texts, &v);
    let noise = |name: &str, purpose: &str| {
        let mut rng = llmembed_core::seeded_rng(seed, purpose);
        let values = (0..real.values.len())
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect();
        VectorColumn::new(name, real.dim, values)
    };
    let (n0, n2) = (noise("layer_0", "noise0"), noise("layer_2", "noise2"));
    vec![n0, real, n2]
}

/// `method: weighted` over all layers of one input, each L2-normalised first.
fn weighted_over_all_layers() -> FuseParams {
    let mut p = params(
        vec![SourceSpec {
            layers: Some(Layers::All),
            columns: vec![],
        }],
        Method::Weighted,
    );
    p.normalize = Normalize::L2;
    p
}

/// The first `n` AG News training rows as [`informative_and_noise`] tables with ids
/// `<prefix><i>`: the first `train_rows` for train, the rest for test.
fn informative_split(
    prefix: &str,
    n: usize,
    train_rows: usize,
) -> Option<(EmbeddingTable, EmbeddingTable)> {
    let (texts, labels) = ag_news("train", n)?;
    let ids = ids(prefix, n);
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (tr, te) = texts.split_at(train_rows);
    Some((
        table(
            &idr[..train_rows],
            &labels[..train_rows],
            informative_and_noise(tr, 1),
        ),
        table(
            &idr[train_rows..],
            &labels[train_rows..],
            informative_and_noise(te, 2),
        ),
    ))
}

#[test]
fn weighted_puts_most_weight_on_the_informative_layer_and_is_deterministic() {
    let Some((train, test)) = informative_split("w", 600, 500) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "x", &[("train", &train), ("test", &test)]);
    let mut p = weighted_over_all_layers();
    p.weighted.epochs = 30;
    let (out, summary) =
        run_stage::<Fuse>(dir.path(), "o", &p, std::slice::from_ref(&input)).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("weights.json")).unwrap()).unwrap();
    let src = &report["sources"][0];
    assert_eq!(
        src["columns"],
        serde_json::json!(["layer_0", "layer_1", "layer_2"])
    );
    let w: Vec<f64> = src["weights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{w:?}");
    assert!(w[1] > 0.8, "weights {w:?}, notes {:?}", summary.notes);
    assert!(
        report["probe_train_accuracy"].as_f64().unwrap() > 0.5,
        "{report}"
    );

    // The outputs are the learned weighted sums of the (l2-normalised) layers.
    let got = embedding(&out, "test");
    let norm = |v: &[f32]| -> Vec<f64> {
        let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        v.iter()
            .map(|&x| if n > 0.0 { f64::from(x) / n } else { 0.0 })
            .collect()
    };
    for r in [0, 57] {
        let want: Vec<f64> = (0..48)
            .map(|j| (0..3).map(|l| w[l] * norm(test.columns[l].row(r))[j]).sum())
            .collect();
        for (g, w) in got.columns[0].row(r).iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5);
        }
    }

    // Same inputs, same seed: the same bytes.
    let (again, _) = run_stage::<Fuse>(dir.path(), "o_again", &p, &[input]).unwrap();
    llmembed_testkit::assert_same_output_bytes(
        &out,
        &again,
        &["train.parquet", "test.parquet", "weights.json"],
    );
}

#[test]
fn cooccurrence_joins_the_squashed_gram_with_the_mean_of_the_first_source() {
    let Some((texts, labels)) = ag_news("train", 40) else {
        return;
    };
    let ids = ids("c", 40);
    let idr: Vec<&str> = ids.iter().map(String::as_str).collect();
    // "LLM": three layers of width 24 (BoW over different vocabularies); "BERT": width 16.
    let llm = table(
        &idr,
        &labels,
        vec![
            bow("layer_0", &texts, &vocabulary(&texts, 4, 0, 24)),
            bow("layer_1", &texts, &vocabulary(&texts, 4, 24, 24)),
            bow("layer_2", &texts, &vocabulary(&texts, 5, 0, 24)),
        ],
    );
    let bert = table(
        &idr,
        &labels,
        vec![bow("pooler", &texts, &vocabulary(&texts, 3, 0, 16))],
    );
    let dir = tempfile::tempdir().unwrap();
    let il = write_input(dir.path(), "llm", &[("train", &llm), ("test", &llm)]);
    let ib = write_input(dir.path(), "bert", &[("train", &bert), ("test", &bert)]);
    let mut p = params(
        vec![
            layers(&[0, 1, 2]),
            SourceSpec {
                layers: None,
                columns: vec!["pooler".into()],
            },
        ],
        Method::Cooccurrence,
    );
    p.normalize = Normalize::L2;
    // Width 24: the LLM layers are used as they are (as the official code does with BERT and
    // RoBERTa at 1024), the 16-wide BERT vector is projected.
    p.cooccurrence = CooccurrenceParams {
        width: 24,
        sigma: 2.0,
        gram: Gram::Full,
    };
    let inputs = [il, ib];
    let (out, summary) = run_stage::<Fuse>(dir.path(), "o", &p, &inputs).unwrap();
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("bert/pooler: Gaussian projection 16 -> 24")),
        "{:?}",
        summary.notes
    );
    let got = embedding(&out, "train");
    let e = &got.columns[0];
    assert_eq!(e.dim, 4 * 4 + 24);
    let unit = |v: &[f32]| -> Vec<f64> {
        let n = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        v.iter()
            .map(|&x| if n > 0.0 { f64::from(x) / n } else { 0.0 })
            .collect()
    };
    for r in 0..40 {
        let row = e.row(r);
        let l: Vec<Vec<f64>> = (0..3).map(|k| unit(llm.columns[k].row(r))).collect();
        // The 3x3 LLM block of G: tanh(sigma * <u_i, u_j> / 2), symmetric.
        for i in 0..3 {
            for j in 0..3 {
                let dot: f64 = l[i].iter().zip(&l[j]).map(|(a, b)| a * b).sum();
                let want = (2.0 * dot / 2.0).tanh();
                assert!(
                    (f64::from(row[i * 4 + j]) - want).abs() < 1e-6,
                    "row {r} G[{i},{j}]"
                );
            }
        }
        for i in 0..4 {
            assert_eq!(row[i * 4 + 3], row[3 * 4 + i], "row {r}: G symmetric");
            assert!(row[i * 4 + 3].abs() <= 1.0);
        }
        // The mean of the (normalised) LLM layers follows the Gram block.
        for j in 0..24 {
            let want = (l[0][j] + l[1][j] + l[2][j]) / 3.0;
            assert!((f64::from(row[16 + j]) - want).abs() < 1e-6);
        }
    }
    // Seeded projection: the same bytes again; the upper-triangle layout is 10 + 24 wide.
    let (again, _) = run_stage::<Fuse>(dir.path(), "o2", &p, &inputs).unwrap();
    assert_eq!(
        std::fs::read(out.join("train.parquet")).unwrap(),
        std::fs::read(again.join("train.parquet")).unwrap()
    );
    p.cooccurrence.gram = Gram::Upper;
    let (up, _) = run_stage::<Fuse>(dir.path(), "o3", &p, &inputs).unwrap();
    let u = embedding(&up, "train");
    assert_eq!(u.columns[0].dim, 10 + 24);
    assert_eq!(&u.columns[0].row(5)[..4], &e.row(5)[..4]);
    assert_eq!(&u.columns[0].row(5)[4..7], &e.row(5)[5..8]);
}

#[test]
fn weighted_makes_each_folds_vectors_as_a_fusion_that_never_saw_its_rows() {
    use llmembed_core::folds::{FOLD_VECTORS_FILE, FoldVectors, cv_folds, fold_vectors_file};
    let Some((train, test)) = informative_split("w", 240, 200) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = write_input(dir.path(), "x", &[("train", &train), ("test", &test)]);
    let mut p = weighted_over_all_layers();
    p.standardize = true;
    p.weighted.epochs = 5;
    p.weighted.folds = Some(3);
    let (out, _) = run_stage::<Fuse>(dir.path(), "o", &p, std::slice::from_ref(&input)).unwrap();
    // The classifiers' folds, from the pipeline's seed (7 in these tests).
    let cv = cv_folds(&train.ids, &train.labels, 3, 7);
    let meta: FoldVectors =
        serde_json::from_slice(&std::fs::read(out.join(FOLD_VECTORS_FILE)).unwrap()).unwrap();
    assert_eq!((meta.folds, &meta.splits), (3, &cv.splits));
    let whole = embedding(&out, "train");
    let bits = |t: &EmbeddingTable| -> Vec<u32> {
        t.columns[0].values.iter().map(|v| v.to_bits()).collect()
    };
    for f in 0..3 {
        let fold = read_embedding_table(&out.join(fold_vectors_file(f)), None).unwrap();
        assert_eq!((&fold.ids, &fold.labels), (&whole.ids, &whole.labels));
        assert_ne!(bits(&fold), bits(&whole), "fold {f}");
        // The stage run on only the rows fold `f`'s fit in a classifier trains on, its weights
        // and standardiser applied to every training row (a split of its own): the same bits.
        let rows = cv.training_rows(f);
        let pick = |t: &EmbeddingTable| -> EmbeddingTable {
            let cols = t
                .columns
                .iter()
                .map(|c| {
                    let values = rows.iter().flat_map(|&r| c.row(r).to_vec()).collect();
                    VectorColumn::new(c.name.clone(), c.dim, values)
                })
                .collect();
            EmbeddingTable {
                ids: rows.iter().map(|&r| t.ids[r].clone()).collect(),
                labels: rows.iter().map(|&r| t.labels[r]).collect(),
                label_names: t.label_names.clone(),
                columns: cols,
            }
        };
        let only = write_input(
            &dir.path().join(format!("without{f}")),
            "x",
            &[("all", &train), ("train", &pick(&train))],
        );
        let (o, _) =
            run_stage::<Fuse>(&dir.path().join(format!("without{f}")), "o", &p, &[only]).unwrap();
        assert_eq!(bits(&embedding(&o, "all")), bits(&fold), "fold {f}");
    }
    // The element-wise methods fit on no label and make none.
    let mean = params(vec![layers(&[0, 1])], Method::Mean);
    let (plain, _) = run_stage::<Fuse>(dir.path(), "mean", &mean, &[input]).unwrap();
    assert!(!plain.join(FOLD_VECTORS_FILE).exists());
}

#[test]
fn an_inputs_per_fold_vectors_are_fused_fold_by_fold() {
    use llmembed_core::folds::{FOLD_VECTORS_FILE, FoldVectors, cv_folds, fold_vectors_file};
    let Some((train, test)) = informative_split("p", 150, 120) else {
        return;
    };
    // An input that made its training vectors per fold (as SupCon does): fold f's are train's
    // scaled by f + 2.
    let cv = cv_folds(&train.ids, &train.labels, 3, 7);
    let scaled = |f: usize| {
        let mut t = train.clone();
        for c in &mut t.columns {
            c.values.iter_mut().for_each(|v| *v *= f as f32 + 2.0);
        }
        t
    };
    let made = |dir: &std::path::Path, folds: usize, splits: &str| {
        let input = write_input(dir, "supcon", &[("train", &train), ("test", &test)]);
        let meta = FoldVectors {
            folds,
            splits: splits.into(),
            made_by: "contrastive (mode: supcon)".into(),
        };
        let tables: Vec<EmbeddingTable> = (0..folds).map(scaled).collect();
        llmembed_testkit::with_fold_vectors(&input, &tables, &meta)
    };
    let dir = tempfile::tempdir().unwrap();
    let input = made(&dir.path().join("a"), 3, &cv.splits);
    let other = write_input(
        &dir.path().join("b"),
        "llm",
        &[("train", &train), ("test", &test)],
    );
    // Concatenated with an input without them: fold f's output is the fusion of the first
    // input's fold f vectors with the second's training split, as a run on those gives them.
    let p = params(vec![layers(&[0, 1]), layers(&[2])], Method::Concat);
    let (out, summary) =
        run_stage::<Fuse>(dir.path(), "o", &p, &[input.clone(), other.clone()]).unwrap();
    let meta: FoldVectors =
        serde_json::from_slice(&std::fs::read(out.join(FOLD_VECTORS_FILE)).unwrap()).unwrap();
    assert_eq!((meta.folds, &meta.splits), (3, &cv.splits));
    assert_eq!(meta.made_by, "fuse, over contrastive (mode: supcon)");
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.contains("per fold of 3-fold CV"))
    );
    for f in 0..3 {
        let fold = read_embedding_table(&out.join(fold_vectors_file(f)), None).unwrap();
        let plain = write_input(
            &dir.path().join(format!("plain{f}")),
            "supcon",
            &[("train", &scaled(f)), ("test", &test)],
        );
        let (o, _) = run_stage::<Fuse>(
            &dir.path().join(format!("plain{f}")),
            "o",
            &p,
            &[plain, other.clone()],
        )
        .unwrap();
        assert_eq!(
            fold.columns[0].values,
            embedding(&o, "train").columns[0].values
        );
    }
    // Inputs made for other folds than each other's, or than `weighted.folds`, are refused.
    let two = made(&dir.path().join("c"), 2, "0123456789abcdef");
    let e = run_stage::<Fuse>(dir.path(), "mixed", &p, &[input.clone(), two])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`supcon` made its training vectors per fold of 3-fold CV")
            && e.contains("of 2-fold CV (splits 0123456789abcdef)"),
        "{e}"
    );
    let mut weighted = weighted_over_all_layers();
    weighted.weighted.folds = Some(5);
    let e = run_stage::<Fuse>(dir.path(), "five", &weighted, &[input])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "param `weighted.folds`: 5, but the input `supcon` (contrastive (mode: supcon)) made its \
         training vectors per fold of 3-fold CV"
    );
}
