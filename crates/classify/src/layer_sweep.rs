//! `kind: layer_sweep`: the paper's depth ablation. One logistic regression (the same fit as
//! `kind: logreg`: standardised features, scikit-learn's `C`, the same solver) per `layer_<i>`
//! column of an extract artifact, scored by stratified k-fold CV accuracy on the TRAIN rows (the
//! folds and fold code of `logreg`'s `select`) and by test accuracy and macro-F1.
//!
//! The layer is CHOSEN by CV accuracy alone (ties to the lower layer); the test columns are the
//! ablation table, reported and never used for the choice. Outputs: `sweep.json`, `sweep.md`,
//! `layer_sweep.png` (CV and test accuracy against depth), `metrics.json` (the same rows and the
//! chosen layer) and `predictions.parquet` (test predictions of the chosen layer, for `evaluate`).
//!
//! Layers are fitted in parallel (rayon); each job reads only its own column, so memory holds at
//! most one layer per worker thread, whatever the depth of the model.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

use llmembed_core::metrics::accuracy_and_macro_f1;
use llmembed_core::table::embedding_columns;
use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Error, Input, Layers, Predictions, Result, Stage, Summary,
    fsutil, layer_column, parse_layer_column, read_embedding_table, write_predictions,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::{Split, TrainTest, load_train_test, standardizer, train_matrix};
use crate::folds::check_folds;
use crate::logreg_fit::{
    LogRegSolver, check_c, cross_validate, default_folds, default_max_iterations, default_tol,
    fit_logreg,
};
use crate::prologue::{
    best_index, check_tol_and_iterations, other_splits, preds_of, scored, write_json,
    write_split_predictions,
};
use crate::saved::{FittedOn, LinearApply, LinearMeta, LinearModel};

fn default_c() -> f64 {
    1.0
}

/// Params of `kind: layer_sweep`.
///
/// ```yaml
/// kind: layer_sweep
/// inputs: [extract]
/// params:
///   layers: all          # or a list of indices: [0, 4, 8, 12, 16]; default all
///   c: 1.0               # scikit-learn's C for every layer; default 1.0
///   folds: 5             # stratified k-fold CV on train rows (seeded); default 5
///   solver: lbfgs        # as logreg: lbfgs (default) | linfa (exact fallback)
///   tol: 1.0e-4          # as logreg
///   max_iterations: 1000 # as logreg
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerSweepParams {
    #[serde(default)]
    pub layers: Layers,
    #[serde(default = "default_c")]
    pub c: f64,
    #[serde(default = "default_folds")]
    pub folds: usize,
    #[serde(default)]
    pub solver: LogRegSolver,
    #[serde(default = "default_tol")]
    pub tol: f64,
    #[serde(default = "default_max_iterations")]
    pub max_iterations: u64,
}

impl Default for LayerSweepParams {
    fn default() -> Self {
        LayerSweepParams {
            layers: Layers::All,
            c: default_c(),
            folds: default_folds(),
            solver: LogRegSolver::default(),
            tol: default_tol(),
            max_iterations: default_max_iterations(),
        }
    }
}

/// `kind: layer_sweep`.
pub struct LayerSweep;

/// One row of the ablation table.
#[derive(Clone, Debug, Serialize)]
struct LayerRow {
    layer: usize,
    column: String,
    dim: usize,
    /// Mean validation accuracy over the folds (train rows only).
    cv_accuracy: f64,
    cv_fold_accuracy: Vec<f64>,
    test_accuracy: f64,
    test_macro_f1: f64,
    /// The final fit and every fold fit met the tolerance.
    converged: bool,
    solver: &'static str,
}

#[derive(Serialize)]
struct SweepFile<'a> {
    kind: &'static str,
    input: &'a str,
    c: f64,
    folds: usize,
    /// The CV folds' `folds::CvFolds::splits` (every layer's: the same rows, the same seed).
    splits: &'a str,
    train_rows: usize,
    test_rows: usize,
    classes: &'a [String],
    /// Chosen by best `cv_accuracy` (ties to the lower layer); test scores play no part.
    chosen_layer: usize,
    layers: &'a [LayerRow],
}

