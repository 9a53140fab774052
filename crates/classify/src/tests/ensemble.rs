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
        let out = run_stage::<Ensemble>(&EnsembleParams { method, c: None }, &inputs, 1).unwrap();
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

/// A logreg with C by 5-fold CV on one column: a member with out-of-fold probabilities.
fn logreg_cv(column: &str) -> LogRegParams {
    LogRegParams {
        column: Some(column.into()),
        select: Some(LogRegSelect {
            c: vec![0.001, 0.01, 0.1],
            folds: 5,
        }),
        ..LogRegParams::default()
    }
}

fn stack_params(c: &[f64]) -> EnsembleParams {
    EnsembleParams {
        method: EnsembleMethod::Stack,
        c: Some(c.to_vec()),
    }
}

/// `stack` over a weak member (the 8 most frequent words) and a strong one (the top 250): it
/// learns to lean on the strong one from their out-of-fold probabilities, where `soft` gives
/// both the same say; its own CV is over the members' folds; its test probabilities are the
/// stated regression of the members' floored log-probabilities with the saved weights; and it
/// is reproducible and reapplied bit for bit.
#[test]
fn stack_weighs_members_by_their_out_of_fold_probabilities() {
    let Some(bow) = bow() else { return };
    let (_d, input) = artifact(&layered(&take(&bow.train, 800)), &layered(&bow.test));
    let one = std::slice::from_ref(&input);
    let few = run_stage::<LogReg>(&logreg_cv("layer_0"), one, 3).unwrap();
    let more = run_stage::<LogReg>(&logreg_cv("layer_2"), one, 3).unwrap();
    let members = vec![
        super::fitted("few", few.path()),
        super::fitted("more", more.path()),
    ];
    let grid = [0.01, 0.1, 1.0, 10.0];
    let out = run_stage::<Ensemble>(&stack_params(&grid), &members, 3).unwrap();
    let soft = run_stage::<Ensemble>(&EnsembleParams::default(), &members, 3).unwrap();

    // Its own out-of-fold predictions: every training row once, scored as `cv` records.
    let meta = read_json(&out.path().join("classifier.json"));
    let oof = read_predictions(&out.path().join("cv_predictions.parquet")).unwrap();
    let mut ids = oof.ids.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 800);
    assert_eq!(meta["cv"]["accuracy"].as_f64(), Some(acc(&oof)));
    assert_eq!(meta["cv"]["rows"].as_u64(), Some(800));
    // C is the grid's best by mean fold accuracy (ties to the smaller).
    let table = meta["stack"]["cv"].as_array().unwrap();
    assert_eq!(table.len(), grid.len());
    let best = table.iter().fold(&table[0], |b, r| {
        if r["mean_accuracy"].as_f64() > b["mean_accuracy"].as_f64() {
            r
        } else {
            b
        }
    });
    assert_eq!(meta["stack"]["c"], best["c"]);

    // The weights lean on the strong member: its four log-probabilities carry more weight.
    let weights: Vec<Vec<f64>> = serde_json::from_value(meta["stack"]["weights"].clone()).unwrap();
    assert_eq!(weights.len(), 8);
    let strength = |rows: std::ops::Range<usize>| -> f64 {
        weights[rows].iter().flatten().map(|w| w.abs()).sum()
    };
    let (weak, strong) = (strength(0..4), strength(4..8));
    let cv_of = |dir: &Path| read_json(&dir.join("classifier.json"))["cv"]["accuracy"].as_f64();
    let member_cv =
        |dir: &Path| acc(&read_predictions(&dir.join("cv_predictions.parquet")).unwrap());
    eprintln!(
        "stack: C {}, weight on few {weak:.3}, on more {strong:.3}; CV stack {:?}, soft {:?}, \
         few {:.4}, more {:.4}",
        meta["stack"]["c"],
        cv_of(out.path()),
        cv_of(soft.path()),
        member_cv(few.path()),
        member_cv(more.path()),
    );
    assert!(strong > 3.0 * weak, "few {weak}, more {strong}");
    // Averaging lets the weak member pull the strong one down (0.59 against the strong
    // member's 0.70 when this was written); the stack keeps about the strong one's accuracy.
    let (stack_cv, soft_cv) = (cv_of(out.path()).unwrap(), cv_of(soft.path()).unwrap());
    assert!(
        stack_cv > soft_cv + 0.05,
        "stack {stack_cv}, soft {soft_cv}"
    );
    assert!(stack_cv > member_cv(more.path()) - 0.02, "stack {stack_cv}");

    // The test rows: softmax(features . W + b) by hand, the features each member's
    // log-probabilities floored at STACK_FLOOR, member after member.
    let test = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    let m: Vec<Predictions> = members
        .iter()
        .map(|i| read_predictions(&i.path("predictions.parquet").unwrap()).unwrap())
        .collect();
    let b: Vec<f64> = serde_json::from_value(meta["stack"]["intercepts"].clone()).unwrap();
    assert_eq!(meta["stack"]["present"], serde_json::json!([0, 1, 2, 3]));
    for i in 0..test.len() {
        assert_eq!(m[1].ids[i], test.ids[i]);
        let x: Vec<f64> = (m.iter())
            .flat_map(|p| p.row_probs(i).iter().map(|&v| (v as f64).max(1e-6).ln()))
            .collect();
        let logits: Vec<f64> = (0..4)
            .map(|j| b[j] + x.iter().zip(&weights).map(|(x, w)| x * w[j]).sum::<f64>())
            .collect();
        let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let total: f64 = logits.iter().map(|l| (l - top).exp()).sum();
        for (j, &l) in logits.iter().enumerate() {
            let want = (l - top).exp() / total;
            let got = test.row_probs(i)[j] as f64;
            assert!(
                (got - want).abs() < 1e-5,
                "row {i} class {j}: {got} vs {want}"
            );
        }
    }
    check_predictions(&test, &layered(&bow.test));
    eprintln!("stack test accuracy {:.4}", acc(&test));

    // The same bytes again, and the applier gives the file's predictions bit for bit.
    let again = run_stage::<Ensemble>(&stack_params(&grid), &members, 3).unwrap();
    assert_same_output_bytes(
        out.path(),
        again.path(),
        &[
            "predictions.parquet",
            "cv_predictions.parquet",
            "classifier.json",
        ],
    );
    let env = apply_env();
    let apply = Ensemble::applier(
        &stack_params(&grid),
        &super::fitted("stack", out.path()),
        &env,
    )
    .unwrap()
    .unwrap();
    let rows: Vec<llmembed_core::Rows> = m
        .into_iter()
        .map(llmembed_core::Rows::Predictions)
        .collect();
    let llmembed_core::Rows::Predictions(applied) = apply.apply(&rows).unwrap() else {
        panic!("predictions expected")
    };
    assert_eq!(applied.preds, test.preds);
    let bits = |p: &Predictions| p.probs.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&applied), bits(&test));
    assert_eq!(applied.producer, test.producer);
}

