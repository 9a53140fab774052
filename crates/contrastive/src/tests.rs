use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::Rng;

use llmembed_core::{
    ApplyEnv, EmbeddingTable, Input, Rows, Stage, VectorColumn, read_embedding_table, seeded_rng,
};

use super::*;

fn t2(rows: &[[f32; 2]]) -> Tensor {
    let v: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(v, (rows.len(), 2), &Device::Cpu).unwrap()
}

#[test]
fn info_nce_matches_hand_computation() {
    // z1 = [[1,0],[0,2]] normalises to [[1,0],[0,1]]; z2 = [[3,4],[0,1]] to [[.6,.8],[0,1]].
    // cos(z1_i, z2_j) = [[0.6, 0.0], [0.8, 1.0]]; over t = 0.5: [[1.2, 0.0], [1.6, 2.0]].
    // row 0: -log(e^1.2 / (e^1.2 + e^0))   = log(1 + e^-1.2) = 0.2632825
    // row 1: -log(e^2.0 / (e^1.6 + e^2.0)) = log(1 + e^-0.4) = 0.5130152
    // mean = 0.3881489
    let loss = train::info_nce(&t2(&[[1., 0.], [0., 2.]]), &t2(&[[3., 4.], [0., 1.]]), 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((loss - 0.388_148_86).abs() < 1e-5, "{loss}");
}

#[test]
fn supcon_matches_hand_computation() {
    // z = [[1,0],[.6,.8],[0,5]] (rows normalise to [1,0],[.6,.8],[0,1]), labels [0,0,1], t = 1.
    // s01 = 0.6, s02 = 0, s12 = 0.8.
    // anchor 0: P = {1}, A = {1,2}: -log(e^.6 / (e^.6 + e^0))  = log(1 + e^-0.6) = 0.4374879
    // anchor 1: P = {0}, A = {0,2}: -log(e^.6 / (e^.6 + e^.8)) = log(1 + e^0.2)  = 0.7981389
    // anchor 2: no positive, left out.      mean over 2 anchors = 0.6178134
    let z = t2(&[[1., 0.], [0.6, 0.8], [0., 5.]]);
    let loss = train::supcon(&z, &[0, 0, 1], 1.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((loss - 0.617_813_4).abs() < 1e-5, "{loss}");
    // Same labels everywhere, t = 0.5, rows [1,0],[0,1],[1,0]: s01 = 0, s02 = 1, s12 = 0.
    // logits s/t: l01 = 0, l02 = 2, l12 = 0.
    // anchor 0: P = {1,2}: -(log(e^0/(e^0+e^2)) + log(e^2/(e^0+e^2)))/2
    //                     = (log(1+e^2) + log(1+e^-2))/2 = (2.1269280 + 0.1269280)/2 = 1.1269280
    // anchor 2: the same; anchor 1: P = {0,2}, both logits 0: -log(1/2) = log 2 = 0.6931472.
    // mean = (2 * 1.1269280 + 0.6931472) / 3 = 0.9823344
    let z = t2(&[[1., 0.], [0., 1.], [1., 0.]]);
    let loss = train::supcon(&z, &[3, 3, 3], 0.5)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let a = ((1.0f64 + 2f64.exp()).ln() + (1.0f64 + (-2f64).exp()).ln()) / 2.0;
    assert!((a - 1.126_928).abs() < 1e-5);
    assert!((loss - 0.982_334_4).abs() < 1e-5, "{loss}");
}

#[test]
fn params_parse_with_defaults_and_are_checked() {
    let p: Params = serde_json::from_str(r#"{"mode": "unsup", "output": "head"}"#).unwrap();
    assert_eq!(p.mode, Mode::Unsup);
    assert_eq!(p.output, Output::Head);
    assert_eq!(p.temperature, 0.1);
    assert_eq!(p.holdout, 0.1);
    // The names messages give the modes are the ones a pipeline file writes.
    for mode in [Mode::Unsup, Mode::Augmented, Mode::Supcon] {
        assert_eq!(serde_json::to_value(mode).unwrap(), mode.name(), "{mode:?}");
    }
    let err = serde_json::from_str::<Params>(r#"{"tau": 0.1}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `tau`"), "{err}");
    assert!(Contrastive::check(&Params::default()).is_ok());
    let err = Contrastive::check(&Params {
        temperature: 0.0,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `temperature`: must be > 0");
    let err = Contrastive::check(&Params {
        batch_size: 1,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert_eq!(err, "param `batch_size`: must be >= 2 (in-batch negatives)");
    let err = Contrastive::check(&Params {
        mode: Mode::Unsup,
        dropout: 0.0,
        ..Params::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("param `dropout`: mode `unsup` needs dropout > 0"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The stage end to end

fn write_input(dir: &Path, splits: &[(&str, EmbeddingTable)]) -> Input {
    let splits: Vec<(&str, &EmbeddingTable)> = splits.iter().map(|(s, t)| (*s, t)).collect();
    llmembed_testkit::embedding_input(&dir.join("in"), "fuse", &splits)
}

fn run(dir: &Path, name: &str, params: &Params, input: &Input) -> Result<(PathBuf, Summary)> {
    let out = dir.join(name);
    let inputs = std::slice::from_ref(input);
    let s =
        llmembed_testkit::run_stage_at::<Contrastive>(params, inputs, 7, &out, &dir.join("store"))?;
    Ok((out, s))
}

/// Gaussian-ish clusters: `n` rows of width `d`, 3 classes, ids `<prefix><i>`.
fn clusters(prefix: &str, n: usize, d: usize, seed: u64) -> EmbeddingTable {
    let mut rng = seeded_rng(seed, prefix);
    let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
    let mut values = Vec::new();
    for &l in &labels {
        for j in 0..d {
            let center = if j % 3 == l as usize { 1.0 } else { 0.0 };
            values.push(center + rng.random_range(-1.0f32..1.0));
        }
    }
    EmbeddingTable {
        ids: (0..n).map(|i| format!("{prefix}{i}")).collect(),
        labels,
        label_names: vec!["a".into(), "b".into(), "c".into()],
        columns: vec![VectorColumn::new("fused", d, values)],
    }
}

fn small_params() -> Params {
    Params {
        d_out: Some(4),
        epochs: 4,
        batch_size: 16,
        ..Params::default()
    }
}

#[test]
fn output_keeps_rows_of_every_split_and_has_the_documented_width() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, test, dev) = (
        clusters("tr", 60, 6, 1),
        clusters("te", 20, 6, 2),
        clusters("dv", 9, 6, 3),
    );
    let input = write_input(
        tmp.path(),
        &[
            ("dev", dev.clone()),
            ("test", test.clone()),
            ("train", train.clone()),
        ],
    );
    for (output, hidden, width) in [
        (Output::Concat, None, 6 + 4),
        (Output::Head, Some(5), 4),
        (Output::Residual, None, 6),
    ] {
        let params = Params {
            output,
            hidden,
            d_out: (output != Output::Residual).then_some(4),
            ..small_params()
        };
        let name = format!("{output:?}");
        let (out, summary) = run(tmp.path(), &name, &params, &input).unwrap();
        assert_eq!(summary.rows_out, 89);
        for (split, src) in [("train", &train), ("test", &test), ("dev", &dev)] {
            let t = read_embedding_table(&out.join(format!("{split}.parquet")), None).unwrap();
            assert_eq!(t.ids, src.ids);
            assert_eq!(t.labels, src.labels);
            assert_eq!(t.label_names, src.label_names);
            assert_eq!(t.column_names(), vec!["embedding".to_string()]);
            assert_eq!(t.columns[0].dim, width, "{output:?}");
            assert!(t.columns[0].values.iter().all(|v| v.is_finite()));
        }
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("training.json")).unwrap()).unwrap();
        assert_eq!(log["train_examples"], 54);
        assert_eq!(log["holdout_examples"], 6);
        assert!(log["train_loss"].as_array().unwrap().len() <= 4);
    }
    // Concat: the first d values are the standardised input (train mean 0 per feature).
    let t = read_embedding_table(&tmp.path().join("Concat/train.parquet"), None).unwrap();
    for j in 0..6 {
        let mean: f32 = (0..60).map(|i| t.columns[0].row(i)[j]).sum::<f32>() / 60.0;
        assert!(mean.abs() < 1e-4, "{mean}");
    }
    // Residual with a width other than d is refused.
    let bad = Params {
        output: Output::Residual,
        d_out: Some(4),
        ..small_params()
    };
    assert!(
        run(tmp.path(), "bad", &bad, &input)
            .unwrap_err()
            .to_string()
            .contains("d_out")
    );
}

#[test]
fn runs_are_deterministic_and_the_seed_matters() {
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(
        tmp.path(),
        &[
            ("test", clusters("te", 20, 6, 2)),
            ("train", clusters("tr", 60, 6, 1)),
        ],
    );
    for mode in [Mode::Unsup, Mode::Supcon] {
        let params = Params {
            mode,
            hidden: Some(8),
            ..small_params()
        };
        let (a, _) = run(tmp.path(), &format!("a{mode:?}"), &params, &input).unwrap();
        let (b, _) = run(tmp.path(), &format!("b{mode:?}"), &params, &input).unwrap();
        for f in ["train.parquet", "test.parquet", "training.json"] {
            assert_eq!(
                std::fs::read(a.join(f)).unwrap(),
                std::fs::read(b.join(f)).unwrap(),
                "{f}"
            );
        }
        let other = Params {
            seed: Some(99),
            ..params
        };
        let (c, _) = run(tmp.path(), &format!("c{mode:?}"), &other, &input).unwrap();
        assert_ne!(
            std::fs::read(a.join("test.parquet")).unwrap(),
            std::fs::read(c.join("test.parquet")).unwrap()
        );
    }
}

#[test]
fn augmented_mode_pairs_rows_with_their_copies() {
    let tmp = tempfile::tempdir().unwrap();
    let mut train = clusters("tr", 40, 6, 1);
    // Copies of the first 20 rows, slightly perturbed, named as the augment stage names them.
    let mut rng = seeded_rng(5, "copies");
    for i in 0..20 {
        train.ids.push(format!("tr{i}-aug1"));
        train.labels.push(train.labels[i]);
        let row: Vec<f32> = train.columns[0]
            .row(i)
            .iter()
            .map(|v| v + rng.random_range(-0.1f32..0.1))
            .collect();
        train.columns[0].values.extend(row);
    }
    let input = write_input(
        tmp.path(),
        &[("test", clusters("te", 10, 6, 2)), ("train", train)],
    );
    let params = Params {
        mode: Mode::Augmented,
        ..small_params()
    };
    let (out, summary) = run(tmp.path(), "a", &params, &input).unwrap();
    assert!(
        summary.notes.iter().any(|n| n
            .starts_with("20 (row, augmented row) pairs from 20 source rows; 2 sources held out")),
        "{:?}",
        summary.notes
    );
    assert_eq!(
        read_embedding_table(&out.join("train.parquet"), None)
            .unwrap()
            .len(),
        60
    );
    // Without augmented rows the mode is refused with a reason.
    let plain = write_input(
        &tmp.path().join("plain"),
        &[("train", clusters("tr", 40, 6, 1))],
    );
    let err = run(tmp.path(), "b", &params, &plain)
        .unwrap_err()
        .to_string();
    assert!(err.contains("-aug<k>"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Learning on real features: bag of words of AG News

/// log(1 + count) of the `vocab` most frequent words of 4+ letters in `texts[..fit_rows]`.
fn bag_of_words(texts: &[String], fit_rows: usize, vocab: usize) -> Vec<f32> {
    let tokens = |t: &str| -> Vec<String> {
        t.to_lowercase()
            .split(|c: char| !c.is_ascii_alphabetic())
            .filter(|w| w.len() >= 4)
            .map(str::to_string)
            .collect()
    };
    let mut freq: HashMap<String, usize> = HashMap::new();
    for t in &texts[..fit_rows] {
        for w in tokens(t) {
            *freq.entry(w).or_default() += 1;
        }
    }
    let mut words: Vec<(usize, String)> = freq.into_iter().map(|(w, c)| (c, w)).collect();
    words.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let index: HashMap<String, usize> = words
        .into_iter()
        .take(vocab)
        .enumerate()
        .map(|(i, (_, w))| (w, i))
        .collect();
    let mut out = vec![0f32; texts.len() * vocab];
    for (r, t) in texts.iter().enumerate() {
        for w in tokens(t) {
            if let Some(&j) = index.get(&w) {
                out[r * vocab + j] += 1.0;
            }
        }
    }
    out.iter_mut().for_each(|v| *v = v.ln_1p());
    out
}

/// Test accuracy of a softmax regression (standardised features, full-batch AdamW, 300 steps,
/// weight decay 1e-2) fit on `train`.
fn linear_probe(train: &EmbeddingTable, test: &EmbeddingTable) -> f64 {
    let d = train.columns[0].dim;
    let c = train.label_names.len();
    let st = fit_standardizer(&train.columns[0].values, d);
    let standardized = |values: &[f32]| {
        let mut x = values.to_vec();
        st.apply_rows_f32(&mut x);
        x
    };
    let dev = Device::Cpu;
    let x = Tensor::from_vec(
        standardized(&train.columns[0].values),
        (train.len(), d),
        &dev,
    )
    .unwrap();
    let y = Tensor::from_vec(
        train.labels.iter().map(|&l| l as u32).collect::<Vec<_>>(),
        train.len(),
        &dev,
    )
    .unwrap();
    let w = Var::zeros((d, c), candle_core::DType::F32, &dev).unwrap();
    let b = Var::zeros(c, candle_core::DType::F32, &dev).unwrap();
    let mut opt = AdamW::new(
        vec![w.clone(), b.clone()],
        ParamsAdamW {
            lr: 0.01,
            weight_decay: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    for _ in 0..300 {
        let logits = x
            .matmul(w.as_tensor())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
        opt.backward_step(&loss).unwrap();
    }
    let xt =
        Tensor::from_vec(standardized(&test.columns[0].values), (test.len(), d), &dev).unwrap();
    let pred: Vec<u32> = xt
        .matmul(w.as_tensor())
        .unwrap()
        .broadcast_add(b.as_tensor())
        .unwrap()
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let right = pred
        .iter()
        .zip(&test.labels)
        .filter(|(p, l)| **p as i64 == **l)
        .count();
    right as f64 / test.len() as f64
}

#[test]
fn supcon_does_not_hurt_a_linear_probe_on_bag_of_words() {
    let Some((all_texts, all_labels)) = llmembed_testkit::needs(
        "AG News",
        llmembed_testkit::read_ag_news("train", usize::MAX),
    ) else {
        return;
    };
    let (n_train, n_test, vocab) = (1500usize, 1500usize, 400usize);
    // A seeded sample of the file's rows (it may be ordered by source or class).
    let mut order: Vec<usize> = (0..all_texts.len()).collect();
    rand::seq::SliceRandom::shuffle(&mut order[..], &mut seeded_rng(0, "ag-news-sample"));
    order.truncate(n_train + n_test);
    let texts: Vec<String> = order.iter().map(|&i| all_texts[i].clone()).collect();
    let labels: Vec<i64> = order.iter().map(|&i| all_labels[i]).collect();
    let texts = &texts[..];
    let x = bag_of_words(texts, n_train, vocab);
    let names: Vec<String> = ["World", "Sports", "Business", "Sci/Tech"]
        .map(String::from)
        .to_vec();
    let table = |range: std::ops::Range<usize>| EmbeddingTable {
        ids: range.clone().map(|i| format!("r{i}")).collect(),
        labels: labels[range.clone()].to_vec(),
        label_names: names.clone(),
        columns: vec![VectorColumn::new(
            "bow",
            vocab,
            x[range.start * vocab..range.end * vocab].to_vec(),
        )],
    };
    let (train, test) = (table(0..n_train), table(n_train..n_train + n_test));
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(
        tmp.path(),
        &[("test", test.clone()), ("train", train.clone())],
    );
    let base = linear_probe(&train, &test);
    eprintln!(
        "bag of words ({vocab} words), {n_train} train / {n_test} test rows: probe accuracy on input {base:.4}"
    );
    let mut results = Vec::new();
    for (name, params) in [
        (
            "supcon concat",
            Params {
                mode: Mode::Supcon,
                ..Params::default()
            },
        ),
        (
            "supcon head",
            Params {
                mode: Mode::Supcon,
                output: Output::Head,
                ..Params::default()
            },
        ),
        (
            "unsup concat",
            Params {
                mode: Mode::Unsup,
                ..Params::default()
            },
        ),
        (
            "unsup head",
            Params {
                mode: Mode::Unsup,
                output: Output::Head,
                ..Params::default()
            },
        ),
    ] {
        let (out, _) = run(tmp.path(), &name.replace(' ', "-"), &params, &input).unwrap();
        let tr = read_embedding_table(&out.join("train.parquet"), None).unwrap();
        let te = read_embedding_table(&out.join("test.parquet"), None).unwrap();
        let acc = linear_probe(&tr, &te);
        let log: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("training.json")).unwrap()).unwrap();
        eprintln!(
            "  {name}: probe accuracy {acc:.4} (best epoch {} of {})",
            log["best_epoch"], log["epochs_run"]
        );
        results.push((name, acc));
    }
    // The default output (concat) must not cost the probe accuracy, whatever the mode.
    for (name, acc) in [results[0], results[2]] {
        assert!(acc >= base - 0.005, "{name} {acc:.4} vs input {base:.4}");
    }
    // The head itself, not only the concatenation that contains the input: the supervised head
    // must have learned the classes (measured 0.7040 against the input's 0.6587 on Zen 4), and
    // the unsupervised one must not lose them (0.6753).
    let (supcon_head, unsup_head) = (results[1].1, results[3].1);
    assert!(
        supcon_head >= base + 0.02,
        "supcon head {supcon_head:.4} vs input {base:.4}: the head learned nothing"
    );
    assert!(
        unsup_head >= base - 0.005,
        "unsup head {unsup_head:.4} vs input {base:.4}"
    );
}

// ---------------------------------------------------------------------------------------------
// The saved head, applied to new rows

/// AG News rows as log bag-of-words vectors (vocabulary from the first `n_train`): train, test.
fn ag_news_bow(
    n_train: usize,
    n_test: usize,
    vocab: usize,
) -> Option<(EmbeddingTable, EmbeddingTable)> {
    let (texts, labels) = llmembed_testkit::needs(
        "AG News",
        llmembed_testkit::read_ag_news("train", n_train + n_test),
    )?;
    let x = bag_of_words(&texts, n_train, vocab);
    let names: Vec<String> = ["World", "Sports", "Business", "Sci/Tech"]
        .map(String::from)
        .to_vec();
    let table = |range: std::ops::Range<usize>| EmbeddingTable {
        ids: range.clone().map(|i| format!("r{i}")).collect(),
        labels: labels[range.clone()].to_vec(),
        label_names: names.clone(),
        columns: vec![VectorColumn::new(
            "embedding",
            vocab,
            x[range.start * vocab..range.end * vocab].to_vec(),
        )],
    };
    Some((table(0..n_train), table(n_train..n_train + n_test)))
}

fn embedding_rows(rows: Rows) -> EmbeddingTable {
    match rows {
        Rows::Embedding(t) => t,
        other => panic!("expected embeddings, got {}", other.kind()),
    }
}

fn artifact(dir: &Path) -> Input {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    Input {
        stage_id: "refined".into(),
        dir: dir.to_path_buf(),
        files,
    }
}

fn bits_of(t: &EmbeddingTable) -> Vec<u32> {
    t.columns[0].values.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_saved_head_reproduces_the_test_split_for_every_output() {
    let Some((train, test)) = ag_news_bow(300, 60, 40) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path(), &[("test", test.clone()), ("train", train)]);
    let apply_env = ApplyEnv {
        env: llmembed_testkit::stage_env(7),
        store_dir: tmp.path().join("store"),
    };
    for (mode, output, hidden, d_out) in [
        (Mode::Supcon, Output::Concat, None, Some(8)),
        (Mode::Unsup, Output::Head, Some(16), Some(8)),
        (Mode::Supcon, Output::Residual, Some(16), None),
    ] {
        let params = Params {
            mode,
            output,
            hidden,
            d_out,
            epochs: 3,
            batch_size: 32,
            ..Params::default()
        };
        let what = format!("{mode:?} {output:?} hidden {hidden:?}");
        let (out, _) = run(tmp.path(), &what, &params, &input).unwrap();
        let apply = Contrastive::applier(&params, &artifact(&out), &apply_env)
            .unwrap()
            .unwrap();
        let got = embedding_rows(apply.apply(&[Rows::Embedding(test.clone())]).unwrap());
        let want = read_embedding_table(&out.join("test.parquet"), None).unwrap();
        assert_eq!((&got.ids, &got.labels), (&want.ids, &want.labels), "{what}");
        assert_eq!(got.columns[0].dim, want.columns[0].dim, "{what}");
        assert!(
            bits_of(&got) == bits_of(&want),
            "{what}: differs from test.parquet"
        );

        // A few rows alone: the head's matrix products (candle's) round differently for a
        // one-row batch, so a row's output may move in its last bits with its batch; measured
        // here, bounded well below anything a classifier sees.
        let mut worst = 0f32;
        for i in [0, 31, 59] {
            let one = EmbeddingTable {
                ids: vec![test.ids[i].clone()],
                labels: vec![test.labels[i]],
                label_names: test.label_names.clone(),
                columns: vec![VectorColumn::new(
                    "embedding",
                    40,
                    test.columns[0].row(i).to_vec(),
                )],
            };
            let alone = embedding_rows(apply.apply(&[Rows::Embedding(one)]).unwrap());
            for (a, b) in alone.columns[0].values.iter().zip(want.columns[0].row(i)) {
                worst = worst.max((a - b).abs() / b.abs().max(1.0));
            }
        }
        eprintln!("{what}: rows alone vs in the split: largest difference {worst:e}");
        assert!(worst < 1e-5, "{what}: rows alone differ by {worst}");

        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("model.json")).unwrap()).unwrap();
        assert_eq!(meta["input"], "fuse");
        assert_eq!(meta["column"], "embedding");
        assert_eq!(meta["width"], want.columns[0].dim);
        assert_eq!(meta["train_rows"], 300);
        let saved = llmembed_core::SavedTensors::load(&out.join("model.safetensors")).unwrap();
        let k = hidden.map_or(0, |_| 1);
        let last_out = if output == Output::Residual { 40 } else { 8 };
        assert!(
            saved
                .get(
                    &format!("head.{k}.weight"),
                    &[last_out, hidden.unwrap_or(40)]
                )
                .is_ok()
        );
        assert!(saved.get("standardizer.scale", &[40]).is_ok());
    }
    // Params that do not match what was saved are refused.
    let out = tmp.path().join("Supcon Concat hidden None");
    let other = Params {
        hidden: Some(4),
        d_out: Some(8),
        ..Params::default()
    };
    let err = Contrastive::applier(&other, &artifact(&out), &apply_env)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("fitted with mode Supcon, output Concat, hidden None"),
        "{err}"
    );
}

#[test]
fn unlabelled_train_rows_are_refined_but_not_fitted_on() {
    let Some((train, test)) = ag_news_bow(200, 40, 30) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // The same train rows plus the test rows again, unlabelled and under other ids.
    let mut mixed = train.clone();
    mixed
        .ids
        .extend(test.ids.iter().map(|id| format!("u-{id}")));
    mixed
        .labels
        .extend(vec![llmembed_core::UNLABELLED; test.len()]);
    mixed.columns[0]
        .values
        .extend_from_slice(&test.columns[0].values);
    let labelled = write_input(
        &tmp.path().join("l"),
        &[("test", test.clone()), ("train", train)],
    );
    let with_unlabelled = write_input(&tmp.path().join("m"), &[("test", test), ("train", mixed)]);
    let params = Params {
        d_out: Some(6),
        epochs: 3,
        batch_size: 32,
        ..Params::default()
    };
    let (a, _) = run(tmp.path(), "a", &params, &labelled).unwrap();
    let (b, _) = run(tmp.path(), "b", &params, &with_unlabelled).unwrap();
    for f in ["test.parquet", "model.safetensors", "training.json"] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f}"
        );
    }
    let t = read_embedding_table(&b.join("train.parquet"), None).unwrap();
    assert_eq!(t.len(), 240);
}

// ---------------------------------------------------------------------------------------------
// Per-fold vectors for the classifiers' cross-validation

#[test]
fn supcon_makes_each_folds_vectors_as_a_stage_that_never_saw_its_rows() {
    use llmembed_core::folds::{FOLD_VECTORS_FILE, FoldVectors, cv_folds, fold_vectors_file};
    let Some((train, test)) = ag_news_bow(150, 30, 40) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let input = write_input(tmp.path(), &[("test", test), ("train", train.clone())]);
    let params = Params {
        mode: Mode::Supcon,
        folds: Some(3),
        ..small_params()
    };
    let (out, _) = run(tmp.path(), "supcon", &params, &input).unwrap();
    // The classifiers' folds, from the pipeline's seed (7 here): a `seed` of the stage's own
    // draws its head but not its folds.
    let cv = cv_folds(&train.ids, &train.labels, 3, 7);
    let meta: FoldVectors =
        serde_json::from_slice(&std::fs::read(out.join(FOLD_VECTORS_FILE)).unwrap()).unwrap();
    let want = FoldVectors {
        folds: 3,
        splits: cv.splits.clone(),
        made_by: "contrastive (mode: supcon)".into(),
    };
    assert_eq!(meta, want);
    let reseeded = Params {
        seed: Some(99),
        ..params.clone()
    };
    let (other, _) = run(tmp.path(), "reseeded", &reseeded, &input).unwrap();
    assert_eq!(
        std::fs::read(other.join(FOLD_VECTORS_FILE)).unwrap(),
        std::fs::read(out.join(FOLD_VECTORS_FILE)).unwrap()
    );
    // They are no splits of the artifact.
    let splits: Vec<String> = artifact(&out)
        .splits()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(splits, ["test", "train"]);

    let whole = read_embedding_table(&out.join("train.parquet"), None).unwrap();
    for f in 0..3 {
        let fold = read_embedding_table(&out.join(fold_vectors_file(f)), None).unwrap();
        assert_eq!((&fold.ids, &fold.labels), (&train.ids, &train.labels));
        assert_eq!(fold.columns[0].dim, whole.columns[0].dim);
        assert_ne!(bits_of(&fold), bits_of(&whole), "fold {f}");
        // The stage run on only the rows that fold `f`'s fit in a classifier trains on, asked
        // to refine every training row (as a split of its own), gives them the same bits: the
        // held-out rows' labels (and vectors) had no part in them.
        let dir = tmp.path().join(format!("without-fold{f}"));
        let rows = subset(&train, &cv.training_rows(f));
        let only = llmembed_testkit::embedding_input(
            &dir.join("in"),
            "fuse",
            &[("all", &train), ("train", &rows)],
        );
        let (o, _) = run(&dir, "out", &params, &only).unwrap();
        let all = read_embedding_table(&o.join("all.parquet"), None).unwrap();
        assert_eq!(bits_of(&all), bits_of(&fold), "fold {f}");
    }

    // A stage after it, in a mode that fits on no label, refines them per fold: fold `f`'s
    // output is the stage run on fold `f`'s vectors of that fold's training rows, applied to
    // all of fold `f`'s vectors.
    let unsup = Params {
        mode: Mode::Unsup,
        ..small_params()
    };
    let (after, _) = run(tmp.path(), "after", &unsup, &artifact(&out)).unwrap();
    let meta: FoldVectors =
        serde_json::from_slice(&std::fs::read(after.join(FOLD_VECTORS_FILE)).unwrap()).unwrap();
    assert_eq!((meta.folds, &meta.splits), (3, &cv.splits));
    assert_eq!(meta.made_by, "contrastive (mode: unsup)");
    let fold1 = read_embedding_table(&out.join(fold_vectors_file(1)), None).unwrap();
    let dir = tmp.path().join("after-fold1");
    let rows = subset(&fold1, &cv.training_rows(1));
    let only = llmembed_testkit::embedding_input(
        &dir.join("in"),
        "fuse",
        &[("all", &fold1), ("train", &rows)],
    );
    let (o, _) = run(&dir, "out", &unsup, &only).unwrap();
    assert_eq!(
        bits_of(&read_embedding_table(&o.join("all.parquet"), None).unwrap()),
        bits_of(&read_embedding_table(&after.join(fold_vectors_file(1)), None).unwrap())
    );
    // A number of folds other than the input's is refused.
    let five = Params {
        folds: Some(5),
        ..params.clone()
    };
    let e = run(tmp.path(), "five", &five, &artifact(&out))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "param `folds`: 5, but the input `refined` (contrastive (mode: supcon)) made its training \
         vectors per fold of 3-fold CV"
    );

    // The modes that fit on no label make none of an input without them, and refuse the param.
    let (plain, _) = run(tmp.path(), "unsup", &unsup, &input).unwrap();
    assert!(!plain.join(FOLD_VECTORS_FILE).exists());
    assert!(!plain.join(fold_vectors_file(0)).exists());
    let e = Contrastive::check(&Params {
        folds: Some(5),
        ..unsup
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "param `folds`: only `mode: supcon` fits on the labels and makes vectors per fold"
    );
    let e = Contrastive::check(&Params {
        folds: Some(1),
        ..params
    })
    .unwrap_err()
    .to_string();
    assert_eq!(e, "param `folds`: needs at least 2 folds, got 1");
}
