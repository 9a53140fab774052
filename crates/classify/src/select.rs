//! Model selection (`kind: select`): of two or more classifiers, the one whose cross-validation
//! accuracy on the training rows is the highest; its predictions are passed on unchanged (the
//! producer names the choice). Test rows play no part in the choice, so a pipeline can hold many
//! candidate configurations and still report one honest "best by CV" row.
//!
//! The score of each member is the one its own stage recorded for the configuration it kept:
//! `logreg` and `mlp` with `select:` (the CV row of the chosen C or epochs, `model.json`),
//! `layer_sweep` (the chosen layer's CV accuracy, `sweep.json`), `ensemble` (the accuracy of its
//! combination of the members' out-of-fold probabilities, `cv` in `classifier.json`, when its
//! members are logregs or mlps with `select:`). A member without a CV score (a fixed C, an ensemble of
//! other members) is an error naming it; so are other folds (another number of them, or the
//! same number over other rows: each member records its folds' `splits`), since scores over
//! different folds are not comparable. Every member's score is itself the best of its own
//! grid, so the winner's CV accuracy is optimistic; the test rows it is reported on are not.
//! Ties go to the member listed first. The members whose score is within one standard error of
//! the winner's (binomial over the training rows) are named in `selection.json` and the notes:
//! CV cannot tell them from the winner, which the test rows may rank lower.

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Error, Input, Result, Rows, Stage, Summary,
    parse_predictions_file, predictions_file, read_predictions, save_json, write_predictions,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::saved::{META_FILE, load_meta};

/// Params of `kind: select` (inputs: two or more classifiers that recorded a CV score).
///
/// ```yaml
/// kind: select
/// inputs: [mean_lr, concat4_lr, sweep]
/// params: {}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectParams {}

/// `kind: select`.
pub struct Select;

/// One member's recorded cross-validation score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Candidate {
    stage: String,
    kind: String,
    producer: String,
    folds: usize,
    /// The member's CV folds (`folds::CvFolds::splits`; absent from selections saved before
    /// VERSION 2).
    #[serde(default)]
    splits: String,
    cv_accuracy: f64,
    /// The labelled training rows its CV scored (the same for every member: the same splits).
    #[serde(default)]
    rows: usize,
}

/// `selection.json`, and `classifier.json` (with `kind` and `classes`) for the applier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct SelectMeta {
    kind: String,
    candidates: Vec<Candidate>,
    /// Index into `candidates` (and into the inputs) of the chosen member.
    chosen: usize,
    /// One standard error of the chosen member's CV accuracy, `sqrt(a (1 - a) / rows)`.
    #[serde(default)]
    standard_error: f64,
    /// The other members whose CV accuracy is within one standard error of the chosen one's:
    /// CV cannot tell them from the choice (the one-standard-error rule's view), and the test
    /// rows may rank them otherwise. Reported, not used: the choice stays the highest score.
    #[serde(default)]
    within_one_standard_error: Vec<String>,
    classes: Vec<String>,
    producer: String,
}

/// Passes the chosen member's predictions through; the others are ignored.
struct SelectApply {
    meta: SelectMeta,
}

impl Apply for SelectApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        if inputs.len() != self.meta.candidates.len() {
            return Err(Error::mismatch(
                "apply select",
                format!(
                    "{} members, got {} inputs",
                    self.meta.candidates.len(),
                    inputs.len()
                ),
            ));
        }
        match &inputs[self.meta.chosen] {
            Rows::Predictions(p) => {
                let mut p = p.clone();
                p.producer = self.meta.producer.clone();
                Ok(Rows::Predictions(p))
            }
            other => Err(Error::mismatch(
                "apply select",
                format!(
                    "member `{}`: takes predictions, got {} rows",
                    self.meta.candidates[self.meta.chosen].stage,
                    other.kind()
                ),
            )),
        }
    }
}

/// The `field` of `value` as a number, or an error naming the member and the file.
fn number(value: &Value, field: &str, member: &str, file: &str) -> Result<f64> {
    value.get(field).and_then(Value::as_f64).ok_or_else(|| {
        Error::mismatch(
            "select",
            format!("member `{member}`: {file} has no number `{field}`"),
        )
    })
}