/// What `stack` refuses: members without out-of-fold probabilities, folds that the pipeline's
/// seed does not give back, and a C grid on a method that fits nothing.
#[test]
fn stack_refuses_what_it_cannot_fit_honestly() {
    let Some(bow) = bow() else { return };
    let (_d, input) = artifact(
        &layered(&take(&bow.train, 400)),
        &layered(&take(&bow.test, 80)),
    );
    let one = std::slice::from_ref(&input);
    let cv = run_stage::<LogReg>(&logreg_cv("layer_1"), one, 3).unwrap();
    let fixed = run_stage::<LogReg>(
        &LogRegParams {
            column: Some("layer_0".into()),
            c: Some(0.01),
            ..LogRegParams::default()
        },
        one,
        3,
    )
    .unwrap();
    let other = run_stage::<LogReg>(&logreg_cv("layer_0"), one, 3).unwrap();
    // A stack over `members` (id, folder), run with `seed`: its error.
    let stack_error = |members: [(&str, &Path); 2], seed| {
        let inputs = members.map(|(id, dir)| super::fitted(id, dir));
        run_stage::<Ensemble>(&stack_params(&[1.0]), &inputs, seed)
            .unwrap_err()
            .to_string()
    };
    let err = stack_error([("cv", cv.path()), ("fixed", fixed.path())], 3);
    assert!(err.contains("out-of-fold probabilities"), "{err}");
    // Members fitted with seed 3, the stack run with seed 4: its folds would not be theirs.
    let err = stack_error([("cv", cv.path()), ("other", other.path())], 4);
    assert!(
        err.contains("do not give back their folds") && err.contains("seed 4"),
        "{err}"
    );
    let both = [
        super::fitted("cv", cv.path()),
        super::fitted("other", other.path()),
    ];
    assert!(run_stage::<Ensemble>(&stack_params(&[1.0]), &both, 3).is_ok());
    let err = Ensemble::check(&EnsembleParams {
        method: EnsembleMethod::Soft,
        c: Some(vec![1.0]),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("only `method: stack`"), "{err}");
    let err = Ensemble::check(&stack_params(&[])).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
    let err = Ensemble::check(&stack_params(&[1.0, -1.0]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("positive"), "{err}");
}
