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

/// `input`'s artifact with training vectors per fold of `folds`-fold CV drawn from `seed` over
/// `train`'s rows, as `contrastive`'s `mode: supcon` writes them: fold `f`'s are `vectors(f,
/// folds)`.
fn with_fold_vectors(
    input: &Input,
    train: &EmbeddingTable,
    folds: usize,
    seed: u64,
    vectors: impl Fn(usize, &llmembed_core::folds::CvFolds) -> EmbeddingTable,
) -> Input {
    let cv = llmembed_core::folds::cv_folds(&train.ids, &train.labels, folds, seed);
    let tables: Vec<EmbeddingTable> = (0..folds).map(|f| vectors(f, &cv)).collect();
    let meta = llmembed_core::folds::FoldVectors {
        folds,
        splits: cv.splits.clone(),
        made_by: "a test".into(),
    };
    llmembed_testkit::with_fold_vectors(input, &tables, &meta)
}

/// `t` with every vector of the rows `rows` mapped by `map`.
fn map_rows(t: &EmbeddingTable, rows: &[usize], map: impl Fn(f32) -> f32) -> EmbeddingTable {
    let mut t = t.clone();
    for c in &mut t.columns {
        for &r in rows {
            for v in &mut c.values[r * c.dim..(r + 1) * c.dim] {
                *v = map(*v);
            }
        }
    }
    t
}

/// The per-fold CV accuracies a classifier recorded (`select.table`), per row of the table.
fn fold_accuracies(dir: &Path) -> Vec<Vec<f64>> {
    let table = model_json(dir)["select"]["table"].clone();
    (table.as_array().unwrap().iter())
        .map(|row| {
            (row["fold_accuracy"].as_array().unwrap().iter())
                .map(|a| a.as_f64().unwrap())
                .collect()
        })
        .collect()
}

#[test]
fn cross_validation_fits_and_scores_each_fold_on_the_vectors_made_without_it() {
    let Some(bow) = bow() else { return };
    let (train, test) = (take(&bow.train, 400), take(&bow.test, 80));
    let all: Vec<usize> = (0..train.len()).collect();
    let logreg = LogRegParams {
        column: Some("bow_log".into()),
        select: Some(LogRegSelect {
            c: vec![0.1, 1.0],
            folds: 4,
        }),
        ..LogRegParams::default()
    };
    let (_plain_dir, plain) = artifact(&train, &test);
    let plain_out = run_stage::<LogReg>(&logreg, std::slice::from_ref(&plain), 3).unwrap();
    let plain_cv = fold_accuracies(plain_out.path());
    assert!(plain_cv.iter().flatten().all(|&a| a > 0.5), "{plain_cv:?}");

    // Every fold's vectors negated, training and held-out rows alike: standardised and fitted,
    // the mirror image of the same model, so every fold scores as on the plain vectors. Were a
    // fold fitted on one kind and scored on the other, its accuracy would collapse.
    let (_dir, input) = artifact(&train, &test);
    let negated = with_fold_vectors(&input, &train, 4, 3, |_, _| map_rows(&train, &all, |v| -v));
    let (out, summary) = run_stage_summary::<LogReg>(&logreg, &[negated], 3).unwrap();
    assert_eq!(fold_accuracies(out.path()), plain_cv);
    assert!(
        (summary.notes.iter())
            .any(|n| n == "CV on `bow`'s training vectors made per fold (a test)"),
        "{:?}",
        summary.notes
    );

    // Each fold's held-out rows zeroed in its own file only: every such row gets the one
    // prediction of a zero vector, a quarter of each stratified fold right; the plain vectors
    // of every other fold's file are what the fit is trained on. Were the training split read
    // instead, the folds would score as plain.
    let (_dir, input) = artifact(&train, &test);
    let zeroed = with_fold_vectors(&input, &train, 4, 3, |f, cv| {
        map_rows(&train, &cv.rows[f], |_| 0.0)
    });
    let out = run_stage::<LogReg>(&logreg, std::slice::from_ref(&zeroed), 3).unwrap();
    for row in fold_accuracies(out.path()) {
        assert_eq!(row, vec![0.25; 4]);
    }
    // The final fit reads the training split as it is: the same test predictions as plain.
    assert_eq!(
        std::fs::read(out.path().join("predictions.parquet")).unwrap(),
        std::fs::read(plain_out.path().join("predictions.parquet")).unwrap()
    );

    // The MLP's CV reads them too.
    let mlp = MlpParams {
        column: Some("bow_log".into()),
        select: Some(MlpSelect {
            epochs: vec![2],
            folds: 4,
        }),
        ..MlpParams::default()
    };
    let out = run_stage::<Mlp>(&mlp, &[zeroed], 3).unwrap();
    assert_eq!(fold_accuracies(out.path()), vec![vec![0.25; 4]]);
}

#[test]
fn per_fold_vectors_for_other_folds_are_refused() {
    let Some(bow) = bow() else { return };
    let (train, test) = (take(&bow.train, 200), take(&bow.test, 40));
    let logreg = |folds| LogRegParams {
        column: Some("bow_log".into()),
        select: Some(LogRegSelect {
            c: vec![1.0],
            folds,
        }),
        ..LogRegParams::default()
    };
    let same = |_: usize, _: &llmembed_core::folds::CvFolds| train.clone();
    // Made for 5 folds, read with 4.
    let (_dir, input) = artifact(&train, &test);
    let five = with_fold_vectors(&input, &train, 5, 3, same);
    let e = run_stage::<LogReg>(&logreg(4), &[five], 3)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "param `select.folds`: `bow` (a test) made its training vectors per fold of 5-fold CV, \
         each without that fold's labels; this CV has 4 folds, whose held-out rows those vectors \
         saw: give both the same number of folds"
    );
    // Made for the folds of another seed.
    let (_dir, input) = artifact(&train, &test);
    let other_seed = with_fold_vectors(&input, &train, 4, 8, same);
    let e = run_stage::<LogReg>(&logreg(4), &[other_seed], 3)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("made its training vectors for the folds with splits")
            && e.contains("drawn from another seed"),
        "{e}"
    );
    // A fold's file whose rows are not the training split's.
    let (_dir, input) = artifact(&train, &test);
    let short = with_fold_vectors(&input, &train, 4, 3, |_, _| take(&train, 100));
    let e = run_stage::<LogReg>(&logreg(4), std::slice::from_ref(&short), 3)
        .unwrap_err()
        .to_string();
    let fold0 = short.dir.join("train.fold0.parquet").display().to_string();
    assert_eq!(
        e,
        format!(
            "{fold0}: column `id`: fold 0's training vectors (100 rows of 500) are not the \
             training split's rows (200 of 500) in its order"
        )
    );
}
