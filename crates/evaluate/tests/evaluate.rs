use std::path::{Path, PathBuf};

use llmembed_core::{Input, Predictions, Stage, UNLABELLED, write_predictions};
use llmembed_evaluate::{
    Evaluate, EvaluateParams, MetricsFile, accuracy_and_macro_f1, confusion_matrix,
    scores_from_confusion,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Reference {
    label_names: Vec<String>,
    y_true: Vec<i64>,
    y_pred: Vec<i64>,
    accuracy: f64,
    f1_macro: f64,
    precision: Vec<f64>,
    recall: Vec<f64>,
    f1: Vec<f64>,
    support: Vec<u64>,
    confusion: Vec<Vec<u64>>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metrics_reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-12, "{what}: {a} vs sklearn {b}");
}

/// Writes predictions as an upstream artifact folder and returns the input.
fn input(root: &Path, stage_id: &str, p: &Predictions) -> Input {
    llmembed_testkit::predictions_input(&root.join(stage_id), stage_id, p)
}

fn predictions(
    ids: Vec<String>,
    labels: Vec<i64>,
    preds: Vec<i64>,
    names: &[String],
    producer: &str,
) -> Predictions {
    let c = names.len();
    let mut probs = vec![0.0f32; preds.len() * c];
    for (i, &p) in preds.iter().enumerate() {
        probs[i * c + p as usize] = 1.0;
    }
    Predictions {
        ids,
        labels,
        preds,
        probs,
        label_names: names.to_vec(),
        producer: producer.to_string(),
    }
}

fn run(params: &EvaluateParams, inputs: &[Input], root: &Path) -> llmembed_core::Result<PathBuf> {
    Evaluate::check(params)?;
    let out = root.join(format!("out-{}", inputs.len()));
    let _ = std::fs::remove_dir_all(&out);
    llmembed_testkit::run_stage_at::<Evaluate>(params, inputs, 0, &out, &root.join("store"))?;
    Ok(out)
}

fn ref_predictions(r: &Reference, producer: &str) -> Predictions {
    let ids = (0..r.y_true.len()).map(|i| format!("test-{i}")).collect();
    predictions(
        ids,
        r.y_true.clone(),
        r.y_pred.clone(),
        &r.label_names,
        producer,
    )
}

#[test]
fn metrics_match_sklearn_reference() {
    let r = reference();
    let n = r.label_names.len();
    let cm = confusion_matrix(&r.y_true, &r.y_pred, n);
    assert_eq!(cm, r.confusion);
    let s = scores_from_confusion(cm, &r.label_names);
    close(s.accuracy, r.accuracy, "accuracy");
    close(s.macro_f1, r.f1_macro, "macro f1");
    for c in 0..n {
        close(
            s.per_class[c].precision,
            r.precision[c],
            &format!("precision[{c}]"),
        );
        close(s.per_class[c].recall, r.recall[c], &format!("recall[{c}]"));
        close(s.per_class[c].f1, r.f1[c], &format!("f1[{c}]"));
        assert_eq!(s.per_class[c].support, r.support[c]);
        assert_eq!(s.per_class[c].label, r.label_names[c]);
    }
    let (acc, f1) = accuracy_and_macro_f1(&r.y_true, &r.y_pred, n);
    close(acc, r.accuracy, "helper accuracy");
    close(f1, r.f1_macro, "helper macro f1");
}

/// The reference predictions (`logreg`, the baseline), a perfect classifier given in reverse
/// row order, and one that always predicts class 0, evaluated together under `root`.
fn run_three_classifiers(root: &std::path::Path) -> (Reference, std::path::PathBuf) {
    let r = reference();
    let base = input(root, "clf_ref", &ref_predictions(&r, "logreg"));
    // A perfect classifier over the same rows, in reverse row order (order must not matter).
    let mut perfect = ref_predictions(&r, "oracle");
    perfect.ids.reverse();
    perfect.labels.reverse();
    perfect.preds = perfect.labels.clone();
    let n = r.label_names.len();
    perfect.probs = perfect
        .preds
        .iter()
        .flat_map(|&p| (0..n).map(move |c| if c as i64 == p { 1.0 } else { 0.0 }))
        .collect();
    let oracle = input(root, "clf_oracle", &perfect);
    // A worse one: always predicts class 0.
    let mut zero = ref_predictions(&r, "");
    zero.preds = vec![0; zero.len()];
    let zero_in = input(root, "clf_zero", &zero);

    let params = EvaluateParams {
        names: None,
        baseline: Some("logreg".into()),
        notes: Some("Settings chosen on the dev split.".into()),
        ..Default::default()
    };
    let out = run(&params, &[base, oracle, zero_in], root).unwrap();

    (r, out)
}

