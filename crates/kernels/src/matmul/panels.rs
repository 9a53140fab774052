//! The blocked matrix product behind both compute dtypes: weights packed once into 32-column
//! panels, activations packed per call, and an AVX-512 micro-kernel of 12 rows x 32 columns
//! (24 accumulators) that runs one multiply-add per (row, column, step).
//!
//! A "step" is one 32-bit value of the inner dimension, and the two kernels differ only in it:
//! - [`FmaF32`] (`compute: f32`): a step is one f32 input; `vfmadd` per step.
//! - [`DotBf16`] (`compute: bf16` on CPUs with AVX512-BF16 but no AMX, such as AMD Zen 4): a step
//!   is a pair of consecutive inputs rounded to bf16 and held in one u32; `vdpbf16ps` per step,
//!   twice the multiply rate of f32 FMA.
//! - [`DotI8`] (`compute: int8` on CPUs with AVX512-VNNI): a step is four consecutive inputs as
//!   bytes (u8 activations, s8 weights); `vpdpbusd` per step, exact int32 sums (kept in C's f32
//!   slots as bits until `int8.rs` scales them).
//! - [`MaddI16`] (`compute: int8` on CPUs with AVX2 but no VNNI): a step is two consecutive
//!   inputs as int16; `vpmaddwd` then an add per step, the same exact int32 sums.
//!
//! [`FmaF32Avx2`] and [`MaddI16`] run `avx2.rs`'s kernel (eight lanes, 6 rows x 16 columns a
//! pass) for CPUs without AVX-512.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, whose stable-Rust build runs
//! AVX2 kernels only (its AVX-512 ones need nightly), which caps it near half of what these cores
//! do with AVX-512, and it has no bf16 dot-product kernel.
//!
//! Numerics: every output is one f32 chain over the steps in order, whatever the batch, the
//! row's position in it or the thread split, so a text's vectors do not depend on its
//! neighbours.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use crate::isa::{has_avx2_fma, has_avx512f};
use crate::{Error, Result};
use rayon::prelude::*;

/// Columns of B per panel: two AVX-512 registers.
pub(crate) const PANEL: usize = 32;
/// Columns of a pair of panels ([`Panels::matmul_pairs`]): a gated MLP's gate and up columns.
pub(crate) const PAIR: usize = 2 * PANEL;
/// Rows of A per micro-kernel call: 12 x 2 accumulators, plus the two B vectors and the
/// broadcast, fit in the 32 vector registers.
pub(crate) const MICRO_ROWS: usize = 12;
/// Rows of A per task, at most: a band of A stays in L2 while every B panel passes over it.
const BAND_ROWS: usize = 96;
/// Steps per pass over a band: a block of B (1024 x 32 steps, 128 KiB) stays in L2 while the
/// band's micro blocks pass over it; each further pass repacks A and reloads C. On AMD Zen 4,
/// 1024 ran f32 products about 3% faster than L1-sized blocks of 256 (and bf16 the same); most
/// of the models' products now take one pass.
const DEPTH: usize = 1024;

/// A 32-bit value of the inner dimension: an f32 input, or two bf16 inputs in a u32.
pub(crate) trait Step: Copy + Send + Sync + 'static {
    const ZERO: Self;
}
impl Step for f32 {
    const ZERO: f32 = 0.0;
}
impl Step for u32 {
    const ZERO: u32 = 0;
}

/// One kind of step and its micro-kernel.
pub(crate) trait Kernel {
    type Step: Step;
    /// Whether this CPU runs the kernel (checked once by whoever packs weights for it).
    fn available() -> bool;
    /// Whether the micro-kernel applies a [`Block::scale`] (int8's, with AVX-512 VNNI): a
    /// check on the band's state, which says whether it gives one ([`BandScales::fused`]).
    const SCALES: bool = false;
    /// `R` rows of packed A times one block of a packed panel, into C (see [`micro`]).
    ///
    /// # Safety
    /// [`Kernel::available`] holds; the pointers are valid for the extents in `s`.
    unsafe fn micro<const R: usize>(
        s: &Block,
        a: *const Self::Step,
        b: *const Self::Step,
        c: *mut f32,
    );
}

