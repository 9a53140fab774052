//! Stratified folds for model selection on the training rows, and the check that a split has
//! enough rows of every class for them.

use std::path::Path;

use llmembed_core::fsutil::hash_bytes;
use llmembed_core::{Error, Result, UNLABELLED, read_embedding_table, seeded_rng};
use rand::seq::SliceRandom;

/// The folds of every classifier's cross-validation (`logreg` on dense or sparse rows, `mlp`
/// with `select`, `layer_sweep`): [`stratified_folds`] drawn from the pipeline's seed with one
/// purpose, so that the candidates one `select` stage chooses between, and the soft ensembles
/// of their out-of-fold probabilities, are all scored on the same splits of the training rows.
/// The purpose is the one logistic regression always drew its folds with, so its folds (and
/// results) are what they were; the MLP drew its own (`"mlp-cv-folds"`, from its `seed` param)
/// before its VERSION 5.
pub(crate) fn cv_folds(ids: &[String], labels: &[i64], k: usize, pipeline_seed: u64) -> CvFolds {
    let rows = stratified_folds(labels, k, &mut seeded_rng(pipeline_seed, "logreg-cv-folds"));
    let splits = splits_id(ids, &rows);
    CvFolds { rows, splits }
}

/// One cross-validation's folds.
pub(crate) struct CvFolds {
    /// The validation rows of each fold (indices of the training rows), each sorted.
    pub rows: Vec<Vec<usize>>,
    /// Which training rows, by id, each fold validates, hashed (16 hex digits): two
    /// classifiers' CV scores compare, and their out-of-fold probabilities combine, exactly when
    /// this is the same. Recorded beside `folds` in what each classifier writes, and checked by
    /// `ensemble` and `select`.
    pub splits: String,
}

/// blake3 of the folds' row ids in order (each id length-prefixed, each fold closed by its
/// size), the first 16 hex digits.
fn splits_id(ids: &[String], folds: &[Vec<usize>]) -> String {
    let mut bytes = Vec::new();
    for fold in folds {
        for &r in fold {
            bytes.extend((ids[r].len() as u64).to_le_bytes());
            bytes.extend(ids[r].as_bytes());
        }
        bytes.extend((fold.len() as u64).to_le_bytes());
    }
    hash_bytes(&bytes)[..16].to_string()
}

/// Stratified k-fold: the rows of each class are shuffled with `rng` and dealt round-robin to
/// the folds, continuing across classes so fold sizes differ by at most one. Returns the
/// validation rows of each fold (each sorted).
fn stratified_folds(
    labels: &[i64],
    k: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let max_label = labels.iter().copied().max().unwrap_or(0).max(0) as usize;
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); max_label + 1];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut folds = vec![Vec::new(); k];
    let mut next = 0usize;
    for rows in by_class.iter_mut() {
        rows.shuffle(rng);
        for &r in rows.iter() {
            folds[next % k].push(r);
            next += 1;
        }
    }
    folds.iter_mut().for_each(|f| f.sort_unstable());
    folds
}

/// The training rows of fold `f` (everything not in it), sorted.
pub(crate) fn complement(n: usize, fold: &[usize]) -> Vec<usize> {
    let mut in_fold = vec![false; n];
    fold.iter().for_each(|&i| in_fold[i] = true);
    (0..n).filter(|&i| !in_fold[i]).collect()
}

/// Checks `folds` (the param named `param`) against the class counts of the training rows in
/// `train_path` (reading only their labels): stratified k-fold needs at least `k` rows of every
/// class that has rows, or some folds would validate, or train, without it. Rows without a
/// label are not fitted on and do not count. Returns the number of labelled training rows.
pub(crate) fn check_folds(train_path: &Path, param: &str, folds: usize) -> Result<usize> {
    if folds < 2 {
        return Err(Error::param(param, "needs at least 2 folds"));
    }
    let table = read_embedding_table(train_path, Some(&[]))?;
    let mut counts: Vec<usize> = vec![0; table.label_names.len()];
    for &l in &table.labels {
        if let Some(c) = usize::try_from(l).ok().and_then(|l| counts.get_mut(l)) {
            *c += 1;
        }
    }
    let labelled = table.labels.iter().filter(|&&l| l != UNLABELLED).count();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_disjoint_and_cover_all_rows() {
        let labels: Vec<i64> = (0..103).map(|i| (i % 3) as i64).collect();
        let mut rng = seeded_rng(1, "t");
        let folds = stratified_folds(&labels, 5, &mut rng);
        let mut all: Vec<usize> = folds.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        for f in &folds {
            assert!(f.len() == 20 || f.len() == 21, "{}", f.len());
            for c in 0..3 {
                let n = f.iter().filter(|&&i| labels[i] == c).count();
                assert!((6..=8).contains(&n), "class {c}: {n}");
            }
        }
        assert_eq!(complement(103, &folds[0]).len(), 103 - folds[0].len());
    }
}