#[test]
fn intervals_and_mcnemar_tests_against_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let (r, out) = run_three_classifiers(dir.path());
    let m: MetricsFile =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let vs = m.classifiers[1].vs_baseline.as_ref().unwrap();
    // The intervals hold the point estimates; the oracle is significantly better than the
    // baseline, always-0 significantly worse (McNemar), each at the default 95%.
    assert_eq!(
        (m.bootstrap.resamples, m.bootstrap.confidence),
        (1000, 0.95)
    );
    for c in &m.classifiers {
        assert!(
            c.accuracy_ci.low <= c.accuracy && c.accuracy <= c.accuracy_ci.high,
            "{c:?}"
        );
        assert!(
            c.macro_f1_ci.low <= c.macro_f1 && c.macro_f1 <= c.macro_f1_ci.high,
            "{c:?}"
        );
    }
    assert!(m.classifiers[0].accuracy_ci.high - m.classifiers[0].accuracy_ci.low > 0.01);
    assert_eq!(m.classifiers[1].accuracy_ci.low, 1.0);
    let wrong = r
        .y_true
        .iter()
        .zip(&r.y_pred)
        .filter(|(t, p)| t != p)
        .count() as u64;
    assert_eq!(
        (vs.mcnemar.only_a_right, vs.mcnemar.only_b_right),
        (wrong, 0)
    );
    assert!(vs.significant && vs.mcnemar.p_value < 1e-6, "{vs:?}");
    let zero_vs = m.classifiers[2].vs_baseline.as_ref().unwrap();
    assert!(zero_vs.significant && zero_vs.mcnemar.only_b_right > zero_vs.mcnemar.only_a_right);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("Beat the baseline `logreg` (higher accuracy, McNemar p < 0.05): oracle."),
        "{report}"
    );
    assert!(report.contains("| no (significantly lower) |"), "{report}");
}

#[test]
fn stage_writes_metrics_report_and_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let (r, out) = run_three_classifiers(dir.path());
    let m: MetricsFile =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let names: Vec<&str> = m.classifiers.iter().map(|c| c.name.as_str()).collect();
    // Producer names by default, the stage id where the producer is empty.
    assert_eq!(names, ["logreg", "oracle", "clf_zero"]);
    assert_eq!(m.n_rows, r.y_true.len());
    close(m.classifiers[0].accuracy, r.accuracy, "stage accuracy");
    close(m.classifiers[0].macro_f1, r.f1_macro, "stage macro f1");
    assert_eq!(m.classifiers[0].confusion, r.confusion);
    assert!(m.classifiers[0].vs_baseline.is_none());
    assert_eq!(m.classifiers[1].accuracy, 1.0);
    let vs = m.classifiers[1].vs_baseline.as_ref().unwrap();
    assert!(vs.beats);
    close(vs.delta_accuracy, 1.0 - r.accuracy, "delta");
    assert!(!m.classifiers[2].vs_baseline.as_ref().unwrap().beats);
    // Always-0: precision of class 0 = support(0) / n, recall 1.
    let support0 = r.support[0] as f64;
    close(
        m.classifiers[2].per_class[0].precision,
        support0 / r.y_true.len() as f64,
        "always-0 precision",
    );
    close(m.classifiers[2].per_class[0].recall, 1.0, "always-0 recall");

    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.starts_with("# Evaluation\n\nSettings chosen on the dev split."),
        "{report}"
    );
    let c0 = &m.classifiers[0];
    assert!(
        report.contains(&format!(
            "| logreg | {:.4} [{:.4}, {:.4}] | {:.4} [{:.4}, {:.4}] | — | — | (baseline) |",
            r.accuracy,
            c0.accuracy_ci.low,
            c0.accuracy_ci.high,
            r.f1_macro,
            c0.macro_f1_ci.low,
            c0.macro_f1_ci.high
        )),
        "{report}"
    );
    assert!(
        report.contains("| Sci/Tech | 0.0000 | 0.0000 | 0.0000 | 12 |"),
        "{report}"
    );
    assert!(report.contains("![confusion matrix of oracle](confusion_oracle.png)"));
    // Summary rows keep input order.
    let pos = |s: &str| report.find(&format!("\n| {s} |")).unwrap();
    assert!(pos("logreg") < pos("oracle") && pos("oracle") < pos("clf_zero"));

    for name in ["logreg", "oracle", "clf_zero"] {
        let path = out.join(format!("confusion_{name}.png"));
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        assert!(
            info.width >= 400 && info.height >= 400,
            "{name}: {}x{}",
            info.width,
            info.height
        );
    }
    // Keep one for eyeballing when asked to.
    if let Ok(dest) = std::env::var("LLMEMBED_KEEP_PNG") {
        std::fs::copy(out.join("confusion_logreg.png"), dest).unwrap();
    }
}

