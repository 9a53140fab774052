//! The `evaluate` stage: scores one or more predictions artifacts on the same rows and writes
//! them side by side.
//!
//! # Params
//!
//! ```yaml
//! kind: evaluate
//! inputs: [clf_a, clf_b, clf_c]   # each with predictions.parquet
//! params:
//!   names: null        # display names, one per input; default: the producer name stored in
//!                      # the predictions file, or the input's stage id when that is empty or
//!                      # shared by several inputs
//!   baseline: null     # a name (from `names` or the defaults); every other row is compared
//!                      # against its accuracy and the report says which beat it (strictly)
//!   notes: null        # free text shown at the top of report.md (e.g. how settings were chosen)
//!   resamples: 1000    # bootstrap resamples of the test rows for the confidence intervals
//!                      # (at least 1,000), drawn from the pipeline's seed
//!   confidence: 0.95   # the intervals' level; a difference from the baseline is significant
//!                      # when McNemar's exact p-value is below 1 - confidence
//!   write_unlabelled: false  # write the predictions of rows without a label to unlabelled.jsonl
//! ```
//!
//! Rows without a label (`UNLABELLED`) are never scored: every metric, interval and test is
//! computed on the labelled rows; `metrics.json` (`unlabelled_rows`) and `report.md` say how many
//! were ignored (nothing is said, and the files keep their bytes, when there are none).
//!
//! # Outputs
//!
//! * `metrics.json`: `{label_names, n_rows, baseline, notes, classifiers: [{name, stage_id,
//!   producer, accuracy, macro_f1, accuracy_ci: {low, high}, macro_f1_ci: {low, high},
//!   per_class: [{label, precision, recall, f1, support}], confusion, vs_baseline: {baseline,
//!   delta_accuracy, beats, mcnemar: {only_a_right, only_b_right, p_value}, significant} | null}],
//!   bootstrap: {resamples, confidence, seed}}`, `confusion` with rows = true class and columns =
//!   predicted class, classifiers in input order. See [`significance`] for the methods.
//! * `report.md`: summary table in input order, then per-class tables and confusion matrices.
//! * `confusion_<name>.png` per input (name with characters outside `[A-Za-z0-9._-]` replaced
//!   by `_`).
//! * With `write_unlabelled: true`, `unlabelled.jsonl`: one line per classifier and row without a
//!   label, `{classifier, split, id, pred, probability}` (`pred` the class name, `probability`
//!   its probability), classifiers in input order, the test split first, then the other splits a
//!   classifier has predictions for (`predictions-<split>.parquet`), rows in file order.
//!
//! Metrics follow scikit-learn (see [`metrics`]); [`accuracy_and_macro_f1`] is the shared helper.
//!
//! All inputs must hold the same row ids with the same true labels and the same label names.

mod plot;
mod report;
pub mod significance;
// The metrics live in core so that classify's `layer_sweep` scores layers exactly as this stage
// does without depending on it.
pub use llmembed_core::image::rgb_to_png;
pub use llmembed_core::metrics;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};

use llmembed_core::fsutil::write_bytes_atomic;
use llmembed_core::{
    Arity, Context, Error, Input, Predictions, Result, Stage, Summary, UNLABELLED,
    parse_predictions_file, read_predictions,
};
use serde::{Deserialize, Serialize};
use significance::{Interval, McNemar};

pub use llmembed_core::metrics::{
    ClassMetrics, Scores, accuracy_and_macro_f1, confusion_matrix, scores_from_confusion,
};

/// The evaluate stage (see the crate docs).
pub struct Evaluate;

/// Params of [`Evaluate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Display names, one per input, in input order.
    #[serde(default)]
    pub names: Option<Vec<String>>,
    /// The name whose accuracy the others are compared against.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Free text shown at the top of the report.
    #[serde(default)]
    pub notes: Option<String>,
    /// Bootstrap resamples of the test rows for the confidence intervals (at least 1,000).
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Level of the confidence intervals; also `1 - alpha` of the McNemar tests.
    #[serde(default = "default_confidence")]
    pub confidence: f64,
    /// Write the predictions of rows without a label (`unlabelled.jsonl`).
    #[serde(default)]
    pub write_unlabelled: bool,
}

