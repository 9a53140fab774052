//! Reading the feature matrices a classifier is trained on, standardisation (fit on train only)
//! and stratified folds for model selection.

use std::path::Path;

use llmembed_core::table::embedding_columns;
use llmembed_core::{EmbeddingTable, Error, Result, read_embedding_table};
use rand::seq::SliceRandom;

/// Which vector columns to use, resolved against the file.
pub(crate) fn resolve_columns(
    path: &Path,
    column: Option<&str>,
    columns: Option<&[String]>,
) -> Result<Vec<String>> {
    let available = embedding_columns(path)?;
    let names: Vec<String> = available.iter().map(|(n, _)| n.clone()).collect();
    let wanted: Vec<String> = match (column, columns) {
        (Some(_), Some(_)) => {
            return Err(Error::param(
                "column",
                "give either `column` or `columns`, not both",
            ));
        }
        (Some(c), None) => vec![c.to_string()],
        (None, Some(cs)) => cs.to_vec(),
        (None, None) => {
            if names.len() == 1 {
                names.clone()
            } else if names.is_empty() {
                return Err(Error::schema(path, "*", "no vector columns"));
            } else {
                return Err(Error::param(
                    "column",
                    format!(
                        "{} has {} vector columns ({}); pick one with `column` or several with \
                         `columns`",
                        path.display(),
                        names.len(),
                        names.join(", ")
                    ),
                ));
            }
        }
    };
    for w in &wanted {
        if !names.contains(w) {
            return Err(Error::schema(
                path,
                w,
                format!("no such vector column (it has: {})", names.join(", ")),
            ));
        }
    }
    Ok(wanted)
}

/// One split as a dense row-major matrix of the chosen (concatenated) columns.
#[derive(Clone, Debug)]
pub(crate) struct Split {
    pub ids: Vec<String>,
    pub labels: Vec<i64>,
    pub label_names: Vec<String>,
    pub dim: usize,
    /// `rows x dim`, row-major.
    pub x: Vec<f32>,
}

impl Split {
    pub fn rows(&self) -> usize {
        self.ids.len()
    }