/// f32 inputs, one FMA per input.
pub(crate) struct FmaF32;
/// The same with AVX2 and FMA (no AVX-512): the same order of operations, so the same bits.
pub(crate) struct FmaF32Avx2;
/// bf16 input pairs (input `2p` in the low half of step `p`), one `vdpbf16ps` per pair.
pub(crate) struct DotBf16;
/// Four u8 inputs times four s8 weights per step (input `4p + j` in byte `j`), one `vpdpbusd`
/// per step; the sums are int32, stored in C's f32 slots as bits.
pub(crate) struct DotI8;
/// Two int16 inputs times two int16 weights per step (input `2p` in the low half), one
/// `vpmaddwd` per step with AVX2: the same int32 sums as [`DotI8`], where VNNI is missing.
pub(crate) struct MaddI16;

/// A weight matrix of `k` steps x `n` outputs in panels of [`PANEL`] columns, each `k` rows of
/// 32 contiguous steps; the last panel padded with zero columns.
///
/// The memory is its own anonymous mapping, whose whole 2 MiB pages Linux is asked to back with
/// huge pages. Why:
/// a model's weights are far bigger than what the TLB covers with 4 KiB pages (SmolLM2's are 420
/// MB in f32), and every block of B the kernel starts on is on pages it has not used since the
/// last batch; with 2 MiB pages the products ran about 4% faster. The advice is only a hint:
/// without transparent huge pages the memory is the same, on 4 KiB pages.
pub(crate) struct Panels<T: Step> {
    map: memmap2::MmapMut,
    k: usize,
    n: usize,
    step: PhantomData<T>,
}