/// The `field` of `value` as a string, or an error naming the member and the file.
fn text(value: &Value, field: &str, member: &str, file: &str) -> Result<String> {
    value
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            Error::mismatch(
                "select",
                format!("member `{member}`: {file} has no string `{field}`"),
            )
        })
}

/// The CV score `input` recorded for the configuration it kept.
fn candidate(input: &Input) -> Result<Candidate> {
    let member = input.stage_id.as_str();
    let meta: Value = load_json_of(input, META_FILE)?;
    let kind = meta
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let producer = meta
        .get("producer")
        .and_then(Value::as_str)
        .unwrap_or(member)
        .to_string();
    let no_score = |why: &str| {
        Error::mismatch(
            "select",
            format!(
                "member `{member}` ({kind}) has no cross-validation score: {why}; select compares \
                 logreg or mlp with `select:`, layer_sweep, and ensembles of logregs with \
                 `select:`"
            ),
        )
    };
    let (folds, splits, cv_accuracy, rows) = match kind.as_str() {
        "logreg" | "mlp" => {
            let model: Value = load_json_of(input, "model.json")?;
            let Some(sel) = model.get("select").filter(|s| !s.is_null()) else {
                return Err(no_score("it was fitted without `select:`"));
            };
            let (chosen_field, row_field) = if kind == "logreg" {
                ("best_c", "c")
            } else {
                ("best_epochs", "epochs")
            };
            let chosen = number(sel, chosen_field, member, "model.json select")?;
            let table = sel.get("table").and_then(Value::as_array).ok_or_else(|| {
                Error::mismatch(
                    "select",
                    format!("member `{member}`: model.json select has no `table`"),
                )
            })?;
            let row = table
                .iter()
                .find(|r| r.get(row_field).and_then(Value::as_f64) == Some(chosen))
                .ok_or_else(|| {
                    Error::mismatch(
                        "select",
                        format!(
                            "member `{member}`: model.json's CV table has no row for \
                             {row_field} = {chosen}"
                        ),
                    )
                })?;
            (
                number(sel, "folds", member, "model.json select")? as usize,
                text(sel, "splits", member, "model.json select")?,
                number(row, "mean_accuracy", member, "model.json CV row")?,
                number(&model, "train_rows", member, "model.json")?,
            )
        }
        "layer_sweep" => {
            let sweep: Value = load_json_of(input, "sweep.json")?;
            let chosen = number(&sweep, "chosen_layer", member, "sweep.json")?;
            let row = sweep
                .get("layers")
                .and_then(Value::as_array)
                .and_then(|rows| {
                    rows.iter()
                        .find(|r| r.get("layer").and_then(Value::as_f64) == Some(chosen))
                })
                .ok_or_else(|| {
                    Error::mismatch(
                        "select",
                        format!("member `{member}`: sweep.json has no row for layer {chosen}"),
                    )
                })?;
            (
                number(&sweep, "folds", member, "sweep.json")? as usize,
                text(&sweep, "splits", member, "sweep.json")?,
                number(row, "cv_accuracy", member, "sweep.json layer row")?,
                number(&sweep, "train_rows", member, "sweep.json")?,
            )
        }
        "ensemble" => {
            let Some(cv) = meta.get("cv").filter(|c| !c.is_null()) else {
                return Err(no_score(
                    "not every member kept out-of-fold probabilities over the same folds \
                     (logreg or mlp with `select:`, the same `folds`, the same training rows)",
                ));
            };
            (
                number(cv, "folds", member, "classifier.json cv")? as usize,
                text(cv, "splits", member, "classifier.json cv")?,
                number(cv, "accuracy", member, "classifier.json cv")?,
                number(cv, "rows", member, "classifier.json cv")?,
            )
        }
        _ => return Err(no_score("its kind records none")),
    };
    Ok(Candidate {
        stage: member.to_string(),
        kind,
        producer,
        folds,
        splits,
        cv_accuracy,
        rows: rows as usize,
    })
}

fn load_json_of(input: &Input, file: &str) -> Result<Value> {
    llmembed_core::load_json(&input.path(file)?)
}

/// The index of the best candidate: highest CV accuracy, ties to the first listed.
fn best(candidates: &[Candidate]) -> usize {
    let mut chosen = 0;
    for (i, c) in candidates.iter().enumerate().skip(1) {
        if c.cv_accuracy > candidates[chosen].cv_accuracy {
            chosen = i;
        }
    }
    chosen
}

