//! Ensembles of predictions (`kind: ensemble`): `soft` averages the members' class probabilities
//! and predicts the argmax; `hard` takes a majority vote of the members' predicted labels, ties
//! broken by the summed probability of the tied classes (then by the lower class index). In both
//! cases `probs` holds the members' averaged probabilities, so for `hard` the `pred` column (the
//! vote) can differ from `argmax(probs)`. `geometric` averages the members' log-probabilities
//! (a product of experts: a class one member finds unlikely loses more than under `soft`),
//! predicts the argmax and gives the normalised geometric mean as `probs`; a probability below
//! [`PROB_FLOOR`] counts as the floor, so that one member's underflow to zero is a strong vote
//! against the class rather than an infinite one. `stack` fits a logistic regression on the
//! members' log-probabilities from their out-of-fold probabilities of the training rows, and
//! predicts with it ([`crate::stack`]): it needs what the CV score below needs.
//!
//! Members must cover the same ids (any order; output follows the first member's order), with the
//! same label names and the same true labels.
//!
//! When every member kept its training rows' out-of-fold probabilities (`logreg` or `mlp` with
//! `select:`, all with the same number of folds), the ensemble combines those the same way and
//! records the accuracy (`cv` in `classifier.json`): the score `select` compares it by, from
//! training rows only. Each row's probabilities come from fits that did not see it, but each
//! member's C (or epochs) was chosen on the same folds, so, as for any member's own CV score, it
//! is a little optimistic.

use std::collections::HashMap;

use llmembed_core::{
    Apply, ApplyEnv, Arity, Context, Error, Input, Predictions, Result, Rows, Stage, Summary,
    parse_predictions_file, predictions_file, read_predictions, save_json, write_predictions,
};
use serde::{Deserialize, Serialize};

use crate::folds::cv_folds;
use crate::logreg_fit::check_c;
use crate::prologue::{
    CV_PREDICTIONS_FILE, grid_edge_note, predictions_like, scored, scored_accuracy,
};
use crate::saved::{META_FILE, load_meta};
use crate::stack::{self, StackModel};

/// How members are combined: `soft` (mean probability), `hard` (majority vote), `geometric`
/// (mean log-probability), `stack` (a logistic regression on the members' log-probabilities,
/// fitted on their out-of-fold probabilities: [`crate::stack`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnsembleMethod {
    Soft,
    Hard,
    Geometric,
    Stack,
}

impl EnsembleMethod {
    /// The name in the pipeline file and in a producer.
    pub fn name(self) -> &'static str {
        match self {
            EnsembleMethod::Soft => "soft",
            EnsembleMethod::Hard => "hard",
            EnsembleMethod::Geometric => "geometric",
            EnsembleMethod::Stack => "stack",
        }
    }
}

/// The smallest probability `geometric` takes the logarithm of (see the module docs).
pub const PROB_FLOOR: f64 = 1e-12;

fn default_method() -> EnsembleMethod {
    EnsembleMethod::Soft
}

/// Params of `kind: ensemble` (inputs: two or more prediction artifacts).
///
/// ```yaml
/// kind: ensemble
/// inputs: [lr_layer16, mlp_fused]
/// params:
///   method: soft          # soft (default) | hard | geometric | stack
///   c: [0.01, 0.1, 1.0]   # stack only: the C grid of its logistic regression (default [1.0]),
///                         # chosen by CV over the members' folds
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnsembleParams {
    #[serde(default = "default_method")]
    pub method: EnsembleMethod,
    /// `stack`'s C grid (scikit-learn's inverse L2 strength); absent from the other methods'
    /// params, whose keys stay what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub c: Option<Vec<f64>>,
}

impl Default for EnsembleParams {
    fn default() -> Self {
        EnsembleParams {
            method: default_method(),
            c: None,
        }
    }
}

/// `kind: ensemble`.
pub struct Ensemble;

/// `classifier.json` of `ensemble`: it fits nothing, so this is all an applier needs besides the
/// members' predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EnsembleMeta {
    kind: String,
    method: EnsembleMethod,
    /// The members' names (in the `producer` of the predictions), in input order: an applier
    /// takes the members' predictions in this order.
    members: Vec<String>,
    classes: Vec<String>,
    producer: String,
    /// The out-of-fold score, when every member has out-of-fold probabilities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cv: Option<EnsembleCv>,
    /// `stack`'s fitted regression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stack: Option<StackModel>,
}

