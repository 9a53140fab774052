//! Row-wise vector arithmetic used by the fusion methods. Everything works on [`Mat`], a
//! row-major `rows x dim` f32 matrix (one row per table row). Sums are accumulated in f64 so
//! that results do not depend on summation order more than necessary.

use rand::Rng;

/// A row-major `rows x dim` matrix of f32.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Mat {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Mat {
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * dim, data.len(), "matrix shape");
        Mat { rows, dim, data }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// Scales every row to unit euclidean norm; an all-zero row stays zero.
pub(crate) fn l2_normalize_rows(m: &mut Mat) {
    let dim = m.dim;
    for row in m.data.chunks_mut(dim) {
        let norm = row
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            for v in row.iter_mut() {
                *v = (f64::from(*v) / norm) as f32;
            }
        }
    }
}

/// Element-wise mean of matrices of one shape.
pub(crate) fn mean_of(mats: &[&Mat]) -> Mat {
    let weights = vec![1.0 / mats.len() as f64; mats.len()];
    weighted_sum_f64(mats, &weights)
}

/// Element-wise weighted sum `sum_l w_l * X_l` of matrices of one shape.
pub(crate) fn weighted_sum(mats: &[&Mat], weights: &[f32]) -> Mat {
    let w: Vec<f64> = weights.iter().map(|&v| f64::from(v)).collect();
    weighted_sum_f64(mats, &w)
}

fn weighted_sum_f64(mats: &[&Mat], weights: &[f64]) -> Mat {
    let first = mats[0];
    debug_assert!(
        mats.iter()
            .all(|m| m.rows == first.rows && m.dim == first.dim)
    );
    let mut acc = vec![0f64; first.data.len()];
    for (m, &w) in mats.iter().zip(weights) {
        for (a, &v) in acc.iter_mut().zip(&m.data) {
            *a += w * f64::from(v);
        }
    }
    Mat::new(
        first.rows,
        first.dim,
        acc.into_iter().map(|v| v as f32).collect(),
    )
}

/// Element-wise maximum of matrices of one shape.
pub(crate) fn max_of(mats: &[&Mat]) -> Mat {
    let mut out = mats[0].clone();
    for m in &mats[1..] {
        for (o, &v) in out.data.iter_mut().zip(&m.data) {
            if v > *o {
                *o = v;
            }
        }
    }
    out
}

/// Joins matrices with the same row count side by side, in order.
pub(crate) fn concat_cols(mats: &[&Mat]) -> Mat {
    let rows = mats[0].rows;
    let dim: usize = mats.iter().map(|m| m.dim).sum();
    let mut data = Vec::with_capacity(rows * dim);
    for i in 0..rows {
        for m in mats {
            data.extend_from_slice(m.row(i));
        }
    }
    Mat::new(rows, dim, data)
}

/// Per-column z-scoring fitted on one matrix (the train split) and applied to any other.
#[derive(Clone, Debug)]
pub(crate) struct Standardizer {
    mean: Vec<f64>,
    /// Population standard deviation; 1 where a column is constant (as scikit-learn does), so
    /// that such a column becomes 0 instead of NaN.
    scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(m: &Mat) -> Self {
        let n = m.rows.max(1) as f64;
        let mut mean = vec![0f64; m.dim];
        for i in 0..m.rows {
            for (s, &v) in mean.iter_mut().zip(m.row(i)) {
                *s += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|s| *s /= n);
        let mut var = vec![0f64; m.dim];
        for i in 0..m.rows {
            for ((s, &v), mu) in var.iter_mut().zip(m.row(i)).zip(&mean) {
                let d = f64::from(v) - mu;
                *s += d * d;
            }
        }
        let scale = var
            .into_iter()
            .map(|s| {
                let sd = (s / n).sqrt();
                if sd > 0.0 { sd } else { 1.0 }
            })
            .collect();
        Standardizer { mean, scale }
    }

    pub fn apply(&self, m: &mut Mat) {
        let dim = m.dim;
        for row in m.data.chunks_mut(dim) {
            for ((v, mu), sd) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = ((f64::from(*v) - mu) / sd) as f32;
            }
        }
    }
}

/// A `in_dim x out_dim` matrix of independent N(0, 1/out_dim) entries. With `P` drawn so,
/// `E[<xP, yP>] = <x, y>`: the projection keeps inner products (and hence the Gram matrix) in
/// expectation (Johnson-Lindenstrauss).
pub(crate) fn gaussian_projection(rng: &mut impl Rng, in_dim: usize, out_dim: usize) -> Mat {
    let sd = 1.0 / (out_dim as f64).sqrt();
    let n = in_dim * out_dim;
    let mut data = Vec::with_capacity(n);
    // Box-Muller: two uniforms give two independent standard normals.
    while data.len() < n {
        let u1: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        data.push((r * t.cos() * sd) as f32);
        if data.len() < n {
            data.push((r * t.sin() * sd) as f32);
        }
    }
    Mat::new(in_dim, out_dim, data)
}

/// Which entries of the symmetric `k x k` Gram matrix become features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GramEntries {
    /// All `k*k` entries, row-major (what the official LLMEmbed code feeds its MLP).
    Full,
    /// The `k(k+1)/2` entries on and above the diagonal, row-major (no duplicates).
    Upper,
}

