//! mlp on AG News bag-of-words: accuracy, seeds, epochs by CV.

use super::*;

#[test]
fn mlp_learns_ag_news_bow() {
    let Some(bow) = bow() else { return };
    let (_d, input) = artifact(&bow.train, &bow.test);
    let params = MlpParams {
        column: Some("bow_log".into()),
        epochs: Some(6),
        ..MlpParams::default()
    };
    let (out, summary) = run_stage_summary::<Mlp>(&params, &[input], 5).unwrap();
    let p = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    check_predictions(&p, &bow.test);
    let a = acc(&p);
    let m = model_json(out.path());
    assert_no_timing_keys(&m);
    eprintln!(
        "mlp accuracy {a:.4}, loss {}, notes {:?}",
        m["epoch_train_loss"], summary.notes
    );
    assert!(
        summary.notes.iter().any(|n| n.contains("epochs, fit ")),
        "{:?}",
        summary.notes
    );
    assert!(a > 0.6, "accuracy {a} (chance 0.25)");
    let loss: Vec<f64> = m["epoch_train_loss"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(loss.len(), 6);
    assert!(loss[5] < 0.7 * loss[0], "{loss:?}");
    assert_eq!(m["layers"], serde_json::json!([500, 1024, 256, 4]));
    assert_eq!(m["steps"], 6 * 2000usize.div_ceil(64));
}

#[test]
fn mlp_same_seed_same_bytes_other_seed_other_bytes() {
    let Some(bow) = bow() else { return };
    let train = take(&bow.train, 400);
    let test = take(&bow.test, 80);
    let (_d, input) = artifact(&train, &test);
    let params = |seed| MlpParams {
        column: Some("bow".into()),
        epochs: Some(2),
        seed: Some(seed),
        ..MlpParams::default()
    };
    let run = |p: &MlpParams, pipeline_seed| {
        run_stage::<Mlp>(p, std::slice::from_ref(&input), pipeline_seed).unwrap()
    };
    let preds =
        |d: &tempfile::TempDir| std::fs::read(d.path().join("predictions.parquet")).unwrap();
    let a = run(&params(11), 1);
    // Same seeds again: every file byte-identical (no wall times in `model.json`).
    let a2 = run(&params(11), 1);
    assert_same_output_bytes(a.path(), a2.path(), &["model.json", "predictions.parquet"]);
    // The stage's own seed wins over the pipeline's: the same bytes, `model.json` included.
    let b = run(&params(11), 2);
    assert_same_output_bytes(a.path(), b.path(), &["model.json", "predictions.parquet"]);
    let c = run(&params(12), 1);
    assert_ne!(preds(&a), preds(&c));
}

#[test]
fn mlp_select_epochs_by_cv() {
    let Some(bow) = bow() else { return };
    let train = take(&bow.train, 400);
    let test = take(&bow.test, 80);
    let (_d, input) = artifact(&train, &test);
    let params = MlpParams {
        column: Some("bow_log".into()),
        hidden: vec![64, 32],
        select: Some(MlpSelect {
            epochs: vec![6, 1],
            folds: 2,
        }),
        ..MlpParams::default()
    };
    let out = run_stage::<Mlp>(&params, std::slice::from_ref(&input), 5).unwrap();
    let m = model_json(out.path());
    assert_no_timing_keys(&m);
    let table = m["select"]["table"].as_array().unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!(table[0]["epochs"], 1);
    assert_eq!(table[1]["epochs"], 6);
    let best = if table[1]["mean_accuracy"].as_f64() > table[0]["mean_accuracy"].as_f64() {
        6
    } else {
        1
    };
    assert_eq!(m["epochs"], best);
    assert_eq!(m["select"]["best_epochs"], best);
    // The training rows' out-of-fold probabilities at the chosen epochs (two folds of 200).
    assert_out_of_fold(out.path(), 400);
    // A rerun with the same seed (CV folds, shuffles, dropout) writes the same bytes.
    let again = run_stage::<Mlp>(&params, &[input], 5).unwrap();
    assert_same_output_bytes(
        out.path(),
        again.path(),
        &["model.json", "predictions.parquet"],
    );
}
