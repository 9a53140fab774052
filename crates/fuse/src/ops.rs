//! Row-wise vector arithmetic used by the fusion methods. Everything works on core's
//! [`Matrix`], row-major `rows x dim` f32 (one row per table row). Sums are accumulated in f64 so
//! that results do not depend on summation order more than necessary.

use llmembed_core::Matrix;
use rand::Rng;

/// Element-wise mean of matrices of one shape.
pub(crate) fn mean_of(mats: &[&Matrix]) -> Matrix {
    let weights = vec![1.0 / mats.len() as f64; mats.len()];
    weighted_sum_f64(mats, &weights)
}

/// Element-wise weighted sum `sum_l w_l * X_l` of matrices of one shape.
pub(crate) fn weighted_sum(mats: &[&Matrix], weights: &[f32]) -> Matrix {
    let w: Vec<f64> = weights.iter().map(|&v| f64::from(v)).collect();
    weighted_sum_f64(mats, &w)
}

fn weighted_sum_f64(mats: &[&Matrix], weights: &[f64]) -> Matrix {
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
    Matrix::new(
        first.rows,
        first.dim,
        acc.into_iter().map(|v| v as f32).collect(),
    )
}

/// Element-wise maximum of matrices of one shape.
pub(crate) fn max_of(mats: &[&Matrix]) -> Matrix {
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

/// A `in_dim x out_dim` matrix of independent N(0, 1/out_dim) entries. With `P` drawn so,
/// `E[<xP, yP>] = <x, y>`: the projection keeps inner products (and hence the Gram matrix) in
/// expectation (Johnson-Lindenstrauss).
pub(crate) fn gaussian_projection(rng: &mut impl Rng, in_dim: usize, out_dim: usize) -> Matrix {
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
    Matrix::new(in_dim, out_dim, data)
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
pub(crate) fn gram_tanh(vectors: &[&Matrix], sigma: f64, entries: GramEntries) -> Matrix {
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
    Matrix::new(rows, per_row, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, dim: usize, v: &[f32]) -> Matrix {
        Matrix::new(rows, dim, v.to_vec())
    }

    #[test]
    fn mean_max_and_weighted_sum_on_two_by_three() {
        let a = m(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = m(2, 3, &[3.0, 0.0, 3.0, -4.0, 7.0, 0.5]);
        assert_eq!(mean_of(&[&a, &b]).data, vec![2.0, 1.0, 3.0, 0.0, 6.0, 3.25]);
        assert_eq!(max_of(&[&a, &b]).data, vec![3.0, 2.0, 3.0, 4.0, 7.0, 6.0]);
        assert_eq!(
            weighted_sum(&[&a, &b], &[0.25, 0.75]).data,
            vec![2.5, 0.5, 3.0, -2.0, 6.5, 1.875]
        );
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
