//! The row-wise steps of a decoder block on packed (tokens, width) f32 rows: norms, residual
//! adds, biases and MLP activations, each one pass over the rows, split across threads.
//!
//! Why not candle ops: for a 135M model the matrix products on AMX take a fraction of the time,
//! and candle's element-wise ops (single-threaded scalar maps, a copy per op, libm `exp` per
//! element) took more. Each kernel here is compiled twice, for the baseline target and for
//! AVX-512 (picked by an [`Isa`]); the code and so the result is the same either way (tested
//! bit for bit in `tests/rows.rs`).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::isa::{Isa, multiversion};

/// Rows per rayon task: enough work to amortise the hand-off.
const ROWS_PER_TASK: usize = 16;

/// exp(x) for f32 by range reduction and the Cephes `expf` polynomial (within 2 ulp of libm
/// on the range that matters; clamped to stay finite), written branch-free so that loops over
/// it vectorise.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    use exp_consts::*;
    let x = x.clamp(LOWEST, HIGHEST);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((POLY[0] * r + POLY[1]) * r + POLY[2]) * r + POLY[3]) * r + POLY[4]) * r + 0.5;
    let p = p * r * r + r + 1.0;
    // 2^n without a float -> int conversion (which does not vectorise): adding 1.5 * 2^23 + 127
    // puts n + 127 in the low mantissa bits, and the shift moves them into the exponent.
    p * f32::from_bits((n + TWO_TO_N).to_bits() << 23)
}

/// [`exp`]'s constants, which the attention's AVX-512 copy of it shares.
pub(crate) mod exp_consts {
    pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub(crate) const LN2_HI: f32 = 0.693_359_4;
    pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
    /// The clamp that keeps the result finite.
    pub(crate) const LOWEST: f32 = -87.3;
    pub(crate) const HIGHEST: f32 = 88.0;
    /// The polynomial's coefficients, highest power first, before its `0.5 r^2 + r + 1`.
    pub(crate) const POLY: [f32; 5] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
    ];
    /// 1.5 * 2^23 + 127: added to n, it puts n + 127 in the low mantissa bits.
    pub(crate) const TWO_TO_N: f32 = 12_583_039.0;
}

/// SiLU, `x * sigmoid(x)`.
#[inline(always)]
pub(crate) fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// GELU with the tanh approximation (HF `gelu_pytorch_tanh` / `gelu_new`), tanh(y) written as
/// 1 - 2 / (exp(2y) + 1).
#[inline(always)]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let y = SQRT_TWO_OVER_PI * x * (1.0 + 0.044715 * x * x);
    let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
    0.5 * x * (1.0 + tanh)
}

/// The exact GELU, `0.5 * x * (1 + erf(x / sqrt(2)))` (HF `gelu`), with erf as PyTorch's
/// vectorised CPU kernel computes it (`Vectorized<float>::erf`: Abramowitz and Stegun 7.1.26,
/// within 1.5e-7 of erf), branch-free so that loops over it vectorise.
#[inline(always)]
pub(crate) fn gelu_erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152,
        1.061_405_4,
    ];
    let y = x * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (P * y.abs() + 1.0);
    let r = (((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0];
    let erf = (1.0 - r * t * exp(-(y * y))).copysign(y);
    0.5 * x * (1.0 + erf)
}

/// Sum of squares and sum, in 16 fixed lanes (the same result at any vector width).
#[inline(always)]
fn sums(x: &[f32]) -> (f32, f32) {
    let mut sq = [0f32; 16];
    let mut s = [0f32; 16];
    let (body, tail) = x.split_at(x.len() / 16 * 16);
    for c in body.chunks_exact(16) {
        for l in 0..16 {
            sq[l] += c[l] * c[l];
            s[l] += c[l];
        }
    }
    for (l, v) in tail.iter().enumerate() {
        sq[l] += v * v;
        s[l] += v;
    }
    (sq.iter().sum(), s.iter().sum())
}

/// One row of HF's RMSNorm: `x * rsqrt(mean(x^2) + eps) * w`.
#[inline(always)]
fn rms_row(x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let r = 1.0 / (sums(x).0 / w.len() as f32 + eps).sqrt();
    for ((o, x), w) in out.iter_mut().zip(x).zip(w) {
        o.write(x * r * w);
    }
}

multiversion! {
    fn rms_rows(isa: Isa, x: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
        let h = w.len();
        for (x, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            rms_row(x, w, eps, o);
        }
    }
}

/// One row of torch's LayerNorm (biased variance): `(x - mean) * rsqrt(var + eps) * w + b`.
#[inline(always)]
fn layer_norm_row(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
    let h = w.len();
    let mean = sums(x).1 / h as f32;
    let mut var = [0f32; 16];
    for (i, v) in x.iter().enumerate() {
        let d = v - mean;
        var[i % 16] += d * d;
    }
    let r = 1.0 / (var.iter().sum::<f32>() / h as f32 + eps).sqrt();
    for (((o, x), w), b) in out.iter_mut().zip(x).zip(w).zip(b) {
        o.write((x - mean) * r * w + b);
    }
}

multiversion! {
    fn layer_norm_rows(isa: Isa, x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
        let h = w.len();
        for (x, o) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
            layer_norm_row(x, w, b, eps, o);
        }
    }
}

