//! `x @ w` with int8 inputs and int32 sums: the matrix products of `compute: int8`.
//!
//! Weights are quantised once, at pack time, per output column: `s_w[n] = max_k |w[k][n]| /
//! 127`, `q_w = round(w / s_w)` in -127..=127. Each activation row is quantised when it is
//! multiplied, symmetrically: `s_x = max |x| / 127`, `q_x = round(x / s_x)` in -127..=127.
//! The products and sums are exact integers (int32: at most 127 x 127 x K, far below 2^31 for
//! any K these models have), and the scales are applied once per output, in f32:
//! `y[n] = s_w[n] * (s_x * sum_k q_x[k] q_w[k][n] + outliers[n])` (by VNNI's micro-kernel in
//! registers, [`TileScale`]; by the others in a pass over each band or tile of sums,
//! [`OutputColumns::descale`]).
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
//! Four kernels give the same bits, because the integer sums are exact in any order:
//! - AMX-INT8 (Intel Sapphire Rapids and later): `tdpbusd` multiplies tiles of the same u8 x
//!   s8 quads as VNNI's steps (`amx.rs`, the loop bf16's AMX product runs too), sixteen times
//!   the products per instruction.
//! - AVX512-VNNI (Intel Ice Lake and later, AMD Zen 4 and later): `vpdpbusd` adds four u8 x s8
//!   products per 32-bit lane, in the panel kernel of `panels.rs`, a step being four inputs.
//! - AVX2 (AMD Zen 3, Intel Haswell to Comet Lake): `vpmaddwd` multiplies two int16 pairs per
//!   32-bit lane and adds them into int32, a step being two inputs; the values are held as
//!   int16 (weights widened once at pack time, so they take two bytes each; activations
//!   quantised straight into int16 pairs). Why not `vpmaddubsw`, which takes bytes: it adds its two u8 x s8 products
//!   into a saturating int16, and `255 x 127 x 2` does not fit.
//! - A portable one (any CPU): the same integers summed by plain Rust.
//!
//! `LLMEMBED_NO_AMX=1` turns AMX off (for bf16 too) and `LLMEMBED_NO_AVX512VNNI=1` VNNI (to
//! compare the kernels on one machine): the next one the CPU has runs.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::Switches;
use super::amx::{self, TileOp, Tiles};
use super::gated::Gated;
use super::panels::{BandScales, DotI8, Kernel, MaddI16, PAIR, PANEL, Panels, TileScale};
use crate::isa::{Isa, multiversion};
use crate::{Error, Result};

/// Rows per rayon task in the portable product and in the quantisation of activations.
const ROWS_PER_TASK: usize = 8;
/// Outputs per block when scaling a band of rows: 256 columns of every outlier channel's int8
/// weights (a product has up to about 150 distinct ones) stay in L2 across the band's rows.
const COLUMN_BLOCK: usize = 256;
/// Rows of a gated MLP's activations made at a time inside the down product's layout of a
/// 32-row block ([`PackedI8::matmul_mlp`]): a few rows' `ffn` values stay in L1 or L2 until
/// they are quantised.
const MLP_ROWS: usize = 4;

/// Which kernel runs the int8 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I8Kernel {
    /// AMX-INT8 `tdpbusd` on tiles (same bits).
    Amx,
    /// AVX512-VNNI `vpdpbusd` in the panel kernel.
    Vnni,
    /// AVX2 `vpmaddwd` on int16 pairs in the panel kernel, where the CPU lacks AVX512-VNNI
    /// (same bits).
    Avx2,
    /// Integer sums in plain Rust, where the CPU has neither (same bits, slower).
    Portable,
}

impl I8Kernel {
    /// Every kernel, in the order [`I8Kernel::detect`] prefers them.
    pub const ALL: [I8Kernel; 4] = [
        I8Kernel::Amx,
        I8Kernel::Vnni,
        I8Kernel::Avx2,
        I8Kernel::Portable,
    ];

    /// The first kernel this process can use (checked once): AMX where the CPU has AMX-INT8,
    /// Linux grants the tile state and `LLMEMBED_NO_AMX` is not set; else VNNI where the CPU
    /// has it and `LLMEMBED_NO_AVX512VNNI` is not set; else AVX2 where the CPU has it; else
    /// portable.
    pub fn detect() -> I8Kernel {
        static KERNEL: OnceLock<I8Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let switches = Switches::from_process_env();
            I8Kernel::choose(
                !switches.no_amx && amx::request(TileOp::I8),
                DotI8::available(),
                MaddI16::available(),
                switches.no_avx512vnni,
            )
        })
    }

    /// AMX when the process can run it and it is not switched off (`amx`), else VNNI when the
    /// CPU has it (`vnni`) and it is not switched off, else AVX2 when the CPU has it (`avx2`),
    /// else portable.
    pub fn choose(amx: bool, vnni: bool, avx2: bool, no_vnni: bool) -> I8Kernel {
        if amx {
            I8Kernel::Amx
        } else if vnni && !no_vnni {
            I8Kernel::Vnni
        } else if avx2 {
            I8Kernel::Avx2
        } else {
            I8Kernel::Portable
        }
    }

    /// Whether this CPU runs the kernel.
    pub fn runs_here(self) -> bool {
        match self {
            I8Kernel::Amx => I8Kernel::detect() == I8Kernel::Amx,
            I8Kernel::Vnni => DotI8::available(),
            I8Kernel::Avx2 => MaddI16::available(),
            I8Kernel::Portable => true,
        }
    }

    /// Inputs per 32-bit step of the kernel's A (and, packed, of its weights).
    fn inputs_per_step(self) -> usize {
        match self {
            I8Kernel::Amx | I8Kernel::Vnni | I8Kernel::Portable => 4,
            I8Kernel::Avx2 => 2,
        }
    }

    /// The name in a model's description (`matmul=amxint8|avx512vnni|avx2i16|i8portable`).
    pub fn name(self) -> &'static str {
        match self {
            I8Kernel::Amx => "amxint8",
            I8Kernel::Vnni => "avx512vnni",
            I8Kernel::Avx2 => "avx2i16",
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
    /// Outlier channels' weights ([`PackedI8::channel`]): per input channel, filled the first
    /// time a product meets it as an outlier and kept for every later product.
    kept: Box<[OnceLock<Box<[i8]>>]>,
}

enum Repr {
    /// Steps of four inputs as for `Quads`, in AMX tiles.
    Tiles(Tiles),
    /// Steps of four inputs (input 4p + j in byte j of step p; zeros past K) in panels.
    Quads(Panels<u32>),
    /// Steps of two inputs as int16 (input 2p in the low half of step p; zeros past K) in
    /// panels.
    Pairs(Panels<u32>),
    /// One row of K int8 weights per output ((N, K) row-major).
    Columns(Vec<i8>),
}

