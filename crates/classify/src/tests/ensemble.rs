//! Ensembles of real members, and the errors bad inputs get.

use super::*;

/// Two different real members: logreg on counts and a heavily regularised logreg on log counts.
fn two_members() -> Option<(Vec<tempfile::TempDir>, Vec<Input>)> {
    let bow = bow()?;
    let train = take(&bow.train, 800);
    let (_d, input) = artifact(&train, &bow.test);
    let a = run_stage::<LogReg>(
        &LogRegParams {
            column: Some("bow".into()),
            ..LogRegParams::default()
        },
        std::slice::from_ref(&input),
        1,
    )
    .unwrap();
    let b = run_stage::<LogReg>(
        &LogRegParams {
            column: Some("bow_log".into()),
            c: Some(0.002),
            ..LogRegParams::default()
        },
        &[input],
        1,
    )
    .unwrap();
    let inputs = [("lr_counts", &a), ("lr_log", &b)]
        .iter()
        .map(|(name, d)| Input {
            stage_id: name.to_string(),
            dir: d.path().to_path_buf(),
            files: vec!["model.json".into(), "predictions.parquet".into()],
        })
        .collect();
    Some((vec![a, b], inputs))
}

#[test]
fn ensembles_combine_members_rather_than_copy_one() {
    let Some((_dirs, inputs)) = two_members() else {
        return;
    };
    let m1 = read_predictions(&inputs[0].path("predictions.parquet").unwrap()).unwrap();
    let m2 = read_predictions(&inputs[1].path("predictions.parquet").unwrap()).unwrap();
    let disagree: Vec<usize> = (0..m1.len())
        .filter(|&i| m1.preds[i] != m2.preds[i])
        .collect();
    assert!(
        disagree.len() > 10,
        "members too similar: {}",
        disagree.len()
    );
    for method in [
        EnsembleMethod::Soft,
        EnsembleMethod::Hard,
        EnsembleMethod::Geometric,
    ] {
        let out = run_stage::<Ensemble>(&EnsembleParams { method }, &inputs, 1).unwrap();
        let e = read_predictions(&out.path().join("predictions.parquet")).unwrap();
        assert_eq!(e.ids, m1.ids);
        assert!(e.producer.contains("lr_counts") && e.producer.contains("lr_log"));
        for i in 0..e.len() {
            let avg: Vec<f32> = (0..4)
                .map(|j| (m1.row_probs(i)[j] + m2.row_probs(i)[j]) / 2.0)
                .collect();
            // Geometric: the normalised square root of the two members' products.
            let root: Vec<f64> = (0..4)
                .map(|j| (m1.row_probs(i)[j] as f64 * m2.row_probs(i)[j] as f64).sqrt())
                .collect();
            let total: f64 = root.iter().sum();
            let want: Vec<f32> = match method {
                EnsembleMethod::Geometric => root.iter().map(|&r| (r / total) as f32).collect(),
                _ => avg.clone(),
            };
            for (p, w) in e.row_probs(i).iter().zip(&want) {
                assert!((p - w).abs() < 1e-5, "{method:?} row {i}: {p} against {w}");
            }
            if method == EnsembleMethod::Geometric {
                let top = (0..4).max_by(|&a, &b| root[a].total_cmp(&root[b]).then(b.cmp(&a)));
                assert_eq!(e.preds[i] as usize, top.unwrap(), "row {i}");
            }
            if m1.preds[i] == m2.preds[i] && method == EnsembleMethod::Hard {
                assert_eq!(e.preds[i], m1.preds[i]);
            }
            if method == EnsembleMethod::Hard && m1.preds[i] != m2.preds[i] {
                // 1-1 tie: the summed (= averaged) probability decides between the two votes.
                let (a, b) = (m1.preds[i] as usize, m2.preds[i] as usize);
                let expect = if avg[b] > avg[a] || (avg[b] == avg[a] && b < a) {
                    b
                } else {
                    a
                };
                assert_eq!(e.preds[i] as usize, expect, "row {i}");
            }
        }
        let differs_from_1 = disagree
            .iter()
            .filter(|&&i| e.preds[i] != m1.preds[i])
            .count();
        let differs_from_2 = disagree
            .iter()
            .filter(|&&i| e.preds[i] != m2.preds[i])
            .count();
        eprintln!(
            "{method:?}: acc {:.4} (members {:.4}, {:.4}); on {} disagreements differs from m1 \
             {differs_from_1}, from m2 {differs_from_2}",
            acc(&e),
            acc(&m1),
            acc(&m2),
            disagree.len()
        );
        assert!(
            differs_from_1 > 0 && differs_from_2 > 0,
            "{method:?} copied a member"
        );
    }
}

#[test]
fn ensemble_rejects_mismatched_members_with_clear_errors() {
    let Some((_dirs, inputs)) = two_members() else {
        return;
    };
    let m2 = read_predictions(&inputs[1].path("predictions.parquet").unwrap()).unwrap();
    let write_variant = |f: &dyn Fn(&mut Predictions)| {
        let dir = tempfile::tempdir().unwrap();
        let mut p = m2.clone();
        f(&mut p);
        write_predictions(&dir.path().join("predictions.parquet"), &p).unwrap();
        let input = Input {
            stage_id: "variant".into(),
            dir: dir.path().to_path_buf(),
            files: vec!["predictions.parquet".into()],
        };
        let err = run_stage::<Ensemble>(&EnsembleParams::default(), &[inputs[0].clone(), input], 1)
            .unwrap_err()
            .to_string();
        drop(dir);
        err
    };
    let err = write_variant(&|p| p.ids[7] = "not-a-test-id".into());
    assert!(
        err.contains("not-a-test-id") && err.contains("variant") && err.contains("lr_counts"),
        "{err}"
    );
    let err = write_variant(&|p| {
        p.ids.pop();
        p.labels.pop();
        p.preds.pop();
        p.probs.truncate(p.probs.len() - 4);
    });
    assert!(err.contains("rows") && err.contains("same ids"), "{err}");
    let err = write_variant(&|p| p.label_names[3] = "Science".into());
    assert!(
        err.contains("label names") && err.contains("Science"),
        "{err}"
    );
    let err = write_variant(&|p| p.labels[0] = (p.labels[0] + 1) % 4);
    assert!(
        err.contains("true label") && err.contains(&m2.ids[0]),
        "{err}"
    );
}

#[test]
fn bad_feature_values_and_labels_name_file_row_and_field() {
    let Some(bow) = bow() else { return };
    let mut train = take(&bow.train, 40);
    let test = take(&bow.test, 8);
    train.columns[0].values[3 * VOCAB + 7] = f32::NAN;
    let (_d, input) = artifact(&train, &test);
    let params = LogRegParams {
        column: Some("bow".into()),
        ..LogRegParams::default()
    };
    let err = run_stage::<LogReg>(&params, std::slice::from_ref(&input), 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.parquet") && err.contains("row 3") && err.contains("NaN"),
        "{err}"
    );

    let mut train = take(&bow.train, 40);
    train.labels[5] = 9;
    let (_d, input) = artifact(&train, &test);
    let err = run_stage::<Mlp>(
        &MlpParams {
            column: Some("bow".into()),
            ..MlpParams::default()
        },
        &[input],
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("row 5") && err.contains("label") && err.contains('9'),
        "{err}"
    );
}
