//! Saved classifiers on AG News bag-of-words: what each stage writes into its artifact, its
//! applier reproducing the stage's own predictions bit for bit, and rows without a label.

use llmembed_core::{Rows, SavedTensors, UNLABELLED};

use super::*;

fn applied(apply: &dyn llmembed_core::Apply, inputs: &[Rows]) -> Predictions {
    match apply.apply(inputs).unwrap() {
        Rows::Predictions(p) => p,
        other => panic!("an applier gave {} rows", other.kind()),
    }
}

/// Same rows, labels, predictions, class names and producer, and probabilities equal to the
/// last bit.
fn assert_same_bits(a: &Predictions, b: &Predictions, what: &str) {
    assert_eq!(a.ids, b.ids, "{what}: ids");
    assert_eq!(a.labels, b.labels, "{what}: labels");
    assert_eq!(a.preds, b.preds, "{what}: preds");
    assert_eq!(a.label_names, b.label_names, "{what}: label names");
    assert_eq!(a.producer, b.producer, "{what}: producer");
    let bits = |p: &Predictions| p.probs.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b), "{what}: probabilities");
}

/// Each row alone, then put back together: a row's output must not depend on its batch.
fn one_row_at_a_time(apply: &dyn llmembed_core::Apply, t: &EmbeddingTable) -> Predictions {
    let mut out: Option<Predictions> = None;
    for i in 0..t.len() {
        let p = applied(apply, &[Rows::Embedding(select_rows(t, &[i]))]);
        match out.as_mut() {
            None => out = Some(p),
            Some(o) => {
                o.ids.extend(p.ids);
                o.labels.extend(p.labels);
                o.preds.extend(p.preds);
                o.probs.extend(p.probs);
            }
        }
    }
    out.unwrap()
}

/// `t` with its labels replaced by `UNLABELLED` (new texts) and no label names.
fn unlabelled(t: &EmbeddingTable) -> EmbeddingTable {
    EmbeddingTable {
        labels: vec![UNLABELLED; t.len()],
        label_names: Vec::new(),
        ..t.clone()
    }
}