/// A new vector of `len` values whose chunks of `chunk` values (the last may be shorter) are
/// written in parallel by `fill(chunk index, chunk)`.
///
/// Why not `vec![0.0; len]`: zeroing is one more pass over the output, made by the calling
/// thread while the workers wait; on `compute: f32` it was about 4% of the wall time.
///
/// # Safety
/// `fill` must write every value of each chunk it is given.
unsafe fn par_uninit<F>(len: usize, chunk: usize, fill: F) -> Vec<f32>
where
    F: Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
{
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, o)| fill(i, o));
    // SAFETY: the caller's `fill` wrote all `len` values.
    unsafe { out.set_len(len) };
    out
}

/// A residual step over rows of `width`: a new vector whose chunks of rows are written in
/// parallel by `step(x rows, y rows, output rows)`, which also updates `x` in place.
///
/// # Safety
/// `step` must write every value of the output rows it is given.
unsafe fn par_residual<F>(x: &mut [f32], y: &[f32], width: usize, step: F) -> Vec<f32>
where
    F: Fn(&mut [f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
{
    let chunk = width * ROWS_PER_TASK;
    let len = x.len();
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .zip(x.par_chunks_mut(chunk))
        .zip(y.par_chunks(chunk))
        .for_each(|((o, x), y)| step(x, y, o));
    // SAFETY: the caller's `step` wrote every value of every chunk, `len` in all.
    unsafe { out.set_len(len) };
    out
}

multiversion! {
    fn add_rms_rows(isa: Isa, x: &mut [f32], y: &[f32], w: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
        let h = w.len();
        let rows = x.chunks_exact_mut(h).zip(y.chunks_exact(h)).zip(out.chunks_exact_mut(h));
        for ((x, y), o) in rows {
            for (x, y) in x.iter_mut().zip(y) {
                *x += y;
            }
            rms_row(x, w, eps, o);
        }
    }
}

multiversion! {
    fn mean_rows(isa: Isa, rows: &[&[f32]], sums: &mut [f64], out: &mut [f32]) {
        for row in rows {
            for (s, v) in sums.iter_mut().zip(*row) {
                *s += *v as f64;
            }
        }
        let n = rows.len() as f64;
        for (o, s) in out.iter_mut().zip(&*sums) {
            *o = (*s / n) as f32;
        }
    }
}

multiversion! {
    fn add_chunk(isa: Isa, x: &mut [f32], y: &[f32]) {
        for (x, y) in x.iter_mut().zip(y) {
            *x += y;
        }
    }
}

multiversion! {
    pub(crate) fn bias_rows(isa: Isa, x: &mut [f32], b: &[f32]) {
        for row in x.chunks_exact_mut(b.len()) {
            for (x, b) in row.iter_mut().zip(b) {
                *x += b;
            }
        }
    }
}

/// The MLP activation: GELU (tanh form) or SiLU. The flag is loop-invariant in the kernels
/// below, so the compiler splits each loop into one vectorised copy per activation.
#[inline(always)]
fn act(x: f32, gelu: bool) -> f32 {
    if gelu { gelu_tanh(x) } else { silu(x) }
}

multiversion! {
    fn gated_rows(isa: Isa, gu: &[f32], f: usize, gelu: bool, out: &mut [MaybeUninit<f32>]) {
        for (gu, o) in gu.chunks_exact(2 * f).zip(out.chunks_exact_mut(f)) {
            let (g, u) = gu.split_at(f);
            for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
                o.write(act(*g, gelu) * u);
            }
        }
    }
}

multiversion! {
    /// The gated activation of a tile of gate/up column pairs: in row `r` (`stride` apart),
    /// gate values from 0 and up values from `half`, `live` of each; `out[r][col + c] =
    /// act(gate) * up` in rows `out_stride` apart. The same expression as `gated_rows`, so
    /// the same bits.
    pub(crate) fn gated_tile(
        isa: Isa,
        tile: &[f32],
        stride: usize,
        half: usize,
        live: usize,
        gelu: bool,
        out: &mut [MaybeUninit<f32>],
        out_stride: usize,
        col: usize,
    ) {
        for (r, o) in out.chunks_mut(out_stride).enumerate() {
            let (g, u) = (&tile[r * stride..][..live], &tile[r * stride + half..][..live]);
            for ((o, g), u) in o[col..col + live].iter_mut().zip(g).zip(u) {
                o.write(act(*g, gelu) * u);
            }
        }
    }
}

multiversion! {
    fn act_chunk(isa: Isa, x: &mut [f32], gelu: bool) {
        for v in x.iter_mut() {
            *v = act(*v, gelu);
        }
    }
}

multiversion! {
    fn gelu_erf_chunk(isa: Isa, x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = gelu_erf(*v);
        }
    }
}

