//! `x @ w` with int8 inputs and int32 sums: the matrix products of `compute: int8`.
//!
//! Weights are quantised once, at pack time, per output column: `s_w[n] = max_k |w[k][n]| /
//! 127`, `q_w = round(w / s_w)` in -127..=127. Each activation row is quantised when it is
//! multiplied, symmetrically: `s_x = max |x| / 127`, `q_x = round(x / s_x)` in -127..=127.
//! The products and sums are exact integers (int32: at most 127 x 127 x K, far below 2^31 for
//! any K these models have), and the scales are applied once per output, in f32:
//! `y[n] = s_w[n] * (s_x * sum_k q_x[k] q_w[k][n] + outliers[n])`.
//!
//! Why symmetric activations shifted to u8 rather than asymmetric u8: `vpdpbusd` multiplies
//! unsigned by signed bytes, so a symmetric row goes in as `q_x + 128`, and the shift costs
//! one subtraction per output of `128 * sum_k q_w[k][n]`, a constant of the column computed at
//! pack time; an asymmetric row would need its own zero point times that column sum per output
//! and row. The inputs of these products (normed hidden states, attention outputs, gated MLP
//! activations) are centred near zero, where an asymmetric range gains little; and zero stays
//! exactly zero.
//!
//! Outliers (LLM.int8's remedy, applied per row): a few input channels of some models (Gemma)
//! carry values tens of times larger than the rest of the row, and a scale set by them leaves
//! the other channels a handful of levels. [`Outliers`] takes such channels out of the row
//! before its scale is chosen (largest first, while the largest left exceeds `ratio` times
//! the root mean square of the values below it, at most `max` of them) and multiplies them in
//! f32 with the dequantised int8 weights. The choice reads only the row itself, so a row's
//! result never depends on its batch, and no calibration set is needed: a channel is an
//! outlier where it is one.
//!
//! Two kernels give the same bits, because the integer sums are exact in any order:
//! - AVX512-VNNI (Intel Ice Lake and later, AMD Zen 4 and later): `vpdpbusd` adds four u8 x s8
//!   products per 32-bit lane, in the panel kernel of `panels.rs`, a step being four inputs.
//! - A portable one (any CPU): the same integers summed by plain Rust.
//!
//! `LLMEMBED_NO_AVX512VNNI=1` turns the first off (to compare them on one machine).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::panels::{DotI8, Kernel, PANEL, Panels};
use crate::isa::{Isa, multiversion};
use crate::{Error, Result};

/// Rows per rayon task in the portable product and in the quantisation of activations.
const ROWS_PER_TASK: usize = 8;

/// Which kernel runs the int8 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8Kernel {
    /// AVX512-VNNI `vpdpbusd` in the panel kernel.
    Vnni,
    /// Integer sums in plain Rust, where the CPU lacks AVX512-VNNI (same bits, slower).
    Portable,
}

impl I8Kernel {
    /// The first kernel this process can use (checked once): VNNI where the CPU has it and
    /// `LLMEMBED_NO_AVX512VNNI` is not set.
    pub fn detect() -> I8Kernel {
        static KERNEL: OnceLock<I8Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            I8Kernel::choose(
                DotI8::available(),
                std::env::var_os("LLMEMBED_NO_AVX512VNNI").is_some(),
            )
        })
    }

    /// VNNI when the CPU has it (`vnni`) and it is not switched off.
    pub fn choose(vnni: bool, no_vnni: bool) -> I8Kernel {
        if vnni && !no_vnni {
            I8Kernel::Vnni
        } else {
            I8Kernel::Portable
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            I8Kernel::Vnni => DotI8::available(),
            I8Kernel::Portable => true,
        }
    }

    /// The name in a model's description (`matmul=avx512vnni|i8portable`).
    pub fn name(self) -> &'static str {
        match self {
            I8Kernel::Vnni => "avx512vnni",
            I8Kernel::Portable => "i8portable",
        }
    }
}

/// The per-row outlier rule (see the module docs): at most `max` channels, each larger in
/// magnitude than `ratio` times the root mean square of the row's values below it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outliers {
    pub max: usize,
    pub ratio: f32,
}