fn default_resamples() -> usize {
    1000
}

fn default_confidence() -> f64 {
    0.95
}

impl Default for EvaluateParams {
    fn default() -> Self {
        EvaluateParams {
            names: None,
            baseline: None,
            notes: None,
            resamples: default_resamples(),
            confidence: default_confidence(),
            write_unlabelled: false,
        }
    }
}

/// One classifier's entry in `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    pub name: String,
    pub stage_id: String,
    pub producer: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Bootstrap confidence interval of the accuracy (see [`significance`]).
    pub accuracy_ci: Interval,
    pub macro_f1_ci: Interval,
    pub per_class: Vec<ClassMetrics>,
    pub confusion: Vec<Vec<u64>>,
    pub vs_baseline: Option<VsBaseline>,
}

/// Comparison of one classifier with the baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VsBaseline {
    pub baseline: String,
    /// This accuracy minus the baseline's.
    pub delta_accuracy: f64,
    /// Strictly higher accuracy than the baseline.
    pub beats: bool,
    /// This classifier (`a`) against the baseline (`b`) on the same rows.
    pub mcnemar: McNemar,
    /// The McNemar p-value is below `1 - confidence`.
    pub significant: bool,
}

/// How the intervals were drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BootstrapSettings {
    pub resamples: usize,
    pub confidence: f64,
    pub seed: u64,
}

/// The whole of `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsFile {
    pub label_names: Vec<String>,
    /// The rows scored: those with a label.
    pub n_rows: usize,
    /// Rows without a label, ignored (absent when there are none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlabelled_rows: usize,
    pub baseline: Option<String>,
    pub notes: Option<String>,
    pub classifiers: Vec<ClassifierMetrics>,
    pub bootstrap: BootstrapSettings,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One line of `unlabelled.jsonl`.
#[derive(Serialize)]
struct UnlabelledLine<'a> {
    classifier: &'a str,
    split: &'a str,
    id: &'a str,
    pred: &'a str,
    probability: f32,
}

/// The rows of `pr` that have a label (`pr` itself when all have one).
fn labelled_rows(pr: &Predictions) -> Predictions {
    if !pr.labels.contains(&UNLABELLED) {
        return pr.clone();
    }
    let keep: Vec<usize> = (0..pr.len())
        .filter(|&i| pr.labels[i] != UNLABELLED)
        .collect();
    Predictions {
        ids: keep.iter().map(|&i| pr.ids[i].clone()).collect(),
        labels: keep.iter().map(|&i| pr.labels[i]).collect(),
        preds: keep.iter().map(|&i| pr.preds[i]).collect(),
        probs: keep
            .iter()
            .flat_map(|&i| pr.row_probs(i).iter().copied())
            .collect(),
        label_names: pr.label_names.clone(),
        producer: pr.producer.clone(),
    }
}

