//! A gated MLP's first product fused with its activation: `act(x @ gate) * (x @ up)` without
//! the (rows, 2 * ffn) product ever reaching memory. The gate and up columns are packed side
//! by side in pairs of panels ([`interleave_gate_up`]), each band of rows multiplies one pair
//! into a tile that stays in L1, and the tile's epilogue (int8: the scales first) writes the
//! activation's columns. Measured (2 threads, AMD Zen 5): 2-3% faster for SmolLM2's gate and up
//! alone (`examples/bench.rs`); inside Gemma-3-270M, where the array no longer passes through
//! the caches between the other products, bf16 extraction went 3,805-3,856 -> 4,023-4,081
//! tokens/s with this and vectorised RoPE together. The activation itself (the exponential and
//! a division per value) is compute and stays.
//!
//! The same operations in the same order per output as the product followed by
//! [`crate::Rows::gated`], so the same bits: the tests compare the two.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::panels::{PAIR, PANEL};
use crate::isa::Isa;
use crate::rows::{bias_rows, gated_tile};
use crate::{Error, Result};

/// Rows per task when the activation runs after a whole product ([`Gated::after`]).
const ROWS_PER_TASK: usize = 16;

/// What the fused product needs besides its weights: the MLP's width, the activation, and the
/// gate and up biases interleaved as the weights are (or none).
#[derive(Clone, Copy, Debug)]
pub struct Gated<'a> {
    pub ffn: usize,
    pub gelu: bool,
    pub bias: Option<&'a [f32]>,
}

/// Columns of the packed matrix of a gated MLP `ffn` wide: gate and up, each padded to whole
/// panels.
pub fn gated_width(ffn: usize) -> usize {
    2 * ffn.next_multiple_of(PANEL)
}

/// `w`, K rows of `2 * ffn` values (the gate's columns, then the up projection's), as K rows
/// of [`gated_width`] values: gate columns `32j..32j + 32` then the same up columns, pair
/// after pair, zero columns past `ffn` in the last pair. A bias is one row (`k = 1`). The
/// layout as a whole copy, which tests build their weights with; a model's loader places each
/// column with [`gate_up_column`] instead (tested to agree), without the copy.
pub fn interleave_gate_up(w: &[f32], k: usize, ffn: usize) -> Vec<f32> {
    assert_eq!(
        w.len(),
        k * 2 * ffn,
        "interleave: {} values for ({k}, 2 x {ffn})",
        w.len()
    );
    let width = gated_width(ffn);
    let mut out = vec![0f32; k * width];
    for (src, dst) in w
        .chunks_exact(2 * ffn.max(1))
        .zip(out.chunks_exact_mut(width))
    {
        let (gate, up) = src.split_at(ffn);
        for (j, pair) in dst.chunks_exact_mut(PAIR).enumerate() {
            let cols = j * PANEL..((j + 1) * PANEL).min(ffn);
            pair[..cols.len()].copy_from_slice(&gate[cols.clone()]);
            pair[PANEL..PANEL + cols.len()].copy_from_slice(&up[cols]);
        }
    }
    out
}

/// Where [`interleave_gate_up`] puts column `o` of the `2 * ffn` (the gate's, then the up
/// projection's), so that a matrix can be written in that order without the copy.
pub fn gate_up_column(ffn: usize, o: usize) -> usize {
    let (part, c) = if o < ffn { (0, o) } else { (PANEL, o - ffn) };
    c / PANEL * PAIR + part + c % PANEL
}

