//! The check that a split has enough rows of every class for cross-validation, and the
//! training vectors an input made per fold; the folds themselves are `llmembed_core::folds`
//! (a stage before the classifiers draws them too).

use std::path::{Path, PathBuf};

pub(crate) use llmembed_core::folds::{CvFolds, cv_folds, validated_rows};
use llmembed_core::folds::{FoldRows, FoldVectors, check_fold_rows};
use llmembed_core::{Error, Input, Result, UNLABELLED, read_embedding_table};

use crate::data::Split;

/// Checks `folds` (the param named `param`) against the class counts of the training rows in
/// `train_path` (reading only their labels): stratified k-fold needs at least `k` rows of every
/// class that has rows, or some folds would validate, or train, without it. Rows without a
/// label are not fitted on and do not count. Returns the number of labelled training rows.
pub(crate) fn check_folds(train_path: &Path, param: &str, folds: usize) -> Result<usize> {
    if folds < 2 {
        return Err(Error::param(param, "needs at least 2 folds"));
    }
    let table = read_embedding_table(train_path, Some(&[]))?;
    // The rows the folds are drawn over (`cv_folds`): the labelled ones that are not augmented
    // copies of labelled ones.
    let labelled: Vec<usize> = (0..table.len())
        .filter(|&i| table.labels[i] != UNLABELLED)
        .collect();
    let ids: Vec<String> = labelled.iter().map(|&i| table.ids[i].clone()).collect();
    let mut counts: Vec<usize> = vec![0; table.label_names.len()];
    for r in validated_rows(&ids) {
        let class = usize::try_from(table.labels[labelled[r]]).ok();
        if let Some(c) = class.and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    let labelled = labelled.len();
    // The scarcest class that has rows (the first of them on a tie).
    let scarcest = counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .min_by_key(|(c, n)| (**n, *c));
    match scarcest {
        Some((c, &n)) if n < folds => Err(Error::param(
            param,
            format!(
                "{folds}-fold cross-validation needs at least {folds} training rows per class; \
                 class `{}` has {n} ({})",
                table.label_names[c],
                train_path.display()
            ),
        )),
        _ if labelled < folds => Err(Error::param(
            param,
            format!(
                "{folds}-fold cross-validation needs at least {folds} labelled training rows; {} \
                 has {labelled}",
                train_path.display(),
            ),
        )),
        _ => Ok(labelled),
    }
}

/// The training vectors that the input's stage made once per CV fold, each without that fold's
/// labels ([`llmembed_core::folds::FoldVectors`]: `contrastive`'s `mode: supcon`, `fuse`'s
/// `method: weighted`). A classifier whose input has them fits and scores CV fold `f` on them
/// ([`fold_rows`]) in place of the training split: without them, every fold would be scored on
/// vectors that its own held-out labels had shaped, and CV would be optimistic.
pub(crate) struct PerFold {
    meta: FoldVectors,
    /// Fold `f`'s file.
    paths: Vec<PathBuf>,
    /// The columns the classifier reads (train's).
    columns: Vec<String>,
    /// The stage that made them (for messages).
    stage: String,
}

impl PerFold {
    /// `input`'s per-fold vectors, read with `columns`, or `None` where it has none.
    pub fn find(input: &Input, columns: &[String]) -> Result<Option<PerFold>> {
        let Some(meta) = FoldVectors::of(input)? else {
            return Ok(None);
        };
        let paths = (0..meta.folds)
            .map(|f| FoldVectors::path(input, f))
            .collect::<Result<_>>()?;
        Ok(Some(PerFold {
            meta,
            paths,
            columns: columns.to_vec(),
            stage: input.stage_id.clone(),
        }))
    }

    /// What a run's notes say of the CV: on whose per-fold vectors it ran.
    pub fn note(&self) -> String {
        format!(
            "CV on `{}`'s training vectors made per fold ({})",
            self.stage, self.meta.made_by
        )
    }

    /// Fold `f`'s training rows: `train`'s (the labelled ones, in order: checked), with the
    /// vectors made without fold `f`'s labels.
    fn train(&self, f: usize, train: &Split) -> Result<Split> {
        let path = &self.paths[f];
        let refs: Vec<&str> = self.columns.iter().map(String::as_str).collect();
        let (rows, _) =
            Split::from_table(path, read_embedding_table(path, Some(&refs))?)?.labelled();
        check_fold_rows(path, "id", f, fold_rows_of(&rows), fold_rows_of(train))?;
        Ok(rows)
    }
}

fn fold_rows_of(split: &Split) -> FoldRows<'_> {
    FoldRows {
        ids: &split.ids,
        labels: &split.labels,
        dim: split.dim(),
    }
}

/// The `folds`-fold CV of `train`'s rows ([`cv_folds`]), checked against the input's per-fold
/// vectors where it made them (`param` names the classifier's number of folds).
pub(crate) fn cv_folds_for(
    train: &Split,
    per_fold: Option<&PerFold>,
    folds: usize,
    seed: u64,
    param: &str,
) -> Result<CvFolds> {
    let cv = cv_folds(&train.ids, &train.labels, folds, seed);
    if let Some(p) = per_fold {
        p.meta.check(&p.stage, &cv, param)?;
    }
    Ok(cv)
}

/// Fold `f`'s training and validation rows of `cv`: `train`'s, or the input's fold `f` vectors
/// of them where it made such.
pub(crate) fn fold_rows(
    train: &Split,
    per_fold: Option<&PerFold>,
    cv: &CvFolds,
    f: usize,
) -> Result<(Split, Split)> {
    let own = per_fold.map(|p| p.train(f, train)).transpose()?;
    let rows = own.as_ref().unwrap_or(train);
    Ok((rows.subset(&cv.training_rows(f)), rows.subset(&cv.rows[f])))
}