impl<T: Step> Panels<T> {
    /// Packs `w`, `k` rows of `n` steps, row-major.
    pub fn new(w: &[T], k: usize, n: usize) -> Result<Panels<T>> {
        assert_eq!(w.len(), k * n, "panels: {} values for ({k}, {n})", w.len());
        let len = n.div_ceil(PANEL) * k * PANEL;
        // Whole 2 MiB pages: Linux places a mapping on a 2 MiB boundary only when its length
        // is a multiple of 2 MiB.
        const HUGE_PAGE: usize = 2 << 20;
        let used = len * size_of::<T>();
        let bytes = used.next_multiple_of(HUGE_PAGE);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|e| Error::new("allocate weight panels", e))?;
        // Before the first write, so that the pages are huge from their first fault; only the
        // huge pages the panels fill. Why not the whole mapping: a huge page is backed whole
        // once any of it is written, so the padding past the last panel (up to 2 MiB a matrix)
        // became resident too: 90-190 MiB of an extraction's peak (SmolLM2-135M's 120
        // matrices, Qwen2.5-Coder-1.5B's 112, most of them under 2 MiB in int8). The rest stays
        // on 4 KiB pages, resident only where written.
        #[cfg(target_os = "linux")]
        if used >= HUGE_PAGE {
            let _ = map.advise_range(memmap2::Advice::HugePage, 0, used / HUGE_PAGE * HUGE_PAGE);
        }
        let mut panels = Panels {
            map,
            k,
            n,
            step: PhantomData,
        };
        // One task per panel, each a stretch of the mapping (a model's load was mostly such
        // single-threaded copies).
        let data = panels.as_mut_slice();
        data.par_chunks_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(p, panel)| {
                let cols = p * PANEL..((p + 1) * PANEL).min(n);
                for (row, values) in w.chunks_exact(n.max(1)).enumerate() {
                    panel[row * PANEL..row * PANEL + cols.len()]
                        .copy_from_slice(&values[cols.clone()]);
                }
            });
        Ok(panels)
    }

    fn len(&self) -> usize {
        self.n.div_ceil(PANEL) * self.k * PANEL
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` 4-byte steps (anonymous maps start zeroed, a valid
        // f32 and u32) and is page-aligned.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len()) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as for as_slice, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len()) }
    }

    /// `a @ self` for `a` (m, k) steps row-major: (m, n) f32 row-major. `K` must be the kernel
    /// the panels were packed for, and available.
    pub fn matmul<K: Kernel<Step = T>>(&self, a: &[T], m: usize) -> Vec<f32> {
        self.matmul_then::<K>(a, m, |_, _| {})
    }

    /// [`Panels::matmul`], then `finish(first_row, rows)` on each band of finished rows of C
    /// (whole rows, row-major), by the thread that computed them, as soon as the band is done
    /// (its last rows still in that core's cache): how int8 scales its integer sums without a
    /// separate pass over C.
    pub fn matmul_then<K: Kernel<Step = T>>(
        &self,
        a: &[T],
        m: usize,
        finish: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Vec<f32> {
        let k = self.k;
        assert_eq!(a.len(), m * k, "panel matmul: A is not ({m}, {k})");
        let steps = |row0: usize, rows: usize| (Cow::Borrowed(&a[row0 * k..(row0 + rows) * k]), ());
        panel_matmul::<K, ()>(&steps, m, k, self.as_slice(), self.n, &|row0, c, _| {
            finish(row0, c)
        })
    }

    /// [`Panels::matmul`] with each band's rows of A made by `steps(first_row, rows)` ((rows,
    /// k) steps, row-major) inside the band's own task: bf16 rounds its activations there,
    /// instead of in a pass of its own over all rows before the product (one fork and join of
    /// the threads less, and the rounded rows still in cache when they are packed).
    pub fn matmul_from<K: Kernel<Step = T>>(
        &self,
        steps: &BandSteps<'_, '_, T>,
        m: usize,
    ) -> Vec<f32> {
        let steps = |row0: usize, rows: usize| (steps(row0, rows), ());
        panel_matmul::<K, ()>(&steps, m, self.k, self.as_slice(), self.n, &|_, _, _| {})
    }

    /// [`Panels::matmul_from`] with state of each band's own: `prepare(first_row, rows)` gives
    /// the band's rows of A and whatever `finish(first_row, rows of C, state)` needs of them,
    /// both in the band's task (int8 quantises its activations there, and the scales the
    /// quantisation chose are applied by the micro-kernel where it takes them, [`BandScales`],
    /// else by `finish`).
    pub fn matmul_banded<K: Kernel<Step = T>, S: BandScales>(
        &self,
        prepare: &BandInput<'_, '_, T, S>,
        m: usize,
        finish: impl Fn(usize, &mut [f32], &S) + Sync,
    ) -> Vec<f32> {
        panel_matmul::<K, S>(prepare, m, self.k, self.as_slice(), self.n, &finish)
    }

    /// `a @ self` for weights packed as gate/up pairs ([`super::interleave_gate_up`]: panel
    /// `2j` holds gate columns `32j..32j + 32`, panel `2j + 1` the same up columns), without
    /// writing the (m, n) product anywhere: each band's pair `j` is computed into a tile of
    /// band rows x [`PAIR`] values (row-major, in L1 while it lives), then `epilogue(row0, j,
    /// tile, out)` turns it into columns of the band's rows of the output, `width` values each,
    /// and must write every one of them over the pairs. Every output is the same chain over the
    /// steps in order as [`Panels::matmul`]'s, so the same bits; what it saves is writing the
    /// gate and up products to memory and reading them back (a gated MLP's widest array).
    pub fn matmul_pairs<K: Kernel<Step = T>>(
        &self,
        a: &[T],
        m: usize,
        width: usize,
        epilogue: impl Fn(usize, usize, &mut [f32], &mut [MaybeUninit<f32>]) + Sync,
    ) -> Vec<f32> {
        let k = self.k;
        assert_eq!(a.len(), m * k, "panel matmul: A is not ({m}, {k})");
        let steps = |row0: usize, rows: usize| (Cow::Borrowed(&a[row0 * k..(row0 + rows) * k]), ());
        self.matmul_pairs_banded::<K, ()>(&steps, m, width, |row0, j, tile, out, _| {
            epilogue(row0, j, tile, out)
        })
    }

    /// [`Panels::matmul_pairs`] with each band's rows of A made inside its task, as
    /// [`Panels::matmul_from`] does.
    pub fn matmul_pairs_from<K: Kernel<Step = T>>(
        &self,
        steps: &BandSteps<'_, '_, T>,
        m: usize,
        width: usize,
        epilogue: impl Fn(usize, usize, &mut [f32], &mut [MaybeUninit<f32>]) + Sync,
    ) -> Vec<f32> {
        let steps = |row0: usize, rows: usize| (steps(row0, rows), ());
        self.matmul_pairs_banded::<K, ()>(&steps, m, width, |row0, j, tile, out, _| {
            epilogue(row0, j, tile, out)
        })
    }

    /// [`Panels::matmul_pairs`] with state of each band's own, as [`Panels::matmul_banded`]
    /// has it: `epilogue(first_row, j, tile, out, state)`.
    pub fn matmul_pairs_banded<K: Kernel<Step = T>, S: BandScales>(
        &self,
        prepare: &BandInput<'_, '_, T, S>,
        m: usize,
        width: usize,
        epilogue: impl Fn(usize, usize, &mut [f32], &mut [MaybeUninit<f32>], &S) + Sync,
    ) -> Vec<f32> {
        let (k, n) = (self.k, self.n);
        assert!(
            n.is_multiple_of(PAIR),
            "panel pairs: {n} columns are not whole pairs"
        );
        if m == 0 || width == 0 {
            return vec![0f32; m * width];
        }
        let mut out: Vec<f32> = Vec::with_capacity(m * width);
        let b = self.as_slice();
        let out_rows = &mut out.spare_capacity_mut()[..m * width];
        par_bands(
            m,
            k,
            prepare,
            out_rows,
            width,
            |row0, a_band, state, out_band| {
                let rows = out_band.len() / width;
                let fused = state.fused();
                let micro_blocks = rows.div_ceil(MICRO_ROWS);
                // All of the band's steps packed once, input block after input block (each pair
                // passes over all of them): block `k0` starts at `micro_blocks * MICRO_ROWS * k0`.
                let mut a_packed: Vec<T> = vec![T::ZERO; micro_blocks * MICRO_ROWS * k];
                for k0 in (0..k).step_by(DEPTH) {
                    let depth = (k - k0).min(DEPTH);
                    let blocks = &mut a_packed[micro_blocks * MICRO_ROWS * k0..];
                    for (rows_in, dst) in a_band
                        .chunks(MICRO_ROWS * k)
                        .zip(blocks.chunks_exact_mut(MICRO_ROWS * depth))
                    {
                        pack_micro_block(rows_in, k, k0..k0 + depth, dst);
                    }
                }
                // Zeroed once (24 KiB at most), so that every value is always initialised; the
                // first input block's calls overwrite all of it for each pair.
                let mut tile = vec![MaybeUninit::new(0f32); rows * PAIR];
                let panels = n / PANEL;
                for j in 0..n / PAIR {
                    for p in [2 * j, 2 * j + 1] {
                        for k0 in (0..k).step_by(DEPTH) {
                            let depth = (k - k0).min(DEPTH);
                            let b_block = &b[(p * k + k0) * PANEL..(p * k + k0 + depth) * PANEL];
                            // The block of B that comes next, fetched into L2 meanwhile.
                            let next_b = if k0 + depth < k {
                                (p * k + k0 + depth) * PANEL
                            } else if p + 1 < panels {
                                (p + 1) * k * PANEL
                            } else {
                                0
                            };
                            let a_blocks = &a_packed[micro_blocks * MICRO_ROWS * k0..];
                            for mb in 0..micro_blocks {
                                let r0 = mb * MICRO_ROWS;
                                let block = Block {
                                    rows: (rows - r0).min(MICRO_ROWS),
                                    depth,
                                    ldc: PAIR,
                                    cols: PANEL,
                                    resume: k0 > 0,
                                    prefetch_b: if mb < 4 {
                                        b.as_ptr().wrapping_add(next_b + mb * depth * PANEL / 4)
                                    } else {
                                        b_block.as_ptr()
                                    }
                                    .cast(),
                                    prefetch_c: tile
                                        .as_ptr()
                                        .wrapping_add((r0 + MICRO_ROWS) * PAIR)
                                        .cast(),
                                    scale: (fused && k0 + depth == k)
                                        .then(|| state.tile(r0, p * PANEL)),
                                };
                                let a_block = &a_blocks
                                    [mb * MICRO_ROWS * depth..(mb + 1) * MICRO_ROWS * depth];
                                let c = &mut tile[r0 * PAIR + (p % 2) * PANEL..];
                                micro::<K>(&block, a_block, b_block, c);
                            }
                        }
                    }
                    // SAFETY: every value of the tile is initialised (zeroed, then written by the
                    // kernel), and MaybeUninit<f32> has f32's layout.
                    let done: &mut [f32] = unsafe {
                        std::slice::from_raw_parts_mut(tile.as_mut_ptr().cast(), tile.len())
                    };
                    epilogue(row0, j, done, out_band, state);
                }
            },
        );
        // SAFETY: the epilogues wrote every value of every band (the caller's contract), and
        // the bands cover all m * width values.
        unsafe { out.set_len(m * width) };
        out
    }
}

/// Runs `band(first_row, a_band, state, out_band)` on every band of a product of `m` rows
/// ([`band_rows`]), in parallel: `out` (m rows of `width`) split into the bands' rows, and each
/// band's rows of A and its state from `prepare`, made in the band's task, the rows checked to
/// be (rows, k).
fn par_bands<T: Step, O: Send, S>(
    m: usize,
    k: usize,
    prepare: &BandInput<'_, '_, T, S>,
    out: &mut [O],
    width: usize,
    band: impl Fn(usize, &[T], &S, &mut [O]) + Sync,
) {
    let mut tasks = Vec::new();
    let (mut rest, mut row0) = (out, 0);
    for rows in band_rows(m) {
        let (mine, tail) = rest.split_at_mut(rows * width);
        tasks.push((row0, rows, mine));
        (rest, row0) = (tail, row0 + rows);
    }
    tasks.into_par_iter().for_each(|(row0, rows, out_band)| {
        let (a_band, state) = prepare(row0, rows);
        assert_eq!(
            a_band.len(),
            rows * k,
            "panel matmul: a band of A is not ({rows}, {k})"
        );
        band(row0, &a_band, &state, out_band)
    });
}

/// The rows of each band of a product of `m` rows: as many bands as keep every thread busy,
/// none over BAND_ROWS, and each a whole number of micro blocks but the last: a band's ragged
/// last block runs a narrower kernel (when every band had one, those took about 7% of the time).
///
/// Why the rows are shared out by halving: rayon hands the first half of the bands to one
/// thread and the second half to the other (and so on down), and a product ends when the
/// slower half does. Giving each half its share of the rows, to the nearest micro block, at
/// every level of that split, keeps the halves within a block of each other; the first bands
/// taking one block more each (as before) gave one half up to a tenth more rows (472 rows on
/// two threads: 252 against 220). Work stealing evened out most of that (a thread that is done
/// takes a band still queued), so the gain measured small: bf16 SmolLM2 about 1.6% on AMD Zen 4.
fn band_rows(m: usize) -> Vec<usize> {
    let threads = rayon::current_num_threads().max(1);
    let bands = m.div_ceil(BAND_ROWS).div_ceil(threads) * threads;
    let mut out = Vec::with_capacity(bands);
    halve_rows(m, bands, &mut out);
    debug_assert_eq!(out.iter().sum::<usize>(), m);
    out
}

/// `rows` split into `bands` bands (`out` gains the ones not empty): the first `bands / 2`
/// get `rows * (bands / 2) / bands` rounded to whole micro blocks, recursively, so that the
/// ragged rows, if any, end in the last band.
fn halve_rows(rows: usize, bands: usize, out: &mut Vec<usize>) {
    if bands <= 1 {
        if rows > 0 {
            out.push(rows);
        }
        return;
    }
    let first = bands / 2;
    let share = (2 * rows * first + bands * MICRO_ROWS) / (2 * bands * MICRO_ROWS) * MICRO_ROWS;
    let share = share.min(rows);
    halve_rows(share, first, out);
    halve_rows(rows - share, bands - first, out);
}

/// A band's rows of A as steps: `steps(first_row, rows)` gives (rows, k) steps, row-major,
/// borrowed from a whole A (`'a`) or made for the band.
pub(crate) type BandSteps<'a, 'f, T> = dyn Fn(usize, usize) -> Cow<'a, [T]> + Sync + 'f;

/// A band's rows of A and its own state `S`: `prepare(first_row, rows)`, called in the band's
/// task ([`Panels::matmul_banded`]).
pub(crate) type BandInput<'a, 'f, T, S> = dyn Fn(usize, usize) -> (Cow<'a, [T]>, S) + Sync + 'f;

/// What a band's state gives the micro-kernel to finish its sums with, on a block's last
/// input block: int8 scales its integer sums in registers ([`TileScale`]) instead of in a pass
/// of its own over the band's outputs.
pub(crate) trait BandScales {
    /// Whether the micro-kernel scales this band's blocks; when it does, `finish` and the
    /// epilogues get finished values.
    fn fused(&self) -> bool;
    /// The scaling of the block of the band's rows `row..` and the outputs `col..col + PANEL`
    /// (fewer in a last panel); asked only where [`BandScales::fused`].
    fn tile(&self, row: usize, col: usize) -> TileScale<'_>;
}

/// Nothing to scale: f32 and bf16 sums are their outputs.
impl BandScales for () {
    fn fused(&self) -> bool {
        false
    }
    fn tile(&self, _: usize, _: usize) -> TileScale<'_> {
        unreachable!("a band without scales is never fused")
    }
}

/// How int8's micro-kernel turns a block's integer sums (the u8 shift included) into outputs,
/// for rows `0..rows` of the block and its columns `0..cols`:
/// `y = s_w * (s_x * (sum - shift) + extra)`, `extra` the row's outliers' f32 products
/// `v * q_w[ch][col]` summed in the row's order (and not added at all for a row without
/// outliers): the operations of `int8::descale_avx512`, in its order, so its bits.
#[derive(Clone, Copy)]
pub(crate) struct TileScale<'a> {
    /// Per column from the block's first: the shift's constant and `s_w`.
    pub shift: &'a [i32],
    pub scales: &'a [f32],
    /// Per row from the block's first: `s_x`.
    pub row_scales: &'a [f32],
    /// Row `r`'s outliers are `outliers[starts[r]..starts[r + 1]]`: (value, that channel's
    /// weights for every output, `n` of them).
    pub outliers: &'a [(f32, &'a [i8])],
    pub starts: &'a [usize],
    /// The block's first column, where each outlier's weights are read, and how many outputs
    /// each outlier's weights hold.
    pub col: usize,
    pub n: usize,
}

