//! `x @ w` in f32: the matrix products of `compute: f32`.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, whose stable-Rust build runs
//! AVX2 kernels only (its AVX-512 ones need nightly), which caps it near half of what these cores
//! do with AVX-512. The kernel below is the classic register-blocked one: 12 rows of A times a
//! 32-column panel of B, 24 AVX-512 accumulators, one FMA per (row, column, input).
//!
//! Numerics: every output is one f32 FMA chain over the inputs in order, whatever the batch,
//! the row's position in it or the thread split, so a text's vectors do not depend on its
//! neighbours. Without AVX-512 the weights stay a tensor for candle's matmul (its own summation
//! order).

use std::mem::MaybeUninit;

use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};
use rayon::prelude::*;

/// Columns of B per panel: two AVX-512 registers.
const PANEL: usize = 32;
/// Rows of A per micro-kernel call: 12 x 2 accumulators, plus the two B vectors and the
/// broadcast, fit in the 32 vector registers.
const MICRO_ROWS: usize = 12;
/// Rows of A per task, at most: a band of A stays in L2 while every B panel passes over it.
const BAND_ROWS: usize = 96;
/// Inputs per pass over a band: a 256 x 32 block of B is 32 KiB, L1-sized.
const DEPTH: usize = 256;

/// A weight matrix (K inputs x N outputs) ready for [`PackedF32::matmul`].
pub(crate) struct PackedF32 {
    k: usize,
    n: usize,
    repr: Repr,
}

enum Repr {
    /// Panels of 32 columns, each K rows of 32 contiguous values; the last panel padded with
    /// zero columns.
    Panels(PanelMemory),
    /// The (K, N) tensor, for candle's matmul.
    Dense(Tensor),
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedF32 {
    /// Packs `w`, a (K, N) f32 tensor (inputs x outputs, as `x @ w` takes it).
    pub fn new(w: Tensor) -> Result<Self> {
        let e = |x: candle_core::Error| Error::compute("pack f32 weights", x);
        let (k, n) = w.dims2().map_err(e)?;
        if !avx512_available() {
            return Ok(PackedF32 {
                k,
                n,
                repr: Repr::Dense(w),
            });
        }
        let vals: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).map_err(e)?;
        let panels = n.div_ceil(PANEL);
        let mut memory = PanelMemory::zeroed(panels * k * PANEL)?;
        let data = memory.as_mut_slice();
        for (row, values) in vals.chunks_exact(n).enumerate() {
            for (p, chunk) in values.chunks(PANEL).enumerate() {
                let at = (p * k + row) * PANEL;
                data[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
        Ok(PackedF32 {
            k,
            n,
            repr: Repr::Panels(memory),
        })
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
            Repr::Panels(b) => Ok(panel_matmul(x, m, k, b.as_slice(), n)),
        }
    }
}

/// Zeroed f32 memory for weight panels, in its own anonymous mapping, which Linux is asked to
/// back with 2 MiB pages.
///
/// Why: a model's weights are far bigger than what the TLB covers with 4 KiB pages (SmolLM2's
/// are 420 MB in f32), and every block of B the kernel starts on is on pages it has not used
/// since the last batch; with 2 MiB pages the products ran about 4% faster. The advice is only a
/// hint: without transparent huge pages the memory is the same, on 4 KiB pages.
struct PanelMemory {
    map: memmap2::MmapMut,
    len: usize,
}

impl PanelMemory {
    fn zeroed(len: usize) -> Result<PanelMemory> {
        // Whole 2 MiB pages: Linux places a mapping on a 2 MiB boundary only when its length
        // is a multiple of 2 MiB (and a last partial page would stay small).
        const HUGE_PAGE: usize = 2 << 20;
        let bytes = (len * size_of::<f32>()).next_multiple_of(HUGE_PAGE);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|e| Error::compute("allocate f32 weight panels", e))?;
        // Before the first write, so that the pages are huge from their first fault.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Ok(PanelMemory { map, len })
    }

    fn as_slice(&self) -> &[f32] {
        // SAFETY: the mapping holds `len` f32 (anonymous maps start zeroed, a valid f32) and
        // is page-aligned.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as for as_slice, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len) }
    }
}

fn panel_matmul(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // Every element of C is written by the first input block's micro-kernel call that covers
    // it, before any later block reads it back.
    let mut c: Vec<MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { c.set_len(m * n) };
    // Bands of rows, as many as keep every thread busy, none over BAND_ROWS, and each a whole
    // number of micro blocks but the last: a band's ragged last block runs a narrower kernel
    // (when every band had one, those took about 7% of the time).
    let threads = rayon::current_num_threads().max(1);
    let bands = m.div_ceil(BAND_ROWS).div_ceil(threads) * threads;
    let blocks = m.div_ceil(MICRO_ROWS);
    let mut tasks = Vec::with_capacity(bands);
    let (mut c_rest, mut a_rest) = (&mut c[..], a);
    for band in 0..bands {
        let band_blocks = blocks / bands + usize::from(band < blocks % bands);
        let rows = (band_blocks * MICRO_ROWS).min(a_rest.len() / k);
        if rows == 0 {
            continue;
        }
        let (c_band, c_tail) = c_rest.split_at_mut(rows * n);
        let (a_band, a_tail) = a_rest.split_at(rows * k);
        tasks.push((c_band, a_band));
        (c_rest, a_rest) = (c_tail, a_tail);
    }
    debug_assert!(a_rest.is_empty());
    tasks.into_par_iter().for_each(|(c_band, a_band)| {
        let rows = a_band.len() / k;
        // Inputs in blocks of DEPTH, so that a panel's block of B (DEPTH x 32) stays in L1
        // while every row of the band passes over it; later blocks continue the FMA chains
        // from the values stored in C, so the result is the unblocked chain's, bit for bit.
        let micro_blocks = rows.div_ceil(MICRO_ROWS);
        let mut a_packed = vec![0f32; micro_blocks * MICRO_ROWS * DEPTH];
        for k0 in (0..k).step_by(DEPTH) {
            let depth = (k - k0).min(DEPTH);
            // The band's slice of A, interleaved per micro block (input-major, MICRO_ROWS
            // values per input), so that the kernel reads it as one sequential stream.
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
                    // inputs); later calls fetch nothing new.
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
                        prefetch_b,
                        prefetch_c: c_band.as_ptr().wrapping_add(next_c).cast(),
                    };
                    micro(&block, a_block, b_block, &mut c_band[r0 * n + p * PANEL..]);
                }
            }
        }
    });
    // SAFETY: all m * n elements were written above.
    let mut c = std::mem::ManuallyDrop::new(c);
    unsafe { Vec::from_raw_parts(c.as_mut_ptr().cast(), c.len(), c.capacity()) }
}

