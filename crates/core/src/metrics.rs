//! Classification metrics with scikit-learn's conventions: per-class precision, recall and F1
//! with zero division giving 0, macro-F1 as the unweighted mean over all classes `0..n_classes`
//! (as `f1_score(..., labels=range(n_classes), average="macro")`), confusion matrix with rows =
//! true class and columns = predicted class.

use serde::{Deserialize, Serialize};

/// Metrics of one class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Rows whose true class is this one.
    pub support: u64,
}

/// Metrics of one classifier's predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][pred]`: counts.
    pub confusion: Vec<Vec<u64>>,
}

/// `confusion[true][pred]`. Panics when the lengths differ or a value is outside
/// `0..n_classes` (callers validate their inputs first).
pub fn confusion_matrix(labels: &[i64], preds: &[i64], n_classes: usize) -> Vec<Vec<u64>> {
    assert_eq!(
        labels.len(),
        preds.len(),
        "confusion_matrix: {} labels but {} predictions",
        labels.len(),
        preds.len()
    );
    let mut m = vec![vec![0u64; n_classes]; n_classes];
    for (&t, &p) in labels.iter().zip(preds) {
        assert!(
            (0..n_classes as i64).contains(&t) && (0..n_classes as i64).contains(&p),
            "confusion_matrix: label {t} or prediction {p} outside 0..{n_classes}"
        );
        m[t as usize][p as usize] += 1;
    }
    m
}

/// `a / b`, or 0 when `b` is 0 (scikit-learn's `zero_division` default).
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// All metrics from a confusion matrix; `label_names.len()` must be its size.
pub fn scores_from_confusion(confusion: Vec<Vec<u64>>, label_names: &[String]) -> Scores {
    let n = confusion.len();
    assert_eq!(n, label_names.len(), "one label name per class");
    let total: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..n).map(|i| confusion[i][i]).sum();
    let per_class: Vec<ClassMetrics> = (0..n)
        .map(|c| {
            let tp = confusion[c][c];
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            ClassMetrics {
                label: label_names[c].clone(),
                precision: ratio(tp, predicted),
                recall: ratio(tp, support),
                // F1 = 2tp / (2tp + fp + fn) = 2tp / (support + predicted), which is how
                // scikit-learn (>= 1.3) computes it; 0 when there is nothing to score.
                f1: ratio(2 * tp, support + predicted),
                support,
            }
        })
        .collect();
    let macro_f1 = if n == 0 {
        0.0
    } else {
        per_class.iter().map(|m| m.f1).sum::<f64>() / n as f64
    };
    Scores {
        accuracy: ratio(correct, total),
        macro_f1,
        per_class,
        confusion,
    }
}

/// The share of rows whose prediction is their label; 0 for no rows. Panics when the lengths
/// differ.
pub fn accuracy(labels: &[i64], preds: &[i64]) -> f64 {
    assert_eq!(
        labels.len(),
        preds.len(),
        "accuracy: one prediction per label"
    );
    ratio(
        labels.iter().zip(preds).filter(|(a, b)| a == b).count() as u64,
        labels.len() as u64,
    )
}

/// Accuracy and macro-F1 over classes `0..n_classes` (scikit-learn conventions, see the module
/// docs). Empty input gives `(0.0, 0.0)`. Panics when the lengths differ or a value is outside
/// `0..n_classes`.
pub fn accuracy_and_macro_f1(labels: &[i64], preds: &[i64], n_classes: usize) -> (f64, f64) {
    let names: Vec<String> = (0..n_classes).map(|i| i.to_string()).collect();
    let s = scores_from_confusion(confusion_matrix(labels, preds, n_classes), &names);
    (s.accuracy, s.macro_f1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_all_wrong() {
        assert_eq!(accuracy_and_macro_f1(&[0, 1, 2], &[0, 1, 2], 3), (1.0, 1.0));
        assert_eq!(accuracy_and_macro_f1(&[0, 1], &[1, 0], 2), (0.0, 0.0));
    }

    #[test]
    fn accuracy_counts_matches_and_is_zero_without_rows() {
        assert_eq!(accuracy(&[0, 1, 1, 2], &[0, 1, 2, 2]), 0.75);
        assert_eq!(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn hand_computed_example() {
        // true 0 0 1 1, pred 0 1 1 1: class 0 p=1 r=.5 f1=2/3; class 1 p=2/3 r=1 f1=.8
        let (acc, f1) = accuracy_and_macro_f1(&[0, 0, 1, 1], &[0, 1, 1, 1], 2);
        assert!((acc - 0.75).abs() < 1e-15);
        assert!((f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-15);
    }

    #[test]
    #[should_panic(expected = "outside 0..2")]
    fn out_of_range_panics() {
        accuracy_and_macro_f1(&[0, 2], &[0, 1], 2);
    }
}