impl Outliers {
    /// No outliers: every channel is quantised with the row's scale.
    pub const NONE: Outliers = Outliers { max: 0, ratio: 0.0 };

    /// What `compute: int8` uses: up to 8 channels of a row, each over 8 times the RMS of the
    /// smaller ones. Measured on Gemma-3-270M and SmolLM2-135M (see ARCHITECTURE.md).
    pub const DEFAULT: Outliers = Outliers { max: 8, ratio: 8.0 };

    /// The name in a model's description: `outliers=8x8` or `outliers=none`.
    pub fn name(self) -> String {
        if self.max == 0 {
            "outliers=none".into()
        } else {
            format!("outliers={}x{}", self.max, self.ratio)
        }
    }
}

/// A weight matrix (K inputs x N outputs) quantised to int8 per output, ready for
/// [`PackedI8::matmul`].
pub struct PackedI8 {
    k: usize,
    n: usize,
    /// `s_w` per output.
    scales: Vec<f32>,
    /// `128 * sum_k q_w[k][n]`: what the u8 shift of the activations adds to output `n`.
    shift: Vec<i32>,
    outliers: Outliers,
    repr: Repr,
}

enum Repr {
    /// Steps of four inputs (input 4p + j in byte j of step p; zeros past K) in panels.
    Panels(Panels<u32>),
    /// One row of K int8 weights per output ((N, K) row-major).
    Columns(Vec<i8>),
}

/// A row quantised: the int8 values (outlier channels zero), its scale, and its outliers
/// (channel, f32 value), largest first.
struct QuantRow {
    scale: f32,
    outliers: Vec<(usize, f32)>,
}

impl PackedI8 {
    /// Quantises and packs `w`, K rows of N values (inputs x outputs, as `x @ w` takes it), for
    /// `kernel` ([`I8Kernel::detect`]'s or the portable one), with the per-row outlier rule.
    pub fn new(
        w: &[f32],
        k: usize,
        n: usize,
        kernel: I8Kernel,
        outliers: Outliers,
    ) -> Result<Self> {
        const OP: &str = "pack int8 weights";
        if !kernel.runs_here() {
            return Err(Error::new(
                OP,
                format!("the {} kernel does not run on this CPU", kernel.name()),
            ));
        }
        if w.len() != k * n {
            return Err(Error::new(
                OP,
                format!("{} values are not ({k}, {n})", w.len()),
            ));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(
                OP,
                format!("weight ({}, {}) is {}", i / n, i % n, w[i]),
            ));
        }
        let mut max = vec![0f32; n];
        for row in w.chunks_exact(n.max(1)) {
            for (m, v) in max.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        let scales: Vec<f32> = max.iter().map(|&m| m / 127.0).collect();
        let quant = |v: f32, s: f32| -> i8 {
            if s == 0.0 {
                0
            } else {
                (v / s).round_ties_even().clamp(-127.0, 127.0) as i8
            }
        };
        let mut shift = vec![0i32; n];
        let repr = match kernel {
            I8Kernel::Vnni => {
                let steps = k.div_ceil(4);
                let mut packed = vec![0u32; steps * n];
                for (row, values) in w.chunks_exact(n.max(1)).enumerate() {
                    let (dst, byte) = (&mut packed[row / 4 * n..(row / 4 + 1) * n], row % 4);
                    for (col, (d, &v)) in dst.iter_mut().zip(values).enumerate() {
                        let q = quant(v, scales[col]);
                        shift[col] += 128 * q as i32;
                        *d |= (q as u8 as u32) << (8 * byte);
                    }
                }
                Repr::Panels(Panels::new(&packed, steps, n)?)
            }
            I8Kernel::Portable => {
                let mut columns = vec![0i8; n * k];
                for (row, values) in w.chunks_exact(n.max(1)).enumerate() {
                    for (col, &v) in values.iter().enumerate() {
                        let q = quant(v, scales[col]);
                        shift[col] += 128 * q as i32;
                        columns[col * k + row] = q;
                    }
                }
                Repr::Columns(columns)
            }
        };
        Ok(PackedI8 {
            k,
            n,
            scales,
            shift,
            outliers,
            repr,
        })
    }