/// An ensemble's cross-validation score: the accuracy of its combination of the members'
/// out-of-fold probabilities over the labelled training rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct EnsembleCv {
    folds: usize,
    /// The members' common `folds::CvFolds::splits` (absent from ensembles saved before
    /// VERSION 4).
    #[serde(default)]
    splits: String,
    accuracy: f64,
    rows: usize,
}

/// The ensemble loaded: the members' predictions in, their combination out.
struct EnsembleApply {
    meta: EnsembleMeta,
}

impl Apply for EnsembleApply {
    fn apply(&self, inputs: &[Rows]) -> Result<Rows> {
        if inputs.len() != self.meta.members.len() {
            return Err(Error::mismatch(
                "apply ensemble",
                format!(
                    "{} members ({}), got {} inputs",
                    self.meta.members.len(),
                    self.meta.members.join(", "),
                    inputs.len()
                ),
            ));
        }
        let mut members = Vec::with_capacity(inputs.len());
        for (name, rows) in self.meta.members.iter().zip(inputs) {
            let Rows::Predictions(p) = rows else {
                return Err(Error::mismatch(
                    "apply ensemble",
                    format!(
                        "member `{name}`: takes predictions, got {} rows",
                        rows.kind()
                    ),
                ));
            };
            members.push((name.clone(), p.clone()));
        }
        Ok(Rows::Predictions(match &self.meta.stack {
            Some(stack) => stacked(stack, &members)?,
            None => combine(self.meta.method, &members)?,
        }))
    }
}

/// Reads every member's predictions of one split (`file`), named as in the producer.
fn read_members(inputs: &[Input], file: &str) -> Result<Vec<(String, Predictions)>> {
    let mut members = Vec::new();
    for input in inputs {
        let preds = read_predictions(&input.path(file)?)?;
        let name = if preds.producer.is_empty() {
            input.stage_id.clone()
        } else {
            format!("{} [{}]", input.stage_id, preds.producer)
        };
        members.push((name, preds));
    }
    Ok(members)
}

/// The splits besides test whose predictions every member has (sorted).
fn shared_other_splits(inputs: &[Input]) -> Vec<String> {
    let splits_of = |input: &Input| -> Vec<String> {
        let mut v: Vec<String> = input
            .files
            .iter()
            .filter_map(|f| parse_predictions_file(f))
            .filter(|s| *s != "test")
            .map(String::from)
            .collect();
        v.sort();
        v
    };
    let mut shared = inputs.first().map(splits_of).unwrap_or_default();
    for input in &inputs[1..] {
        let theirs = splits_of(input);
        shared.retain(|s| theirs.contains(s));
    }
    shared
}

/// The members' common CV folds, as (number, `splits`), when every member kept out-of-fold
/// probabilities ([`CV_PREDICTIONS_FILE`], with `select.folds` and `select.splits` in its
/// `model.json`) over the same splits of the same training rows; `None` otherwise: rows that
/// one member's fold fit saw may be out of fold for another's, and their combination would not
/// be an out-of-fold score.
fn out_of_fold_splits(inputs: &[Input]) -> Result<Option<(usize, String)>> {
    let mut common: Option<(u64, String)> = None;
    for input in inputs {
        if !input.files.iter().any(|f| f == CV_PREDICTIONS_FILE) {
            return Ok(None);
        }
        let model: serde_json::Value = llmembed_core::load_json(&input.path("model.json")?)?;
        let (Some(folds), Some(splits)) = (
            model["select"]["folds"].as_u64(),
            model["select"]["splits"].as_str(),
        ) else {
            return Ok(None);
        };
        // The same splits are the same number of folds too (`splits` hashes each fold's rows).
        if common.as_ref().is_some_and(|(_, s)| s != splits) {
            return Ok(None);
        }
        common = Some((folds, splits.to_string()));
    }
    Ok(common.map(|(f, s)| (f as usize, s)))
}

