//! Cross-validation folds against the class counts.

use super::*;

/// `t` with only the first `keep` rows of class `class`.
fn thin_class(t: &EmbeddingTable, class: i64, keep: usize) -> EmbeddingTable {
    let idx: Vec<usize> = (0..t.len())
        .filter(|&i| {
            t.labels[i] != class || t.labels[..i].iter().filter(|&&l| l == class).count() < keep
        })
        .collect();
    select_rows(t, &idx)
}

#[test]
fn cross_validation_refuses_more_folds_than_rows_of_a_class() {
    let Some(bow) = bow() else { return };
    let test = layered(&take(&bow.test, 40));
    // 40 training rows of each class, but 3 of Sports.
    let (dir, input) = artifact(&layered(&thin_class(&take(&bow.train, 160), 1, 3)), &test);
    let train = dir.path().join("train.parquet").display().to_string();
    let logreg = LogRegParams {
        column: Some("layer_1".into()),
        select: Some(LogRegSelect {
            c: vec![1.0],
            folds: 5,
        }),
        ..LogRegParams::default()
    };
    let e = run_stage::<LogReg>(&logreg, std::slice::from_ref(&input), 1)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "param `select.folds`: 5-fold cross-validation needs at least 5 training rows per \
             class; class `Sports` has 3 ({train})"
        )
    );
    // Three folds are fine.
    let three = LogRegParams {
        select: Some(LogRegSelect {
            c: vec![1.0],
            folds: 3,
        }),
        ..logreg
    };
    run_stage::<LogReg>(&three, &[input], 1).unwrap();

    // A class with a single training row: even 2 folds cannot hold it in both.
    let (dir, input) = artifact(&layered(&thin_class(&take(&bow.train, 160), 3, 1)), &test);
    let train = dir.path().join("train.parquet").display().to_string();
    let mlp = MlpParams {
        column: Some("layer_1".into()),
        select: Some(MlpSelect {
            epochs: vec![1],
            folds: 2,
        }),
        ..MlpParams::default()
    };
    let e = run_stage::<Mlp>(&mlp, std::slice::from_ref(&input), 1)
        .unwrap_err()
        .to_string();
    let single = format!(
        "2-fold cross-validation needs at least 2 training rows per class; class `Sci/Tech` has \
         1 ({train})"
    );
    assert_eq!(e, format!("param `select.folds`: {single}"));
    let sweep = LayerSweepParams {
        folds: 2,
        ..LayerSweepParams::default()
    };
    let e = run_stage::<LayerSweep>(&sweep, &[input], 1)
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("param `folds`: {single}"));

    // Fewer than 2 folds never gets that far: `check` refuses them before anything runs.
    for e in [
        LogReg::check(&LogRegParams {
            select: Some(LogRegSelect {
                c: vec![1.0],
                folds: 1,
            }),
            ..LogRegParams::default()
        }),
        Mlp::check(&MlpParams {
            select: Some(MlpSelect {
                epochs: vec![1],
                folds: 1,
            }),
            ..MlpParams::default()
        }),
    ] {
        assert_eq!(
            e.unwrap_err().to_string(),
            "param `select.folds`: needs at least 2 folds"
        );
    }
}

/// `t` with an augmented copy (`<id>-aug0`, right after its source, as `augment` writes them)
/// of every fourth row: the source's counts with every third word of the vocabulary deleted, a
/// near-duplicate as EDA's deletions make one.
fn with_copies(t: &EmbeddingTable) -> EmbeddingTable {
    let mut out = EmbeddingTable {
        ids: Vec::new(),
        labels: Vec::new(),
        label_names: t.label_names.clone(),
        columns: Vec::new(),
    };
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); t.columns.len()];
    for i in 0..t.len() {
        let copies: &[bool] = if i % 4 == 0 { &[false, true] } else { &[false] };
        for &copy in copies {
            let id = &t.ids[i];
            out.ids.push(if copy {
                llmembed_core::augmented_id(id, 0)
            } else {
                id.clone()
            });
            out.labels.push(t.labels[i]);
            for (v, c) in values.iter_mut().zip(&t.columns) {
                let row = c.row(i).iter().enumerate();
                v.extend(row.map(|(j, &x)| if copy && j % 3 == 0 { 0.0 } else { x }));
            }
        }
    }
    out.columns = (t.columns.iter().zip(values))
        .map(|(c, v)| VectorColumn::new(c.name.clone(), c.dim, v))
        .collect();
    out
}

#[test]
fn augmented_copies_are_held_out_with_their_source_and_never_validated() {
    let Some(bow) = bow() else { return };
    let (plain, test) = (take(&bow.train, 400), take(&bow.test, 80));
    let augmented = with_copies(&plain);
    assert_eq!(augmented.len(), 500);
    let (_p, plain_input) = artifact(&plain, &test);
    let (_a, augmented_input) = artifact(&augmented, &test);
    let logreg = LogRegParams {
        column: Some("bow_log".into()),
        select: Some(LogRegSelect {
            c: vec![0.01, 1.0, 100.0],
            folds: 5,
        }),
        ..LogRegParams::default()
    };
    let mlp = MlpParams {
        column: Some("bow_log".into()),
        hidden: vec![32],
        select: Some(MlpSelect {
            epochs: vec![2, 4],
            folds: 5,
        }),
        ..MlpParams::default()
    };
    let runs = [
        run_stage::<LogReg>(&logreg, std::slice::from_ref(&plain_input), 1).unwrap(),
        run_stage::<LogReg>(&logreg, std::slice::from_ref(&augmented_input), 1).unwrap(),
        run_stage::<Mlp>(&mlp, std::slice::from_ref(&augmented_input), 1).unwrap(),
    ];
    let plain_oof = read_predictions(&runs[0].path().join("cv_predictions.parquet")).unwrap();
    for run in &runs {
        let m = model_json(run.path());
        // Fitted on every row, the copies included...
        let rows = m["train_rows"].as_u64().unwrap();
        assert_eq!(
            rows,
            if run.path() == runs[0].path() {
                400
            } else {
                500
            }
        );
        // ...but scored on the same folds of the same 400 rows, so that `select` and
        // `ensemble` may weigh an augmented candidate against a plain one.
        assert_eq!(
            m["select"]["splits"],
            model_json(runs[0].path())["select"]["splits"]
        );
        let oof = read_predictions(&run.path().join("cv_predictions.parquet")).unwrap();
        assert_eq!(oof.ids, plain_oof.ids);
        assert_out_of_fold(run.path(), 400);
    }
    let members: Vec<Input> = [("plain", &runs[0]), ("augmented", &runs[1])]
        .iter()
        .map(|(name, d)| fitted(name, d.path()))
        .collect();
    let both = run_stage::<Ensemble>(&EnsembleParams::default(), &members, 1).unwrap();
    let oof = read_predictions(&both.path().join("cv_predictions.parquet")).unwrap();
    assert_eq!(oof.ids, plain_oof.ids);
}