    /// The kernel that multiplies, as `describe()` names it.
    pub fn kernel(&self) -> I8Kernel {
        match self.repr {
            Repr::Panels(_) => I8Kernel::Vnni,
            Repr::Columns(_) => I8Kernel::Portable,
        }
    }

    /// The outlier rule the products apply.
    pub fn outliers(&self) -> Outliers {
        self.outliers
    }

    /// The int8 weight of input `k` and output `n`.
    fn weight(&self, k: usize, n: usize) -> i8 {
        match &self.repr {
            Repr::Panels(p) => {
                let steps = self.k.div_ceil(4);
                let step = p.as_slice()[((n / PANEL) * steps + k / 4) * PANEL + n % PANEL];
                (step >> (8 * (k % 4))) as u8 as i8
            }
            Repr::Columns(c) => c[n * self.k + k],
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major. Every value of `x` must be
    /// finite.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        const OP: &str = "int8 matmul";
        let (k, n) = (self.k, self.n);
        if x.len() != m * k {
            return Err(Error::new(
                OP,
                format!(
                    "input has {} values, not {m} rows of {k} (weights are ({k}, {n}))",
                    x.len()
                ),
            ));
        }
        if m == 0 || n == 0 {
            return Ok(vec![0f32; m * n]);
        }
        // Row quantisation: int8 values padded to whole steps of four.
        let kp = k.div_ceil(4) * 4;
        let mut q = vec![0i8; m * kp];
        let mut rows: Vec<QuantRow> = Vec::with_capacity(m);
        x.par_chunks(k)
            .zip(q.par_chunks_mut(kp))
            .with_min_len(ROWS_PER_TASK)
            .map(|(row, q)| quantise_row(row, &mut q[..k], self.outliers))
            .collect_into_vec(&mut rows);
        if let Some((r, _)) = rows.iter().enumerate().find(|(_, q)| !q.scale.is_finite()) {
            return Err(Error::new(
                OP,
                format!("row {r} of the input has a value that is not finite"),
            ));
        }
        // The exact integer sums, (M, N).
        let sums: Vec<i32> = match &self.repr {
            Repr::Panels(p) => {
                // q + 128 as u8 is the int8's bits with the top bit flipped.
                let steps: Vec<u32> = q
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]].map(|v| v as u8 ^ 0x80)))
                    .collect();
                let mut sums = p.matmul::<DotI8>(&steps, m);
                sums.par_chunks_mut(n)
                    .with_min_len(ROWS_PER_TASK)
                    .for_each(|row| {
                        for (v, s) in row.iter_mut().zip(&self.shift) {
                            // The kernel stored int32 sums in the f32 slots (as bits).
                            *v = f32::from_bits((v.to_bits() as i32).wrapping_sub(*s) as u32);
                        }
                    });
                let mut sums = std::mem::ManuallyDrop::new(sums);
                // SAFETY: f32 and i32 have one size and alignment, and every bit pattern is a
                // valid i32.
                unsafe { Vec::from_raw_parts(sums.as_mut_ptr().cast(), sums.len(), sums.capacity()) }
            }
            Repr::Columns(c) => {
                let mut sums = vec![0i32; m * n];
                sums.par_chunks_mut(n)
                    .zip(q.par_chunks(kp))
                    .with_min_len(ROWS_PER_TASK)
                    .for_each(|(out, row)| portable_row(Isa::best(), &row[..k], c, k, out));
                sums
            }
        };
        // Scales (and outlier channels) once per output.
        let mut y = vec![0f32; m * n];
        y.par_chunks_mut(n)
            .zip(sums.par_chunks(n))
            .zip(rows.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((y, sums), row)| {
                let mut extra = vec![0f32; if row.outliers.is_empty() { 0 } else { n }];
                for &(ch, v) in &row.outliers {
                    for (col, e) in extra.iter_mut().enumerate() {
                        *e += v * self.weight(ch, col) as f32;
                    }
                }
                for (col, (y, &s)) in y.iter_mut().zip(sums).enumerate() {
                    let inner = row.scale * s as f32;
                    let inner = match extra.get(col) {
                        Some(e) => inner + e,
                        None => inner,
                    };
                    *y = self.scales[col] * inner;
                }
            });
        Ok(y)
    }
}

