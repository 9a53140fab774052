//! `select` over real classifiers: it keeps the member with the best recorded CV accuracy, passes
//! its predictions on, and refuses members it cannot compare.

use llmembed_core::Rows;

use super::*;

fn logreg_cv(column: &str, folds: usize) -> LogRegParams {
    LogRegParams {
        column: Some(column.into()),
        select: Some(LogRegSelect {
            c: vec![0.001, 0.01, 0.1],
            folds,
        }),
        ..LogRegParams::default()
    }
}

/// The bag-of-words artifact of 800 training rows and the whole test split (its folder, kept
/// alive by the guard), or `None` where the data is missing.
fn bow_800() -> Option<(tempfile::TempDir, Input)> {
    let bow = bow()?;
    Some(artifact(
        &layered(&take(&bow.train, 800)),
        &layered(&bow.test),
    ))
}

/// A logreg with a fixed C (no CV score).
fn logreg_fixed(column: &str) -> LogRegParams {
    LogRegParams {
        column: Some(column.into()),
        c: Some(0.01),
        ..LogRegParams::default()
    }
}

/// LRs with C by 5-fold CV on 8 words (`layer_0`) and on 60 (`layer_1`) of `one`: members of
/// clearly different quality.
fn few_and_more(one: &[Input]) -> (tempfile::TempDir, tempfile::TempDir) {
    (
        run_stage::<LogReg>(&logreg_cv("layer_0", 5), one, 3).unwrap(),
        run_stage::<LogReg>(&logreg_cv("layer_1", 5), one, 3).unwrap(),
    )
}

/// `select`'s error over `members`.
fn select_error(members: &[Input]) -> String {
    run_stage::<Select>(&SelectParams::default(), members, 3)
        .unwrap_err()
        .to_string()
}

#[test]
fn select_keeps_the_best_cv_member_and_passes_its_predictions_on() {
    let Some((_d, input)) = bow_800() else { return };
    let one = std::slice::from_ref(&input);
    // Three real members of clearly different quality: 8 words, 60 words, a sweep over depths.
    let (few, more) = few_and_more(one);
    let sweep = run_stage::<LayerSweep>(
        &LayerSweepParams {
            c: 0.01,
            ..LayerSweepParams::default()
        },
        one,
        3,
    )
    .unwrap();
    let members = vec![
        fitted("few", few.path()),
        fitted("more", more.path()),
        fitted("sweep", sweep.path()),
    ];
    let cv: Vec<f64> = [&few, &more, &sweep]
        .iter()
        .map(|d| recorded_cv(d.path()))
        .collect();
    assert!(cv[1] > cv[0] + 0.05, "members must differ: {cv:?}");
    let expect = (0..3).fold(0, |b, i| if cv[i] > cv[b] { i } else { b });

    let out = run_stage::<Select>(&SelectParams::default(), &members, 3).unwrap();
    let chosen = read_predictions(&out.path().join("predictions.parquet")).unwrap();
    let source = read_predictions(&members[expect].path("predictions.parquet").unwrap()).unwrap();
    assert_eq!(chosen.ids, source.ids);
    assert_eq!(chosen.preds, source.preds);
    assert_eq!(chosen.probs, source.probs);
    assert!(
        chosen
            .producer
            .starts_with(&format!("select({} by 5-fold CV", members[expect].stage_id)),
        "{}",
        chosen.producer
    );
    let selection = read_json(&out.path().join("selection.json"));
    assert_eq!(selection["chosen"].as_u64(), Some(expect as u64));
    for (i, c) in selection["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(c["cv_accuracy"].as_f64(), Some(cv[i]), "{c}");
    }
    // The applier passes the chosen member's rows through, whatever the others say.
    let env = apply_env();
    let applier = Select::applier(&SelectParams::default(), &fitted("best", out.path()), &env)
        .unwrap()
        .unwrap();
    let rows: Vec<Rows> = members
        .iter()
        .map(|m| {
            Rows::Predictions(read_predictions(&m.path("predictions.parquet").unwrap()).unwrap())
        })
        .collect();
    let Rows::Predictions(applied) = applier.apply(&rows).unwrap() else {
        panic!("predictions expected")
    };
    assert_eq!(applied.preds, source.preds);
    assert_eq!(applied.producer, chosen.producer);
}