impl Gated<'_> {
    /// Checks the packed weights' width (`n`) and the bias against `ffn`.
    pub(crate) fn check(&self, op: &'static str, n: usize) -> Result<()> {
        let width = gated_width(self.ffn);
        if n != width {
            return Err(Error::new(
                op,
                format!(
                    "weights have {n} columns, not the {width} of a gated MLP {} wide",
                    self.ffn
                ),
            ));
        }
        if let Some(b) = self.bias.filter(|b| b.len() != width) {
            return Err(Error::new(
                op,
                format!("bias has {} values, not {width}", b.len()),
            ));
        }
        Ok(())
    }

    /// Checks that a down projection taking `k` inputs follows this MLP (`ffn` wide).
    pub(crate) fn check_down(&self, op: &'static str, k: usize) -> Result<()> {
        if k != self.ffn {
            return Err(Error::new(
                op,
                format!(
                    "down projection takes {k} inputs, the MLP is {} wide",
                    self.ffn
                ),
            ));
        }
        Ok(())
    }

    /// The epilogue of pair `j` for a band's tile (band rows x PAIR): the bias, then the
    /// activation into the band's output rows (`ffn` values each).
    pub(crate) fn finish_pair(&self, j: usize, tile: &mut [f32], out: &mut [MaybeUninit<f32>]) {
        if let Some(b) = self.bias {
            bias_rows(Isa::best(), tile, &b[j * PAIR..(j + 1) * PAIR]);
        }
        self.activate_pair(j, tile, PAIR, out);
    }

    /// The activation of a whole product `y` (m rows of [`gated_width`] values) already made:
    /// what kernels without panels (candle's f32, AMX, the portable int8) do.
    pub(crate) fn after(&self, mut y: Vec<f32>, m: usize) -> Vec<f32> {
        if self.ffn == 0 {
            return Vec::new();
        }
        let (width, ffn) = (gated_width(self.ffn), self.ffn);
        let mut out: Vec<MaybeUninit<f32>> = Vec::with_capacity(m * ffn);
        // SAFETY: MaybeUninit needs no initialisation.
        unsafe { out.set_len(m * ffn) };
        // Bands of rows on all threads (the exponentials are most of the work: on one thread
        // this took longer than the product on AMX).
        y.par_chunks_mut(ROWS_PER_TASK * width)
            .zip(out.par_chunks_mut(ROWS_PER_TASK * ffn))
            .for_each(|(y, out)| {
                if let Some(b) = self.bias {
                    bias_rows(Isa::best(), y, b);
                }
                self.activate_rows(y, out);
            });
        let mut out = std::mem::ManuallyDrop::new(out);
        // SAFETY: the pairs wrote all `ffn` columns of every row, and MaybeUninit<f32> has
        // f32's layout.
        unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast(), out.len(), out.capacity()) }
    }

    /// `act(gate) * up` of whole rows of a product already made (`y`, rows of
    /// [`gated_width`] values, any bias added) into as many rows of `ffn` in `out`, every pair
    /// of each row; returns `out`, now written.
    pub(crate) fn activate_rows<'o>(
        &self,
        y: &[f32],
        out: &'o mut [MaybeUninit<f32>],
    ) -> &'o [f32] {
        let width = gated_width(self.ffn);
        assert!(
            out.len().is_multiple_of(self.ffn),
            "{} outputs for rows of {}",
            out.len(),
            self.ffn
        );
        for j in 0..width / PAIR {
            self.activate_pair(j, &y[j * PAIR..], width, out);
        }
        // SAFETY: the pairs wrote all `ffn` columns of every row of `out` (whole rows,
        // asserted), and MaybeUninit<f32> has f32's layout.
        unsafe { std::slice::from_raw_parts(out.as_ptr().cast(), out.len()) }
    }

    /// `act(gate) * up` of pair `j` (its rows `stride` apart in `pairs`, gate then up) into
    /// columns `32j..` of the output rows.
    fn activate_pair(&self, j: usize, pairs: &[f32], stride: usize, out: &mut [MaybeUninit<f32>]) {
        self.activate_pair_into(j, pairs, stride, out, self.ffn, j * PANEL);
    }

    /// The live columns of pair `j` (32 but in the last pair): how many values a row of
    /// [`Gated::activate_pair_into`]'s output gets.
    pub(crate) fn pair_columns(&self, j: usize) -> usize {
        (self.ffn - j * PANEL).min(PANEL)
    }

    /// [`Gated::activate_pair`] into rows `out_stride` apart, from column `col`.
    pub(crate) fn activate_pair_into(
        &self,
        j: usize,
        pairs: &[f32],
        stride: usize,
        out: &mut [MaybeUninit<f32>],
        out_stride: usize,
        col: usize,
    ) {
        gated_tile(
            Isa::best(),
            pairs,
            stride,
            PANEL,
            self.pair_columns(j),
            self.gelu,
            out,
            out_stride,
            col,
        );
    }
}