/// Per member, the member's row of each of the first member's rows, after checking that the
/// members cover the same ids with the same label names and true labels and predict classes
/// that exist.
pub(crate) fn align(members: &[(String, Predictions)]) -> Result<Vec<Vec<usize>>> {
    let (first_name, first) = members
        .first()
        .ok_or_else(|| Error::mismatch("ensemble", "no members"))?;
    if members.len() < 2 {
        return Err(Error::mismatch("ensemble", "needs at least 2 members"));
    }
    let k = first.num_classes();
    let n = first.len();
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (i, id) in first.ids.iter().enumerate() {
        if index.insert(id.as_str(), i).is_some() {
            return Err(Error::mismatch(
                "ensemble",
                format!("member `{first_name}` has id `{id}` twice"),
            ));
        }
    }
    let mut order = Vec::with_capacity(members.len());
    for (name, m) in members {
        if m.label_names != first.label_names {
            return Err(Error::mismatch(
                "ensemble",
                format!(
                    "member `{name}` has label names {:?}, member `{first_name}` has {:?}",
                    m.label_names, first.label_names
                ),
            ));
        }
        if m.len() != n {
            return Err(Error::mismatch(
                "ensemble",
                format!(
                    "member `{name}` has {} rows, member `{first_name}` has {n}: members must \
                     cover the same ids",
                    m.len()
                ),
            ));
        }
        let mut row_of = vec![usize::MAX; n];
        for (r, id) in m.ids.iter().enumerate() {
            let Some(&i) = index.get(id.as_str()) else {
                return Err(Error::mismatch(
                    "ensemble",
                    format!(
                        "id `{id}` (row {r} of member `{name}`) is not in member `{first_name}`: \
                         members must cover the same ids"
                    ),
                ));
            };
            if row_of[i] != usize::MAX {
                return Err(Error::mismatch(
                    "ensemble",
                    format!("member `{name}` has id `{id}` twice"),
                ));
            }
            row_of[i] = r;
            if m.labels[r] != first.labels[i] {
                return Err(Error::mismatch(
                    "ensemble",
                    format!(
                        "id `{id}`: true label {} in member `{name}` but {} in `{first_name}`",
                        m.labels[r], first.labels[i]
                    ),
                ));
            }
            let pred = m.preds[r];
            if pred < 0 || pred as usize >= k {
                return Err(Error::mismatch(
                    "ensemble",
                    format!("id `{id}`: member `{name}` predicts class {pred} outside 0..{k}"),
                ));
            }
        }
        order.push(row_of);
    }
    Ok(order)
}

/// Combines `members` (named for messages) into one set of predictions by `soft`, `hard` or
/// `geometric` voting (`stack` combines through its fitted model: [`crate::stack`]).
pub(crate) fn combine(
    method: EnsembleMethod,
    members: &[(String, Predictions)],
) -> Result<Predictions> {
    if method == EnsembleMethod::Stack {
        return Err(Error::mismatch(
            "ensemble",
            "`stack` combines through its fitted model, not by voting",
        ));
    }
    let order = align(members)?;
    let first = &members[0].1;
    let (k, n) = (first.num_classes(), first.len());
    // Per row and class, the sum over members of what the method averages: the probability
    // (`soft`, and `hard`'s tie-break) or its logarithm (`geometric`).
    let term = |p: f32| match method {
        EnsembleMethod::Geometric => (p as f64).max(PROB_FLOOR).ln(),
        _ => p as f64,
    };
    let mut sums = vec![0f64; n * k];
    let mut votes = vec![0u32; n * k];
    for ((_, m), row_of) in members.iter().zip(&order) {
        for (i, &r) in row_of.iter().enumerate() {
            votes[i * k + m.preds[r] as usize] += 1;
            for (s, &p) in sums[i * k..(i + 1) * k].iter_mut().zip(m.row_probs(r)) {
                *s += term(p);
            }
        }
    }
    let mut preds = Vec::with_capacity(n);
    for i in 0..n {
        let ss = &sums[i * k..(i + 1) * k];
        let vs = &votes[i * k..(i + 1) * k];
        let mut best = 0;
        for j in 1..k {
            let better = match method {
                EnsembleMethod::Hard => vs[j] > vs[best] || (vs[j] == vs[best] && ss[j] > ss[best]),
                _ => ss[j] > ss[best],
            };
            if better {
                best = j;
            }
        }
        preds.push(best as i64);
    }
    let m = members.len() as f64;
    let probs = match method {
        EnsembleMethod::Geometric => sums
            .chunks_exact(k)
            .flat_map(|logs| geometric_mean(logs, m))
            .collect(),
        _ => sums.iter().map(|&s| (s / m) as f32).collect(),
    };
    Ok(Predictions {
        ids: first.ids.clone(),
        labels: first.labels.clone(),
        preds,
        probs,
        label_names: first.label_names.clone(),
        producer: format!("ensemble({}: {})", method.name(), member_names(members)),
    })
}