#[test]
fn select_names_the_members_cv_cannot_tell_from_its_choice() {
    let Some((_d, input)) = bow_800() else { return };
    let one = std::slice::from_ref(&input);
    let (few, more) = few_and_more(one);
    let (cv_few, cv_more) = (recorded_cv(few.path()), recorded_cv(more.path()));
    // The same fit listed twice: a tie, which goes to the first; 8 words against 60 score far
    // apart (more than one standard error over 800 rows, about 0.01).
    let members = [
        fitted("few", few.path()),
        fitted("more", more.path()),
        fitted("again", more.path()),
    ];
    let (out, summary) =
        llmembed_testkit::run_stage::<Select>(&SelectParams::default(), &members, 3).unwrap();
    let selection = read_json(&out.path().join("selection.json"));
    assert_eq!(selection["chosen"].as_u64(), Some(1), "{selection}");
    let se = (cv_more * (1.0 - cv_more) / 800.0).sqrt();
    assert_eq!(
        selection["standard_error"].as_f64(),
        Some(se),
        "{selection}"
    );
    assert!(
        cv_more - cv_few > se,
        "members must differ: {cv_few} {cv_more}"
    );
    assert_eq!(
        selection["within_one_standard_error"],
        serde_json::json!(["again"]),
        "{selection}"
    );
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.starts_with("near-tie: `again` within one standard error")),
        "{:?}",
        summary.notes
    );
}

#[test]
fn select_refuses_members_it_cannot_compare() {
    let Some(bow) = bow() else { return };
    let train = layered(&take(&bow.train, 400));
    let test = layered(&take(&bow.test, 200));
    let (_d, input) = artifact(&train, &test);
    let one = std::slice::from_ref(&input);
    let five = run_stage::<LogReg>(&logreg_cv("layer_1", 5), one, 3).unwrap();
    let three = run_stage::<LogReg>(&logreg_cv("layer_2", 3), one, 3).unwrap();
    let fixed = run_stage::<LogReg>(&logreg_fixed("layer_2"), one, 3).unwrap();
    let err = select_error(&[fitted("five", five.path()), fitted("three", three.path())]);
    assert!(
        err.contains("`three` was scored over 3 folds, `five` over 5"),
        "{err}"
    );
    let err = select_error(&[fitted("five", five.path()), fitted("fixed", fixed.path())]);
    assert!(
        err.contains("member `fixed` (logreg) has no cross-validation score"),
        "{err}"
    );
    // Five folds too, but drawn with another seed: other rows in each fold, so neither the
    // scores compare nor do the out-of-fold files combine.
    let reseeded = run_stage::<LogReg>(&logreg_cv("layer_2", 5), one, 4).unwrap();
    assert_ne!(splits_of(reseeded.path()), splits_of(five.path()));
    let members = [
        fitted("five", five.path()),
        fitted("reseeded", reseeded.path()),
    ];
    let err = select_error(&members);
    assert!(
        err.contains("member `reseeded` was scored on other folds than `five`"),
        "{err}"
    );
    let unscored = run_stage::<Ensemble>(&EnsembleParams::default(), &members, 3).unwrap();
    assert!(!unscored.path().join("cv_predictions.parquet").exists());
    let meta = read_json(&unscored.path().join("classifier.json"));
    assert!(meta["cv"].is_null(), "{meta}");
}