    pub fn from_table(path: &Path, table: EmbeddingTable) -> Result<Split> {
        let n = table.len();
        let dim: usize = table.columns.iter().map(|c| c.dim).sum();
        let mut x = Vec::with_capacity(n * dim);
        for i in 0..n {
            for col in &table.columns {
                x.extend_from_slice(col.row(i));
            }
        }
        let k = table.label_names.len();
        for (row, &l) in table.labels.iter().enumerate() {
            if l < 0 || l as usize >= k {
                return Err(Error::row(
                    path,
                    row,
                    "label",
                    format!(
                        "label {l} outside 0..{k} (label names: {:?})",
                        table.label_names
                    ),
                ));
            }
        }
        for (i, v) in x.iter().enumerate() {
            if !v.is_finite() {
                let row = i / dim;
                return Err(Error::row(
                    path,
                    row,
                    "features",
                    format!("non-finite value {v}"),
                ));
            }
        }
        Ok(Split {
            ids: table.ids,
            labels: table.labels,
            label_names: table.label_names,
            dim,
            x,
        })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.x[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Split {
        let mut x = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            x.extend_from_slice(self.row(i));
        }
        Split {
            ids: idx.iter().map(|&i| self.ids[i].clone()).collect(),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            label_names: self.label_names.clone(),
            dim: self.dim,
            x,
        }
    }
}

/// Reads train and test with the same columns and checks that they agree.
pub(crate) fn load_train_test(
    train_path: &Path,
    test_path: &Path,
    column: Option<&str>,
    columns: Option<&[String]>,
) -> Result<(Split, Split, Vec<String>)> {
    let names = resolve_columns(train_path, column, columns)?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let train = Split::from_table(train_path, read_embedding_table(train_path, Some(&refs))?)?;
    let test = Split::from_table(test_path, read_embedding_table(test_path, Some(&refs))?)?;
    if train.dim != test.dim {
        return Err(Error::mismatch(
            "load features",
            format!(
                "columns {names:?} have width {} in {} but {} in {}",
                train.dim,
                train_path.display(),
                test.dim,
                test_path.display()
            ),
        ));
    }
    if train.label_names != test.label_names {
        return Err(Error::mismatch(
            "load features",
            format!(
                "label names differ: {:?} in {} vs {:?} in {}",
                train.label_names,
                train_path.display(),
                test.label_names,
                test_path.display()
            ),
        ));
    }
    if train.rows() == 0 {
        return Err(Error::schema(train_path, "id", "no training rows"));
    }
    let mut seen = vec![false; train.label_names.len()];
    for &l in &train.labels {
        seen[l as usize] = true;
    }
    if seen.iter().filter(|s| **s).count() < 2 {
        return Err(Error::schema(
            train_path,
            "label",
            "training rows cover fewer than 2 classes",
        ));
    }
    Ok((train, test, names))
}

/// Per-feature mean and standard deviation (population, as scikit-learn's `StandardScaler`);
/// constant features get scale 1 so they map to 0.
#[derive(Clone, Debug)]
pub(crate) struct Standardizer {
    pub mean: Vec<f64>,
    pub scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(split: &Split) -> Standardizer {
        let d = split.dim;
        let n = split.rows().max(1) as f64;
        let mut mean = vec![0.0f64; d];
        for i in 0..split.rows() {
            for (m, &v) in mean.iter_mut().zip(split.row(i)) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f64; d];
        for i in 0..split.rows() {
            for ((s, &v), m) in var.iter_mut().zip(split.row(i)).zip(&mean) {
                let c = v as f64 - m;
                *s += c * c;
            }
        }
        let scale = var
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd.is_finite() && sd > 0.0 { sd } else { 1.0 }
            })
            .collect();
        Standardizer { mean, scale }
    }

    /// Standardised rows as f64, row-major.
    pub fn apply_f64(&self, split: &Split) -> Vec<f64> {
        let mut out = Vec::with_capacity(split.x.len());
        for i in 0..split.rows() {
            for ((&v, m), s) in split.row(i).iter().zip(&self.mean).zip(&self.scale) {
                out.push((v as f64 - m) / s);
            }
        }
        out
    }

    /// As [`Standardizer::apply_f64`], column after column (column-major).
    pub fn apply_f64_columns(&self, split: &Split) -> Vec<f64> {
        let n = split.rows();
        let mut out = vec![0f64; split.x.len()];
        for i in 0..n {
            for (j, ((&v, m), s)) in split
                .row(i)
                .iter()
                .zip(&self.mean)
                .zip(&self.scale)
                .enumerate()
            {
                out[j * n + i] = (v as f64 - m) / s;
            }
        }
        out
    }

    pub fn apply_f32(&self, split: &Split) -> Vec<f32> {
        self.apply_f64(split)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }
}

/// Stratified k-fold: the rows of each class are shuffled with `rng` and dealt round-robin to
/// the folds, continuing across classes so fold sizes differ by at most one. Returns the
/// validation rows of each fold (each sorted).
pub(crate) fn stratified_folds(
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
/// class that has rows, or some folds would validate, or train, without it. Returns the number
/// of training rows.
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
        _ if table.labels.len() < folds => Err(Error::param(
            param,
            format!(
                "{folds}-fold cross-validation needs at least {folds} training rows; {} has {}",
                train_path.display(),
                table.labels.len()
            ),
        )),
        _ => Ok(table.labels.len()),
    }
}

pub(crate) fn accuracy(labels: &[i64], preds: &[i64]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    labels.iter().zip(preds).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64
}

/// Index of the largest value; ties go to the lowest index.
pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmembed_core::seeded_rng;

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

    #[test]
    fn standardizer_uses_train_statistics_and_handles_constant_features() {
        let s = Split {
            ids: vec!["a".into(), "b".into()],
            labels: vec![0, 1],
            label_names: vec!["x".into(), "y".into()],
            dim: 2,
            x: vec![1.0, 5.0, 3.0, 5.0],
        };
        let st = Standardizer::fit(&s);
        assert_eq!(st.mean, vec![2.0, 5.0]);
        assert_eq!(st.scale, vec![1.0, 1.0]);
        assert_eq!(st.apply_f64(&s), vec![-1.0, 0.0, 1.0, 0.0]);
        // The same values, column after column.
        assert_eq!(st.apply_f64_columns(&s), vec![-1.0, 1.0, 0.0, 0.0]);
    }
}