/// What the quantisation of a row leaves beside its bytes: its scale and how many outliers it
/// wrote to its slots (see [`PackedI8::matmul`]).
struct QuantRow {
    scale: f32,
    outliers: usize,
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
        super::check_pack(OP, kernel.name(), kernel.runs_here(), w, k, n)?;
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(
                OP,
                format!("weight ({}, {}) is {}", i / n, i % n, w[i]),
            ));
        }
        // Each column's largest magnitude over 127.
        let mut scales = vec![0f32; n];
        by_columns(&mut scales, w, |scales, row| {
            for (s, v) in scales.iter_mut().zip(row) {
                *s = s.max(v.abs());
            }
        });
        for s in &mut scales {
            *s /= 127.0;
        }
        // Every weight quantised first, a row at a time on all threads (the rounding is an
        // instruction with AVX-512 and a libm call without: loading a model spent more time
        // here than anywhere else).
        let mut q_w = vec![0i8; k * n];
        q_w.par_chunks_mut(n.max(1))
            .zip(w.par_chunks(n.max(1)))
            .for_each(|(q, row)| quantise_weights(Isa::best(), row, &scales, q));
        let mut shift = vec![0i32; n];
        by_columns(&mut shift, &q_w, |shift, row| {
            for (s, &q) in shift.iter_mut().zip(row) {
                *s += 128 * q as i32;
            }
        });
        let repr = match kernel {
            I8Kernel::Amx | I8Kernel::Vnni | I8Kernel::Avx2 => {
                // Steps of four bytes (VNNI) or of two int16 (AVX2), each weight sign-extended
                // to its width.
                let per_step = kernel.inputs_per_step();
                let (bits, steps) = (32 / per_step, k.div_ceil(per_step));
                let mask = u32::MAX >> (32 - bits);
                let packed = super::pack_steps(&q_w, n, per_step, |q| q as i32 as u32 & mask);
                match kernel {
                    I8Kernel::Amx => Repr::Tiles(Tiles::new(&packed, steps, n)),
                    I8Kernel::Vnni => Repr::Quads(Panels::new(&packed, steps, n)?),
                    _ => Repr::Pairs(Panels::new(&packed, steps, n)?),
                }
            }
            I8Kernel::Portable => {
                let mut by_column = vec![0i8; n * k];
                for (row, values) in q_w.chunks_exact(n.max(1)).enumerate() {
                    for (col, &q) in values.iter().enumerate() {
                        by_column[col * k + row] = q;
                    }
                }
                Repr::Columns(by_column)
            }
        };
        Ok(PackedI8 {
            kept: (0..k).map(|_| OnceLock::new()).collect(),
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
            Repr::Tiles(_) => I8Kernel::Amx,
            Repr::Quads(_) => I8Kernel::Vnni,
            Repr::Pairs(_) => I8Kernel::Avx2,
            Repr::Columns(_) => I8Kernel::Portable,
        }
    }

    /// The outlier rule the products apply.
    pub fn outliers(&self) -> Outliers {
        self.outliers
    }

    /// Input channel `ch`'s int8 weights for every output, in a row of their own (bytes, not
    /// f32: a quarter of the memory the scaling reads them from), for the outlier sums: unpacked
    /// the first time some row of some product has the channel as an outlier, by whichever task
    /// meets it first, and kept by the weight matrix for every later product. Why keep them:
    /// gathering a channel's weights from the packed layout reads a cache line per 16 outputs,
    /// and the same channels recur in every batch (a batch of 512 rows of SmolLM2 or Gemma-3
    /// has 100-150 distinct outlier channels in its 576- and 640-input products, for its 1-8 a
    /// row; its MLP's down products meet most of their channels). Every channel kept is at
    /// most the int8 weights' memory again, the bf16 weights' size; measured (Sapphire
    /// Rapids, 500 AG News texts), int8's peak memory stays 6-27% under bf16's. Keeping only
    /// half the channels, the rest gathered again in every product that met them, took 3-6%
    /// longer on Sapphire Rapids with AMX.
    fn channel(&self, ch: usize) -> &[i8] {
        self.kept[ch].get_or_init(|| self.unpack_channel(ch).into())
    }

    /// `q_w[ch][n]` for every output `n`: one input channel's int8 weights.
    fn unpack_channel(&self, ch: usize) -> Vec<i8> {
        match &self.repr {
            Repr::Quads(p) | Repr::Pairs(p) => {
                let per_step = self.kernel().inputs_per_step();
                let steps = self.k.div_ceil(per_step);
                let mut out = vec![0i8; self.n];
                unpack_channel(Isa::best(), p.as_slice(), steps, per_step, ch, &mut out);
                out
            }
            // A tile row's 16 columns at a time: one index computation per 16 weights (one
            // per weight was 6% of an int8 run on AMX, for the outlier channels).
            Repr::Tiles(t) => t
                .step_of_columns(ch / 4)
                .flatten()
                .map(|&step| step_input(step, 4, ch))
                .collect(),
            Repr::Columns(c) => c.chunks_exact(self.k).map(|col| col[ch]).collect(),
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major. Every value of `x` must be
    /// finite.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        const OP: &str = "int8 matmul";
        let n = self.n;
        self.check_input(OP, x, m)?;
        if m == 0 || n == 0 {
            return Ok(vec![0f32; m * n]);
        }
        // Undo the shift, then the scales (and outlier channels) once per output, for the rows
        // in `band` (whole rows, the first of them row `first` of `columns`). A block of
        // columns at a time for every row of the band: the outlier channels' weights for those
        // columns stay in cache while every row that has them reads them. VNNI's micro-kernel
        // did all of it already, in registers ([`TileScale`]).
        let finish = |first: usize, band: &mut [f32], columns: &OutputColumns| {
            if columns.in_kernel {
                return;
            }
            for c0 in (0..n).step_by(COLUMN_BLOCK) {
                let c1 = (c0 + COLUMN_BLOCK).min(n);
                for (r, y) in band.chunks_exact_mut(n).enumerate() {
                    columns.descale(first + r, &mut y[c0..c1], c0);
                }
            }
        };
        let panels = |p: &Panels<u32>, kernel: I8Kernel| {
            let bad = BadRow::default();
            let prepare = self.band_input(x, &bad);
            let y = match kernel {
                // Each band's `columns` are its own rows'.
                I8Kernel::Vnni => p.matmul_banded::<DotI8, _>(&prepare, m, |_, band, columns| {
                    finish(0, band, columns)
                }),
                _ => p.matmul_banded::<MaddI16, _>(&prepare, m, |_, band, columns| {
                    finish(0, band, columns)
                }),
            };
            bad.check(OP).map(|()| y)
        };
        // The exact sums `sum_k (q_x + 128) q_w`, (M, N), as int32 bits in f32 slots, each
        // band of rows scaled as soon as it is done.
        match &self.repr {
            Repr::Quads(p) => panels(p, I8Kernel::Vnni),
            Repr::Pairs(p) => panels(p, I8Kernel::Avx2),
            Repr::Tiles(t) => {
                let k = self.k;
                self.tiles_product(OP, t, m, |rows, q| {
                    q.quantise(self, &x[rows.start * k..rows.end * k]);
                })
            }
            Repr::Columns(c) => {
                let q = self.quantise_all(OP, x)?;
                let columns = OutputColumns::new(self, &q);
                let (k, steps) = (self.k, self.k.div_ceil(4));
                let mut y = vec![0f32; m * n];
                y.par_chunks_mut(n)
                    .zip(q.a.par_chunks(steps))
                    .enumerate()
                    .with_min_len(ROWS_PER_TASK)
                    .for_each(|(r, (out, a_row))| {
                        portable_row(Isa::best(), a_row, c, k, out);
                        finish(r, out, &columns);
                    });
                Ok(y)
            }
        }
    }

    /// A gated MLP's first product and its activation ([`super::gated`]): the weights were
    /// packed from [`super::interleave_gate_up`]'s matrix. Each pair's sums are scaled in its
    /// tile, then activated; the same bits as [`PackedI8::matmul`] and [`crate::Rows::gated`].
    pub fn matmul_gated(&self, x: &[f32], m: usize, gated: &Gated) -> Result<Vec<f32>> {
        const OP: &str = "int8 gated matmul";
        gated.check(OP, self.n)?;
        if m == 0 || matches!(self.repr, Repr::Columns(_) | Repr::Tiles(_)) {
            return Ok(gated.after(self.matmul(x, m)?, m));
        }
        self.check_input(OP, x, m)?;
        let bad = BadRow::default();
        let prepare = self.band_input(x, &bad);
        let epilogue = |_: usize,
                        j: usize,
                        tile: &mut [f32],
                        out: &mut [MaybeUninit<f32>],
                        columns: &OutputColumns| {
            // VNNI's micro-kernel scaled the tile already ([`TileScale`]).
            if !columns.in_kernel {
                for (r, y) in tile.chunks_exact_mut(PAIR).enumerate() {
                    columns.descale(r, y, j * PAIR);
                }
            }
            gated.finish_pair(j, tile, out);
        };
        let y = match &self.repr {
            Repr::Quads(p) => p.matmul_pairs_banded::<DotI8, _>(&prepare, m, gated.ffn, epilogue),
            Repr::Pairs(p) => p.matmul_pairs_banded::<MaddI16, _>(&prepare, m, gated.ffn, epilogue),
            Repr::Columns(_) | Repr::Tiles(_) => unreachable!("returned above"),
        };
        bad.check(OP).map(|()| y)
    }

    /// A whole gated MLP, `down(act(x @ gate) * (x @ up))`, `self` packed as for
    /// [`PackedI8::matmul_gated`]: the same bits as that product then `down`'s. On AMX (both
    /// products in tiles, no gate and up bias) the activation runs inside the down product's
    /// layout of each 32-row block of its input, a few rows at a time, and is quantised there
    /// while in cache: the (m, ffn) activations are never written whole and read back.
    pub fn matmul_mlp(
        &self,
        down: &PackedI8,
        x: &[f32],
        m: usize,
        gated: &Gated,
    ) -> Result<Vec<f32>> {
        const OP: &str = "int8 gated MLP";
        gated.check(OP, self.n)?;
        gated.check_down(OP, down.k)?;
        match (&self.repr, &down.repr) {
            (Repr::Tiles(_), Repr::Tiles(tiles)) if gated.bias.is_none() && gated.ffn > 0 => {
                let y = self.matmul(x, m)?;
                let (width, ffn) = (self.n, gated.ffn);
                down.tiles_product(OP, tiles, m, |rows, q| {
                    let mut act = Vec::with_capacity(MLP_ROWS * ffn);
                    for r0 in rows.clone().step_by(MLP_ROWS) {
                        let live = (rows.end - r0).min(MLP_ROWS);
                        let out = &mut act.spare_capacity_mut()[..live * ffn];
                        let made = gated.activate_rows(&y[r0 * width..(r0 + live) * width], out);
                        q.quantise(down, made);
                    }
                })
            }
            _ => down.matmul(&self.matmul_gated(x, m, gated)?, m),
        }
    }

    /// The AMX product of `m` input rows that `quantise(rows, q)` quantises into `q`, a 32-row
    /// block at a time (`rows` of the product, in order), inside the product's layout of the
    /// block: each block's rows are quantised, laid out in tiles and their outliers' weights
    /// found by the task that fills the block, while they are in its cache, with no pass of its
    /// own over the whole input. Each row's stretch of sums is scaled as soon as its tiles are
    /// done (see `Tiles::matmul`): one row, so no blocks of columns as `finish` takes across a
    /// band's rows.
    fn tiles_product(
        &self,
        op: &'static str,
        tiles: &Tiles,
        m: usize,
        quantise: impl Fn(std::ops::Range<usize>, &mut QuantRows) + Sync,
    ) -> Result<Vec<f32>> {
        let (steps, kblocks) = (self.k.div_ceil(4), tiles.kblocks());
        let bad = BadRow::default();
        let blocks: Vec<OnceLock<OutputColumns>> = (0..m.div_ceil(amx::BLOCK))
            .map(|_| OnceLock::new())
            .collect();
        let fill_a = |mb: usize, dst: &mut [MaybeUninit<u32>]| {
            let rows = amx::block_rows(m, mb);
            let mut q = self.unfilled_rows(rows.len());
            quantise(rows.clone(), &mut q);
            if let Some(r) = q.first_bad() {
                bad.note(rows.start + r);
            }
            amx::tile_steps(&q.a, steps, kblocks, dst);
            // Each block is filled once.
            let _ = blocks[mb].set(OutputColumns::new(self, &q));
        };
        let y = tiles.matmul(TileOp::I8, m, fill_a, |row, y, col| {
            let block = blocks[row / amx::BLOCK]
                .get()
                .expect("every block was filled");
            block.descale(row % amx::BLOCK, y, col)
        });
        bad.check(op).map(|()| y)
    }

    fn check_input(&self, op: &'static str, x: &[f32], m: usize) -> Result<()> {
        if x.len() != m * self.k {
            return Err(Error::new(
                op,
                format!(
                    "input has {} values, not {m} rows of {} (weights are ({}, {}))",
                    x.len(),
                    self.k,
                    self.k,
                    self.n
                ),
            ));
        }
        Ok(())
    }

    /// What the panel kernels' bands start with ([`Panels::matmul_banded`]): the band's rows
    /// of `x` quantised by its own task, and what scaling its sums needs. Why in the band's
    /// task: quantising every row first, then gathering the outlier channels' weights, were two
    /// passes of their own over all rows, and each pass is a fork and join of the threads that
    /// waits for the slower one (an int8 run's workers idled about twice as much as a bf16
    /// one's); the band's rows are also still in cache when they are packed. A row that is not
    /// finite is noted in `bad` (the product then ends in an error).
    fn band_input<'s>(
        &'s self,
        x: &'s [f32],
        bad: &'s BadRow,
    ) -> impl Fn(usize, usize) -> (Cow<'static, [u32]>, OutputColumns<'s>) + Sync + 's {
        let k = self.k;
        move |row0, rows| {
            let q = self.quantise_rows(&x[row0 * k..(row0 + rows) * k]);
            if let Some(r) = q.first_bad() {
                bad.note(row0 + r);
            }
            let columns = OutputColumns::new(self, &q);
            (Cow::Owned(q.a), columns)
        }
    }

    /// Every row of `x` (m > 0 rows) quantised on all threads as [`PackedI8::quantise_rows`]
    /// does it, with its outliers' channels' weights unpacked ([`PackedI8::channel`]), or an
    /// error naming the first row that is not finite: for the portable loop, which has neither
    /// bands nor tiles to quantise in.
    fn quantise_all(&self, op: &'static str, x: &[f32]) -> Result<QuantRows> {
        let (k, per_step, rule) = (self.k, self.kernel().inputs_per_step(), self.outliers);
        let mut q = self.unfilled_rows(x.len() / k);
        let (steps, slot_len) = (k.div_ceil(per_step), q.slot_len);
        x.par_chunks(k)
            .zip(q.a.par_chunks_mut(steps))
            .zip(q.slots.par_chunks_mut(slot_len))
            .with_min_len(ROWS_PER_TASK)
            .map_init(Vec::new, |candidates, ((row, a), slots)| {
                quantise_row(row, a, per_step, rule, candidates, slots)
            })
            .collect_into_vec(&mut q.rows);
        if let Some(r) = q.first_bad() {
            return Err(not_finite(op, r));
        }
        // The outlier channels' weights on all threads too, before the product reads them.
        let mut used = vec![false; k];
        for (r, s) in q.rows.iter().zip(q.slots.chunks_exact(slot_len)) {
            for &(_, ch) in &s[..r.outliers] {
                used[ch] = true;
            }
        }
        (0..k)
            .into_par_iter()
            .filter(|&ch| used[ch])
            .for_each(|ch| {
                self.channel(ch);
            });
        Ok(q)
    }

    /// Room for `m` quantised rows of this product's input: A zeroed (a row that is not
    /// finite keeps its zeros), no rows yet, `Outliers::max` slots a row.
    fn unfilled_rows(&self, m: usize) -> QuantRows {
        let steps = self.k.div_ceil(self.kernel().inputs_per_step());
        let slot_len = self.outliers.max.max(1);
        QuantRows {
            a: vec![0u32; m * steps],
            rows: Vec::with_capacity(m),
            slots: vec![(0f32, 0usize); m * slot_len],
            slot_len,
        }
    }

    /// The rows of `x` (whole rows of K) quantised on this thread: a band's, in its task.
    /// Each row quantised and shifted to u8 (`q + 128`), padded to whole steps (the padding
    /// meets zero weights), four bytes to a u32, or for the AVX2 kernel two int16 to a u32: the
    /// kernels' A. A row's outliers go to its own `slot_len` slots of one buffer, as (value,
    /// channel): no allocation per row (malloc and free were 2.5% of an int8 run's time).
    fn quantise_rows(&self, x: &[f32]) -> QuantRows {
        let mut q = self.unfilled_rows(x.len() / self.k);
        q.quantise(self, x);
        q
    }
}