multiversion! {
    fn add_layer_norm_rows(isa: Isa, x: &mut [f32], y: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [MaybeUninit<f32>]) {
        let h = w.len();
        let rows = x.chunks_exact_mut(h).zip(y.chunks_exact(h)).zip(out.chunks_exact_mut(h));
        for ((x, y), o) in rows {
            for (x, y) in x.iter_mut().zip(y) {
                *x += y;
            }
            layer_norm_row(x, w, b, eps, o);
        }
    }
}

/// The row kernels compiled for one instruction-set level; every level gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rows(Isa);

impl Rows {
    /// The kernels at `isa`.
    pub fn new(isa: Isa) -> Rows {
        Rows(isa)
    }

    /// The kernels at the widest level this CPU runs.
    pub fn best() -> Rows {
        Rows(Isa::best())
    }

    /// The level they run at.
    pub fn isa(self) -> Isa {
        self.0
    }

    /// HF RMSNorm in f32 (`x * rsqrt(mean(x^2) + eps) * w`) of every row.
    pub fn rms_norm(self, x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let isa = self.0;
        let chunk = w.len() * ROWS_PER_TASK;
        // SAFETY: rms_rows writes every value of its output rows, as many as its input rows.
        unsafe {
            par_uninit(x.len(), chunk, |i, o| {
                rms_rows(isa, &x[i * chunk..i * chunk + o.len()], w, eps, o)
            })
        }
    }

    /// `x += y`, then the RMSNorm of every row of the new `x` (as [`Rows::add_assign`] then
    /// [`Rows::rms_norm`], bit for bit): one pass over the rows instead of two, and one fork instead of
    /// two.
    pub fn add_rms_norm(self, x: &mut [f32], y: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let isa = self.0;
        // SAFETY: add_rms_rows writes every value of its output rows, one per row of x.
        unsafe { par_residual(x, y, w.len(), |x, y, o| add_rms_rows(isa, x, y, w, eps, o)) }
    }

    /// LayerNorm (biased variance, like torch) of every row.
    pub fn layer_norm(self, x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
        let isa = self.0;
        let chunk = w.len() * ROWS_PER_TASK;
        // SAFETY: as for rms_norm.
        unsafe {
            par_uninit(x.len(), chunk, |i, o| {
                layer_norm_rows(isa, &x[i * chunk..i * chunk + o.len()], w, b, eps, o)
            })
        }
    }

    /// `x += y`, then the LayerNorm of every row of the new `x` (as [`Rows::add_assign`] then
    /// [`Rows::layer_norm`], bit for bit): a post-LN encoder block's residual step.
    pub fn add_layer_norm(
        self,
        x: &mut [f32],
        y: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) -> Vec<f32> {
        let isa = self.0;
        // SAFETY: add_layer_norm_rows writes every value of its output rows, one per row of x.
        unsafe {
            par_residual(x, y, w.len(), |x, y, o| {
                add_layer_norm_rows(isa, x, y, w, b, eps, o)
            })
        }
    }

