//! The stratified folds of every cross-validation on the training rows, and the files of
//! training vectors made once per fold.
//!
//! Why here and not in the classifiers' crate: a stage upstream of a classifier that fits on the
//! training rows' labels (`contrastive`'s `mode: supcon`, `fuse`'s `method: weighted`) must make
//! its vectors once per fold, each without that fold's labels, for the classifier's CV to score
//! fits on rows whose labels shaped nothing they were scored with; both draw the same folds from
//! here.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::fsutil::hash_bytes;
use crate::{augmented_source, seeded_rng};

/// The folds of every classifier's cross-validation (`logreg` on dense or sparse rows, `mlp`
/// with `select`, `layer_sweep`) and of the per-fold vectors of a stage before them:
/// [`stratified_folds`] drawn from the pipeline's seed with one purpose, so that the candidates
/// one `select` stage chooses between, and the soft ensembles of their out-of-fold
/// probabilities, are all scored on the same splits of the training rows.
/// The purpose is the one logistic regression always drew its folds with, so its folds (and
/// results) are what they were; the MLP drew its own (`"mlp-cv-folds"`, from its `seed` param)
/// before its VERSION 5.
///
/// Augmented copies (`<id>-aug<k>`, [`augmented_source`]) of a row in the table are not rows of
/// their own here: the folds are drawn over the other rows alone (so a table and its augmented
/// version get the same folds, and the same `splits`), a copy is fitted on only where its
/// source is, and nothing validates it. Why: a copy is its source with a few words changed;
/// validating a fold whose sources' copies were fitted on scored the fit on near-duplicates of
/// its own training rows (on the seed protocol, augmentation's CV accuracy rose by up to 1.2
/// points at the larger Cs, which it then picked; logreg VERSION 6, mlp 6, layer_sweep 5).
pub fn cv_folds(ids: &[String], labels: &[i64], k: usize, pipeline_seed: u64) -> CvFolds {
    let source_of = sources_of(ids);
    let sources = not_copies(&source_of);
    let source_labels: Vec<i64> = sources.iter().map(|&i| labels[i]).collect();
    let rng = &mut seeded_rng(pipeline_seed, "logreg-cv-folds");
    let rows: Vec<Vec<usize>> = stratified_folds(&source_labels, k, rng)
        .into_iter()
        .map(|fold| fold.into_iter().map(|r| sources[r]).collect())
        .collect();
    let splits = splits_id(ids, &rows);
    // A row's fold, then each copy's: its source's.
    let mut fold_of = vec![None; ids.len()];
    for (f, fold) in rows.iter().enumerate() {
        fold.iter().for_each(|&r| fold_of[r] = Some(f));
    }
    for (copy, source) in source_of.iter().enumerate() {
        if let Some(s) = source {
            fold_of[copy] = fold_of[*s];
        }
    }
    CvFolds {
        rows,
        splits,
        fold_of,
    }
}

/// The rows of `ids` that some fold validates, sorted: every row that is not an augmented copy
/// of a row here ([`cv_folds`] draws its folds over them); the rows of the out-of-fold
/// probabilities.
pub fn validated_rows(ids: &[String]) -> Vec<usize> {
    not_copies(&sources_of(ids))
}

/// The rows whose [`sources_of`] entry is `None`, sorted.
fn not_copies(source_of: &[Option<usize>]) -> Vec<usize> {
    (0..source_of.len())
        .filter(|&i| source_of[i].is_none())
        .collect()
}

/// Per row, the row of `ids` it is an augmented copy of (a copy of a copy, from augmenting an
/// augmented table: the first row of the chain that is not a copy); `None` for a row that is
/// not a copy of a row here (an id that only looks like a copy's, its source absent, is a row
/// of its own).
fn sources_of(ids: &[String]) -> Vec<Option<usize>> {
    let position: HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let parent = |i: usize| augmented_source(&ids[i]).and_then(|s| position.get(s).copied());
    (0..ids.len())
        .map(|i| {
            // Each step shortens the id, so the chain ends.
            let mut root = parent(i)?;
            while let Some(p) = parent(root) {
                root = p;
            }
            Some(root)
        })
        .collect()
}

/// One cross-validation's folds.
pub struct CvFolds {
    /// The validation rows of each fold (indices of the training rows), each sorted.
    pub rows: Vec<Vec<usize>>,
    /// Which training rows, by id, each fold validates, hashed (16 hex digits): two
    /// classifiers' CV scores compare, and their out-of-fold probabilities combine, exactly when
    /// this is the same. Recorded beside `folds` in what each classifier writes, and checked by
    /// `ensemble` and `select`.
    pub splits: String,
    /// Per training row, the fold whose fit leaves it out: its own, or for an augmented copy
    /// its source's.
    fold_of: Vec<Option<usize>>,
}

