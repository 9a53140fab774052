//! layer_sweep on an extract-shaped table of AG News features.

use super::*;

/// `sweep.md` has one row per layer (of 4) with the chosen one marked and no timings;
/// `layer_sweep.png` is the 900x540 plot with its coloured lines.
fn check_report_and_plot(dir: &Path, chosen: u64) {
    let md = std::fs::read_to_string(dir.join("sweep.md")).unwrap();
    assert_eq!(
        md.lines().filter(|l| l.starts_with("| ")).count(),
        1 + 4,
        "{md}"
    );
    assert!(md.contains(&format!("| {chosen} (chosen) |")), "{md}");
    assert!(!md.contains("fit s") && !md.contains("seconds"), "{md}");
    assert!(md.contains(&format!("**layer {chosen}**")), "{md}");
    assert!(
        md.contains("5-fold CV") && md.contains("not used to choose"),
        "{md}"
    );

    let png = std::fs::read(dir.join("layer_sweep.png")).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(png))
        .read_info()
        .unwrap();
    let mut img = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut img).unwrap();
    assert_eq!((info.width, info.height), (900, 540));
    let coloured = img[..info.buffer_size()]
        .chunks(3)
        .filter(|p| p[0] != p[1] || p[1] != p[2])
        .count();
    assert!(
        coloured > 500,
        "the plot has its coloured lines ({coloured} pixels)"
    );
}

#[test]
fn layer_sweep_on_ag_news_chooses_best_cv_layer_and_writes_outputs() {
    let Some(bow) = bow() else { return };
    let train = layered(&bow.train);
    let test = layered(&bow.test);
    let (_d, input) = artifact(&train, &test);
    // All layers, 5 folds, linfa; C = 0.01 as in the logreg test (C = 1 over-fits 2,000 rows).
    let params = LayerSweepParams {
        c: 0.01,
        ..LayerSweepParams::default()
    };
    let (out, summary) =
        run_stage_summary::<LayerSweep>(&params, std::slice::from_ref(&input), 7).unwrap();
    let dir = out.path();
    // Wall times are in the notes, one per layer, not in the files.
    let timing = summary
        .notes
        .iter()
        .find(|n| n.starts_with("wall time per layer"))
        .unwrap_or_else(|| panic!("{:?}", summary.notes));
    assert_eq!(timing.matches("s+").count(), 4, "{timing}");

    let sweep = read_json(&dir.join("sweep.json"));
    assert_no_timing_keys(&sweep);
    let rows = sweep["layers"].as_array().unwrap();
    let layers: Vec<u64> = rows.iter().map(|r| r["layer"].as_u64().unwrap()).collect();
    assert_eq!(layers, [0, 1, 2, 3], "final_norm is not a layer: {sweep}");
    let cv: Vec<f64> = rows
        .iter()
        .map(|r| r["cv_accuracy"].as_f64().unwrap())
        .collect();
    let best = (0..cv.len()).fold(0, |b, i| if cv[i] > cv[b] { i } else { b });
    let chosen = sweep["chosen_layer"].as_u64().unwrap();
    assert_eq!(
        chosen, layers[best],
        "chosen must be the best CV layer: {cv:?}"
    );
    let mut test_scores = Vec::new();
    for r in rows {
        let folds = r["cv_fold_accuracy"].as_array().unwrap();
        assert_eq!(folds.len(), 5);
        let mean = folds.iter().map(|f| f.as_f64().unwrap()).sum::<f64>() / 5.0;
        assert!((mean - r["cv_accuracy"].as_f64().unwrap()).abs() < 1e-12);
        test_scores.push((
            r["test_accuracy"].as_f64().unwrap(),
            r["test_macro_f1"].as_f64().unwrap(),
        ));
    }
    eprintln!(
        "layer sweep CV {cv:?}, test (accuracy, macro F1) {test_scores:?}, chosen layer {chosen}"
    );
    // Measured test accuracy per layer: 0.3925, 0.5325, 0.6875, 0.66 (chance 0.25); the floors
    // leave 0.05 of slack. The test split is class-balanced (100 per class), so macro F1 stays
    // close to accuracy (measured: within 0.003).
    for (layer, (&(a, f1), floor)) in test_scores.iter().zip([0.34, 0.48, 0.63, 0.61]).enumerate() {
        assert!(a > floor, "layer {layer}: test accuracy {a} <= {floor}");
        assert!(
            (a - f1).abs() < 0.02,
            "layer {layer}: accuracy {a} vs macro F1 {f1}"
        );
    }
    // Real signal: 8 stop words are far weaker than the 250 most frequent words.
    assert!(cv[0] + 0.1 < cv[best], "{cv:?}");
    assert!(cv[best] > 0.65, "{cv:?}");

    let metrics = read_json(&dir.join("metrics.json"));
    assert_no_timing_keys(&metrics);
    assert_eq!(metrics["layers"], sweep["layers"]);
    assert_eq!(metrics["chosen_layer"], chosen);

    check_report_and_plot(dir, chosen);

    // The predictions are the chosen layer's, and identical to a `logreg` on that column with
    // the same C; logreg's `select` on the same seed reproduces the sweep's CV accuracy.
    let p = read_predictions(&dir.join("predictions.parquet")).unwrap();
    check_predictions(&p, &test);
    assert_eq!(
        p.producer,
        format!("logreg(layer_{chosen}, chosen by 5-fold CV)")
    );
    assert!((acc(&p) - rows[best]["test_accuracy"].as_f64().unwrap()).abs() < 1e-12);
    let lr = LogRegParams {
        column: Some(format!("layer_{chosen}")),
        select: Some(LogRegSelect {
            c: vec![0.01],
            folds: 5,
        }),
        ..LogRegParams::default()
    };
    let lr_out = run_stage::<LogReg>(&lr, &[input], 7).unwrap();
    let lp = read_predictions(&lr_out.path().join("predictions.parquet")).unwrap();
    assert_eq!(lp.preds, p.preds);
    assert_eq!(lp.probs, p.probs);
    let m = model_json(lr_out.path());
    assert_eq!(
        m["select"]["table"][0]["mean_accuracy"].as_f64().unwrap(),
        cv[best]
    );
}