/// The error for input row `r`, which has a value that is not finite.
fn not_finite(op: &'static str, r: usize) -> Error {
    Error::new(
        op,
        format!("row {r} of the input has a value that is not finite"),
    )
}

/// The first input row the bands found not finite, if any (the lowest, whichever band met
/// it first).
struct BadRow(AtomicUsize);

impl Default for BadRow {
    fn default() -> Self {
        BadRow(AtomicUsize::new(usize::MAX))
    }
}

impl BadRow {
    fn note(&self, row: usize) {
        self.0.fetch_min(row, Ordering::Relaxed);
    }

    /// An error naming the row, if some band noted one.
    fn check(&self, op: &'static str) -> Result<()> {
        match self.0.load(Ordering::Relaxed) {
            usize::MAX => Ok(()),
            r => Err(not_finite(op, r)),
        }
    }
}

/// Rows of a product's input, quantised: the kernels' A, and per row its scale and outliers.
struct QuantRows {
    a: Vec<u32>,
    rows: Vec<QuantRow>,
    /// `slot_len` per row: (value, channel), the first `rows[r].outliers`.
    slots: Vec<(f32, usize)>,
    slot_len: usize,
}

impl QuantRows {
    /// The first row with a value that is not finite (its scale is not).
    fn first_bad(&self) -> Option<usize> {
        self.rows.iter().position(|q| !q.scale.is_finite())
    }

