//! `x @ w` in f32: the matrix products of `compute: f32`.
//!
//! Where the CPU has AVX-512, or AVX2 and FMA, the weights are packed once into panels and
//! multiplied by an f32 FMA kernel of `panels` (each output one FMA chain over the inputs in
//! order, so a row's result never depends on its batch, and the two kernels give the same
//! bits). Without either the weights stay a tensor for candle's matmul (its own summation order,
//! which depends on the batch's shape).

use candle_core::{Device, Tensor};

use super::gated::Gated;
use super::panels::{FmaF32, FmaF32Avx2, Kernel, Panels};
use crate::{Error, Result};

/// Which kernel runs the f32 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Kernel {
    /// The AVX-512 FMA panel kernel: each output one FMA chain over the inputs in order.
    Avx512,
    /// The same order with AVX2 and FMA (CPUs without AVX-512): the same bits.
    Avx2,
    /// candle's matmul (the `gemm` crate; its own summation order).
    Candle,
}

impl F32Kernel {
    /// The first kernel this CPU runs: AVX-512 where it has AVX-512F, else AVX2 where it has
    /// AVX2 and FMA, else candle.
    pub fn detect() -> F32Kernel {
        if FmaF32::available() {
            F32Kernel::Avx512
        } else if FmaF32Avx2::available() {
            F32Kernel::Avx2
        } else {
            F32Kernel::Candle
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            F32Kernel::Avx512 => FmaF32::available(),
            F32Kernel::Avx2 => FmaF32Avx2::available(),
            F32Kernel::Candle => true,
        }
    }

    /// The name in a model's description (`matmul=avx512|avx2|candle`).
    pub fn name(self) -> &'static str {
        match self {
            F32Kernel::Avx512 => "avx512",
            F32Kernel::Avx2 => "avx2",
            F32Kernel::Candle => "candle",
        }
    }
}

/// A weight matrix (K inputs x N outputs) ready for [`PackedF32::matmul`].
pub struct PackedF32 {
    k: usize,
    n: usize,
    repr: Repr,
}

enum Repr {
    /// Panels for an FMA panel kernel (AVX-512 or AVX2).
    Panels(Panels<f32>, F32Kernel),
    /// The (K, N) tensor, for candle's matmul.
    Dense(Tensor),
}

impl PackedF32 {
    /// Packs `w`, K rows of N values (inputs x outputs, as `x @ w` takes it), for
    /// [`F32Kernel::detect`]'s kernel.
    pub fn new(w: &[f32], k: usize, n: usize) -> Result<Self> {
        Self::with_kernel(w, k, n, F32Kernel::detect())
    }

    /// Packs `w` for `kernel`, which this CPU must run.
    pub fn with_kernel(w: &[f32], k: usize, n: usize, kernel: F32Kernel) -> Result<Self> {
        const OP: &str = "pack f32 weights";
        super::check_pack(OP, kernel.name(), kernel.runs_here(), w, k, n)?;
        let repr = match kernel {
            F32Kernel::Candle => Repr::Dense(
                Tensor::from_slice(w, (k, n), &Device::Cpu).map_err(|e| Error::candle(OP, &e))?,
            ),
            F32Kernel::Avx512 | F32Kernel::Avx2 => Repr::Panels(Panels::new(w, k, n)?, kernel),
        };
        Ok(PackedF32 { k, n, repr })
    }

    /// The kernel that multiplies.
    pub fn kernel(&self) -> F32Kernel {
        match self.repr {
            Repr::Panels(_, kernel) => kernel,
            Repr::Dense(_) => F32Kernel::Candle,
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        const OP: &str = "f32 matmul";
        let (k, n) = (self.k, self.n);
        if m * k != x.len() {
            return Err(Error::new(
                OP,
                format!(
                    "input has {} values, not {m} rows of {k} (weights are ({k}, {n}))",
                    x.len()
                ),
            ));
        }
        match &self.repr {
            Repr::Dense(w) => Tensor::from_slice(x, (m, k), &Device::Cpu)
                .and_then(|x| x.matmul(w))
                .and_then(|c| c.flatten_all())
                .and_then(|c| c.to_vec1())
                .map_err(|e| Error::candle(OP, &e)),
            Repr::Panels(b, F32Kernel::Avx2) => Ok(b.matmul::<FmaF32Avx2>(x, m)),
            Repr::Panels(b, _) => Ok(b.matmul::<FmaF32>(x, m)),
        }
    }

    /// A gated MLP's first product and its activation ([`super::gated`]): the weights were
    /// packed from [`super::interleave_gate_up`]'s matrix. The same bits as
    /// [`PackedF32::matmul`] then [`crate::Rows::gated`].
    pub fn matmul_gated(&self, x: &[f32], m: usize, gated: &Gated) -> Result<Vec<f32>> {
        gated.check("f32 gated matmul", self.n)?;
        let finish =
            |_: usize, j: usize, tile: &mut [f32], out: &mut [std::mem::MaybeUninit<f32>]| {
                gated.finish_pair(j, tile, out)
            };
        match &self.repr {
            Repr::Panels(b, F32Kernel::Avx2) if m * self.k == x.len() => {
                Ok(b.matmul_pairs::<FmaF32Avx2>(x, m, gated.ffn, finish))
            }
            Repr::Panels(b, _) if m * self.k == x.len() => {
                Ok(b.matmul_pairs::<FmaF32>(x, m, gated.ffn, finish))
            }
            _ => Ok(gated.after(self.matmul(x, m)?, m)),
        }
    }
}