#[derive(Serialize)]
struct MetricsFile<'a> {
    layers: &'a [LayerRow],
    chosen_layer: usize,
    chosen_by: String,
}

/// The `layer_<i>` columns of `path`, as `(i, name)` sorted by `i`.
fn layer_columns(path: &Path) -> Result<Vec<(usize, String)>> {
    let mut out: Vec<(usize, String)> = embedding_columns(path)?
        .into_iter()
        .filter_map(|(name, _)| Some((parse_layer_column(&name)?, name)))
        .collect();
    out.sort();
    Ok(out)
}

/// The layers to sweep, checked against the file.
fn resolve_layers(path: &Path, layers: &Layers) -> Result<Vec<(usize, String)>> {
    let available = layer_columns(path)?;
    if available.is_empty() {
        let names: Vec<String> = embedding_columns(path)?.into_iter().map(|c| c.0).collect();
        return Err(Error::schema(
            path,
            "layer_*",
            format!(
                "no `layer_<i>` vector columns (it has: {})",
                names.join(", ")
            ),
        ));
    }
    let numbers: Vec<usize> = available.iter().map(|(i, _)| *i).collect();
    let picked = layers.resolve(&numbers).map_err(|i| {
        let have: Vec<&str> = available.iter().map(|c| c.1.as_str()).collect();
        Error::schema(
            path,
            &layer_column(i),
            format!("no such layer column (it has: {})", have.join(", ")),
        )
    })?;
    Ok(picked
        .into_iter()
        .map(|i| available[numbers.partition_point(|&n| n < i)].clone())
        .collect())
}

/// Best CV accuracy; ties go to the lower layer (listed order when layers were given by hand).
fn choose(rows: &[LayerRow]) -> usize {
    best_index(rows, |r, b| {
        r.cv_accuracy > b.cv_accuracy || (r.cv_accuracy == b.cv_accuracy && r.layer < b.layer)
    })
}

/// Wall times of one layer's fits. They go into the stage's notes only, never into the written
/// files, so that a rerun writes the same bytes.
#[derive(Clone, Copy, Debug)]
struct LayerTiming {
    /// The k CV fits.
    cv_seconds: f64,
    /// The final fit on all train rows.
    fit_seconds: f64,
}

/// One layer's final fit, as it would be saved were the layer chosen.
struct LayerFit {
    model: LinearModel,
    /// Without `kind` and `producer` (set for the chosen layer).
    meta: LinearMeta,
    /// The CV folds' `folds::CvFolds::splits`.
    splits: String,
}

/// CV, final fit and test scores of one layer; returns the row, the test probabilities, the fit
/// and the wall times.
fn sweep_layer(
    p: &LayerSweepParams,
    input: &Input,
    layer: usize,
    column: &str,
    seed: u64,
) -> Result<(LayerRow, Predictions, LayerFit, LayerTiming)> {
    let (train_path, test_path) = (input.split("train")?, input.split("test")?);
    let TrainTest {
        train,
        test,
        unlabelled_train,
        ..
    } = load_train_test(&train_path, &test_path, Some(column), None)?;
    let k = train.label_names.len();
    let cv_start = Instant::now();
    let outcome = cross_validate(
        &train,
        None,
        &[p.c],
        p.folds,
        p.tol,
        p.max_iterations,
        p.solver,
        seed,
    )?;
    let splits = outcome.splits;
    let cv = outcome.table.into_iter().next().expect("one C");
    let cv_seconds = cv_start.elapsed().as_secs_f64();

    let st = standardizer(&train);
    let xtr = train_matrix(&train, &st)?;
    let fit = fit_logreg(
        xtr.view(),
        &train.labels,
        k,
        p.c,
        p.tol,
        p.max_iterations,
        p.solver,
    )?;
    let model = LinearModel::new(
        vec![column.to_string()],
        train.label_names.clone(),
        st,
        &fit,
    );
    let probs = model.predict_proba(&test)?;
    let preds = preds_of(&probs, k);
    let (labels, scored_preds) = scored(&test.labels, &preds);
    let (test_accuracy, test_macro_f1) = accuracy_and_macro_f1(&labels, &scored_preds, k);
    let mut meta = model.meta(
        &fit,
        p.c,
        FittedOn {
            stage: input.stage_id.clone(),
            split: "train".into(),
            rows: train.rows(),
            unlabelled_rows_dropped: unlabelled_train,
        },
    );
    meta.layer = Some(layer);
    let row = LayerRow {
        layer,
        column: column.to_string(),
        dim: train.dim(),
        cv_accuracy: cv.mean_accuracy,
        cv_fold_accuracy: cv.fold_accuracy,
        test_accuracy,
        test_macro_f1,
        converged: fit.converged && cv.all_converged,
        solver: fit.solver(),
    };
    let predictions = Predictions {
        ids: test.ids,
        labels: test.labels,
        preds,
        probs,
        label_names: test.label_names,
        producer: String::new(),
    };
    let timing = LayerTiming {
        cv_seconds,
        fit_seconds: fit.fit_seconds,
    };
    let fit = LayerFit {
        model,
        meta,
        splits,
    };
    Ok((row, predictions, fit, timing))
}