    /// Quantises the rows of `x` (whole rows of `w`'s K) as the next rows, on this thread.
    fn quantise(&mut self, w: &PackedI8, x: &[f32]) {
        let (k, per_step) = (w.k, w.kernel().inputs_per_step());
        let (steps, slot_len, first) = (k.div_ceil(per_step), self.slot_len, self.rows.len());
        let mut candidates = Vec::new();
        for ((row, a), slots) in x
            .chunks_exact(k)
            .zip(self.a[first * steps..].chunks_exact_mut(steps))
            .zip(self.slots[first * slot_len..].chunks_exact_mut(slot_len))
        {
            let quantised = quantise_row(row, a, per_step, w.outliers, &mut candidates, slots);
            self.rows.push(quantised);
        }
    }
}

/// Quantises one row into `a` (u8 `q + 128` four to a u32, outlier channels 128, padding
/// zero); returns its scale (not finite when the row has a value that is not) and how many
/// outliers it wrote, (value, channel) largest first, to the start of `slots` (`rule.max` of
/// them). `candidates` is scratch space.
fn quantise_row(
    x: &[f32],
    a: &mut [u32],
    per_step: usize,
    rule: Outliers,
    candidates: &mut Vec<Candidate>,
    slots: &mut [(f32, usize)],
) -> QuantRow {
    let mut lanes = LaneStats::default();
    let (sumsq, max) = row_stats(Isa::best(), x, &mut lanes);
    if !max.is_finite() {
        return QuantRow {
            scale: f32::NAN,
            outliers: 0,
        };
    }
    let (count, rest_max) = if rule.max > 0 && is_outlier(max, sumsq as f64, x.len(), rule) {
        find_outliers(x, sumsq as f64, &lanes, rule, candidates, slots)
    } else {
        (0, max)
    };
    let outliers = &slots[..count];
    let scale = rest_max / 127.0;
    let inv = if rest_max == 0.0 {
        0.0
    } else {
        127.0 / rest_max
    };
    quantise_steps(Isa::best(), x, inv, per_step, a);
    let bits = 32 / per_step;
    let mask = u32::MAX >> (32 - bits);
    for &(_, ch) in outliers {
        let (word, shift) = (ch / per_step, bits * (ch % per_step));
        a[word] = (a[word] & !(mask << shift)) | (128 << shift);
    }
    QuantRow {
        scale,
        outliers: count,
    }
}

/// Whether `v` (a magnitude) exceeds `rule.ratio` times the RMS of the `len - 1` values of
/// squared sum `sumsq - v^2`: `v > ratio * sqrt(below / (len - 1))` in f64, decided on the
/// squares where they are far apart. Why: the square root and the division were a quarter of
/// quantising a row (SmolLM2 int8 on AMD Zen 5), on the chain of every outlier decision; the
/// squares' products are a few cycles, and where they are within [`SQUARES_MARGIN`] of each
/// other the rounded form above decides, so every decision is the one it gives.
fn is_outlier(v: f32, sumsq: f64, len: usize, rule: Outliers) -> bool {
    if len < 2 {
        return false;
    }
    let v = v as f64;
    let below = (sumsq - v * v).max(0.0);
    let (others, ratio) = ((len - 1) as f64, rule.ratio as f64);
    // `v^2 (len - 1)` against `ratio^2 below`: equivalent to the comparison below but for the
    // roundings, a few units in the last place of f64 (2e-16 each), far inside the margin.
    let (lhs, rhs) = (v * v * others, ratio * ratio * below);
    if lhs > rhs * (1.0 + SQUARES_MARGIN) {
        true
    } else if lhs < rhs * (1.0 - SQUARES_MARGIN) {
        false
    } else {
        v > ratio * (below / others).sqrt()
    }
}

/// How far apart (relatively) [`is_outlier`]'s squares must be to decide without the rounded
/// form: far more than the f64 roundings of either side.
const SQUARES_MARGIN: f64 = 1e-9;

/// The rule on a row whose largest value is an outlier: the largest magnitude left (ties: the
/// lower channel) taken out while it is one, at most `rule.max` times. `lanes` are the row's
/// ([`row_stats`]'). Writes the outliers, (value, channel) largest first, to `slots` and returns
/// how many, and the largest magnitude left.
fn find_outliers(
    x: &[f32],
    sumsq: f64,
    lanes: &LaneStats,
    rule: Outliers,
    candidates: &mut Vec<Candidate>,
    slots: &mut [(f32, usize)],
) -> (usize, f32) {
    // The rule reads the row's largest magnitudes in order, at most `rule.max + 1` of them, and
    // the `k` largest are all at least the `k`-th largest lane maximum (the lanes' maxima are
    // `k` values that large): only values that large are candidates, found in one pass. Most
    // rows have one or two outliers, so a first try takes the 4 largest; a row that reads
    // further is searched again for all `rule.max + 1`.
    let floor_of = |keep: usize| {
        if keep <= LANES {
            nth_largest(Isa::best(), &lanes.max, keep)
        } else {
            0.0
        }
    };
    let first = (rule.max + 1).min(4);
    // The second search's floor is low, and some lane nearly always holds two values above
    // it (93% of SmolLM2's rows that read that far): only the first search asks the lanes.
    for (keep, from_lanes) in [(first, Some(lanes)), (rule.max + 1, None)] {
        let floor = floor_of(keep);
        let found = outliers_among(x, sumsq, from_lanes, rule, floor, candidates, slots);
        if let Some(found) = found {
            return found;
        }
    }
    unreachable!("the second search takes every value the rule can read")
}

/// The `keep`-th largest (1 to LANES) of the lane maxima (finite, not negative): the largest
/// value that at least `keep` lanes reach, counted for every lane without a branch. Why not a
/// sort: sorting sixteen values branched on every comparison (an insertion sort, 1.3% of a
/// SmolLM2 int8 run's samples on AMD Zen 5, for rows with four outliers or more). The bits of
/// a finite value that is not negative order as the value does. With AVX-512 the counts of all
/// sixteen lanes go side by side; the plain loop compiled for the baseline counted each lane's
/// bits one by one (no `popcnt`), slower than the sort it replaced.
fn nth_largest(isa: Isa, lanes: &[f32; LANES], keep: usize) -> f32 {
    assert!((1..=LANES).contains(&keep));
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        return unsafe { nth_largest_avx512(lanes, keep) };
    }
    let _ = isa;
    let keys = lanes.map(f32::to_bits);
    let mut nth = 0u32;
    for &key in &keys {
        let reached = keys.iter().filter(|&&other| other >= key).count();
        if reached >= keep {
            nth = nth.max(key);
        }
    }
    f32::from_bits(nth)
}

/// [`nth_largest`] with AVX-512: each lane's count of the lanes at least as large, all sixteen
/// at once, then the largest lane whose count reaches `keep` (one always does: the smallest).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn nth_largest_avx512(lanes: &[f32; LANES], keep: usize) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: `lanes` is sixteen f32.
    let keys = unsafe { _mm512_loadu_si512(lanes.as_ptr().cast()) };
    let (one, mut reached) = (_mm512_set1_epi32(1), _mm512_setzero_si512());
    for &other in lanes {
        let below_other = _mm512_cmple_epu32_mask(keys, _mm512_set1_epi32(other.to_bits() as i32));
        reached = _mm512_mask_add_epi32(reached, below_other, reached, one);
    }
    let enough = _mm512_cmpge_epu32_mask(reached, _mm512_set1_epi32(keep as i32));
    f32::from_bits(_mm512_mask_reduce_max_epu32(enough, keys))
}

