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