/// The chosen layer's rows of another split, read as its training rows were.
fn read_other(path: &Path, model: &LinearModel) -> Result<Split> {
    let refs: Vec<&str> = model.columns.iter().map(String::as_str).collect();
    let rows = Split::from_table(path, read_embedding_table(path, Some(&refs))?)?;
    if rows.label_names != model.classes || rows.dim() != model.w.nrows() {
        return Err(Error::mismatch(
            "load features",
            format!(
                "{}: label names {:?} and width {} of {:?}, but the train split has {:?} and {}",
                path.display(),
                rows.label_names,
                rows.dim(),
                model.columns,
                model.classes,
                model.w.nrows()
            ),
        ));
    }
    Ok(rows)
}

fn markdown(input: &str, p: &LayerSweepParams, rows: &[LayerRow], chosen: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Layer sweep over `{input}`\n");
    let _ = writeln!(
        s,
        "Logistic regression (standardised features, C = {}, solver `{}`) on each layer's \
         mean-pooled hidden states.\n",
        p.c,
        match p.solver {
            LogRegSolver::Linfa => "linfa",
            LogRegSolver::Lbfgs => "lbfgs",
        }
    );
    let _ = writeln!(
        s,
        "| layer | dim | CV accuracy ({}-fold, train) | test accuracy | test macro-F1 | converged |",
        p.folds
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|:---:|");
    for (i, r) in rows.iter().enumerate() {
        let mark = if i == chosen { " (chosen)" } else { "" };
        let _ = writeln!(
            s,
            "| {}{mark} | {} | {:.4} | {:.4} | {:.4} | {} |",
            r.layer,
            r.dim,
            r.cv_accuracy,
            r.test_accuracy,
            r.test_macro_f1,
            if r.converged { "yes" } else { "NO" }
        );
    }
    let c = &rows[chosen];
    let _ = writeln!(
        s,
        "\nChosen by {}-fold CV on the training rows: **layer {}** (`{}`, CV accuracy {:.4}; \
         test accuracy {:.4}, macro-F1 {:.4}). The test columns are reported for the ablation \
         only; they are not used to choose the layer.",
        p.folds, c.layer, c.column, c.cv_accuracy, c.test_accuracy, c.test_macro_f1
    );
    s
}

impl Stage for LayerSweep {
    const KIND: &'static str = "layer_sweep";
    // 3: the chosen layer's fit saved (`model.safetensors`, `classifier.json`), the predictions
    // of splits besides train and test; the other files keep their bytes. 4: sweep.json names
    // the CV folds' splits (`splits`); the folds themselves are unchanged. 5: an augmented
    // copy goes with its source's fold, as in `logreg` 6.
    const VERSION: u32 = 5;
    const INPUTS: Arity = Arity::Exactly(1);
    const SEEDED: bool = true;
    type Params = LayerSweepParams;

    fn check(p: &LayerSweepParams) -> Result<()> {
        check_c("c", p.c)?;
        if p.folds < 2 {
            return Err(Error::param("folds", "needs at least 2 folds"));
        }
        check_tol_and_iterations(p.tol, p.max_iterations)?;
        if let Layers::List(v) = &p.layers {
            if v.is_empty() {
                return Err(Error::param(
                    "layers",
                    "empty list (use `all` for every layer)",
                ));
            }
            let mut seen = HashSet::new();
            for i in v {
                if !seen.insert(i) {
                    return Err(Error::param("layers", format!("layer {i} listed twice")));
                }
            }
        }
        Ok(())
    }

    fn run(p: &LayerSweepParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        Self::check(p)?;
        let input = &inputs[0];
        let train_path = input.split("train")?;
        // Check the folds once against the labels (the same for every layer).
        let train_rows = check_folds(&train_path, "folds", p.folds)?;
        let layers = resolve_layers(&train_path, &p.layers)?;

        let bar = ctx.progress(layers.len() as u64, "layer sweep");
        let results: Vec<(LayerRow, Predictions, LayerFit, LayerTiming)> = layers
            .par_iter()
            .map(|(i, name)| {
                let r = sweep_layer(p, input, *i, name, ctx.seed);
                bar.inc(1);
                r
            })
            .collect::<Result<_>>()?;
        bar.finish();
        let mut rows = Vec::with_capacity(results.len());
        let mut preds = Vec::with_capacity(results.len());
        let mut timings = Vec::with_capacity(results.len());
        let mut fits = Vec::with_capacity(results.len());
        for (row, pred, fit, timing) in results {
            rows.push(row);
            preds.push(pred);
            fits.push(fit);
            timings.push(timing);
        }
        let chosen = choose(&rows);
        let c = &rows[chosen];

        let mut predictions = preds.swap_remove(chosen);
        predictions.producer = format!("logreg({}, chosen by {}-fold CV)", c.column, p.folds);
        write_predictions(&ctx.out("predictions.parquet"), &predictions)?;
        let LayerFit {
            model,
            mut meta,
            splits,
        } = fits.swap_remove(chosen);
        meta.kind = Self::KIND.into();
        meta.producer = predictions.producer.clone();
        let mut rows_out = predictions.ids.len();
        for (split, path) in other_splits(input) {
            let other = model.predict(&read_other(&path, &model)?, &meta.producer)?;
            write_split_predictions(ctx, &split, &other)?;
            rows_out += other.len();
        }
        model.save(&ctx.out_dir, &meta)?;

        let sweep = SweepFile {
            kind: "layer_sweep",
            input: &input.stage_id,
            c: p.c,
            folds: p.folds,
            splits: &splits,
            train_rows,
            test_rows: predictions.ids.len(),
            classes: &predictions.label_names,
            chosen_layer: c.layer,
            layers: &rows,
        };
        write_json(&ctx.out("sweep.json"), &sweep)?;
        write_json(
            &ctx.out("metrics.json"),
            &MetricsFile {
                layers: &rows,
                chosen_layer: c.layer,
                chosen_by: format!(
                    "best {}-fold CV accuracy on train rows (test scores reported, not used)",
                    p.folds
                ),
            },
        )?;
        fsutil::write_bytes_atomic(
            &ctx.out("sweep.md"),
            markdown(&input.stage_id, p, &rows, chosen).as_bytes(),
        )?;
        let png = crate::plot::sweep_png(
            &format!("Layer sweep: {} (C = {})", input.stage_id, p.c),
            &rows
                .iter()
                .map(|r| (r.layer, r.cv_accuracy, r.test_accuracy))
                .collect::<Vec<_>>(),
            c.layer,
            p.folds,
        )?;
        fsutil::write_bytes_atomic(&ctx.out("layer_sweep.png"), &png)?;

        let mut notes: Vec<String> = (meta.fitted_on.unlabelled_rows_dropped > 0)
            .then(|| {
                format!(
                    "{} training rows without a label dropped (not fitted on)",
                    meta.fitted_on.unlabelled_rows_dropped
                )
            })
            .into_iter()
            .collect();
        notes.push(format!(
            "{} layers; {}-fold CV chose layer {} (CV acc {:.4}, test acc {:.4}, macro-F1 {:.4})",
            rows.len(),
            p.folds,
            c.layer,
            c.cv_accuracy,
            c.test_accuracy,
            c.test_macro_f1
        ));
        let unconverged: Vec<String> = rows
            .iter()
            .filter(|r| !r.converged)
            .map(|r| r.layer.to_string())
            .collect();
        if !unconverged.is_empty() {
            notes.push(format!(
                "NOT converged (some fit) on layers {}",
                unconverged.join(", ")
            ));
        }
        // Wall times live here (the runner's manifest), not in the artifact's files.
        notes.push(format!(
            "wall time per layer (CV fits + final fit): {}",
            rows.iter()
                .zip(&timings)
                .map(|(r, t)| format!("{} {:.2}s+{:.2}s", r.layer, t.cv_seconds, t.fit_seconds))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    fn applier(
        _p: &LayerSweepParams,
        fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        let (model, meta) = LinearModel::load(fitted, Self::KIND)?;
        Ok(Some(Box::new(LinearApply { model, meta })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(layer: usize, cv: f64, test: f64) -> LayerRow {
        LayerRow {
            layer,
            column: layer_column(layer),
            dim: 1,
            cv_accuracy: cv,
            cv_fold_accuracy: vec![cv],
            test_accuracy: test,
            test_macro_f1: test,
            converged: true,
            solver: "linfa",
        }
    }

    #[test]
    fn layer_sweep_choice_uses_cv_only_and_ties_go_to_lower_layer() {
        // Layer 3 has the best test score but not the best CV: CV decides.
        let rows = [row(0, 0.7, 0.7), row(1, 0.9, 0.8), row(3, 0.85, 0.99)];
        assert_eq!(choose(&rows), 1);
        let rows = [row(4, 0.9, 0.0), row(2, 0.9, 0.0), row(6, 0.9, 1.0)];
        assert_eq!(choose(&rows), 1);
    }

    #[test]
    fn layer_sweep_params_defaults_forms_and_checks() {
        let p: LayerSweepParams = serde_json::from_str("{}").unwrap();
        assert_eq!(p, LayerSweepParams::default());
        assert_eq!((p.c, p.folds, p.layers.clone()), (1.0, 5, Layers::All));
        let p: LayerSweepParams =
            serde_json::from_str(r#"{"layers": "all", "solver": "lbfgs"}"#).unwrap();
        assert_eq!(p.layers, Layers::All);
        assert_eq!(p.solver, LogRegSolver::Lbfgs);
        let p: LayerSweepParams = serde_json::from_str(r#"{"layers": [0, 8, 16]}"#).unwrap();
        assert_eq!(p.layers, Layers::List(vec![0, 8, 16]));
        // Canonical form round-trips (the cache key is computed from it).
        let back: LayerSweepParams =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            serde_json::to_value(LayerSweepParams::default()).unwrap()["layers"],
            "all"
        );
        let err = serde_json::from_str::<LayerSweepParams>(r#"{"layers": "some"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`all` or a list"), "{err}");
        let err = serde_json::from_str::<LayerSweepParams>(r#"{"layers": [-1]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid value: integer `-1`"), "{err}");
        let err = serde_json::from_str::<LayerSweepParams>(r#"{"column": "x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `column`"), "{err}");

        assert!(LayerSweep::check(&LayerSweepParams::default()).is_ok());
        let bad = |p: LayerSweepParams, what: &str| {
            let e = LayerSweep::check(&p).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        };
        bad(
            LayerSweepParams {
                c: 0.0,
                ..Default::default()
            },
            "c",
        );
        bad(
            LayerSweepParams {
                folds: 1,
                ..Default::default()
            },
            "folds",
        );
        bad(
            LayerSweepParams {
                layers: Layers::List(vec![]),
                ..Default::default()
            },
            "empty",
        );
        bad(
            LayerSweepParams {
                layers: Layers::List(vec![2, 2]),
                ..Default::default()
            },
            "twice",
        );
    }
}