/// The members' names, in order, as producers list them.
fn member_names(members: &[(String, Predictions)]) -> String {
    let names: Vec<&str> = members.iter().map(|(n, _)| n.as_str()).collect();
    names.join(", ")
}

/// A stack's producer: its C and its members.
fn stack_producer(c: f64, members: &[(String, Predictions)]) -> String {
    format!("ensemble(stack, C={c}: {})", member_names(members))
}

/// The stack's predictions of the members' rows (in the first member's order); members of
/// another number or width than it was fitted on are refused by [`StackModel::probabilities`].
fn stacked(model: &StackModel, members: &[(String, Predictions)]) -> Result<Predictions> {
    let order = align(members)?;
    let first = &members[0].1;
    let probs = model.probabilities(stack::features(members, &order).view())?;
    Ok(predictions_like(
        first,
        probs,
        stack_producer(model.c, members),
    ))
}

/// Fits `stack` on the members' out-of-fold probabilities ([`CV_PREDICTIONS_FILE`], over
/// `folds` folds whose `splits` every member names): the model, and its own out-of-fold
/// predictions at the chosen C.
fn fit_stack(
    inputs: &[Input],
    grid: &[f64],
    folds: usize,
    splits: &str,
    seed: u64,
) -> Result<(StackModel, Predictions)> {
    let members = read_members(inputs, CV_PREDICTIONS_FILE)?;
    let order = align(&members)?;
    let first = &members[0].1;
    // Every row of an out-of-fold file is a labelled training row; rows that are not (a file
    // made otherwise) would not give back the members' splits, refused just below.
    let cv = cv_folds(&first.ids, &first.labels, folds, seed);
    if cv.splits != splits {
        return Err(Error::mismatch(
            "fit stack",
            format!(
                "the members' out-of-fold rows do not give back their folds (splits {} drawn \
                 with the pipeline's seed {seed}, the members name {splits}): were they fitted \
                 with another seed or on other rows?",
                cv.splits
            ),
        ));
    }
    let x = stack::features(&members, &order);
    let fitted = stack::fit(
        x.view(),
        &first.labels,
        first.num_classes(),
        members.len(),
        &cv,
        grid,
    )?;
    let producer = format!("{}, out of fold", stack_producer(fitted.model.c, &members));
    let out_of_fold = predictions_like(first, fitted.out_of_fold, producer);
    Ok((fitted.model, out_of_fold))
}

/// One row's geometric mean of its `members` members' probabilities, normalised to sum to one,
/// from the sums of their logarithms `logs`: a softmax of the mean logarithms.
fn geometric_mean(logs: &[f64], members: f64) -> Vec<f32> {
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = logs.iter().map(|&l| ((l - top) / members).exp()).collect();
    let total: f64 = exp.iter().sum();
    exp.iter().map(|&e| (e / total) as f32).collect()
}

impl Stage for Ensemble {
    const KIND: &'static str = "ensemble";
    // 2: `classifier.json` (method, members) for its applier, and the predictions of the other
    // splits every member has; predictions.parquet keeps its bytes. 3: the out-of-fold score
    // (`cv`) and `cv_predictions.parquet` when every member has out-of-fold probabilities. 4:
    // only over the same splits (`cv.splits`), not just the same number of folds.
    const VERSION: u32 = 4;
    const INPUTS: Arity = Arity::AtLeast(2);
    type Params = EnsembleParams;

    fn check(p: &EnsembleParams) -> Result<()> {
        match (&p.c, p.method) {
            (Some(grid), EnsembleMethod::Stack) => {
                if grid.is_empty() {
                    return Err(Error::param("c", "the grid is empty"));
                }
                grid.iter().try_for_each(|&c| check_c("c", c))
            }
            (Some(_), method) => Err(Error::param(
                "c",
                format!(
                    "only `method: stack` fits a regression with a C; `{}` has none",
                    method.name()
                ),
            )),
            (None, _) => Ok(()),
        }
    }