#[test]
fn layer_sweep_layer_list_and_clear_errors() {
    let Some(bow) = bow() else { return };
    let train = layered(&take(&bow.train, 400));
    let test = layered(&take(&bow.test, 200));
    let (_d, input) = artifact(&train, &test);
    let params = LayerSweepParams {
        layers: Layers::List(vec![3, 1]),
        folds: 3,
        c: 0.1,
        solver: LogRegSolver::Lbfgs,
        ..LayerSweepParams::default()
    };
    let out = run_stage::<LayerSweep>(&params, std::slice::from_ref(&input), 3).unwrap();
    // A rerun with the same seed writes every file (json, markdown, png, predictions) again
    // byte for byte.
    let again = run_stage::<LayerSweep>(&params, std::slice::from_ref(&input), 3).unwrap();
    assert_same_output_bytes(
        out.path(),
        again.path(),
        &[
            "sweep.json",
            "metrics.json",
            "sweep.md",
            "layer_sweep.png",
            "predictions.parquet",
        ],
    );
    let sweep = read_json(&out.path().join("sweep.json"));
    assert_no_timing_keys(&sweep);
    let rows = sweep["layers"].as_array().unwrap();
    let layers: Vec<u64> = rows.iter().map(|r| r["layer"].as_u64().unwrap()).collect();
    assert_eq!(layers, [3, 1]);
    assert_eq!(rows[0]["dim"], 250);
    assert_eq!(rows[0]["solver"], "exact-lbfgs");
    assert_eq!(rows[0]["cv_fold_accuracy"].as_array().unwrap().len(), 3);
    let (a, b) = (
        rows[0]["cv_accuracy"].as_f64().unwrap(),
        rows[1]["cv_accuracy"].as_f64().unwrap(),
    );
    let want = if b > a { 1 } else { 3 };
    assert_eq!(sweep["chosen_layer"], want);

    let missing = LayerSweepParams {
        layers: Layers::List(vec![1, 7]),
        ..params.clone()
    };
    let e = run_stage::<LayerSweep>(&missing, std::slice::from_ref(&input), 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer_7") && e.contains("train.parquet"), "{e}");
    assert!(e.contains("layer_0, layer_1, layer_2, layer_3"), "{e}");

    // An artifact without layer columns (a fused or tf-idf table) is refused by name.
    let (_d2, plain) = artifact(&take(&bow.train, 40), &take(&bow.test, 20));
    let e = run_stage::<LayerSweep>(&LayerSweepParams::default(), &[plain], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer_") && e.contains("bow_log"), "{e}");

    let too_many_folds = LayerSweepParams {
        folds: 500,
        ..params
    };
    let e = run_stage::<LayerSweep>(&too_many_folds, &[input], 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("folds"), "{e}");
}