/// [`find_outliers`] among the values at least `floor`, a lane maximum (or zero: all values);
/// `None` when the rule would read past them. The values come from `lanes` where they are given
/// and no lane holds two of them ([`LaneStats::candidates_at_least`]); otherwise from a pass over
/// the row.
fn outliers_among(
    x: &[f32],
    sumsq: f64,
    lanes: Option<&LaneStats>,
    rule: Outliers,
    floor: f32,
    candidates: &mut Vec<Candidate>,
    slots: &mut [(f32, usize)],
) -> Option<(usize, f32)> {
    candidates.clear();
    if !lanes.is_some_and(|lanes| lanes.candidates_at_least(floor, candidates)) {
        candidates.clear();
        at_least(Isa::best(), x, floor, candidates);
    }
    sort_descending(candidates);
    let mut taken = 0;
    let (mut rest_sq, mut len) = (sumsq, x.len());
    for &candidate in candidates.iter() {
        let (big, ch) = candidate_parts(candidate);
        if taken == rule.max || !is_outlier(big, rest_sq, len, rule) {
            return Some((taken, big));
        }
        slots[taken] = (x[ch], ch);
        taken += 1;
        rest_sq -= (big as f64) * (big as f64);
        len -= 1;
    }
    // Every candidate was taken: with a floor of zero that is every value (a row shorter than
    // the cap), and nothing is left; otherwise the rule reads further.
    (floor == 0.0).then_some((taken, 0.0))
}

/// A value that may be an outlier, as one integer that orders as the rule reads them: the
/// magnitude's bits (finite and not negative, so they order as the magnitudes do) above the
/// channel's complement, so that a larger candidate is a larger magnitude, or the same one in a
/// lower channel. Why not (magnitude, channel) pairs: their comparison (`total_cmp`, then the
/// channels) made sorting a row's candidates an eighth of quantising it.
type Candidate = u64;

/// The candidate of `magnitude` in channel `ch` (below 2^32: a row's length).
#[inline(always)]
fn candidate(magnitude: f32, ch: usize) -> Candidate {
    (u64::from(magnitude.to_bits()) << 32) | u64::from(u32::MAX - ch as u32)
}

/// A candidate's (magnitude, channel).
fn candidate_parts(c: Candidate) -> (f32, usize) {
    (
        f32::from_bits((c >> 32) as u32),
        (u32::MAX - c as u32) as usize,
    )
}

/// `candidates` largest first (the largest magnitude, then the lower channel: the order the
/// rule reads them in). Why not a sort for a few: an insertion sort branched on every
/// comparison, a fifth of quantising a row (SmolLM2 int8 on AMD Zen 5); a row has a handful,
/// and each one's place is the count of those larger (candidates differ in their channels).
fn sort_descending(candidates: &mut [Candidate]) {
    if candidates.len() > LANES {
        candidates.sort_unstable_by(|a, b| b.cmp(a));
        return;
    }
    let mut placed = [0; LANES];
    for &c in candidates.iter() {
        placed[candidates.iter().filter(|&&other| other > c).count()] = c;
    }
    candidates.copy_from_slice(&placed[..candidates.len()]);
}

/// The [`Candidate`] of every channel with `|x[c]| >= floor`, in channel order, into `out`; `x`
/// is finite and shorter than 2^32. With AVX-512, sixteen compares at a time; with AVX2, eight.
fn at_least(isa: Isa, x: &[f32], floor: f32, out: &mut Vec<Candidate>) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        done = unsafe { at_least_avx512(x, floor, out) };
    } else if isa.is_avx2() {
        // SAFETY: an AVX2 `Isa` exists only where the CPU has AVX2 and FMA.
        done = unsafe { at_least_avx2(x, floor, out) };
    }
    let _ = isa;
    for (c, v) in x.iter().enumerate().skip(done) {
        if v.abs() >= floor {
            out.push(candidate(v.abs(), c));
        }
    }
}

/// [`at_least`] on whole groups of sixteen values; returns how many it looked at.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn at_least_avx512(x: &[f32], floor: f32, out: &mut Vec<Candidate>) -> usize {
    use std::arch::x86_64::*;
    let whole = x.len() / 16 * 16;
    let bound = _mm512_set1_ps(floor);
    // Room for every value up front, written in place: with `push` in the loop (a call when it
    // grows), the compiler kept the loop's counter and bound on the stack (SmolLM2 int8 on AMD
    // Zen 4: 2.5% of the samples here).
    out.reserve(whole);
    let (start, spare) = (out.len(), out.spare_capacity_mut());
    let mut found = 0;
    for at in (0..whole).step_by(16) {
        // SAFETY: at + 16 <= whole <= x.len().
        let v = unsafe { _mm512_abs_ps(_mm512_loadu_ps(x.as_ptr().add(at))) };
        let mask = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, bound);
        write_hits(mask.into(), at, x, spare, &mut found);
    }
    // SAFETY: the first `found` spare slots were written just above.
    unsafe { out.set_len(start + found) };
    whole
}

/// [`at_least`] on whole groups of eight values, as [`at_least_avx512`] does with sixteen (one
/// compare a value, one branch a value in the plain loop: 2% of an int8 extraction's samples
/// on AMD Zen 3); returns how many it looked at.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn at_least_avx2(x: &[f32], floor: f32, out: &mut Vec<Candidate>) -> usize {
    use std::arch::x86_64::*;
    let whole = x.len() / 8 * 8;
    let bound = _mm256_set1_ps(floor);
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    out.reserve(whole);
    let (start, spare) = (out.len(), out.spare_capacity_mut());
    let mut found = 0;
    for at in (0..whole).step_by(8) {
        // SAFETY: at + 8 <= whole <= x.len().
        let v = unsafe { _mm256_and_ps(_mm256_loadu_ps(x.as_ptr().add(at)), magnitude) };
        let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, bound)) as u32;
        write_hits(mask, at, x, spare, &mut found);
    }
    // SAFETY: the first `found` spare slots were written just above.
    unsafe { out.set_len(start + found) };
    whole
}

/// The vector `at_least`s' hits: the candidate of `at + b` for each set bit `b` of `mask`, lowest
/// first, written to `spare` from `found` on.
#[inline(always)]
fn write_hits(
    mut mask: u32,
    at: usize,
    x: &[f32],
    spare: &mut [std::mem::MaybeUninit<Candidate>],
    found: &mut usize,
) {
    while mask != 0 {
        let c = at + mask.trailing_zeros() as usize;
        spare[*found].write(candidate(x[c].abs(), c));
        *found += 1;
        mask &= mask - 1;
    }
}

/// Lanes of [`row_stats`]: channel `c` is in lane `c % LANES`.
const LANES: usize = 16;

/// What one pass over a row finds in each lane of its channels: the sum of squares (the
/// values in order), the largest magnitude, the next largest (the largest again where it
/// occurs twice), and the first channel holding the largest. Why the last two: where no lane
/// holds two values at least an outlier search's floor, the lanes' largest are all of them, and
/// the search needs no pass of its own over the row (2.6% of a SmolLM2 int8 run's samples on
/// AMD Zen 5, most of it branches on where the few hits were).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LaneStats {
    sq: [f32; LANES],
    max: [f32; LANES],
    second: [f32; LANES],
    at: [u32; LANES],
}

impl LaneStats {
    /// Value `v` of channel `channel`, in lane `l`: the same operations as
    /// [`lane_stats_avx512`]'s, in its order (a value that is not finite leaves `max` as
    /// [`larger`] does; what it leaves in `second` and `at` is never read).
    #[inline(always)]
    fn add(&mut self, l: usize, v: f32, channel: u32) {
        let (a, m) = (v.abs(), self.max[l]);
        self.sq[l] += v * v;
        let smaller = if a < m { a } else { m };
        self.second[l] = larger(self.second[l], smaller);
        if a > m {
            self.at[l] = channel;
        }
        self.max[l] = larger(m, a);
    }

    /// The [`Candidate`]s of a row's values at least `floor` (finite, not negative), taken
    /// from the lanes alone into `out`, when no lane holds two such values (each lane that
    /// holds one then holds it as its largest); false, and `out` unspecified, when some lane
    /// does.
    ///
    /// Without a branch on the lanes: which lanes hold outliers changes from row to row, and
    /// branching on each cost a mispredicted jump or two a row.
    fn candidates_at_least(&self, floor: f32, out: &mut Vec<Candidate>) -> bool {
        let (mut found, mut twice) = ([0; LANES], false);
        let mut n = 0;
        for l in 0..LANES {
            let hit = self.max[l] >= floor;
            twice |= hit & (self.second[l] >= floor);
            found[n] = candidate(self.max[l], self.at[l] as usize);
            n += usize::from(hit);
        }
        out.extend_from_slice(&found[..n]);
        !twice
    }
}