impl Stage for Select {
    const KIND: &'static str = "select";
    // 2: each candidate's `splits` in selection.json, and members scored on other splits are an
    // error, as another number of folds was.
    const VERSION: u32 = 2;
    const INPUTS: Arity = Arity::AtLeast(2);
    type Params = SelectParams;

    fn run(_p: &SelectParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        if !Self::INPUTS.accepts(inputs.len()) {
            return Err(Error::mismatch(
                "select",
                format!("needs {}, got {}", Self::INPUTS, inputs.len()),
            ));
        }
        let candidates = inputs.iter().map(candidate).collect::<Result<Vec<_>>>()?;
        // Other splits are another number of folds, or the same number over other rows (or
        // drawn with another seed): say which.
        let first = &candidates[0];
        if let Some(other) = candidates.iter().find(|c| c.splits != first.splits) {
            let why = if other.folds != first.folds {
                format!(
                    "member `{}` was scored over {} folds, `{}` over {}: give every member the \
                     same `folds`",
                    other.stage, other.folds, first.stage, first.folds
                )
            } else {
                format!(
                    "member `{}` was scored on other folds than `{}` (splits {} and {}: the \
                     same number of folds over other training rows, or drawn with another \
                     seed): give every member the same training rows",
                    other.stage, first.stage, other.splits, first.splits
                )
            };
            return Err(Error::mismatch("select", why));
        }
        let chosen = best(&candidates);
        let winner = &candidates[chosen];
        let producer = format!(
            "select({} by {}-fold CV accuracy {:.4}: {})",
            winner.stage, winner.folds, winner.cv_accuracy, winner.producer
        );
        let source = &inputs[chosen];
        let mut rows_out = 0;
        let mut classes = Vec::new();
        for file in source
            .files
            .iter()
            .filter(|f| parse_predictions_file(f).is_some())
        {
            let mut preds = read_predictions(&source.path(file)?)?;
            preds.producer = producer.clone();
            rows_out += preds.len();
            classes = preds.label_names.clone();
            write_predictions(&ctx.out(file), &preds)?;
        }
        if classes.is_empty() {
            // Every classifier writes the test split's predictions; say which file is missing.
            source.path(&predictions_file("test"))?;
        }
        let a = candidates[chosen].cv_accuracy;
        let standard_error = (a * (1.0 - a) / candidates[chosen].rows.max(1) as f64).sqrt();
        let within_one_standard_error: Vec<String> = candidates
            .iter()
            .enumerate()
            .filter(|&(i, c)| i != chosen && a - c.cv_accuracy <= standard_error)
            .map(|(_, c)| c.stage.clone())
            .collect();
        let meta = SelectMeta {
            kind: Self::KIND.into(),
            candidates,
            chosen,
            standard_error,
            within_one_standard_error,
            classes,
            producer,
        };
        save_json(&ctx.out("selection.json"), &meta)?;
        save_json(&ctx.out(META_FILE), &meta)?;
        let mut notes: Vec<String> = meta
            .candidates
            .iter()
            .map(|c| format!("{}: CV accuracy {:.4}", c.stage, c.cv_accuracy))
            .collect();
        notes.push(format!("chose `{}`", meta.candidates[chosen].stage));
        if !meta.within_one_standard_error.is_empty() {
            notes.push(format!(
                "near-tie: {} within one standard error ({:.4}, over {} rows) of the chosen CV \
                 accuracy; CV cannot tell them apart, and the test rows may rank them otherwise",
                meta.within_one_standard_error
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                meta.standard_error,
                meta.candidates[chosen].rows
            ));
        }
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    fn applier(
        _p: &SelectParams,
        fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        let meta: SelectMeta = load_meta(fitted, Self::KIND)?;
        Ok(Some(Box::new(SelectApply { meta })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(stage: &str, cv: f64) -> Candidate {
        Candidate {
            stage: stage.into(),
            kind: "logreg".into(),
            producer: String::new(),
            folds: 5,
            splits: String::new(),
            cv_accuracy: cv,
            rows: 800,
        }
    }

    #[test]
    fn best_is_highest_cv_and_ties_go_to_the_first() {
        assert_eq!(best(&[cand("a", 0.8), cand("b", 0.9), cand("c", 0.85)]), 1);
        assert_eq!(best(&[cand("a", 0.9), cand("b", 0.9)]), 0);
    }
}