/// Copies `inputs` of each row of `rows` (row-major, `k` values each, at most MICRO_ROWS
/// rows) into `dst` input-major: MICRO_ROWS values per input.
fn pack_micro_block(rows: &[f32], k: usize, inputs: std::ops::Range<usize>, dst: &mut [f32]) {
    let depth = inputs.len();
    if rows.len() == MICRO_ROWS * k {
        // The common case: sixteen inputs of the twelve rows at a time through an AVX-512
        // register transpose; the last inputs with twelve sequential reads and one sequential
        // write per input.
        let rows: [&[f32]; MICRO_ROWS] =
            std::array::from_fn(|r| &rows[r * k + inputs.start..r * k + inputs.end]);
        // SAFETY: PackedF32 holds panels, the only way here, only where the CPU has AVX-512F.
        #[cfg(target_arch = "x86_64")]
        let done = unsafe { avx512::pack12(&rows, dst) };
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
struct Block {
    /// Rows of A and C, at most [`MICRO_ROWS`].
    rows: usize,
    /// Inputs summed in this call.
    depth: usize,
    /// Distance between rows of C.
    ldc: usize,
    /// Columns of C written (the panel's real columns).
    cols: usize,
    /// Continue from the values in C instead of from zero.
    resume: bool,
    /// Memory to prefetch into L2, a line every two inputs; only a hint, so any address will
    /// do (it is never read).
    prefetch_b: *const f32,
    /// A C tile (MICRO_ROWS rows of PANEL values, `ldc` apart) to prefetch into L1; a hint too.
    prefetch_c: *const f32,
}

/// C[..rows][..cols] (+)= A_block . B_block, with `a` one packed micro block (depth x
/// MICRO_ROWS) and `c` starting at the block's first element.
fn micro(s: &Block, a: &[f32], b: &[f32], c: &mut [MaybeUninit<f32>]) {
    assert!(s.rows >= 1 && a.len() == s.depth * MICRO_ROWS);
    assert!(b.len() == s.depth * PANEL && s.cols <= PANEL);
    assert!(c.len() >= (s.rows - 1) * s.ldc + s.cols);
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! dispatch {
            ($($r:literal)*) => {
                match s.rows {
                    // SAFETY: PackedF32 holds panels only where the CPU has AVX-512F; the
                    // asserts above bound every access.
                    $($r => unsafe { avx512::micro::<$r>(s, a.as_ptr(), b.as_ptr(), c.as_mut_ptr().cast()) },)*
                    _ => unreachable!("micro-kernel rows {} > {MICRO_ROWS}", s.rows),
                }
            };
        }
        dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("packed f32 weights exist only on x86_64 ({} rows)", s.rows);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Block, MICRO_ROWS, PANEL};

    /// Packs the first inputs of twelve rows (all of the same length) in whole groups of 16:
    /// `dst[i * 12 + r] = rows[r][i]`. Returns how many inputs it packed.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack12(rows: &[&[f32]; MICRO_ROWS], dst: &mut [f32]) -> usize {
        let depth = rows[0].len() / 16 * 16;
        assert!(rows.iter().all(|r| r.len() >= depth) && dst.len() >= depth * MICRO_ROWS);
        let mut i0 = 0;
        while i0 < depth {
            // Rows 12..16 of the 16 x 16 transpose are zero (and never stored).
            let mut r = [_mm512_setzero_ps(); 16];
            for (v, row) in r.iter_mut().zip(rows) {
                // SAFETY: i0 + 16 <= depth <= the row's length.
                *v = unsafe { _mm512_loadu_ps(row.as_ptr().add(i0)) };
            }
            // 32-bit, then 64-bit interleaves within 128-bit lanes: b[4q + m], lane L, holds
            // rows 4q..4q+4 at input 4L + m.
            let mut a = [_mm512_setzero_ps(); 16];
            for p in 0..8 {
                a[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                a[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let mut b = [_mm512_setzero_ps(); 16];
            for q in 0..4 {
                let pd = |x: __m512| _mm512_castps_pd(x);
                let (a0, a1, a2, a3) = (
                    pd(a[4 * q]),
                    pd(a[4 * q + 1]),
                    pd(a[4 * q + 2]),
                    pd(a[4 * q + 3]),
                );
                b[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
                b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
                b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
                b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
            }
            // Then 128-bit lanes across the four groups of rows: input 4L + m.
            for m in 0..4 {
                let c0 = _mm512_shuffle_f32x4::<0x88>(b[m], b[4 + m]);
                let c1 = _mm512_shuffle_f32x4::<0xDD>(b[m], b[4 + m]);
                let d0 = _mm512_shuffle_f32x4::<0x88>(b[8 + m], b[12 + m]);
                let d1 = _mm512_shuffle_f32x4::<0xDD>(b[8 + m], b[12 + m]);
                let out = [
                    (m, _mm512_shuffle_f32x4::<0x88>(c0, d0)),
                    (4 + m, _mm512_shuffle_f32x4::<0x88>(c1, d1)),
                    (8 + m, _mm512_shuffle_f32x4::<0xDD>(c0, d0)),
                    (12 + m, _mm512_shuffle_f32x4::<0xDD>(c1, d1)),
                ];
                for (j, v) in out {
                    // SAFETY: input i0 + j < depth, and dst holds depth * 12 values.
                    unsafe {
                        let at = dst.as_mut_ptr().add((i0 + j) * MICRO_ROWS);
                        _mm512_mask_storeu_ps(at, 0x0FFF, v);
                    }
                }
            }
            i0 += 16;
        }
        depth
    }

    /// `R` rows of A times one block of a packed panel (depth x PANEL), into C.
    // Index loops over the register arrays: they unroll fully (R and V are constants) and
    // read like the algebra.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn micro<const R: usize>(
        s: &Block,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
    ) {
        const V: usize = PANEL / 16;
        let mut masks = [0 as __mmask16; V];
        for (v, m) in masks.iter_mut().enumerate() {
            let live = s.cols.saturating_sub(16 * v).min(16);
            *m = if live == 16 {
                0xFFFF
            } else {
                ((1u32 << live) - 1) as __mmask16
            };
        }
        for r in 0..MICRO_ROWS {
            for v in 0..V {
                let at = s.prefetch_c.wrapping_add(r * s.ldc + 16 * v);
                _mm_prefetch::<_MM_HINT_T0>(at.cast());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        if s.resume {
            for r in 0..R {
                for v in 0..V {
                    // SAFETY: the caller checked that row r's first `cols` values lie inside C.
                    acc[r][v] =
                        unsafe { _mm512_maskz_loadu_ps(masks[v], c.add(r * s.ldc + 16 * v)) };
                }
            }
        }
        for i in 0..s.depth {
            if i % 2 == 0 {
                _mm_prefetch::<_MM_HINT_T1>(s.prefetch_b.wrapping_add(i * PANEL / 4).cast());
            }
            let mut bv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                // SAFETY (all reads): i < depth; B holds depth x PANEL values, A depth x MICRO_ROWS.
                bv[v] = unsafe { _mm512_loadu_ps(b.add(i * PANEL + 16 * v)) };
            }
            for r in 0..R {
                let x = _mm512_set1_ps(unsafe { *a.add(i * MICRO_ROWS + r) });
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(x, bv[v], acc[r][v]);
                }
            }
        }
        for r in 0..R {
            for v in 0..V {
                // SAFETY: as for the loads.
                unsafe { _mm512_mask_storeu_ps(c.add(r * s.ldc + 16 * v), masks[v], acc[r][v]) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 product, on shapes with ragged row blocks and a partial last panel.
    #[test]
    fn matches_f64_product() {
        let (m, k, n) = (29, 300, 45);
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
        let (m, k, n) = (200, 600, 96);
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