/// Quantises one row into `q` (its outlier channels zero); returns its scale (not finite when
/// the row has a value that is not) and outliers.
fn quantise_row(x: &[f32], q: &mut [i8], rule: Outliers) -> QuantRow {
    let (sumsq, max) = sumsq_max(Isa::best(), x);
    if !max.is_finite() {
        return QuantRow {
            scale: f32::NAN,
            outliers: Vec::new(),
        };
    }
    let mut outliers: Vec<(usize, f32)> = Vec::new();
    let taken = |outliers: &[(usize, f32)], i: usize| outliers.iter().any(|&(o, _)| o == i);
    let mut rest_sq = sumsq as f64;
    while outliers.len() < rule.max && x.len() > outliers.len() + 1 {
        // The largest channel not yet taken (the lowest index on ties).
        let (ch, v) = x
            .iter()
            .enumerate()
            .filter(|&(i, _)| !taken(&outliers, i))
            .fold((0, -1f32), |best, (i, v)| {
                if v.abs() > best.1 { (i, v.abs()) } else { best }
            });
        let below = rest_sq - (v as f64) * (v as f64);
        let rms = (below.max(0.0) / (x.len() - outliers.len() - 1) as f64).sqrt();
        if v as f64 <= rule.ratio as f64 * rms {
            break;
        }
        outliers.push((ch, x[ch]));
        rest_sq = below;
    }
    let rest_max = if outliers.is_empty() {
        max
    } else {
        x.iter()
            .enumerate()
            .filter(|&(i, _)| !taken(&outliers, i))
            .fold(0f32, |m, (_, v)| m.max(v.abs()))
    };
    let scale = rest_max / 127.0;
    let inv = if rest_max == 0.0 { 0.0 } else { 127.0 / rest_max };
    quantise(Isa::best(), x, inv, q);
    for &(ch, _) in &outliers {
        q[ch] = 0;
    }
    QuantRow { scale, outliers }
}

/// Sum of squares (16 fixed lanes) and the largest magnitude of `x`; the maximum is NaN or
/// infinite when some value is.
fn sumsq_max(isa: Isa, x: &[f32]) -> (f32, f32) {
    let mut out = (0f32, 0f32);
    sumsq_max_into(isa, x, &mut out);
    out
}

multiversion! {
    fn sumsq_max_into(isa: Isa, x: &[f32], out: &mut (f32, f32)) {
        let mut sq = [0f32; 16];
        let mut mx = [0f32; 16];
        let mut bad = false;
        let (body, tail) = x.split_at(x.len() / 16 * 16);
        for c in body.chunks_exact(16) {
            for l in 0..16 {
                sq[l] += c[l] * c[l];
                mx[l] = mx[l].max(c[l].abs());
            }
        }
        for (l, v) in tail.iter().enumerate() {
            sq[l] += v * v;
            mx[l] = mx[l].max(v.abs());
        }
        for v in x {
            bad |= !v.is_finite();
        }
        let m = mx.iter().fold(0f32, |a, &b| a.max(b));
        *out = (sq.iter().sum(), if bad { f32::NAN } else { m });
    }
}

multiversion! {
    /// `q = round(x * inv)`, clamped to -127..=127.
    fn quantise(isa: Isa, x: &[f32], inv: f32, q: &mut [i8]) {
        for (q, v) in q.iter_mut().zip(x) {
            *q = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
    }
}

multiversion! {
    /// One row's exact sums against every output's column of int8 weights.
    fn portable_row(isa: Isa, q: &[i8], columns: &[i8], k: usize, out: &mut [i32]) {
        for (o, col) in out.iter_mut().zip(columns.chunks_exact(k)) {
            let mut acc = 0i32;
            for (a, b) in q.iter().zip(col) {
                acc += *a as i32 * *b as i32;
            }
            *o = acc;
        }
    }
}