/// Co-occurrence features: for each row, stack the `k` vectors `v_1..v_k` (all of one width),
/// form `G_ij = <v_i, v_j>`, and return `tanh(sigma * G / 2)`, which equals the paper's
/// `2 * sigmoid(sigma * G) - 1`.
pub(crate) fn gram_tanh(vectors: &[&Mat], sigma: f64, entries: GramEntries) -> Mat {
    let k = vectors.len();
    let rows = vectors[0].rows;
    let per_row = match entries {
        GramEntries::Full => k * k,
        GramEntries::Upper => k * (k + 1) / 2,
    };
    let mut data = Vec::with_capacity(rows * per_row);
    let mut g = vec![0f64; k * k];
    for r in 0..rows {
        for i in 0..k {
            for j in i..k {
                let dot: f64 = vectors[i]
                    .row(r)
                    .iter()
                    .zip(vectors[j].row(r))
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let v = (sigma * dot / 2.0).tanh();
                g[i * k + j] = v;
                g[j * k + i] = v;
            }
        }
        match entries {
            GramEntries::Full => data.extend(g.iter().map(|&v| v as f32)),
            GramEntries::Upper => {
                for i in 0..k {
                    data.extend(g[i * k + i..(i + 1) * k].iter().map(|&v| v as f32));
                }
            }
        }
    }
    Mat::new(rows, per_row, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, dim: usize, v: &[f32]) -> Mat {
        Mat::new(rows, dim, v.to_vec())
    }

    #[test]
    fn mean_max_concat_on_two_by_three() {
        let a = m(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = m(2, 3, &[3.0, 0.0, 3.0, -4.0, 7.0, 0.5]);
        assert_eq!(mean_of(&[&a, &b]).data, vec![2.0, 1.0, 3.0, 0.0, 6.0, 3.25]);
        assert_eq!(max_of(&[&a, &b]).data, vec![3.0, 2.0, 3.0, 4.0, 7.0, 6.0]);
        let c = concat_cols(&[&a, &m(2, 1, &[9.0, 8.0])]);
        assert_eq!((c.rows, c.dim), (2, 4));
        assert_eq!(c.data, vec![1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0, 8.0]);
        assert_eq!(
            weighted_sum(&[&a, &b], &[0.25, 0.75]).data,
            vec![2.5, 0.5, 3.0, -2.0, 6.5, 1.875]
        );
    }

    #[test]
    fn l2_keeps_zero_rows_and_scales_others() {
        let mut a = m(2, 2, &[3.0, 4.0, 0.0, 0.0]);
        l2_normalize_rows(&mut a);
        assert_eq!(a.data, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn standardizer_fits_on_one_matrix_and_applies_to_another() {
        let train = m(2, 2, &[1.0, 5.0, 3.0, 5.0]);
        let s = Standardizer::fit(&train);
        let mut t = train.clone();
        s.apply(&mut t);
        // Column 0: mean 2, sd 1. Column 1 is constant: centred, scale 1.
        assert_eq!(t.data, vec![-1.0, 0.0, 1.0, 0.0]);
        let mut test = m(1, 2, &[4.0, 7.0]);
        s.apply(&mut test);
        assert_eq!(test.data, vec![2.0, 2.0]);
    }

    #[test]
    fn gram_tanh_matches_a_hand_computed_example() {
        // One row, three vectors of width 2: v1 = (1, 0), v2 = (1, 1), v3 = (0, -2).
        // G = [[1, 1, 0], [1, 2, -2], [0, -2, 4]]. With sigma = 1: tanh(G / 2).
        let v1 = m(1, 2, &[1.0, 0.0]);
        let v2 = m(1, 2, &[1.0, 1.0]);
        let v3 = m(1, 2, &[0.0, -2.0]);
        let t = |x: f64| (x / 2.0).tanh() as f32;
        let full = gram_tanh(&[&v1, &v2, &v3], 1.0, GramEntries::Full);
        assert_eq!(
            full.data,
            vec![
                t(1.),
                t(1.),
                t(0.),
                t(1.),
                t(2.),
                t(-2.),
                t(0.),
                t(-2.),
                t(4.)
            ]
        );
        let upper = gram_tanh(&[&v1, &v2, &v3], 1.0, GramEntries::Upper);
        assert_eq!(upper.data, vec![t(1.), t(1.), t(0.), t(2.), t(-2.), t(4.)]);
        // tanh(x/2) is the paper's 2*sigmoid(x) - 1: check one entry numerically.
        let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
        assert!((f64::from(full.data[4]) - (2.0 * sig(2.0) - 1.0)).abs() < 1e-7);
        // sigma scales G before squashing.
        let s3 = gram_tanh(&[&v1, &v2, &v3], 3.0, GramEntries::Full);
        assert_eq!(s3.data[5], (3.0f64 * -2.0 / 2.0).tanh() as f32);
    }

    #[test]
    fn gaussian_projection_has_the_right_scale_and_is_seeded() {
        let p = gaussian_projection(&mut llmembed_core::seeded_rng(7, "p"), 200, 50);
        let q = gaussian_projection(&mut llmembed_core::seeded_rng(7, "p"), 200, 50);
        assert_eq!(p, q);
        let n = p.data.len() as f64;
        let mean = p.data.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = p
            .data
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        // 10,000 draws of N(0, 1/50): variance 0.02 within a few percent.
        assert!(mean.abs() < 0.005, "{mean}");
        assert!((var - 0.02).abs() < 0.002, "{var}");
    }
}