/// `unlabelled.jsonl`: the unlabelled rows of each input's test predictions (`preds`, already
/// read) and of its other splits' predictions files.
fn unlabelled_jsonl(inputs: &[Input], preds: &[Predictions], names: &[String]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for ((input, test), name) in inputs.iter().zip(preds).zip(names) {
        let mut others: Vec<(&str, &String)> = input
            .files
            .iter()
            .filter_map(|f| Some((parse_predictions_file(f)?, f)))
            .filter(|(split, _)| *split != "test")
            .collect();
        others.sort();
        let mut splits: Vec<(&str, Cow<'_, Predictions>)> = vec![("test", Cow::Borrowed(test))];
        for (split, file) in others {
            let path = input.path(file)?;
            let pr = read_predictions(&path)?;
            validate(&pr, &path)?;
            splits.push((split, Cow::Owned(pr)));
        }
        for (split, pr) in &splits {
            for i in (0..pr.len()).filter(|&i| pr.labels[i] == UNLABELLED) {
                let pred = pr.preds[i] as usize;
                let line = UnlabelledLine {
                    classifier: name,
                    split,
                    id: &pr.ids[i],
                    pred: &pr.label_names[pred],
                    probability: pr.row_probs(i)[pred],
                };
                serde_json::to_writer(&mut out, &line)
                    .map_err(|e| Error::compute("serialize unlabelled.jsonl", e))?;
                out.push(b'\n');
            }
        }
    }
    Ok(out)
}

impl Stage for Evaluate {
    const KIND: &'static str = "evaluate";
    // 2: confidence intervals and McNemar tests in metrics.json and report.md.
    const VERSION: u32 = 2;
    const INPUTS: Arity = Arity::AtLeast(1);
    // The bootstrap draws with the pipeline's seed.
    const SEEDED: bool = true;
    type Params = EvaluateParams;

    fn check(p: &EvaluateParams) -> Result<()> {
        if p.resamples < 1000 {
            return Err(Error::param(
                "resamples",
                format!(
                    "{} is too few for a 95% interval: give at least 1000",
                    p.resamples
                ),
            ));
        }
        if !(p.confidence > 0.5 && p.confidence < 1.0) {
            return Err(Error::param(
                "confidence",
                format!(
                    "{} is not a level between 0.5 and 1 (e.g. 0.95)",
                    p.confidence
                ),
            ));
        }
        if let Some(names) = &p.names {
            let mut seen = HashSet::new();
            for n in names {
                if n.trim().is_empty() {
                    return Err(Error::param("names", "empty name"));
                }
                if !seen.insert(n) {
                    return Err(Error::param("names", format!("`{n}` repeats")));
                }
            }
            if let Some(b) = &p.baseline
                && !names.contains(b)
            {
                return Err(Error::param(
                    "baseline",
                    format!("`{b}` is not one of `names` ({})", names.join(", ")),
                ));
            }
        }
        if let Some(b) = &p.baseline
            && b.trim().is_empty()
        {
            return Err(Error::param("baseline", "empty"));
        }
        Ok(())
    }

    fn check_inputs(p: &EvaluateParams, inputs: usize) -> Result<()> {
        match &p.names {
            Some(names) if names.len() != inputs => Err(Error::param(
                "names",
                format!(
                    "{} names for {inputs} inputs: give one per input, in input order",
                    names.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    fn run(p: &EvaluateParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        if inputs.is_empty() {
            return Err(Error::mismatch("evaluate", "no inputs"));
        }
        let mut preds = Vec::with_capacity(inputs.len());
        for input in inputs {
            let path = input.path("predictions.parquet")?;
            let pr = read_predictions(&path)?;
            validate(&pr, &path)?;
            preds.push(pr);
        }
        check_same_rows(inputs, &preds)?;
        let names = display_names(p, inputs, &preds)?;
        let files = png_names(&names)?;

        let label_names = preds[0].label_names.clone();
        if p.write_unlabelled {
            let lines = unlabelled_jsonl(inputs, &preds, &names)?;
            write_bytes_atomic(&ctx.out("unlabelled.jsonl"), &lines)?;
        }
        // Every classifier in the order of the first input's rows, so that the bootstrap draws
        // the same rows for each and McNemar pairs them; only rows with a label are scored (the
        // inputs agree on which: `check_same_rows`).
        let unlabelled_rows = preds[0].labels.iter().filter(|&&l| l == UNLABELLED).count();
        let preds: Vec<Predictions> = preds
            .iter()
            .map(|pr| labelled_rows(&in_order_of(&preds[0], pr)))
            .collect();
        if preds[0].is_empty() {
            return Err(Error::schema(
                &inputs[0].path("predictions.parquet")?,
                "label",
                format!("no labelled rows to score ({unlabelled_rows} rows without a label)"),
            ));
        }
        let mut classifiers: Vec<ClassifierMetrics> = preds
            .iter()
            .zip(inputs)
            .zip(&names)
            .map(|((pr, input), name)| {
                let s = scores_from_confusion(
                    confusion_matrix(&pr.labels, &pr.preds, label_names.len()),
                    &label_names,
                );
                let ci = significance::bootstrap(
                    &pr.labels,
                    &pr.preds,
                    label_names.len(),
                    p.resamples,
                    p.confidence,
                    &mut llmembed_core::seeded_rng(ctx.seed, "evaluate bootstrap"),
                );
                ClassifierMetrics {
                    name: name.clone(),
                    stage_id: input.stage_id.clone(),
                    producer: pr.producer.clone(),
                    accuracy: s.accuracy,
                    macro_f1: s.macro_f1,
                    accuracy_ci: ci.accuracy,
                    macro_f1_ci: ci.macro_f1,
                    per_class: s.per_class,
                    confusion: s.confusion,
                    vs_baseline: None,
                }
            })
            .collect();

        if let Some(b) = &p.baseline {
            let base_at = classifiers.iter().position(|c| &c.name == b);
            let base = base_at.map(|i| classifiers[i].accuracy).ok_or_else(|| {
                Error::param(
                    "baseline",
                    format!("`{b}` is not one of the names ({})", names.join(", ")),
                )
            })?;
            let base_preds = &preds[base_at.expect("found above")];
            for (c, pr) in classifiers.iter_mut().zip(&preds) {
                if &c.name == b {
                    continue;
                }
                let mcnemar = significance::mcnemar_exact(&pr.labels, &pr.preds, &base_preds.preds);
                c.vs_baseline = Some(VsBaseline {
                    baseline: b.clone(),
                    delta_accuracy: c.accuracy - base,
                    beats: c.accuracy > base,
                    significant: mcnemar.p_value < 1.0 - p.confidence,
                    mcnemar,
                });
            }
        }

        let file = MetricsFile {
            label_names: label_names.clone(),
            n_rows: preds[0].len(),
            unlabelled_rows,
            baseline: p.baseline.clone(),
            notes: p.notes.clone(),
            classifiers,
            bootstrap: BootstrapSettings {
                resamples: p.resamples,
                confidence: p.confidence,
                seed: ctx.seed,
            },
        };
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::compute("serialize metrics.json", e))?;
        write_bytes_atomic(&ctx.out("metrics.json"), &json)?;

        for (c, png_file) in file.classifiers.iter().zip(&files) {
            let title = format!(
                "{}: accuracy {:.4}, macro-F1 {:.4}",
                c.name, c.accuracy, c.macro_f1
            );
            let bytes = plot::confusion_png(&title, &label_names, &c.confusion)?;
            write_bytes_atomic(&ctx.out(png_file), &bytes)?;
        }
        let report = report::render(&file, &files);
        write_bytes_atomic(&ctx.out("report.md"), report.as_bytes())?;

        let mut summary = Summary {
            rows_out: file.classifiers.len(),
            notes: Vec::new(),
            ..Default::default()
        };
        if unlabelled_rows > 0 {
            summary.notes.push(format!(
                "{unlabelled_rows} rows without a label ignored (scored {})",
                file.n_rows
            ));
        }
        for c in &file.classifiers {
            summary.notes.push(format!(
                "{}: accuracy {:.4}, macro-F1 {:.4}",
                c.name, c.accuracy, c.macro_f1
            ));
        }
        Ok(summary)
    }
}

/// `pr`'s rows in the order of `first`'s ids (both cover the same ids: `check_same_rows`).
fn in_order_of(first: &Predictions, pr: &Predictions) -> Predictions {
    let at: HashMap<&str, usize> = pr
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let order: Vec<usize> = first.ids.iter().map(|id| at[id.as_str()]).collect();
    let mut out = pr.clone();
    out.ids = order.iter().map(|&i| pr.ids[i].clone()).collect();
    out.labels = order.iter().map(|&i| pr.labels[i]).collect();
    out.preds = order.iter().map(|&i| pr.preds[i]).collect();
    let c = pr.num_classes();
    out.probs = order
        .iter()
        .flat_map(|&i| pr.probs[i * c..(i + 1) * c].iter().copied())
        .collect();
    out
}

/// Labels (or `UNLABELLED`) and predictions inside the label set, ids unique, some rows.
fn validate(pr: &Predictions, path: &std::path::Path) -> Result<()> {
    if pr.is_empty() {
        return Err(Error::schema(path, "id", "no rows to evaluate"));
    }
    if pr.label_names.is_empty() {
        return Err(Error::schema(path, "label", "no label names"));
    }
    let n = pr.num_classes() as i64;
    let mut seen = HashSet::with_capacity(pr.len());
    for row in 0..pr.len() {
        if !seen.insert(pr.ids[row].as_str()) {
            return Err(Error::row(
                path,
                row,
                "id",
                format!("id `{}` repeats", pr.ids[row]),
            ));
        }
        for (field, v) in [("label", pr.labels[row]), ("pred", pr.preds[row])] {
            let allowed = (0..n).contains(&v) || (field == "label" && v == UNLABELLED);
            if !allowed {
                return Err(Error::row(
                    path,
                    row,
                    field,
                    format!("class {v} is outside the {n} label names"),
                ));
            }
        }
    }
    Ok(())
}

/// Every input has the first one's label names and the same ids with the same true labels.
fn check_same_rows(inputs: &[Input], preds: &[Predictions]) -> Result<()> {
    let first = &preds[0];
    let truth: HashMap<&str, i64> = first
        .ids
        .iter()
        .map(String::as_str)
        .zip(first.labels.iter().copied())
        .collect();
    for (input, pr) in inputs.iter().zip(preds).skip(1) {
        if pr.label_names != first.label_names {
            return Err(Error::mismatch(
                "compare inputs",
                format!(
                    "`{}` has label names {:?} but `{}` has {:?}",
                    input.stage_id, pr.label_names, inputs[0].stage_id, first.label_names
                ),
            ));
        }
        let mut missing_here: Vec<&str> = Vec::new();
        for (id, &label) in pr.ids.iter().zip(&pr.labels) {
            match truth.get(id.as_str()) {
                None => missing_here.push(id),
                Some(&t) if t != label => {
                    return Err(Error::mismatch(
                        "compare inputs",
                        format!(
                            "row `{id}` has true label {label} in `{}` but {t} in `{}`",
                            input.stage_id, inputs[0].stage_id
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let ids: HashSet<&str> = pr.ids.iter().map(String::as_str).collect();
        let mut missing_there: Vec<&str> = first
            .ids
            .iter()
            .map(String::as_str)
            .filter(|id| !ids.contains(id))
            .collect();
        if !missing_here.is_empty() || !missing_there.is_empty() {
            missing_here.sort_unstable();
            missing_there.sort_unstable();
            let show = |v: &[&str]| v.iter().take(5).copied().collect::<Vec<_>>().join(", ");
            return Err(Error::mismatch(
                "compare inputs",
                format!(
                    "`{}` and `{}` cover different rows: {} ids only in `{}` (e.g. {}), {} only \
                     in `{}` (e.g. {})",
                    input.stage_id,
                    inputs[0].stage_id,
                    missing_here.len(),
                    input.stage_id,
                    show(&missing_here),
                    missing_there.len(),
                    inputs[0].stage_id,
                    show(&missing_there),
                ),
            ));
        }
    }
    Ok(())
}

fn display_names(
    p: &EvaluateParams,
    inputs: &[Input],
    preds: &[Predictions],
) -> Result<Vec<String>> {
    if let Some(names) = &p.names {
        Evaluate::check_inputs(p, inputs.len())?;
        return Ok(names.clone());
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for pr in preds {
        *counts.entry(pr.producer.as_str()).or_default() += 1;
    }
    let names: Vec<String> = inputs
        .iter()
        .zip(preds)
        .map(|(input, pr)| {
            if pr.producer.trim().is_empty() || counts[pr.producer.as_str()] > 1 {
                input.stage_id.clone()
            } else {
                pr.producer.clone()
            }
        })
        .collect();
    let mut seen = HashSet::new();
    for n in &names {
        if !seen.insert(n) {
            return Err(Error::param(
                "names",
                format!("default name `{n}` is shared by several inputs; give `names`"),
            ));
        }
    }
    Ok(names)
}

fn file_stem(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn png_names(names: &[String]) -> Result<Vec<String>> {
    let mut by_file: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for n in names {
        let f = format!("confusion_{}.png", file_stem(n));
        if let Some(other) = by_file.insert(f.clone(), n) {
            return Err(Error::param(
                "names",
                format!("`{other}` and `{n}` both give the file name {f}; rename one"),
            ));
        }
        out.push(f);
    }
    Ok(out)
}