/// One pass over a row: its [`LaneStats`] into `lanes` (which start at their defaults), and
/// its sum of squares (the lanes' sums in order) and largest magnitude (NaN when some value is
/// not finite).
fn row_stats(isa: Isa, x: &[f32], lanes: &mut LaneStats) -> (f32, f32) {
    let (body, tail) = x.split_at(x.len() / LANES * LANES);
    lane_stats(isa, body, lanes);
    for (l, &v) in tail.iter().enumerate() {
        lanes.add(l, v, (body.len() + l) as u32);
    }
    let max = lanes.max.iter().fold(0f32, |m, &v| larger(m, v));
    let sumsq: f32 = lanes.sq.iter().sum();
    let bad = sumsq.is_nan() || !max.is_finite();
    (sumsq, if bad { f32::NAN } else { max })
}

/// `a` if it is larger than `m`, else `m`: a compare and a select rather than `f32::max`,
/// whose NaN rule keeps loops from vectorising. It skips NaN, so a value that is not finite
/// shows in [`row_stats`] as an infinite maximum (an infinity) or a NaN sum of squares (a NaN,
/// which no finite values can sum to): no flag per value, whose mask chain made this the
/// slowest part of quantising. AVX-512's `vmaxps a, m` is the same select.
#[inline(always)]
fn larger(m: f32, a: f32) -> f32 {
    if a > m { a } else { m }
}

/// [`row_stats`]' lanes over whole groups of LANES values (channels from 0): [`LaneStats::add`]
/// for each value, in order. With AVX-512 by hand: the compiler's vector code for the plain
/// loop shuffled halves of registers on every group (SmolLM2 int8 on AMD Zen 4: 2.9% of the
/// samples before, 1.5% after).
fn lane_stats(isa: Isa, body: &[f32], lanes: &mut LaneStats) {
    assert!(body.len().is_multiple_of(LANES));
    assert!(body.len() <= u32::MAX as usize);
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F; the length is
        // whole groups (asserted).
        return unsafe { lane_stats_avx512(body, lanes) };
    }
    lane_stats_plain(isa, body, lanes)
}

multiversion! {
    /// [`lane_stats`] in plain Rust.
    fn lane_stats_plain(isa: Isa, body: &[f32], lanes: &mut LaneStats) {
        for (g, c) in body.chunks_exact(LANES).enumerate() {
            for (l, &v) in c.iter().enumerate() {
                lanes.add(l, v, (g * LANES + l) as u32);
            }
        }
    }
}

/// [`lane_stats`] with AVX-512: the same operations in the same order, so the same bits.
///
/// # Safety
/// The CPU has AVX-512F, and `body.len()` is a multiple of LANES.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn lane_stats_avx512(body: &[f32], lanes: &mut LaneStats) {
    use std::arch::x86_64::*;
    // SAFETY: each of the lanes' arrays is 16 values of 4 bytes; every load is a whole group
    // inside `body`.
    unsafe {
        let (mut s, mut m) = (
            _mm512_loadu_ps(lanes.sq.as_ptr()),
            _mm512_loadu_ps(lanes.max.as_ptr()),
        );
        let mut second = _mm512_loadu_ps(lanes.second.as_ptr());
        let mut at = _mm512_loadu_si512(lanes.at.as_ptr().cast());
        let step = _mm512_set1_epi32(LANES as i32);
        let mut channels = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for offset in (0..body.len()).step_by(LANES) {
            let v = _mm512_loadu_ps(body.as_ptr().add(offset));
            let a = _mm512_abs_ps(v);
            s = _mm512_add_ps(s, _mm512_mul_ps(v, v));
            // `vminps a, m` is `a < m ? a : m`; `vmaxps x, y` is `x > y ? x : y`, `larger(y, x)`.
            second = _mm512_max_ps(_mm512_min_ps(a, m), second);
            at = _mm512_mask_mov_epi32(at, _mm512_cmp_ps_mask::<_CMP_GT_OQ>(a, m), channels);
            m = _mm512_max_ps(a, m);
            channels = _mm512_add_epi32(channels, step);
        }
        _mm512_storeu_ps(lanes.sq.as_mut_ptr(), s);
        _mm512_storeu_ps(lanes.max.as_mut_ptr(), m);
        _mm512_storeu_ps(lanes.second.as_mut_ptr(), second);
        _mm512_storeu_si512(lanes.at.as_mut_ptr().cast(), at);
    }
}

/// `a`: `round(x * inv)` clamped to -127..=127, plus 128, `per_step` values to a u32: four
/// bytes (input `4p + j` in byte `j` of `a[p]`) or, for the AVX2 kernel, two int16 (input `2p
/// + j` in half `j`); a last partial step padded with zeros. Bytes with AVX-512 go sixteen
/// values at a time (the same bits: clamping before rounding to nearest even, as `vcvtps2dq`
/// does under the default rounding mode, equals rounding before, the bounds being integers);
/// the rest as [`quantise`].
fn quantise_steps(isa: Isa, x: &[f32], inv: f32, per_step: usize, a: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() && per_step == 4 {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        let done = unsafe { quantise_avx512(x, inv, a) };
        quantise(isa, &x[done..], inv, per_step, &mut a[done / 4..]);
        return;
    }
    quantise(isa, x, inv, per_step, a)
}

/// [`quantise_steps`]' bytes on whole groups of sixteen values; returns how many it quantised.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn quantise_avx512(x: &[f32], inv: f32, a: &mut [u32]) -> usize {
    use std::arch::x86_64::*;
    let groups = x.len() / 16;
    assert!(a.len() >= groups * 4);
    let (scale, lo, hi) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(-127.0),
        _mm512_set1_ps(127.0),
    );
    let bias = _mm512_set1_epi32(128);
    for g in 0..groups {
        // SAFETY: 16 * g + 16 <= x.len(), and a holds 4 * groups u32s (asserted).
        unsafe {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * g));
            let q = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(v, scale), lo), hi);
            // 1..=255 after the shift: `vpmovdb`'s truncation to bytes keeps them whole.
            let bytes = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(q), bias));
            _mm_storeu_si128(a.as_mut_ptr().add(4 * g).cast(), bytes);
        }
    }
    groups * 16
}

multiversion! {
    /// `out[n] = q_w[ch][n]` for every output: one input channel's int8 weights, from
    /// panels of `steps` steps of `per_step` inputs (4: bytes, byte `ch % 4` of step `ch / 4`
    /// in each column; 2: int16, half `ch % 2` of step `ch / 2`).
    fn unpack_channel(
        isa: Isa,
        data: &[u32],
        steps: usize,
        per_step: usize,
        ch: usize,
        out: &mut [i8],
    ) {
        for (panel, out) in out.chunks_mut(PANEL).enumerate() {
            let at = (panel * steps + ch / per_step) * PANEL;
            for (o, &step) in out.iter_mut().zip(&data[at..at + PANEL]) {
                *o = step_input(step, per_step, ch);
            }
        }
    }
}

/// Input `ch`'s weight held in `step` (one of `per_step` signed values of `32 / per_step` bits,
/// input `ch % per_step` of its step; every one in -127..=127). Inlined into each level's copy.
#[inline(always)]
fn step_input(step: u32, per_step: usize, ch: usize) -> i8 {
    let bits = 32 / per_step;
    let shift = bits * (ch % per_step);
    // The value's bits moved to the top, then an arithmetic shift back down: the sign extended
    // from whichever width it has.
    (((step >> shift) << (32 - bits)) as i32 >> (32 - bits)) as i8
}

/// `add(per_column[cols], row[cols])` for every row of `m` (rows as long as `per_column`), in
/// order, each stretch of columns on its own thread. Why: loading a model is mostly passes
/// like this one over every weight, and one thread made them most of its time.
fn by_columns<T: Send, U: Sync>(
    per_column: &mut [T],
    m: &[U],
    add: impl Fn(&mut [T], &[U]) + Sync,
) {
    let n = per_column.len();
    let stretch = n.div_ceil(rayon::current_num_threads().max(1)).max(1);
    per_column
        .par_chunks_mut(stretch)
        .enumerate()
        .for_each(|(c, mine)| {
            let cols = c * stretch..c * stretch + mine.len();
            for row in m.chunks_exact(n) {
                add(mine, &row[cols.clone()]);
            }
        });
}

