//! `x @ w` in f32: the matrix products of `compute: f32`.
//!
//! Where the CPU has AVX-512, the weights are packed once into panels and multiplied by the
//! f32 FMA kernel of `panels` (each output one FMA chain over the inputs in order, so a row's
//! result never depends on its batch). Without AVX-512 the weights stay a tensor for candle's
//! matmul (its own summation order).

use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};

use super::panels::{FmaF32, Kernel, Panels};

/// A weight matrix (K inputs x N outputs) ready for [`PackedF32::matmul`].
pub(crate) struct PackedF32 {
    k: usize,
    n: usize,
    repr: Repr,
}

enum Repr {
    /// Panels for the AVX-512 FMA kernel.
    Panels(Panels<f32>),
    /// The (K, N) tensor, for candle's matmul.
    Dense(Tensor),
}

impl PackedF32 {
    /// Packs `w`, a (K, N) f32 tensor (inputs x outputs, as `x @ w` takes it).
    pub fn new(w: Tensor) -> Result<Self> {
        let e =
            |x: candle_core::Error| Error::compute("pack f32 weights", super::candle_message(&x));
        let (k, n) = w.dims2().map_err(e)?;
        if !FmaF32::available() {
            return Ok(PackedF32 {
                k,
                n,
                repr: Repr::Dense(w),
            });
        }
        let vals: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).map_err(e)?;
        Ok(PackedF32 {
            k,
            n,
            repr: Repr::Panels(Panels::new(&vals, k, n)?),
        })
    }

    /// The kernel that multiplies, as `describe()` names it.
    pub fn kernel(&self) -> &'static str {
        match self.repr {
            Repr::Panels(_) => "avx512",
            Repr::Dense(_) => "candle",
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let (k, n) = (self.k, self.n);
        if m * k != x.len() {
            candle_core::bail!(
                "f32 matmul: input has {} values, not {m} rows of {k} (weights are ({k}, {n}))",
                x.len()
            );
        }
        match &self.repr {
            Repr::Dense(w) => Tensor::from_slice(x, (m, k), &Device::Cpu)?
                .matmul(w)?
                .flatten_all()?
                .to_vec1(),
            Repr::Panels(b) => Ok(b.matmul::<FmaF32>(x, m)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product, on shapes with ragged row blocks, a partial last panel and
    /// three passes over the inputs (the later ones resume from C).
    #[test]
    fn matches_f64_product() {
        let (m, k, n) = (29, 2100, 45);
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0)
            .collect();
        let t = Tensor::from_vec(w.clone(), (k, n), &Device::Cpu).unwrap();
        let c = PackedF32::new(t).unwrap().matmul(&a, m).unwrap();
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|l| a[i * k + l] as f64 * w[l * n + j] as f64)
                    .sum();
                let got = c[i * n + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "({i}, {j}): {got} vs {want}"
                );
            }
        }
    }

    /// A row's result does not depend on the other rows of the product.
    #[test]
    fn rows_are_independent_of_the_batch() {
        let (m, k, n) = (200, 1100, 96);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 31 % 89) as f32).sin()).collect();
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 17 % 83) as f32).cos()).collect();
        let packed = PackedF32::new(Tensor::from_vec(w, (k, n), &Device::Cpu).unwrap()).unwrap();
        let all = packed.matmul(&a, m).unwrap();
        for i in [0, 11, 12, 95, 96, 199] {
            let one = packed.matmul(&a[i * k..(i + 1) * k], 1).unwrap();
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }
}
