//! Dense numerics shared by the stages that fit something on vectors: [`Matrix`] (row-major
//! f32, one row per table row), per-column z-scoring fitted on train ([`Standardizer`]) and
//! L2 normalisation of rows. Sums run in f64 so that results depend on summation order as little
//! as possible; what each stage writes from them is pinned by its own tests.

use crate::table::VectorColumn;

/// A row-major `rows x dim` matrix of f32.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub dim: usize,
    /// `rows * dim` values, row after row.
    pub data: Vec<f32>,
}

impl Matrix {
    /// Panics when `data` does not hold `rows * dim` values.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Self {
        assert_eq!(rows * dim, data.len(), "matrix shape");
        Matrix { rows, dim, data }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The rows at `idx`, in that order.
    pub fn select_rows(&self, idx: &[usize]) -> Matrix {
        let mut data = Vec::with_capacity(idx.len() * self.dim);
        for &i in idx {
            data.extend_from_slice(self.row(i));
        }
        Matrix::new(idx.len(), self.dim, data)
    }

    /// Matrices with the same row count side by side, in order.
    pub fn concat_cols(parts: &[&Matrix]) -> Matrix {
        let rows = parts.first().map_or(0, |m| m.rows);
        let dim: usize = parts.iter().map(|m| m.dim).sum();
        let mut data = Vec::with_capacity(rows * dim);
        for i in 0..rows {
            for m in parts {
                data.extend_from_slice(m.row(i));
            }
        }
        Matrix::new(rows, dim, data)
    }
}

impl From<VectorColumn> for Matrix {
    fn from(c: VectorColumn) -> Matrix {
        Matrix::new(c.rows(), c.dim, c.values)
    }
}

/// Scales every row to unit euclidean norm (computed in f64); an all-zero row stays zero.
pub fn l2_normalize_rows(m: &mut Matrix) {
    let dim = m.dim;
    if dim == 0 {
        return;
    }
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

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Which columns a [`Standardizer`] treats as constant: their scale becomes 1, so that they are
/// only centred (to 0) instead of divided by a zero (or tiny) deviation. Each stage keeps the
/// rule its artifacts were made with; changing a stage's rule changes its bytes (bump `VERSION`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ConstantColumn {
    /// The deviation is not above 0 (scikit-learn's `StandardScaler`); an infinite one is kept.
    Zero,
    /// The deviation is not above 0 or not finite.
    ZeroOrNotFinite,
    /// The deviation is not above this value.
    AtMost(f64),
}

impl ConstantColumn {
    fn scale(self, sd: f64) -> f64 {
        let keep = match self {
            ConstantColumn::Zero => sd > 0.0,
            ConstantColumn::ZeroOrNotFinite => sd.is_finite() && sd > 0.0,
            ConstantColumn::AtMost(eps) => sd > eps,
        };
        if keep { sd } else { 1.0 }
    }
}

/// Per-column mean and population standard deviation fitted on one matrix (the train rows) and
/// applied unchanged to any other: `(v - mean) / scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    pub mean: Vec<f64>,
    /// The standard deviation, or 1 for a constant column (see [`ConstantColumn`]).
    pub scale: Vec<f64>,
}

impl Standardizer {
    pub fn fit(m: &Matrix, constant: ConstantColumn) -> Standardizer {
        Standardizer::fit_rows(&m.data, m.dim, constant)
    }