impl CvFolds {
    /// The rows fold `f`'s fit is trained on (every row it neither validates nor holds a copy
    /// of), sorted.
    pub fn training_rows(&self, f: usize) -> Vec<usize> {
        (0..self.fold_of.len())
            .filter(|&i| self.fold_of[i] != Some(f))
            .collect()
    }
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

/// The number of folds of a cross-validation that names none (`select.folds` of `logreg` and
/// `mlp`, `folds` of `contrastive`'s per-fold vectors).
pub const DEFAULT_FOLDS: usize = 5;

/// What a stage writes beside the per-fold training vectors ([`fold_vectors_file`]): for how
/// many folds, and which ([`CvFolds::splits`]), so that a classifier whose CV draws other folds
/// refuses them rather than scoring a fold with vectors that saw its labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoldVectors {
    pub folds: usize,
    pub splits: String,
    /// The stage kind and setting that fitted on the labels (for messages).
    pub made_by: String,
}

/// The file of [`FoldVectors`] in a stage's output.
pub const FOLD_VECTORS_FILE: &str = "fold_vectors.json";

impl FoldVectors {
    /// What `input` says of its per-fold training vectors, or `None` where it has none.
    pub fn of(input: &crate::Input) -> crate::Result<Option<FoldVectors>> {
        if !input.files.iter().any(|f| f == FOLD_VECTORS_FILE) {
            return Ok(None);
        }
        crate::load_json(&input.path(FOLD_VECTORS_FILE)?).map(Some)
    }

    /// Writes these as [`FOLD_VECTORS_FILE`] in a stage's output folder `out_dir`, beside the
    /// per-fold vectors the stage wrote there.
    pub fn save(&self, out_dir: &std::path::Path) -> crate::Result<()> {
        crate::save_json(&out_dir.join(FOLD_VECTORS_FILE), self)
    }

    /// The path of `input`'s fold `f` vectors ([`fold_vectors_file`]).
    pub fn path(input: &crate::Input, f: usize) -> crate::Result<std::path::PathBuf> {
        input.path(&fold_vectors_file(f))
    }

    /// The number of folds of a stage over these vectors (made by `stage`): theirs, which the
    /// stage's own `param`, where `given`, must equal.
    pub fn folds(&self, stage: &str, param: &str, given: Option<usize>) -> crate::Result<usize> {
        match given {
            Some(k) if k != self.folds => Err(crate::Error::param(
                param,
                format!(
                    "{k}, but the input `{stage}` ({}) made its training vectors per fold of \
                     {}-fold CV",
                    self.made_by, self.folds
                ),
            )),
            _ => Ok(self.folds),
        }
    }

    /// Refuses these vectors (made by `stage`) for `cv`, where `cv`'s folds are others than
    /// theirs: their folds' fits saw the labels of rows that `cv`'s folds hold out. `param`
    /// names the reader's number of folds.
    pub fn check(&self, stage: &str, cv: &CvFolds, param: &str) -> crate::Result<()> {
        let (made, here) = (self.folds, cv.rows.len());
        if made != here {
            return Err(crate::Error::param(
                param,
                format!(
                    "`{stage}` ({}) made its training vectors per fold of {made}-fold CV, each \
                     without that fold's labels; this CV has {here} folds, whose held-out rows \
                     those vectors saw: give both the same number of folds",
                    self.made_by
                ),
            ));
        }
        if self.splits != cv.splits {
            return Err(crate::Error::mismatch(
                "read per-fold vectors",
                format!(
                    "`{stage}` ({}) made its training vectors for the folds with splits {}; this \
                     CV's folds are {} (drawn from another seed, or over other rows)",
                    self.made_by, self.splits, cv.splits
                ),
            ));
        }
        Ok(())
    }
}

/// The rows and width of a table of training vectors, for [`check_fold_rows`].
pub struct FoldRows<'a> {
    pub ids: &'a [String],
    pub labels: &'a [i64],
    pub dim: usize,
}

impl<'a> FoldRows<'a> {
    /// A table's rows, its width the sum of its vector columns'.
    pub fn of(table: &'a crate::EmbeddingTable) -> Self {
        FoldRows {
            ids: &table.ids,
            labels: &table.labels,
            dim: table.columns.iter().map(|c| c.dim).sum(),
        }
    }
}

/// Checks that fold `f`'s training vectors (`got`, read from `path`) hold the training split's
/// rows in its order, at its width (`want`); the error names `column`.
pub fn check_fold_rows(
    path: &std::path::Path,
    column: &str,
    f: usize,
    got: FoldRows,
    want: FoldRows,
) -> crate::Result<()> {
    if got.ids == want.ids && got.labels == want.labels && got.dim == want.dim {
        return Ok(());
    }
    Err(crate::Error::schema(
        path,
        column,
        format!(
            "fold {f}'s training vectors ({} rows of {}) are not the training split's rows ({} \
             of {}) in its order",
            got.ids.len(),
            got.dim,
            want.ids.len(),
            want.dim
        ),
    ))
}

/// The training rows' vectors made without fold `f`'s labels: `train.fold<f>.parquet`, an
/// embedding table with train's rows and columns. Not a split ([`crate::Input::splits`] leaves
/// it out).
pub fn fold_vectors_file(f: usize) -> String {
    format!("train.fold{f}.parquet")
}