#[test]
fn same_inputs_give_same_bytes() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let a = input(dir.path(), "a", &ref_predictions(&r, "x"));
    let p = EvaluateParams::default();
    let out1 = run(&p, std::slice::from_ref(&a), dir.path()).unwrap();
    let bytes1: Vec<Vec<u8>> = ["metrics.json", "report.md", "confusion_x.png"]
        .iter()
        .map(|f| std::fs::read(out1.join(f)).unwrap())
        .collect();
    let out2 = run(&p, &[a], dir.path()).unwrap();
    for (f, b) in ["metrics.json", "report.md", "confusion_x.png"]
        .iter()
        .zip(bytes1)
    {
        assert_eq!(std::fs::read(out2.join(f)).unwrap(), b, "{f}");
    }
}

#[test]
fn explicit_names_and_duplicate_producers() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let a = input(dir.path(), "stage_a", &ref_predictions(&r, "logreg"));
    let b = input(dir.path(), "stage_b", &ref_predictions(&r, "logreg"));
    // Same producer twice: the stage ids are used.
    let out = run(
        &EvaluateParams::default(),
        &[a.clone(), b.clone()],
        dir.path(),
    )
    .unwrap();
    let m: MetricsFile =
        serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m.classifiers[0].name, "stage_a");
    assert_eq!(m.classifiers[1].name, "stage_b");
    assert!(out.join("confusion_stage_b.png").is_file());

    let named = EvaluateParams {
        names: Some(vec!["LLaMA 2 / layer 20".into(), "BERT".into()]),
        baseline: Some("BERT".into()),
        notes: None,
        ..Default::default()
    };
    let out = run(&named, &[a.clone(), b.clone()], dir.path()).unwrap();
    assert!(out.join("confusion_LLaMA_2___layer_20.png").is_file());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("None beat the baseline `BERT` significantly."),
        "{report}"
    );

    let wrong_count = EvaluateParams {
        names: Some(vec!["one".into()]),
        ..Default::default()
    };
    let e = run(&wrong_count, &[a.clone(), b.clone()], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 names for 2 inputs"), "{e}");
    let bad_baseline = EvaluateParams {
        baseline: Some("nope".into()),
        ..Default::default()
    };
    let e = run(&bad_baseline, &[a, b], dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("`nope` is not one of the names"), "{e}");
    let dup = EvaluateParams {
        names: Some(vec!["x".into(), "x".into()]),
        ..Default::default()
    };
    assert!(
        Evaluate::check(&dup)
            .unwrap_err()
            .to_string()
            .contains("`x` repeats")
    );
}

#[test]
fn inputs_must_cover_same_rows_and_labels() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = input(root, "a", &ref_predictions(&r, "a"));

    let mut fewer = ref_predictions(&r, "b");
    fewer.ids.pop();
    fewer.labels.pop();
    fewer.preds.pop();
    fewer
        .probs
        .truncate(fewer.preds.len() * r.label_names.len());
    let b = input(root, "b", &fewer);
    let e = run(&EvaluateParams::default(), &[a.clone(), b], root)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cover different rows") && e.contains("1 only in `a` (e.g. test-96)"),
        "{e}"
    );

    let mut renamed = ref_predictions(&r, "c");
    renamed.label_names[4] = "Misc".into();
    let c = input(root, "c", &renamed);
    let e = run(&EvaluateParams::default(), &[a.clone(), c], root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label names") && e.contains("Misc"), "{e}");

    let mut relabelled = ref_predictions(&r, "d");
    relabelled.labels[5] = (relabelled.labels[5] + 1) % 4;
    let d = input(root, "d", &relabelled);
    let e = run(&EvaluateParams::default(), &[a.clone(), d], root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("row `test-5` has true label"), "{e}");

    let mut dup = ref_predictions(&r, "e");
    dup.ids[3] = dup.ids[2].clone();
    let e_in = input(root, "e", &dup);
    let e = run(&EvaluateParams::default(), &[e_in], root)
        .unwrap_err()
        .to_string();
    assert!(e.contains("predictions.parquet: row 3, field `id`"), "{e}");

    let missing = Input {
        stage_id: "f".into(),
        dir: root.join("f"),
        files: vec!["test.parquet".into()],
    };
    let e = run(&EvaluateParams::default(), &[a, missing], root)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stage `f` has no output `predictions.parquet`"),
        "{e}"
    );
}

/// `p` with rows `new-0..new-{n}` appended: no label, predicted class `i % classes` with
/// probability 0.75.
fn with_unlabelled_rows(p: &Predictions, n: usize) -> Predictions {
    let mut out = p.clone();
    let c = p.num_classes();
    for i in 0..n {
        out.ids.push(format!("new-{i}"));
        out.labels.push(UNLABELLED);
        out.preds.push((i % c) as i64);
        let rest = 0.25 / (c - 1) as f32;
        out.probs
            .extend((0..c).map(|j| if j == i % c { 0.75 } else { rest }));
    }
    out
}