    /// As [`Standardizer::fit`], on `values` read as rows of width `dim`.
    pub fn fit_rows(values: &[f32], dim: usize, constant: ConstantColumn) -> Standardizer {
        let rows = values.len().checked_div(dim).unwrap_or(0);
        let n = rows.max(1) as f64;
        let mut mean = vec![0f64; dim];
        for row in values.chunks(dim.max(1)).take(rows) {
            for (s, &v) in mean.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|s| *s /= n);
        let mut var = vec![0f64; dim];
        for row in values.chunks(dim.max(1)).take(rows) {
            for ((s, &v), mu) in var.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - mu;
                *s += d * d;
            }
        }
        let scale = var
            .into_iter()
            .map(|s| constant.scale((s / n).sqrt()))
            .collect();
        Standardizer { mean, scale }
    }

    /// Standardises `m` in place, computing in f64.
    pub fn apply(&self, m: &mut Matrix) {
        self.apply_rows(&mut m.data);
    }

    /// As [`Standardizer::apply`], on rows of the fitted width.
    pub fn apply_rows(&self, values: &mut [f32]) {
        for row in values.chunks_mut(self.mean.len().max(1)) {
            for ((v, mu), sd) in row.iter_mut().zip(&self.mean).zip(&self.scale) {
                *v = ((f64::from(*v) - mu) / sd) as f32;
            }
        }
    }

    /// Standardised rows as f64, row-major.
    pub fn apply_f64(&self, m: &Matrix) -> Vec<f64> {
        let mut out = Vec::with_capacity(m.data.len());
        for i in 0..m.rows {
            for ((&v, mu), sd) in m.row(i).iter().zip(&self.mean).zip(&self.scale) {
                out.push((f64::from(v) - mu) / sd);
            }
        }
        out
    }

    /// As [`Standardizer::apply_f64`], column after column (column-major).
    pub fn apply_f64_columns(&self, m: &Matrix) -> Vec<f64> {
        let n = m.rows;
        let mut out = vec![0f64; m.data.len()];
        for i in 0..n {
            let cols = m.row(i).iter().zip(&self.mean).zip(&self.scale);
            for (j, ((&v, mu), sd)) in cols.enumerate() {
                out[j * n + i] = (f64::from(v) - mu) / sd;
            }
        }
        out
    }

    /// Standardises rows of the fitted width computing in f32, with the mean and scale rounded
    /// to f32 first (how `contrastive` has always standardised; kept for its bytes).
    pub fn apply_rows_f32(&self, values: &mut [f32]) {
        let mean: Vec<f32> = self.mean.iter().map(|&m| m as f32).collect();
        let scale: Vec<f32> = self.scale.iter().map(|&s| s as f32).collect();
        for row in values.chunks_mut(mean.len().max(1)) {
            for ((v, mu), sd) in row.iter_mut().zip(&mean).zip(&scale) {
                *v = (*v - mu) / sd;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, dim: usize, v: &[f32]) -> Matrix {
        Matrix::new(rows, dim, v.to_vec())
    }

    #[test]
    fn rows_select_and_concat() {
        let a = m(2, 3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(a.row(1), &[4.0, 5.0, 6.0]);
        assert_eq!(
            a.select_rows(&[1, 0, 1]).data,
            [4., 5., 6., 1., 2., 3., 4., 5., 6.]
        );
        let c = Matrix::concat_cols(&[&a, &m(2, 1, &[9.0, 8.0])]);
        assert_eq!((c.rows, c.dim), (2, 4));
        assert_eq!(c.data, vec![1.0, 2.0, 3.0, 9.0, 4.0, 5.0, 6.0, 8.0]);
    }

    #[test]
    fn l2_keeps_zero_rows_and_scales_others() {
        let mut a = m(2, 2, &[3.0, 4.0, 0.0, 0.0]);
        l2_normalize_rows(&mut a);
        assert_eq!(a.data, vec![0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[0.5]), 0);
    }

    #[test]
    fn standardizer_fits_on_one_matrix_and_applies_to_another() {
        let train = m(2, 2, &[1.0, 5.0, 3.0, 5.0]);
        let s = Standardizer::fit(&train, ConstantColumn::Zero);
        // Column 0: mean 2, sd 1. Column 1 is constant: centred, scale 1.
        assert_eq!(
            (s.mean.clone(), s.scale.clone()),
            (vec![2.0, 5.0], vec![1.0, 1.0])
        );
        assert_eq!(s.apply_f64(&train), vec![-1.0, 0.0, 1.0, 0.0]);
        assert_eq!(s.apply_f64_columns(&train), vec![-1.0, 1.0, 0.0, 0.0]);
        let mut t = train.clone();
        s.apply(&mut t);
        assert_eq!(t.data, vec![-1.0, 0.0, 1.0, 0.0]);
        let mut test = m(1, 2, &[4.0, 7.0]);
        s.apply(&mut test);
        assert_eq!(test.data, vec![2.0, 2.0]);
        let mut f32_rows = vec![4.0, 7.0];
        s.apply_rows_f32(&mut f32_rows);
        assert_eq!(f32_rows, vec![2.0, 2.0]);
    }

    #[test]
    fn the_constant_column_rule_decides_what_is_scaled() {
        // Column 0 spreads by 1e-9 (sd 5e-10), column 1 by 2 (sd 1), column 2 holds an infinity
        // (its deviation is NaN: no finite f32 input reaches an infinite f64 deviation).
        let x = m(2, 3, &[0.0, 0.0, f32::INFINITY, 1e-9, 2.0, 0.0]);
        let zero = Standardizer::fit(&x, ConstantColumn::Zero).scale;
        let finite = Standardizer::fit(&x, ConstantColumn::ZeroOrNotFinite).scale;
        let tiny = Standardizer::fit(&x, ConstantColumn::AtMost(1e-8)).scale;
        assert!(zero[0] > 4.9e-10 && zero[0] < 5.1e-10, "{}", zero[0]);
        assert_eq!(zero[0], finite[0]);
        assert_eq!(tiny[0], 1.0);
        for s in [&zero, &finite, &tiny] {
            assert_eq!(s[1..], [1.0, 1.0]);
        }
    }
}