fn panel_matmul<K: Kernel, S: BandScales>(
    prepare: &BandInput<'_, '_, K::Step, S>,
    m: usize,
    k: usize,
    b: &[K::Step],
    n: usize,
    finish: &(impl Fn(usize, &mut [f32], &S) + Sync),
) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    // Every element of C is written by the first input block's micro-kernel call that covers
    // it, before any later block reads it back.
    let mut c: Vec<MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { c.set_len(m * n) };
    par_bands(m, k, prepare, &mut c, n, |row0, a_band, state, c_band| {
        let rows = c_band.len() / n;
        let fused = state.fused();
        // Steps in blocks of DEPTH, so that a panel's block of B (DEPTH x 32) stays in cache
        // while every row of the band passes over it; later blocks continue the chains from
        // the values stored in C, so the result is the unblocked chain's, bit for bit.
        let micro_blocks = rows.div_ceil(MICRO_ROWS);
        let mut a_packed: Vec<K::Step> =
            vec![K::Step::ZERO; micro_blocks * MICRO_ROWS * DEPTH.min(k)];
        for k0 in (0..k).step_by(DEPTH) {
            let depth = (k - k0).min(DEPTH);
            // The band's slice of A, interleaved per micro block (step-major, MICRO_ROWS
            // values per step), so that the kernel reads it as one sequential stream.
            for (rows_in, dst) in a_band
                .chunks(MICRO_ROWS * k)
                .zip(a_packed.chunks_exact_mut(MICRO_ROWS * depth))
            {
                pack_micro_block(rows_in, k, k0..k0 + depth, dst);
            }
            let panels = n.div_ceil(PANEL);
            for p in 0..panels {
                let cols = (n - p * PANEL).min(PANEL);
                let b_block = &b[(p * k + k0) * PANEL..(p * k + k0 + depth) * PANEL];
                // The block of B that the next panel (or the next input block, or the next
                // band) starts with: its lines are fetched into L2 while this panel's
                // blocks compute, instead of stalling the first call on it.
                let next_b = if p + 1 < panels {
                    ((p + 1) * k + k0) * PANEL
                } else if k0 + depth < k {
                    (k0 + depth) * PANEL
                } else {
                    0
                };
                for mb in 0..micro_blocks {
                    let r0 = mb * MICRO_ROWS;
                    let r = (rows - r0).min(MICRO_ROWS);
                    let a_block = &a_packed[mb * MICRO_ROWS * depth..(mb + 1) * MICRO_ROWS * depth];
                    // Each call fetches a quarter of the next block (a line every two
                    // steps); later calls fetch nothing new.
                    let prefetch_b = if mb < 4 {
                        b.as_ptr().wrapping_add(next_b + mb * depth * PANEL / 4)
                    } else {
                        b_block.as_ptr()
                    };
                    // The tile of C that the next call resumes from.
                    let next_c = if mb + 1 < micro_blocks {
                        (r0 + MICRO_ROWS) * n + p * PANEL
                    } else {
                        (p + 1) * PANEL
                    };
                    let block = Block {
                        rows: r,
                        depth,
                        ldc: n,
                        cols,
                        resume: k0 > 0,
                        prefetch_b: prefetch_b.cast(),
                        prefetch_c: c_band.as_ptr().wrapping_add(next_c).cast(),
                        scale: (fused && k0 + depth == k).then(|| state.tile(r0, p * PANEL)),
                    };
                    micro::<K>(&block, a_block, b_block, &mut c_band[r0 * n + p * PANEL..]);
                }
            }
        }
        // SAFETY: every element of the band was written above, and MaybeUninit<f32> has f32's
        // layout.
        let done: &mut [f32] =
            unsafe { std::slice::from_raw_parts_mut(c_band.as_mut_ptr().cast(), c_band.len()) };
        finish(row0, done, state);
    });
    let mut c = std::mem::ManuallyDrop::new(c);
    // SAFETY: all m * n elements were written above, and MaybeUninit<f32> has f32's layout.
    unsafe { Vec::from_raw_parts(c.as_mut_ptr().cast(), c.len(), c.capacity()) }
}