#[test]
fn unlabelled_rows_are_ignored_said_so_and_written_when_asked() {
    let r = reference();
    let labelled_base = ref_predictions(&r, "logreg");
    let mut zero = ref_predictions(&r, "zero");
    zero.preds = vec![0; zero.len()];
    zero.probs = (0..zero.len())
        .flat_map(|_| (0..r.label_names.len()).map(|c| if c == 0 { 1.0 } else { 0.0 }))
        .collect();
    let params = EvaluateParams {
        baseline: Some("logreg".into()),
        ..Default::default()
    };
    // The same classifiers, without and with 3 unlabelled rows (given in another order).
    let plain_dir = tempfile::tempdir().unwrap();
    let plain_inputs = [
        input(plain_dir.path(), "a", &labelled_base),
        input(plain_dir.path(), "b", &zero),
    ];
    let plain = run(&params, &plain_inputs, plain_dir.path()).unwrap();
    let mixed_dir = tempfile::tempdir().unwrap();
    let mut mixed_zero = with_unlabelled_rows(&zero, 3);
    mixed_zero.ids.rotate_left(2);
    mixed_zero.labels.rotate_left(2);
    mixed_zero.preds.rotate_left(2);
    let c = r.label_names.len();
    mixed_zero.probs.rotate_left(2 * c);
    let mut mixed_inputs = vec![
        input(
            mixed_dir.path(),
            "a",
            &with_unlabelled_rows(&labelled_base, 3),
        ),
        input(mixed_dir.path(), "b", &mixed_zero),
    ];
    // An unlabelled split of its own, as a classifier writes it (`predictions-new.parquet`).
    let extra = with_unlabelled_rows(
        &Predictions {
            ids: vec![],
            labels: vec![],
            preds: vec![],
            probs: vec![],
            ..labelled_base.clone()
        },
        2,
    );
    let extra = Predictions {
        ids: vec!["x-0".into(), "x-1".into()],
        ..extra
    };
    write_predictions(&mixed_inputs[0].dir.join("predictions-new.parquet"), &extra).unwrap();
    mixed_inputs[0].files.push("predictions-new.parquet".into());
    let mixed = run(&params, &mixed_inputs, mixed_dir.path()).unwrap();

    let read = |dir: &Path| -> MetricsFile {
        serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap()
    };
    let (p, mut m) = (read(&plain), read(&mixed));
    assert_eq!(m.unlabelled_rows, 3);
    assert_eq!(m.n_rows, r.y_true.len());
    m.unlabelled_rows = 0;
    // Every metric, interval and test as if the unlabelled rows were not there.
    assert_eq!(m, p);
    let plain_json = std::fs::read_to_string(plain.join("metrics.json")).unwrap();
    assert!(!plain_json.contains("unlabelled"), "{plain_json}");
    let report = std::fs::read_to_string(mixed.join("report.md")).unwrap();
    let line = format!(
        "{} labelled test rows scored (3 rows without a label ignored)",
        r.y_true.len()
    );
    assert!(report.contains(&line), "{report}");
    let plain_report = std::fs::read_to_string(plain.join("report.md")).unwrap();
    assert!(!plain_report.contains("without a label"));
    assert!(!mixed.join("unlabelled.jsonl").exists());

    // Asked for: their predictions, each classifier's, the other split's too.
    let asked = EvaluateParams {
        write_unlabelled: true,
        ..params.clone()
    };
    let out = run(&asked, &mixed_inputs, &mixed_dir.path().join("asked")).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("unlabelled.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3 + 2 + 3, "{lines:?}");
    assert_eq!(
        lines[1],
        serde_json::json!({"classifier": "logreg", "split": "test", "id": "new-1",
                           "pred": r.label_names[1], "probability": 0.75})
    );
    assert_eq!(lines[3]["split"], "new");
    assert_eq!(lines[3]["id"], "x-0");
    assert_eq!(lines[5]["classifier"], "zero");
    // The same scores whether or not the file is asked for.
    assert_eq!(
        std::fs::read(out.join("metrics.json")).unwrap(),
        std::fs::read(mixed.join("metrics.json")).unwrap()
    );

    // Nothing labelled: nothing to score, said clearly.
    let none_dir = tempfile::tempdir().unwrap();
    let only_new = with_unlabelled_rows(
        &Predictions {
            ids: vec![],
            labels: vec![],
            preds: vec![],
            probs: vec![],
            ..labelled_base.clone()
        },
        4,
    );
    let err = run(
        &EvaluateParams::default(),
        &[input(none_dir.path(), "a", &only_new)],
        none_dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no labelled rows to score (4 rows without a label)"),
        "{err}"
    );
}