/// A whole number in -127..=127 as i8 (the value `as i8` gives): 1.5 x 2^23 added puts it in
/// the low mantissa bits, exactly. Why not `as`: a saturating conversion, which the compiler
/// does one value at a time (it was most of a model load's time in `quantise_weights`); this
/// is an add and a subtract on whole vectors.
#[inline(always)]
fn whole_to_i8(x: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((x + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8
}

multiversion! {
    /// `q[n] = round(w[n] / s_w[n])` clamped to -127..=127 (0 where the scale is 0): one row
    /// of weights, each output column with its own scale.
    fn quantise_weights(isa: Isa, w: &[f32], scales: &[f32], q: &mut [i8]) {
        for ((q, &v), &s) in q.iter_mut().zip(w).zip(scales) {
            *q = if s == 0.0 {
                0
            } else {
                whole_to_i8((v / s).round_ties_even().clamp(-127.0, 127.0))
            };
        }
    }
}

multiversion! {
    /// [`quantise_steps`] in plain Rust, four or two values to a u32.
    fn quantise(isa: Isa, x: &[f32], inv: f32, per_step: usize, a: &mut [u32]) {
        match per_step {
            4 => pack_steps::<4>(x, inv, a),
            2 => pack_steps::<2>(x, inv, a),
            _ => unreachable!("steps of {per_step} inputs"),
        }
    }
}

/// [`quantise`] for steps of `N` values (`32 / N` bits each); inlined into each level's copy.
#[inline(always)]
fn pack_steps<const N: usize>(x: &[f32], inv: f32, a: &mut [u32]) {
    let bits = 32 / N;
    // `whole_to_i8`, not `as i32`: Rust's saturating cast compiled to one scalar conversion and
    // two compares per value, about two thirds of this function's time with AVX2 (the row's
    // values are finite here, and the clamped ones whole).
    let level = |v: f32| {
        (whole_to_i8((v * inv).round_ties_even().clamp(-127.0, 127.0)) as i32 + 128) as u32
    };
    let step = |c: &[f32]| {
        let mut w = 0u32;
        for (j, &v) in c.iter().enumerate() {
            w |= level(v) << (bits * j);
        }
        w
    };
    let (whole, last) = x.split_at(x.len() / N * N);
    for (o, c) in a.iter_mut().zip(whole.chunks_exact(N)) {
        *o = step(c);
    }
    if !last.is_empty() {
        a[x.len() / N] = step(last);
    }
}

multiversion! {
    /// One row's sums `sum_k a[k] q_w[k][n]` (a in u8 four to a u32) against every output's
    /// column of int8 weights, as int32 bits in `out`.
    fn portable_row(isa: Isa, a: &[u32], columns: &[i8], k: usize, out: &mut [f32]) {
        // i16 products (at most 255 x 127) summed into i32: the pattern compilers turn
        // into `pmaddwd`.
        let bytes: Vec<i16> = a
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .take(k)
            .map(i16::from)
            .collect();
        for (o, col) in out.iter_mut().zip(columns.chunks_exact(k)) {
            let mut acc = 0i32;
            for (x, w) in bytes.iter().zip(col) {
                acc += (x * *w as i16) as i32;
            }
            *o = f32::from_bits(acc as u32);
        }
    }
}

/// What the rows of one product (or of one band of its rows) need when their sums become
/// outputs: per output column the u8 shift's constant and `s_w`, and per row its scale and its
/// outliers, each as (value, that channel's int8 weights for every output). Built and checked
/// once per band (every outlier's weights `n` long), rather than at each of the many short
/// [`OutputColumns::descale`] calls of a gated product's tiles (64 outputs each), which also
/// gathered each outlier's weights into registers every call. Measured on AMD Zen 4 with `bench extract --compute int8`,
/// old and new builds alternating: SmolLM2 +0.7-1.5% (three pairs), Gemma-3 +2% / -0.3%; the
/// same bits.
struct OutputColumns<'a> {
    shift: &'a [i32],
    scales: &'a [f32],
    /// Per row, `s_x`.
    row_scales: Vec<f32>,
    /// Every row's outliers, row after row: row `r`'s are `outliers[starts[r]..starts[r + 1]]`.
    outliers: Vec<(f32, &'a [i8])>,
    starts: Vec<usize>,
    n: usize,
    /// Whether the micro-kernel applies all of this to its sums (VNNI's, [`TileScale`]), so
    /// that [`OutputColumns::descale`] is not for them.
    in_kernel: bool,
}

impl<'a> OutputColumns<'a> {
    /// For the rows of `q`, products of `w`, their outliers' weights from `w`'s kept channels.
    fn new(w: &'a PackedI8, q: &QuantRows) -> Self {
        let (shift, scales) = (w.shift.as_slice(), w.scales.as_slice());
        let n = shift.len();
        assert_eq!(scales.len(), n);
        let mut outliers = Vec::new();
        let mut starts = Vec::with_capacity(q.rows.len() + 1);
        for (row, slots) in q.rows.iter().zip(q.slots.chunks_exact(q.slot_len)) {
            starts.push(outliers.len());
            for &(v, ch) in &slots[..row.outliers] {
                let weights = w.channel(ch);
                assert_eq!(weights.len(), n, "outlier channel {ch}'s weights");
                outliers.push((v, weights));
            }
        }
        starts.push(outliers.len());
        OutputColumns {
            shift,
            scales,
            row_scales: q.rows.iter().map(|r| r.scale).collect(),
            outliers,
            starts,
            n,
            in_kernel: matches!(w.repr, Repr::Quads(_)),
        }
    }

    /// Outputs `col..col + y.len()` of row `row` from their exact sums (int32 bits in `y`): the
    /// u8 shift undone, then `y = s_w * (s_x * sum + extra)`, `extra` the sum of the row's
    /// outlier channels' f32 products `v * q_w[ch][n]`, added in the row's order. With AVX-512,
    /// sixteen outputs at a time (the same operations in the same order, so the same bits).
    fn descale(&self, row: usize, y: &mut [f32], col: usize) {
        assert!(col + y.len() <= self.n);
        let (isa, s_x) = (Isa::best(), self.row_scales[row]);
        let outliers = &self.outliers[self.starts[row]..self.starts[row + 1]];
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if isa.is_avx512() {
            // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F; the columns are
            // checked just above, and every outlier's weights are `n` long (checked in `new`).
            done = unsafe { descale_avx512(y, col, s_x, outliers, self) };
        }
        // Only when AVX-512 left outputs: the call alone (a dispatch on the level, then nothing
        // to do) was 0.8% of a SmolLM2 int8 run's samples, whose widths are all whole sixteens.
        if done < y.len() {
            descale_from(isa, &mut y[done..], col + done, s_x, outliers, self);
        }
    }
}

/// VNNI's micro-kernel scales a band's sums itself (AVX2's leaves them to
/// [`OutputColumns::descale`]).
impl BandScales for OutputColumns<'_> {
    fn fused(&self) -> bool {
        self.in_kernel
    }

    fn tile(&self, row: usize, col: usize) -> TileScale<'_> {
        let rows = (self.row_scales.len() - row).min(super::panels::MICRO_ROWS);
        TileScale {
            shift: &self.shift[col..],
            scales: &self.scales[col..],
            row_scales: &self.row_scales[row..],
            outliers: &self.outliers,
            starts: &self.starts[row..row + rows + 1],
            col,
            n: self.n,
        }
    }
}

multiversion! {
    /// [`OutputColumns::descale`] in plain Rust (vectorised by the compiler at each level; the same
    /// operations in the same order, so the same bits).
    fn descale_from(
        isa: Isa,
        y: &mut [f32],
        col: usize,
        s_x: f32,
        outliers: &[(f32, &[i8])],
        columns: &OutputColumns,
    ) {
        let int = |v: f32, shift: i32| (v.to_bits() as i32).wrapping_sub(shift) as f32;
        let end = col + y.len();
        let (shift, scales) = (&columns.shift[col..end], &columns.scales[col..end]);
        if outliers.is_empty() {
            for ((y, &shift), &scale) in y.iter_mut().zip(shift).zip(scales) {
                *y = scale * (s_x * int(*y, shift));
            }
            return;
        }
        // The outliers' products a block of outputs at a time, outlier after outlier (each
        // output's sum still in the outliers' order): the inner loops run along rows of weights.
        const BLOCK: usize = 64;
        let mut extra = [0f32; BLOCK];
        for (c0, ((y, shift), scales)) in y
            .chunks_mut(BLOCK)
            .zip(shift.chunks(BLOCK))
            .zip(scales.chunks(BLOCK))
            .enumerate()
        {
            let (from, extra) = (col + c0 * BLOCK, &mut extra[..y.len()]);
            extra.fill(0.0);
            for &(v, w) in outliers {
                let weights = &w[from..from + extra.len()];
                for (e, &w) in extra.iter_mut().zip(weights) {
                    *e += v * f32::from(w);
                }
            }
            for (((y, &shift), &scale), &extra) in y.iter_mut().zip(shift).zip(scales).zip(&*extra)
            {
                *y = scale * (s_x * int(*y, shift) + extra);
            }
        }
    }
}