    fn run(p: &EnsembleParams, inputs: &[Input], ctx: &Context) -> Result<Summary> {
        if !Self::INPUTS.accepts(inputs.len()) {
            return Err(Error::mismatch(
                "ensemble",
                format!("needs {}, got {}", Self::INPUTS, inputs.len()),
            ));
        }
        let out_of_fold = out_of_fold_splits(inputs)?;
        // `stack` is fitted first: every split's predictions come from its model.
        let (stack_model, stack_cv) = match (p.method, &out_of_fold) {
            (EnsembleMethod::Stack, Some((folds, splits))) => {
                let grid = p.c.clone().unwrap_or_else(stack::default_grid);
                let (model, cv) = fit_stack(inputs, &grid, *folds, splits, ctx.env.seed)?;
                (Some(model), Some(cv))
            }
            (EnsembleMethod::Stack, None) => {
                return Err(Error::mismatch(
                    "ensemble",
                    "`method: stack` is fitted on its members' out-of-fold probabilities: every \
                     member must keep them (logreg or mlp with `select:`, the same `folds`, the \
                     same training rows)",
                ));
            }
            _ => (None, None),
        };
        let combined = |members: &[(String, Predictions)]| match &stack_model {
            Some(model) => stacked(model, members),
            None => combine(p.method, members),
        };
        let members = read_members(inputs, &predictions_file("test"))?;
        let out = combined(&members)?;
        write_predictions(&ctx.out(&predictions_file("test")), &out)?;
        let mut rows_out = out.len();
        for split in shared_other_splits(inputs) {
            let file = predictions_file(&split);
            let split_out = combined(&read_members(inputs, &file)?)?;
            write_predictions(&ctx.out(&file), &split_out)?;
            rows_out += split_out.len();
        }
        let cv = match out_of_fold {
            Some((folds, splits)) => {
                let combined = match stack_cv {
                    Some(cv) => cv,
                    None => combine(p.method, &read_members(inputs, CV_PREDICTIONS_FILE)?)?,
                };
                write_predictions(&ctx.out(CV_PREDICTIONS_FILE), &combined)?;
                // Scored on the rows that have a label, as `evaluate` scores.
                Some(EnsembleCv {
                    folds,
                    splits,
                    accuracy: scored_accuracy(&combined.labels, &combined.preds),
                    rows: scored(&combined.labels, &combined.preds).0.len(),
                })
            }
            None => None,
        };
        save_json(
            &ctx.out(META_FILE),
            &EnsembleMeta {
                kind: Self::KIND.into(),
                method: p.method,
                members: members.iter().map(|(n, _)| n.clone()).collect(),
                classes: out.label_names.clone(),
                producer: out.producer.clone(),
                cv: cv.clone(),
                stack: stack_model.clone(),
            },
        )?;
        let acc = scored_accuracy(&out.labels, &out.preds);
        let mut notes = vec![format!(
            "{} members, {} combination, accuracy {acc:.4}",
            members.len(),
            p.method.name()
        )];
        if let Some(model) = &stack_model {
            let grid: Vec<f64> = model.cv.iter().map(|r| r.c).collect();
            notes.push(format!(
                "stack: C {} by CV over the members' folds{}",
                model.c,
                if model.converged {
                    ""
                } else {
                    " (the final fit stopped short of its tolerance)"
                }
            ));
            notes.extend(grid_edge_note("stack C", model.c, &grid));
        }
        notes.push(match &cv {
            Some(cv) => format!(
                "{}-fold out-of-fold accuracy {:.4} on {} training rows",
                cv.folds, cv.accuracy, cv.rows
            ),
            None => "no CV score: not every member kept out-of-fold probabilities over the \
                     same folds (logreg or mlp with `select:`, the same `folds`, the same \
                     training rows)"
                .into(),
        });
        Ok(Summary {
            rows_out,
            notes,
            ..Default::default()
        })
    }