/// Copies the steps `inputs` of each row of `rows` (row-major, `k` steps each, at most
/// MICRO_ROWS rows) into `dst` step-major: MICRO_ROWS values per step.
fn pack_micro_block<T: Step>(rows: &[T], k: usize, inputs: std::ops::Range<usize>, dst: &mut [T]) {
    let depth = inputs.len();
    if rows.len() == MICRO_ROWS * k {
        // The common case: sixteen (AVX-512) or four (AVX2) steps of the twelve rows at a
        // time through a register transpose; the last steps with twelve sequential reads and
        // one sequential write per step.
        let rows: [&[T]; MICRO_ROWS] =
            std::array::from_fn(|r| &rows[r * k + inputs.start..r * k + inputs.end]);
        // A register transpose: AVX-512's where the CPU has it, else AVX2's (4 x 4 blocks).
        #[cfg(target_arch = "x86_64")]
        let done = if has_avx512f() {
            // SAFETY: AVX-512F checked just above; steps are 4-byte values, moved as bits.
            unsafe { avx512::pack12(&rows, dst) }
        } else if has_avx2_fma() {
            // SAFETY: AVX2 and FMA checked just above; as for AVX-512.
            unsafe { avx2::pack12(&rows, dst) }
        } else {
            0
        };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (i, out) in dst
            .chunks_exact_mut(MICRO_ROWS)
            .take(depth)
            .enumerate()
            .skip(done)
        {
            for (o, row) in out.iter_mut().zip(&rows) {
                *o = row[i];
            }
        }
    } else {
        for (r, row) in rows.chunks_exact(k).enumerate() {
            let row = &row[inputs.clone()];
            for (o, &v) in dst.iter_mut().skip(r).step_by(MICRO_ROWS).zip(row) {
                *o = v;
            }
        }
    }
}