/// [`OutputColumns::descale`] on whole groups of sixteen outputs; returns how many it scaled.
///
/// # Safety
/// The CPU has AVX-512F; `col + y.len() <= columns.n` (every column slice holds `n` values),
/// and every outlier's weights are `n` long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn descale_avx512(
    y: &mut [f32],
    col: usize,
    s_x: f32,
    outliers: &[(f32, &[i8])],
    columns: &OutputColumns,
) -> usize {
    use std::arch::x86_64::*;
    let whole = y.len() / 16 * 16;
    let row_scale = _mm512_set1_ps(s_x);
    for at in (0..whole).step_by(16) {
        let n = col + at;
        // SAFETY: at + 16 <= whole <= y.len(), so n + 16 <= col + y.len(), which every column
        // slice reaches (the caller's contract).
        unsafe {
            let sums = _mm512_loadu_si512(y.as_ptr().add(at).cast());
            let shifts = _mm512_loadu_si512(columns.shift.as_ptr().add(n).cast());
            let int = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, shifts));
            let mut x = _mm512_mul_ps(row_scale, int);
            if !outliers.is_empty() {
                // A product then a sum, each rounded, as the scalar loop does (no FMA), the
                // outliers in the row's order.
                let mut extra = _mm512_setzero_ps();
                for &(v, w) in outliers {
                    let w = _mm_loadu_si128(w.as_ptr().add(n).cast());
                    let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w));
                    extra = _mm512_add_ps(extra, _mm512_mul_ps(_mm512_set1_ps(v), w));
                }
                x = _mm512_add_ps(x, extra);
            }
            let out = _mm512_mul_ps(_mm512_loadu_ps(columns.scales.as_ptr().add(n)), x);
            _mm512_storeu_ps(y.as_mut_ptr().add(at), out);
        }
    }
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_to_i8_matches_as_for_every_quantisation_level() {
        for v in -127..=127 {
            assert_eq!(whole_to_i8(v as f32), v as i8, "{v}");
        }
        assert_eq!(whole_to_i8(-0.0), 0);
    }

    #[test]
    fn lane_stats_give_the_plain_loops_bits() {
        // Values spanning many magnitudes, signed zeros, subnormals, and rows with an infinity
        // or a NaN (whose lanes the select must skip the same way).
        let special = [
            0.0,
            -0.0,
            1e-40,
            -3e-39,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        for seed in 0..64u32 {
            let len = 16 * (1 + seed as usize % 40);
            let body: Vec<f32> = (0..len as u32)
                .map(|i| {
                    let h = (seed.wrapping_mul(2654435761) ^ i.wrapping_mul(40503)) % 1009;
                    match (seed % 4, h % 97) {
                        (0, 3) => special[(h % 7) as usize],
                        (_, 5) => special[(h % 4) as usize],
                        _ => (h as f32 - 504.0) * 10f32.powi((h % 9) as i32 - 4),
                    }
                })
                .collect();
            // Stats carried in from an earlier part (as a row's tail is added after its body).
            let start = LaneStats {
                sq: [0.5; LANES],
                max: [0.25; LANES],
                second: [0.125; LANES],
                at: [7; LANES],
            };
            let (mut wide, mut plain) = (start, start);
            lane_stats(Isa::best(), &body, &mut wide);
            lane_stats_plain(Isa::baseline(), &body, &mut plain);
            let bits = |l: &LaneStats| {
                let f = |a: [f32; LANES]| a.map(f32::to_bits);
                (f(l.sq), f(l.max), f(l.second), l.at)
            };
            assert_eq!(bits(&wide), bits(&plain), "seed {seed}");
        }
    }

    /// Where the lanes give a floor's candidates, they are the ones a pass over the row finds:
    /// rows with outliers, two of them in one lane, ties, and tails past the last whole group.
    #[test]
    fn lane_candidates_are_the_values_a_pass_finds() {
        let (mut from_lanes, mut passes) = (0, 0);
        for seed in 0..300u32 {
            let len = LANES * (1 + seed as usize % 12) + seed as usize % 5;
            let mut x: Vec<f32> = (0..len as u32)
                .map(|i| {
                    let h = (seed.wrapping_mul(2654435761) ^ i.wrapping_mul(40503)) % 1009;
                    (h as f32 - 504.0) * 0.01
                })
                .collect();
            for t in 0..seed % 5 {
                let ch = (seed as usize * 7 + t as usize * 13) % len;
                x[ch] = if t % 2 == 0 { 50.0 } else { -50.0 - t as f32 };
            }
            if seed % 3 == 0 && len > 2 * LANES {
                // Two equal magnitudes in one lane.
                (x[3], x[3 + LANES]) = (60.0, -60.0);
            }
            let mut lanes = LaneStats::default();
            row_stats(Isa::best(), &x, &mut lanes);
            for keep in 1..=LANES {
                let floor = nth_largest(Isa::best(), &lanes.max, keep);
                let mut fast = Vec::new();
                if lanes.candidates_at_least(floor, &mut fast) {
                    let mut pass = Vec::new();
                    at_least(Isa::best(), &x, floor, &mut pass);
                    fast.sort_unstable();
                    pass.sort_unstable();
                    assert_eq!(fast, pass, "seed {seed} keep {keep}");
                    from_lanes += 1;
                } else {
                    passes += 1;
                }
            }
        }
        // Both ways were taken, so both were checked.
        assert!(from_lanes > 1000 && passes > 100, "{from_lanes} {passes}");
    }

    #[test]
    fn nth_largest_is_the_sorted_lanes_nth() {
        // Ties, zeros, and the largest in every position.
        for seed in 0..200u32 {
            let mut lanes = [0f32; LANES];
            for (i, l) in lanes.iter_mut().enumerate() {
                let h = (seed.wrapping_mul(2654435761) ^ (i as u32).wrapping_mul(40503)) % 97;
                *l = if h.is_multiple_of(5) {
                    0.0
                } else {
                    (h % 11) as f32 * 0.5
                };
            }
            let mut sorted = lanes;
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            for keep in 1..=LANES {
                for isa in [Isa::best(), Isa::baseline()] {
                    let nth = nth_largest(isa, &lanes, keep);
                    assert_eq!(nth, sorted[keep - 1], "{isa:?} {lanes:?} {keep}");
                }
            }
        }
    }

    /// The squares decide as the rounded form does, at the boundary and around it: values a
    /// few units in the last place either side of `ratio * rms` for many sums and lengths.
    #[test]
    fn is_outlier_decides_as_the_rounded_form() {
        let rounded = |v: f32, sumsq: f64, len: usize, ratio: f32| {
            let below = (sumsq - (v as f64) * (v as f64)).max(0.0);
            v as f64 > ratio as f64 * (below / (len - 1) as f64).sqrt()
        };
        let mut checked = 0;
        for len in [2usize, 3, 17, 576, 1536, 8960] {
            for ratio in [1.0f32, 4.0, 8.0, 6.5] {
                for rest in [0.0f64, 1e-30, 0.37, 1.0, 123.456, 9.9e7] {
                    let bound = ratio as f64 * (rest / (len - 1) as f64).sqrt();
                    let mid = bound as f32;
                    let mut v = mid;
                    for _ in 0..8 {
                        v = f32::from_bits(v.to_bits().saturating_sub(1));
                    }
                    for _ in 0..17 {
                        let sumsq = rest + (v as f64) * (v as f64);
                        let rule = Outliers { max: 8, ratio };
                        assert_eq!(
                            is_outlier(v, sumsq, len, rule),
                            rounded(v, sumsq, len, ratio),
                            "v {v} rest {rest} len {len} ratio {ratio}"
                        );
                        checked += 1;
                        v = f32::from_bits(v.to_bits() + 1);
                    }
                }
            }
        }
        assert_eq!(checked, 6 * 4 * 6 * 17);
    }
}