/// The fold of a [`fold_vectors_file`] name; `None` for any other file.
pub fn parse_fold_vectors_file(name: &str) -> Option<usize> {
    let f = name.strip_prefix("train.fold")?.strip_suffix(".parquet")?;
    // Digits only, and no leading zero but for 0 itself: the one spelling `fold_vectors_file`
    // writes.
    let canonical =
        !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) && (f == "0" || !f.starts_with('0'));
    canonical.then(|| f.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_vectors_files_are_named_one_way() {
        for f in [0, 1, 9, 10, 123] {
            assert_eq!(parse_fold_vectors_file(&fold_vectors_file(f)), Some(f));
        }
        for name in [
            "train.parquet",
            "train.fold.parquet",
            "train.fold01.parquet",
            "train.fold1x.parquet",
            "test.fold1.parquet",
            "train.fold1.json",
        ] {
            assert_eq!(parse_fold_vectors_file(name), None, "{name}");
        }
    }

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
    }

    /// The ids and labels of `n` rows, `row-<i>` of class `i % 3`.
    fn rows(n: usize) -> (Vec<String>, Vec<i64>) {
        (
            (0..n).map(|i| format!("row-{i}")).collect(),
            (0..n).map(|i| (i % 3) as i64).collect(),
        )
    }

    #[test]
    fn a_table_without_copies_gets_the_stratified_folds_and_every_other_row_to_fit_on() {
        let (ids, labels) = rows(103);
        let cv = cv_folds(&ids, &labels, 5, 9);
        let drawn = stratified_folds(&labels, 5, &mut seeded_rng(9, "logreg-cv-folds"));
        assert_eq!(cv.rows, drawn);
        assert_eq!(validated_rows(&ids), (0..103).collect::<Vec<_>>());
        for (f, fold) in cv.rows.iter().enumerate() {
            let fit = cv.training_rows(f);
            assert_eq!(fit.len() + fold.len(), 103);
            assert!(fit.iter().all(|r| !fold.contains(r)));
        }
    }

    #[test]
    fn augmented_copies_go_with_their_source_and_are_never_validated() {
        let (ids, labels) = rows(103);
        let plain = cv_folds(&ids, &labels, 5, 9);
        // Copies of every seventh row, one or two each, placed after their source (as
        // `augment` writes them) and at the end; and one id that only looks like a copy.
        let (mut aug_ids, mut aug_labels) = (Vec::new(), Vec::new());
        for (i, (id, &label)) in ids.iter().zip(&labels).enumerate() {
            aug_ids.push(id.clone());
            aug_labels.push(label);
            if i % 7 == 0 {
                aug_ids.push(crate::augmented_id(id, 0));
                aug_labels.push(label);
            }
        }
        aug_ids.push(crate::augmented_id(&ids[3], 1));
        aug_labels.push(labels[3]);
        // A copy of a copy (an augmented table augmented again) goes with the first source.
        aug_ids.push(crate::augmented_id(&crate::augmented_id(&ids[7], 0), 0));
        aug_labels.push(labels[7]);
        aug_ids.push("elsewhere-aug0".into());
        aug_labels.push(1);
        let aug = cv_folds(&aug_ids, &aug_labels, 5, 9);

        // The copy-like id whose source is absent is a row like any other.
        let lone = aug_ids.len() - 1;
        assert!(aug.rows.iter().any(|f| f.contains(&lone)));
        assert!(validated_rows(&aug_ids).contains(&lone));
        // Without the lone row the splits are the plain table's.
        aug_ids.pop();
        aug_labels.pop();
        let aug = cv_folds(&aug_ids, &aug_labels, 5, 9);
        assert_eq!(aug.splits, plain.splits);
        let by_id = |cv: &CvFolds, ids: &[String]| -> Vec<Vec<String>> {
            (cv.rows.iter())
                .map(|f| f.iter().map(|&r| ids[r].clone()).collect())
                .collect()
        };
        assert_eq!(by_id(&aug, &aug_ids), by_id(&plain, &ids));

        let copies: Vec<usize> = (0..aug_ids.len())
            .filter(|&r| aug_ids[r].contains("-aug"))
            .collect();
        assert_eq!(copies.len(), 17);
        let validated = validated_rows(&aug_ids);
        assert!(copies.iter().all(|c| !validated.contains(c)));
        assert_eq!(validated.len() + copies.len(), aug_ids.len());
        for (f, fold) in aug.rows.iter().enumerate() {
            let fit = aug.training_rows(f);
            let validated: Vec<&str> = fold.iter().map(|&r| aug_ids[r].as_str()).collect();
            for &c in &copies {
                let mut source = aug_ids[c].as_str();
                while let Some(s) = crate::augmented_source(source) {
                    source = s;
                }
                // A copy is fitted on exactly where its (first) source is not validated.
                assert_eq!(
                    fit.contains(&c),
                    !validated.contains(&source),
                    "{}",
                    aug_ids[c]
                );
            }
            assert!(fold.iter().all(|r| !fit.contains(r)));
        }
    }
}