/// The `splits` a classifier's `model.json` records for its CV folds.
fn splits_of(dir: &Path) -> String {
    model_json(dir)["select"]["splits"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Soft combination of out-of-fold files, computed here independently of `ensemble.rs`:
/// (ids, labels, argmax of the averaged probabilities), aligned to the first file's ids.
fn averaged_out_of_fold(dirs: &[&Path]) -> (Vec<String>, Vec<i64>, Vec<i64>) {
    let files: Vec<_> = dirs
        .iter()
        .map(|d| read_predictions(&d.join("cv_predictions.parquet")).unwrap())
        .collect();
    let k = files[0].label_names.len();
    let preds = (0..files[0].len())
        .map(|r| {
            let id = &files[0].ids[r];
            let mut sum = vec![0f64; k];
            for f in &files {
                let at = f.ids.iter().position(|i| i == id).unwrap();
                for (s, p) in sum.iter_mut().zip(&f.probs[at * k..(at + 1) * k]) {
                    *s += *p as f64;
                }
            }
            (0..k).fold(0, |b, j| if sum[j] > sum[b] { j } else { b }) as i64
        })
        .collect();
    (files[0].ids.clone(), files[0].labels.clone(), preds)
}

/// A soft ensemble of `members` (stage id, folder): its folder, its `classifier.json`, and the
/// accuracy of the members' averaged out-of-fold probabilities on 800 rows, computed here.
fn scored_ensemble(members: &[(&str, &Path)]) -> (tempfile::TempDir, serde_json::Value, f64) {
    let inputs: Vec<Input> = members.iter().map(|(id, dir)| fitted(id, dir)).collect();
    let ens = run_stage::<Ensemble>(&EnsembleParams::default(), &inputs, 3).unwrap();
    let meta = read_json(&ens.path().join("classifier.json"));
    let dirs: Vec<&Path> = members.iter().map(|(_, dir)| *dir).collect();
    let (_, labels, preds) = averaged_out_of_fold(&dirs);
    let want = labels.iter().zip(&preds).filter(|(l, p)| l == p).count() as f64 / 800.0;
    (ens, meta, want)
}

#[test]
fn ensembles_of_cv_members_are_scored_out_of_fold_and_selected_by_it() {
    let Some((_d, input)) = bow_800() else { return };
    let one = std::slice::from_ref(&input);
    let (few, more) = few_and_more(one);
    // An MLP with its epochs chosen by CV keeps its out-of-fold probabilities too, over the
    // same folds as the logistic regressions: the pipeline's, whatever seed its own weights,
    // batches and dropout are drawn with.
    let mlp_params = MlpParams {
        column: Some("layer_1".into()),
        hidden: vec![32],
        seed: Some(11),
        select: Some(MlpSelect {
            epochs: vec![2, 8],
            folds: 5,
        }),
        ..MlpParams::default()
    };
    let mlp = run_stage::<Mlp>(&mlp_params, one, 3).unwrap();

    for dir in [few.path(), more.path(), mlp.path()] {
        assert_out_of_fold(dir, 800);
    }
    let splits = splits_of(few.path());
    assert_eq!(splits.len(), 16, "{splits}");
    assert_eq!(splits_of(more.path()), splits);
    assert_eq!(splits_of(mlp.path()), splits);

    let (ens, meta, want) = scored_ensemble(&[("few", few.path()), ("more", more.path())]);
    assert_eq!(meta["cv"]["folds"].as_u64(), Some(5), "{meta}");
    assert_eq!(
        meta["cv"]["splits"].as_str(),
        Some(splits.as_str()),
        "{meta}"
    );
    assert_eq!(meta["cv"]["accuracy"].as_f64(), Some(want), "{meta}");
    assert_eq!(meta["cv"]["rows"].as_u64(), Some(800), "{meta}");

    // `select` weighs the ensemble by that score beside the members' own.
    let candidates = vec![
        fitted("few", few.path()),
        fitted("more", more.path()),
        fitted("both", ens.path()),
    ];
    let out = run_stage::<Select>(&SelectParams::default(), &candidates, 3).unwrap();
    let selection = read_json(&out.path().join("selection.json"));
    let scores: Vec<f64> = selection["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cv_accuracy"].as_f64().unwrap())
        .collect();
    assert_eq!(
        scores,
        vec![recorded_cv(few.path()), recorded_cv(more.path()), want]
    );
    let expect = (0..3).fold(0, |b, i| if scores[i] > scores[b] { i } else { b });
    assert_eq!(selection["chosen"].as_u64(), Some(expect as u64));

    // An ensemble with the MLP as a member is scored the same way, from the MLP's own file.
    let (_mixed, meta, want) = scored_ensemble(&[("more", more.path()), ("mlp", mlp.path())]);
    assert_eq!(meta["cv"]["folds"].as_u64(), Some(5), "{meta}");
    assert_eq!(meta["cv"]["accuracy"].as_f64(), Some(want), "{meta}");

    // A member without out-of-fold probabilities (a fixed C) leaves the ensemble unscored, and
    // `select` says why.
    let fixed = run_stage::<LogReg>(&logreg_fixed("layer_1"), one, 3).unwrap();
    assert!(!fixed.path().join("cv_predictions.parquet").exists());
    let unscored = run_stage::<Ensemble>(
        &EnsembleParams::default(),
        &[fitted("few", few.path()), fitted("fixed", fixed.path())],
        3,
    )
    .unwrap();
    let err = select_error(&[fitted("few", few.path()), fitted("mixed", unscored.path())]);
    assert!(
        err.contains("member `mixed` (ensemble) has no cross-validation score: not every member"),
        "{err}"
    );
}