/// One micro-kernel call's shape.
pub(crate) struct Block<'a> {
    /// Rows of A and C, at most [`MICRO_ROWS`].
    rows: usize,
    /// Steps summed in this call.
    depth: usize,
    /// Distance between rows of C.
    ldc: usize,
    /// Columns of C written (the panel's real columns).
    cols: usize,
    /// Continue from the values in C instead of from zero.
    resume: bool,
    /// Memory to prefetch into L2, a line every two steps; only a hint, so any address will
    /// do (it is never read).
    prefetch_b: *const u8,
    /// A C tile (MICRO_ROWS rows of PANEL values, `ldc` apart) to prefetch into L1; a hint too.
    prefetch_c: *const f32,
    /// On a block's last input block, where the kernel scales its sums: how.
    scale: Option<TileScale<'a>>,
}

/// C[..rows][..cols] (+)= A_block . B_block, with `a` one packed micro block (depth x
/// MICRO_ROWS) and `c` starting at the block's first element.
fn micro<K: Kernel>(s: &Block, a: &[K::Step], b: &[K::Step], c: &mut [MaybeUninit<f32>]) {
    assert!(s.rows >= 1 && a.len() == s.depth * MICRO_ROWS);
    assert!(b.len() == s.depth * PANEL && s.cols <= PANEL);
    assert!(c.len() >= (s.rows - 1) * s.ldc + s.cols);
    if let Some(t) = &s.scale {
        assert!(
            K::SCALES,
            "a block scale for a kernel that does not apply it"
        );
        assert!(t.shift.len() >= s.cols && t.scales.len() >= s.cols && t.col + s.cols <= t.n);
        assert!(t.row_scales.len() >= s.rows && t.starts.len() > s.rows);
        assert!(t.starts[s.rows] <= t.outliers.len());
        // Every outlier's weights are `n` long: checked where the list is made
        // (`OutputColumns::new`), not here for each of them on every call.
    }
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match s.rows {
                // SAFETY: panels exist only where the kernel is available; the asserts above
                // bound every access.
                $($r => unsafe { K::micro::<$r>(s, a.as_ptr(), b.as_ptr(), c.as_mut_ptr().cast()) },)*
                _ => unreachable!("micro-kernel rows {} > {MICRO_ROWS}", s.rows),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
}

impl Kernel for FmaF32 {
    type Step = f32;

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512f();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const f32, b: *const f32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::micro_f32::<R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

impl Kernel for FmaF32Avx2 {
    type Step = f32;

    fn available() -> bool {
        has_avx2_fma()
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const f32, b: *const f32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx2::micro::<f32, R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

impl Kernel for DotBf16 {
    type Step = u32;

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512f() && std::arch::is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const u32, b: *const u32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::micro_bf16::<R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

impl Kernel for DotI8 {
    type Step = u32;
    const SCALES: bool = true;

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512f()
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const u32, b: *const u32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::micro_i8::<R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

impl Kernel for MaddI16 {
    type Step = u32;

    fn available() -> bool {
        has_avx2_fma()
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const u32, b: *const u32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx2::micro::<u32, R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(test)]
mod tests {
    use super::*;

    /// The bands of `rows` split `bands` ways, checked against what `band_rows` promises.
    fn bands_of(rows: usize, bands: usize) -> Vec<usize> {
        let mut out = Vec::new();
        halve_rows(rows, bands, &mut out);
        assert_eq!(out.iter().sum::<usize>(), rows, "{rows} rows in {bands}");
        assert!(out.len() <= bands);
        let (last, whole) = out.split_last().unwrap();
        assert!(*last > 0);
        assert!(
            whole.iter().all(|r| r.is_multiple_of(MICRO_ROWS)),
            "{rows} rows in {bands}: {out:?} has a ragged band before the last"
        );
        out
    }

    #[test]
    fn the_halves_of_a_product_get_rows_within_a_micro_block() {
        // 472 rows (a batch of SmolLM2's 512 tokens) on two threads: six bands, 240 + 232
        // rows in the halves that rayon gives each thread; the old split gave 252 + 220.
        assert_eq!(bands_of(472, 6), [84, 84, 72, 72, 84, 76]);
        for threads in 1..=16 {
            for m in 1..=3000usize {
                let bands = m.div_ceil(BAND_ROWS).div_ceil(threads) * threads;
                let out = bands_of(m, bands);
                assert!(
                    out.iter().all(|&r| r <= BAND_ROWS),
                    "{m} rows on {threads} threads: {out:?} has a band over {BAND_ROWS}"
                );
                if out.len() == bands && bands >= 2 {
                    let half: usize = out[..bands / 2].iter().sum();
                    let rest = m - half;
                    let ideal = m * (bands / 2) / bands;
                    assert!(
                        half.abs_diff(ideal) <= MICRO_ROWS / 2 + 1 && half + rest == m,
                        "{m} rows on {threads} threads: halves {half} + {rest}"
                    );
                }
            }
        }
    }
}