    fn applier(
        _p: &EnsembleParams,
        fitted: &Input,
        _env: &ApplyEnv,
    ) -> Result<Option<Box<dyn Apply>>> {
        let meta: EnsembleMeta = load_meta(fitted, Self::KIND)?;
        Ok(Some(Box::new(EnsembleApply { meta })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(ids: &[&str], preds: &[i64], probs: &[f32]) -> Predictions {
        Predictions {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            labels: vec![0; ids.len()],
            preds: preds.to_vec(),
            probs: probs.to_vec(),
            label_names: vec!["a".into(), "b".into(), "c".into()],
            producer: String::new(),
        }
    }

    #[test]
    fn hard_vote_majority_and_probability_tie_break() {
        // Row x: votes a, b, b -> b. Row y: votes a, c, b (three-way tie) -> highest summed prob.
        let m1 = preds(&["x", "y"], &[0, 0], &[0.6, 0.3, 0.1, 0.4, 0.3, 0.3]);
        let m2 = preds(&["x", "y"], &[1, 2], &[0.2, 0.7, 0.1, 0.1, 0.1, 0.8]);
        let m3 = preds(&["x", "y"], &[1, 1], &[0.1, 0.5, 0.4, 0.3, 0.4, 0.3]);
        let members = vec![
            ("m1".to_string(), m1),
            ("m2".to_string(), m2),
            ("m3".to_string(), m3),
        ];
        let hard = combine(EnsembleMethod::Hard, &members).unwrap();
        // y: summed probs a 0.8, b 0.8, c 1.4 -> c.
        assert_eq!(hard.preds, vec![1, 2]);
        let soft = combine(EnsembleMethod::Soft, &members).unwrap();
        assert_eq!(soft.preds, vec![1, 2]);
        assert!((soft.probs[0] - 0.3).abs() < 1e-6);
    }

    /// Where one member finds a class very unlikely, the product of experts turns from it while
    /// the average does not; the probabilities are the normalised geometric mean.
    #[test]
    fn geometric_mean_weighs_a_confident_no() {
        // Row x: the soft sums are a 1.05, b 0.95, c 1.0 -> a; but member 2 gives a only 0.05,
        // and the products are a 0.0125, b 0.028125, c 0.03125 -> c.
        let m1 = preds(&["x"], &[0], &[0.5, 0.25, 0.25]);
        let m2 = preds(&["x"], &[2], &[0.05, 0.45, 0.5]);
        let m3 = preds(&["x"], &[0], &[0.5, 0.25, 0.25]);
        let members = vec![
            ("m1".to_string(), m1),
            ("m2".to_string(), m2),
            ("m3".to_string(), m3),
        ];
        let soft = combine(EnsembleMethod::Soft, &members).unwrap();
        assert_eq!(soft.preds, vec![0]);
        let geo = combine(EnsembleMethod::Geometric, &members).unwrap();
        let raw = [0.5f64 * 0.05 * 0.5, 0.25 * 0.45 * 0.25, 0.25 * 0.5 * 0.25].map(|p| p.cbrt());
        let total: f64 = raw.iter().sum();
        for (got, want) in geo.probs.iter().zip(raw) {
            assert!((*got as f64 - want / total).abs() < 1e-6, "{:?}", geo.probs);
        }
        assert_eq!(geo.preds, vec![2]);
        assert!(
            geo.producer.starts_with("ensemble(geometric: "),
            "{}",
            geo.producer
        );
        // A zero counts as the floor: finite probabilities, and the class loses.
        let zero = preds(&["x"], &[1], &[0.0, 0.6, 0.4]);
        let geo = combine(
            EnsembleMethod::Geometric,
            &[
                ("m1".to_string(), members[0].1.clone()),
                ("z".to_string(), zero),
            ],
        )
        .unwrap();
        assert!(geo.probs.iter().all(|p| p.is_finite()), "{:?}", geo.probs);
        assert!(
            geo.probs[0] < 1e-5 && geo.preds == vec![1],
            "{:?}",
            geo.probs
        );
    }

    #[test]
    fn members_are_aligned_by_id() {
        let m1 = preds(&["x", "y"], &[0, 2], &[0.9, 0.05, 0.05, 0.1, 0.1, 0.8]);
        let m2 = preds(&["y", "x"], &[2, 0], &[0.1, 0.1, 0.8, 0.9, 0.05, 0.05]);
        let out = combine(
            EnsembleMethod::Soft,
            &[("m1".to_string(), m1), ("m2".to_string(), m2)],
        )
        .unwrap();
        assert_eq!(out.ids, vec!["x", "y"]);
        assert_eq!(out.preds, vec![0, 2]);
        assert!((out.probs[0] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn params_parse_lowercase_methods() {
        let p: EnsembleParams = serde_json::from_str(r#"{"method": "hard"}"#).unwrap();
        assert_eq!(p.method, EnsembleMethod::Hard);
        let p: EnsembleParams = serde_json::from_str(r#"{"method": "geometric"}"#).unwrap();
        assert_eq!(p.method, EnsembleMethod::Geometric);
        assert_eq!(
            serde_json::from_str::<EnsembleParams>("{}").unwrap(),
            EnsembleParams::default()
        );
        let err = serde_json::from_str::<EnsembleParams>(r#"{"method": "Soft"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `Soft`"), "{err}");
    }
}
