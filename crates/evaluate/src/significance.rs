//! How much a score can be trusted: percentile-bootstrap confidence intervals of accuracy and
//! macro-F1 over the test rows, and the exact McNemar test of two classifiers on the same rows.
//!
//! The bootstrap resamples row indices with replacement (`resamples` times, from the pipeline's
//! seed), recomputes both scores from each resample's confusion counts, and takes the
//! `(1 - confidence) / 2` and `(1 + confidence) / 2` quantiles (linear interpolation between
//! order statistics, numpy's default). McNemar's exact test looks only at the rows where the two
//! classifiers disagree in correctness: with `b` rows only the first gets right and `c` only the
//! second, p = min(1, 2 · P[X ≤ min(b, c)]) for X ~ Binomial(b + c, 1/2) (statsmodels'
//! `mcnemar(exact=True)`).

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A two-sided interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Bootstrap intervals of one classifier's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BootstrapIntervals {
    pub accuracy: Interval,
    pub macro_f1: Interval,
}

/// The percentile-bootstrap intervals of accuracy and macro-F1 (scikit-learn's macro-F1: the
/// mean over all classes of the per-class F1, 0 for a class with no true and no predicted row).
pub fn bootstrap(
    labels: &[i64],
    preds: &[i64],
    n_classes: usize,
    resamples: usize,
    confidence: f64,
    rng: &mut impl Rng,
) -> BootstrapIntervals {
    let n = labels.len();
    let mut accuracies = Vec::with_capacity(resamples);
    let mut f1s = Vec::with_capacity(resamples);
    // Per class: true positives, true count, predicted count.
    let mut counts = vec![[0u32; 3]; n_classes];
    for _ in 0..resamples {
        counts.iter_mut().for_each(|c| *c = [0; 3]);
        let mut correct = 0usize;
        for _ in 0..n {
            let row = rng.random_range(0..n);
            let (t, p) = (labels[row] as usize, preds[row] as usize);
            counts[t][1] += 1;
            counts[p][2] += 1;
            if t == p {
                counts[t][0] += 1;
                correct += 1;
            }
        }
        accuracies.push(correct as f64 / n as f64);
        let f1_sum: f64 = counts
            .iter()
            .map(|&[tp, t, p]| {
                if t + p == 0 {
                    0.0
                } else {
                    2.0 * f64::from(tp) / f64::from(t + p)
                }
            })
            .sum();
        f1s.push(f1_sum / n_classes as f64);
    }
    BootstrapIntervals {
        accuracy: percentile_interval(&mut accuracies, confidence),
        macro_f1: percentile_interval(&mut f1s, confidence),
    }
}

/// The central `confidence` interval of `values` (sorted in place).
fn percentile_interval(values: &mut [f64], confidence: f64) -> Interval {
    values.sort_by(f64::total_cmp);
    Interval {
        low: quantile(values, (1.0 - confidence) / 2.0),
        high: quantile(values, (1.0 + confidence) / 2.0),
    }
}

/// numpy's default (`linear`) quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The exact McNemar test of classifier `a` against `b` on the same rows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Rows `a` gets right and `b` wrong.
    pub only_a_right: u64,
    /// Rows `b` gets right and `a` wrong.
    pub only_b_right: u64,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

pub fn mcnemar_exact(labels: &[i64], a: &[i64], b: &[i64]) -> McNemar {
    let mut only_a = 0u64;
    let mut only_b = 0u64;
    for ((&t, &pa), &pb) in labels.iter().zip(a).zip(b) {
        match (pa == t, pb == t) {
            (true, false) => only_a += 1,
            (false, true) => only_b += 1,
            _ => {}
        }
    }
    McNemar {
        only_a_right: only_a,
        only_b_right: only_b,
        p_value: (2.0 * binomial_half_cdf(only_a.min(only_b), only_a + only_b)).min(1.0),
    }
}

/// P[X ≤ k] for X ~ Binomial(n, 1/2), summed in log space so that n in the thousands is exact
/// to rounding.
fn binomial_half_cdf(k: u64, n: u64) -> f64 {
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let mut ln_choose = 0.0f64; // ln C(n, 0)
    let mut total = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (ln_choose - ln_half_n).exp();
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(spec: &[(i64, i64, usize)]) -> (Vec<i64>, Vec<i64>) {
        let mut labels = Vec::new();
        let mut preds = Vec::new();
        for &(t, p, n) in spec {
            labels.extend(std::iter::repeat_n(t, n));
            preds.extend(std::iter::repeat_n(p, n));
        }
        (labels, preds)
    }

    /// Values from the closed form (and statsmodels' `mcnemar([[0, b], [c, 0]], exact=True)`).
    #[test]
    fn mcnemar_matches_the_binomial_closed_form() {
        let labels = vec![0i64; 20];
        let case = |b: usize, c: usize| {
            // a right, baseline wrong on b rows; the reverse on c rows; both right elsewhere.
            let mut a = vec![0i64; 20];
            let mut base = vec![0i64; 20];
            base[..b].iter_mut().for_each(|x| *x = 1);
            a[b..b + c].iter_mut().for_each(|x| *x = 1);
            mcnemar_exact(&labels, &a, &base)
        };
        let m = case(1, 6);
        assert_eq!((m.only_a_right, m.only_b_right), (1, 6));
        assert!((m.p_value - 2.0 * 8.0 / 128.0).abs() < 1e-15, "{m:?}");
        assert!((case(0, 10).p_value - 2.0 / 1024.0).abs() < 1e-15);
        assert_eq!(case(3, 3).p_value, 1.0);
        assert_eq!(case(0, 0).p_value, 1.0);
        // Large n: 2 * P[X <= 450] for n = 1000, summed exactly with Python's `math.comb`:
        // 0.0017305360849763176.
        let p = (2.0 * binomial_half_cdf(450, 1000)).min(1.0);
        assert!((p - 0.001_730_536_084_976_317_6).abs() < 1e-12, "{p}");
    }

    #[test]
    fn quantiles_follow_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        // numpy.quantile([1..5], [0.025, 0.975]) = [1.1, 4.9]
        assert!((quantile(&v, 0.025) - 1.1).abs() < 1e-12);
        assert!((quantile(&v, 0.975) - 4.9).abs() < 1e-12);
    }

    /// 500 rows at 90% accuracy: the 95% interval is about ±1.96·sqrt(0.9·0.1/500) = ±0.0263
    /// wide around 0.9, the same for every seed's draw within bootstrap noise, and a seed gives
    /// the same interval twice.
    #[test]
    fn bootstrap_interval_has_the_binomial_width_and_is_seeded() {
        let (labels, preds) = rows(&[(0, 0, 225), (1, 1, 225), (0, 1, 25), (1, 0, 25)]);
        let run = |seed| {
            bootstrap(
                &labels,
                &preds,
                2,
                2000,
                0.95,
                &mut llmembed_core::seeded_rng(seed, "bootstrap"),
            )
        };
        let a = run(1);
        assert_eq!(a, run(1));
        let half = 1.96 * (0.9f64 * 0.1 / 500.0).sqrt();
        for ci in [a.accuracy, a.macro_f1, run(2).accuracy] {
            assert!(ci.low < 0.9 && ci.high > 0.9, "{ci:?}");
            assert!(
                ((ci.high - ci.low) / 2.0 - half).abs() < 0.15 * half,
                "{ci:?}"
            );
        }
    }
}