    /// The mean of `rows` (each `out.len()` values) into `out`: summed in f64 in row order,
    /// then divided by their number and rounded to f32 (a text's mean pooling). Why here: the
    /// pooling's loop, compiled for the baseline x86-64 in the stage's crate, converted and
    /// added two values at a time (0.5-0.6% of a SmolLM2 bf16 extraction's samples tapping every
    /// layer, 0.2% now).
    pub fn mean(self, rows: &[&[f32]], out: &mut [f32]) {
        assert!(
            rows.iter().all(|r| r.len() == out.len()),
            "mean of rows: every row must have the output's {} values",
            out.len()
        );
        let mut sums = vec![0f64; out.len()];
        mean_rows(self.0, rows, &mut sums, out);
    }

    /// `x += y`.
    pub fn add_assign(self, x: &mut [f32], y: &[f32]) {
        let isa = self.0;
        const CHUNK: usize = 1 << 14;
        x.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK))
            .for_each(|(x, y)| add_chunk(isa, x, y));
    }

    /// Adds `b` to every row of `x`.
    pub fn add_bias(self, x: &mut [f32], b: &[f32]) {
        let isa = self.0;
        x.par_chunks_mut(b.len() * ROWS_PER_TASK)
            .for_each(|x| bias_rows(isa, x, b));
    }

    /// `act(gate) * up` for rows holding `[gate (f) | up (f)]`: (rows, f).
    pub fn gated(self, gu: &[f32], f: usize, gelu: bool) -> Vec<f32> {
        let isa = self.0;
        let chunk = f * ROWS_PER_TASK;
        // SAFETY: gated_rows writes every value of its output rows, one per input row.
        unsafe {
            par_uninit(gu.len() / 2, chunk, |i, o| {
                gated_rows(
                    isa,
                    &gu[2 * i * chunk..2 * (i * chunk + o.len())],
                    f,
                    gelu,
                    o,
                )
            })
        }
    }

    /// The exact (erf) GELU in place ([`gelu_erf`]'s PyTorch form).
    pub fn gelu_erf(self, x: &mut [f32]) {
        let isa = self.0;
        x.par_chunks_mut(1 << 14)
            .for_each(|x| gelu_erf_chunk(isa, x));
    }

    /// `act(x)` in place.
    pub fn activate(self, x: &mut [f32], gelu: bool) {
        let isa = self.0;
        x.par_chunks_mut(1 << 14)
            .for_each(|x| act_chunk(isa, x, gelu));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            let (got, want) = (exp(x), x.exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 4.0 * f32::EPSILON, "worst relative error {worst:e}");
        assert!(exp(-200.0) >= 0.0 && exp(-200.0) < 1e-37);
        assert!(exp(200.0).is_finite());
    }

    #[test]
    fn activations_match_their_definitions() {
        for i in -400..400 {
            let x = i as f32 / 37.0;
            let s = x / (1.0 + (-x).exp());
            assert!((silu(x) - s).abs() <= 1e-6 * (1.0 + s.abs()), "silu({x})");
            let g = 0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044715 * x * x * x)).tanh());
            assert!(
                (gelu_tanh(x) - g).abs() <= 2e-6 * (1.0 + g.abs()),
                "gelu({x})"
            );
            // erf in f64 from its Taylor series (its cancellation stays below 1e-8 up to
            // |y| = 4.5; beyond, erf is 1 within 2e-10).
            let y = x as f64 / std::f64::consts::SQRT_2;
            let erf = if y.abs() > 4.5 {
                y.signum()
            } else {
                let (mut term, mut sum, mut n) = (y, y, 0.0);
                while term.abs() > 1e-17 {
                    n += 1.0;
                    term *= -y * y / n;
                    sum += term / (2.0 * n + 1.0);
                }
                2.0 / std::f64::consts::PI.sqrt() * sum
            };
            let g = 0.5 * x as f64 * (1.0 + erf);
            // Abramowitz and Stegun's bound on erf (1.5e-7) plus f32 rounding.
            assert!(
                (gelu_erf(x) as f64 - g).abs() <= 2.5e-7 * (1.0 + g.abs()),
                "gelu_erf({x}): {} vs {g}",
                gelu_erf(x)
            );
        }
    }
}