#[test]
fn logreg_saves_its_fit_and_the_applier_reproduces_its_predictions_bit_for_bit() {
    let Some(bow) = bow() else { return };
    let (_d, input) = artifact(&bow.train, &bow.test);
    let params = LogRegParams {
        columns: Some(vec!["bow_log".into(), "bow".into()]),
        select: Some(LogRegSelect {
            c: vec![0.01, 0.1],
            folds: 3,
        }),
        ..LogRegParams::default()
    };
    let out = run_stage::<LogReg>(&params, &[input], 1).unwrap();
    let file = read_predictions(&out.path().join("predictions.parquet")).unwrap();

    let meta = read_json(&out.path().join("classifier.json"));
    let model = model_json(out.path());
    assert_eq!(meta["kind"], "logreg");
    assert_eq!(meta["classes"], model["classes"]);
    assert_eq!(meta["columns"], serde_json::json!(["bow_log", "bow"]));
    assert_eq!(meta["input_dim"], 1000);
    assert_eq!(meta["c"], model["c"]);
    assert_eq!(meta["solver"], "exact-lbfgs");
    assert!(meta["iterations"].as_u64().unwrap() > 0, "{meta}");
    assert_eq!(meta["fitted_on"]["stage"], "bow");
    assert_eq!(meta["fitted_on"]["rows"], 2000);
    assert_eq!(meta["producer"], file.producer.as_str());
    let tensors = SavedTensors::load(&out.path().join("model.safetensors")).unwrap();
    assert_eq!(tensors.shape("weight"), Some(&[4, 1000][..]));
    assert_eq!(tensors.shape("intercept"), Some(&[4][..]));
    let scale = tensors.get_f64("scale", &[1000]).unwrap();
    assert!(scale.iter().all(|s| *s > 0.0));

    let apply = LogReg::applier(&params, &fitted("lr", out.path()), &apply_env())
        .unwrap()
        .expect("logreg has an applier");
    let all = applied(apply.as_ref(), &[Rows::Embedding(bow.test.clone())]);
    assert_same_bits(&all, &file, "test split at once");
    let single = one_row_at_a_time(apply.as_ref(), &bow.test);
    assert_same_bits(&single, &file, "one row at a time");
    // New texts: no labels; the same predictions, labels left UNLABELLED.
    let new = applied(apply.as_ref(), &[Rows::Embedding(unlabelled(&bow.test))]);
    assert_eq!(new.preds, file.preds);
    assert_eq!(new.probs, file.probs);
    assert!(new.labels.iter().all(|&l| l == UNLABELLED));

    // Wrong inputs are refused with what was expected.
    let err = apply
        .apply(&[Rows::Predictions(file.clone())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("logreg takes embedding rows, got predictions rows"),
        "{err}"
    );
    let mut narrow = bow.test.clone();
    narrow.columns.retain(|c| c.name == "bow");
    let err = apply
        .apply(&[Rows::Embedding(narrow)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no vector column `bow_log` (it has: bow)"),
        "{err}"
    );
    let mut renamed = bow.test.clone();
    renamed.label_names[0] = "Earth".into();
    let err = apply
        .apply(&[Rows::Embedding(renamed)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("the classifier was fitted on"), "{err}");
}

#[test]
fn an_artifact_without_a_saved_model_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("predictions.parquet"), b"").unwrap();
    let err = LogReg::applier(
        &LogRegParams::default(),
        &fitted("lr", dir.path()),
        &apply_env(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("classifier.json is missing") && err.contains("run the pipeline again"),
        "{err}"
    );
}

#[test]
fn unlabelled_rows_are_not_fitted_on_and_every_row_gets_predictions() {
    let Some(bow) = bow() else { return };
    let train = take(&bow.train, 400);
    let test = take(&bow.test, 80);
    // Every fifth training row loses its label; the fit must equal one on the other rows.
    let mut with_unlabelled = train.clone();
    for i in (0..train.len()).step_by(5) {
        with_unlabelled.labels[i] = UNLABELLED;
    }
    let kept: Vec<usize> = (0..train.len()).filter(|i| i % 5 != 0).collect();
    let without = select_rows(&train, &kept);
    // A third of the test rows unlabelled too, and an unlabelled extra split.
    let mut test_mixed = test.clone();
    for i in (0..test.len()).step_by(3) {
        test_mixed.labels[i] = UNLABELLED;
    }
    let extra = EmbeddingTable {
        label_names: test.label_names.clone(),
        ..unlabelled(&select_rows(&test, &[5, 1, 7]))
    };
    let dir = tempfile::tempdir().unwrap();
    let input = llmembed_testkit::embedding_input(
        dir.path(),
        "bow",
        &[
            ("train", &with_unlabelled),
            ("test", &test_mixed),
            ("new", &extra),
        ],
    );
    let (_d2, reference) = artifact(&without, &test);

    let lr_params = LogRegParams {
        column: Some("bow_log".into()),
        select: Some(LogRegSelect {
            c: vec![0.1, 1.0],
            folds: 3,
        }),
        ..LogRegParams::default()
    };
    let mlp_params = MlpParams {
        column: Some("bow_log".into()),
        hidden: vec![32],
        epochs: Some(2),
        ..MlpParams::default()
    };
    let sweep_params = LayerSweepParams {
        folds: 3,
        ..LayerSweepParams::default()
    };
    let (_d3, layered_in) = {
        let d = tempfile::tempdir().unwrap();
        let i = llmembed_testkit::embedding_input(
            d.path(),
            "llm",
            &[
                ("train", &layered(&with_unlabelled)),
                ("test", &layered(&test_mixed)),
                ("new", &layered(&extra)),
            ],
        );
        (d, i)
    };
    let (_d4, layered_ref) = artifact(&layered(&without), &layered(&test));

    let runs: Vec<(
        &str,
        tempfile::TempDir,
        llmembed_core::Summary,
        tempfile::TempDir,
    )> = vec![
        {
            let (out, s) =
                run_stage_summary::<LogReg>(&lr_params, std::slice::from_ref(&input), 4).unwrap();
            let r = run_stage::<LogReg>(&lr_params, std::slice::from_ref(&reference), 4).unwrap();
            ("logreg", out, s, r)
        },
        {
            let (out, s) =
                run_stage_summary::<Mlp>(&mlp_params, std::slice::from_ref(&input), 4).unwrap();
            let r = run_stage::<Mlp>(&mlp_params, std::slice::from_ref(&reference), 4).unwrap();
            ("mlp", out, s, r)
        },
        {
            let (out, s) = run_stage_summary::<LayerSweep>(
                &sweep_params,
                std::slice::from_ref(&layered_in),
                4,
            )
            .unwrap();
            let r = run_stage::<LayerSweep>(&sweep_params, std::slice::from_ref(&layered_ref), 4)
                .unwrap();
            ("layer_sweep", out, s, r)
        },
    ];
    for (kind, out, summary, reference) in &runs {
        assert!(
            summary
                .notes
                .iter()
                .any(|n| n == "80 training rows without a label dropped (not fitted on)"),
            "{kind}: {:?}",
            summary.notes
        );
        let meta = read_json(&out.path().join("classifier.json"));
        assert_eq!(meta["fitted_on"]["rows"], 320, "{kind}");
        assert_eq!(meta["fitted_on"]["unlabelled_rows_dropped"], 80, "{kind}");
        // The fit is the one made without those rows: the same weights, bit for bit.
        assert_eq!(
            std::fs::read(out.path().join("model.safetensors")).unwrap(),
            std::fs::read(reference.path().join("model.safetensors")).unwrap(),
            "{kind}"
        );
        // Every test row has a prediction, unlabelled ones included, the same as when labelled.
        let mixed = read_predictions(&out.path().join("predictions.parquet")).unwrap();
        let labelled = read_predictions(&reference.path().join("predictions.parquet")).unwrap();
        assert_eq!(mixed.labels, test_mixed.labels, "{kind}");
        assert_eq!(mixed.preds, labelled.preds, "{kind}");
        assert_eq!(mixed.probs, labelled.probs, "{kind}");
        // The extra split's predictions, in their own file, and the applier agrees.
        let new = read_predictions(&out.path().join("predictions-new.parquet")).unwrap();
        assert_eq!(new.ids, extra.ids, "{kind}");
        assert!(new.labels.iter().all(|&l| l == UNLABELLED), "{kind}");
        for (r, &i) in [5usize, 1, 7].iter().enumerate() {
            assert_eq!(new.preds[r], labelled.preds[i], "{kind} row {i}");
        }
        let fitted_in = fitted(kind, out.path());
        let env = apply_env();
        let apply = match *kind {
            "logreg" => LogReg::applier(&lr_params, &fitted_in, &env),
            "mlp" => Mlp::applier(&mlp_params, &fitted_in, &env),
            _ => LayerSweep::applier(&sweep_params, &fitted_in, &env),
        }
        .unwrap()
        .unwrap();
        let rows = if *kind == "layer_sweep" {
            layered(&extra)
        } else {
            extra.clone()
        };
        assert_same_bits(
            &applied(apply.as_ref(), &[Rows::Embedding(rows)]),
            &new,
            kind,
        );
    }
    // An ensemble of logreg and mlp combines their predictions of the extra split too, as its
    // applier does.
    let members: Vec<Input> = runs[..2]
        .iter()
        .map(|(kind, out, ..)| fitted(kind, out.path()))
        .collect();
    let vote_params = EnsembleParams::default();
    let vote = run_stage::<Ensemble>(&vote_params, &members, 1).unwrap();
    let vote_new = read_predictions(&vote.path().join("predictions-new.parquet")).unwrap();
    assert_eq!(vote_new.ids, extra.ids);
    assert!(vote_new.labels.iter().all(|&l| l == UNLABELLED));
    let member_rows: Vec<Rows> = runs[..2]
        .iter()
        .map(|(_, out, ..)| {
            Rows::Predictions(
                read_predictions(&out.path().join("predictions-new.parquet")).unwrap(),
            )
        })
        .collect();
    let apply = Ensemble::applier(&vote_params, &fitted("vote", vote.path()), &apply_env())
        .unwrap()
        .unwrap();
    assert_same_bits(
        &applied(apply.as_ref(), &member_rows),
        &vote_new,
        "ensemble, new",
    );

    // Only unlabelled training rows: a clear error.
    let none = unlabelled(&train);
    let none = EmbeddingTable {
        label_names: train.label_names.clone(),
        ..none
    };
    let (_d5, all_unlabelled) = artifact(&none, &test);
    let err = run_stage::<LogReg>(
        &LogRegParams {
            column: Some("bow".into()),
            ..LogRegParams::default()
        },
        &[all_unlabelled],
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("no labelled training rows"), "{err}");
}

#[test]
fn mlp_saves_its_layers_and_the_applier_reproduces_its_predictions_bit_for_bit() {
    let Some(bow) = bow() else { return };
    let train = take(&bow.train, 400);
    let test = take(&bow.test, 80);
    let (_d, input) = artifact(&train, &test);
    let params = MlpParams {
        column: Some("bow_log".into()),
        hidden: vec![64, 32],
        epochs: Some(3),
        ..MlpParams::default()
    };
    let out = run_stage::<Mlp>(&params, &[input], 9).unwrap();
    let file = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    let tensors = SavedTensors::load(&out.path().join("model.safetensors")).unwrap();
    for (name, shape) in [
        ("layers.0.weight", &[64, 500][..]),
        ("layers.0.bias", &[64]),
        ("layers.1.weight", &[32, 64]),
        ("layers.2.weight", &[4, 32]),
        ("layers.2.bias", &[4]),
    ] {
        assert_eq!(tensors.shape(name), Some(shape), "{name}");
    }
    assert_eq!(tensors.get_f64("mean", &[500]).unwrap().len(), 500);
    let meta = read_json(&out.path().join("classifier.json"));
    assert_eq!(meta["layers"], serde_json::json!([500, 64, 32, 4]));
    assert_eq!(meta["epochs"], 3);
    assert_eq!(meta["seed"], 9);

    let apply = Mlp::applier(&params, &fitted("mlp", out.path()), &apply_env())
        .unwrap()
        .unwrap();
    let all = applied(apply.as_ref(), &[Rows::Embedding(test.clone())]);
    assert_same_bits(&all, &file, "test split at once");
    // One row at a time: candle's matrix product may sum in another order for a one-row
    // batch, so the probabilities are held to 1e-6 here (the predictions must agree).
    let single = one_row_at_a_time(apply.as_ref(), &test);
    assert_eq!(single.preds, file.preds);
    let worst = single
        .probs
        .iter()
        .zip(&file.probs)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("mlp one row at a time: largest probability difference {worst:e}");
    assert!(worst <= 1e-6, "{worst}");
}

#[test]
fn ensemble_and_layer_sweep_appliers_reproduce_their_predictions() {
    let Some(bow) = bow() else { return };
    let train = take(&bow.train, 400);
    let test = take(&bow.test, 80);
    let (_d, input) = artifact(&train, &test);
    let lr_a = LogRegParams {
        column: Some("bow".into()),
        ..LogRegParams::default()
    };
    let lr_b = LogRegParams {
        column: Some("bow_log".into()),
        c: Some(0.01),
        ..LogRegParams::default()
    };
    let mlp = MlpParams {
        column: Some("bow_log".into()),
        hidden: vec![32],
        epochs: Some(2),
        ..MlpParams::default()
    };
    let a = run_stage::<LogReg>(&lr_a, std::slice::from_ref(&input), 1).unwrap();
    let b = run_stage::<LogReg>(&lr_b, std::slice::from_ref(&input), 1).unwrap();
    let m = run_stage::<Mlp>(&mlp, std::slice::from_ref(&input), 1).unwrap();
    let env = apply_env();
    let members = [
        LogReg::applier(&lr_a, &fitted("a", a.path()), &env),
        LogReg::applier(&lr_b, &fitted("b", b.path()), &env),
        Mlp::applier(&mlp, &fitted("m", m.path()), &env),
    ]
    .map(|r| r.unwrap().unwrap());
    // The members' predictions of new rows, through their appliers.
    let member_rows: Vec<Rows> = members
        .iter()
        .map(|ap| Rows::Predictions(applied(ap.as_ref(), &[Rows::Embedding(test.clone())])))
        .collect();
    let inputs: Vec<Input> = [("a", &a), ("b", &b), ("m", &m)]
        .iter()
        .map(|(id, d)| fitted(id, d.path()))
        .collect();
    for method in [
        EnsembleMethod::Soft,
        EnsembleMethod::Hard,
        EnsembleMethod::Geometric,
    ] {
        let params = EnsembleParams { method, c: None };
        let out = run_stage::<Ensemble>(&params, &inputs, 1).unwrap();
        let file = read_predictions(&out.path().join("predictions.parquet")).unwrap();
        let apply = Ensemble::applier(&params, &fitted("vote", out.path()), &env)
            .unwrap()
            .unwrap();
        assert_same_bits(&applied(apply.as_ref(), &member_rows), &file, "ensemble");
        let err = apply.apply(&member_rows[..2]).unwrap_err().to_string();
        assert!(
            err.contains("3 members") && err.contains("got 2 inputs"),
            "{err}"
        );
    }

    let (_d2, layered_in) = artifact(&layered(&train), &layered(&test));
    let params = LayerSweepParams {
        folds: 3,
        ..LayerSweepParams::default()
    };
    let out = run_stage::<LayerSweep>(&params, &[layered_in], 2).unwrap();
    let file = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    let sweep = read_json(&out.path().join("sweep.json"));
    let meta = read_json(&out.path().join("classifier.json"));
    assert_eq!(meta["layer"], sweep["chosen_layer"]);
    assert_eq!(
        meta["columns"],
        serde_json::json!([format!("layer_{}", sweep["chosen_layer"])])
    );
    let apply = LayerSweep::applier(&params, &fitted("sweep", out.path()), &env)
        .unwrap()
        .unwrap();
    assert_same_bits(
        &applied(apply.as_ref(), &[Rows::Embedding(layered(&test))]),
        &file,
        "layer_sweep",
    );
}
