//! The micro-kernels for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 3, Intel before Ice
//! Lake): the same panels and packing as the AVX-512 kernels, one pass of six rows by half a
//! panel (16 registers: BLIS's 6 x 16 shape for this instruction set). Two kinds of step:
//! - f32 ([`FmaF32Avx2`](super::FmaF32Avx2)): each output one `vfmadd` chain over the steps in
//!   order, like `avx512::micro_f32`, so the same bits.
//! - a pair of int16 inputs ([`MaddI16`](super::MaddI16), `compute: int8` without VNNI):
//!   `vpmaddwd` multiplies the pair by the column's two int16 weights and adds the two
//!   products into int32, exactly, so the same integers as `vpdpbusd` and the portable loop.

use std::arch::x86_64::*;

use super::{Block, MICRO_ROWS, PANEL, Step};

/// Vectors per panel row.
const V: usize = PANEL / 8;
/// Vectors per pass: the panel goes in two halves of 16 columns.
const HALF: usize = V / 2;
/// Rows per pass: 6 rows x 2 vectors of accumulators, two B vectors and a broadcast fit the
/// 16 registers.
const GROUP: usize = 6;

/// Packs the first steps of twelve rows (all of the same length) in whole groups of 4:
/// `dst[i * 12 + r] = rows[r][i]`, as `avx512::pack12` does with 16. Returns how many steps
/// it packed. The values move through f32 registers as bits (shuffles only), so u32 steps pass
/// unchanged. Packing took 3.8% of the f32 products' time on AMD Zen 3 one value at a time, 1.2%
/// this way.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn pack12<T: Step>(rows: &[&[T]; MICRO_ROWS], dst: &mut [T]) -> usize {
    const { assert!(size_of::<T>() == 4) };
    let depth = rows[0].len() / 4 * 4;
    assert!(rows.iter().all(|r| r.len() >= depth) && dst.len() >= depth * MICRO_ROWS);
    let out = dst.as_mut_ptr().cast::<f32>();
    for i0 in (0..depth).step_by(4) {
        for q in 0..MICRO_ROWS / 4 {
            // SAFETY: i0 + 4 <= depth <= each row's length.
            let [r0, r1, r2, r3] = std::array::from_fn(|j| unsafe {
                _mm_loadu_ps(rows[4 * q + j].as_ptr().add(i0).cast())
            });
            // `_MM_TRANSPOSE4_PS`: t[m] holds rows 4q..4q + 4 at step i0 + m.
            let (a0, a1) = (_mm_unpacklo_ps(r0, r1), _mm_unpacklo_ps(r2, r3));
            let (a2, a3) = (_mm_unpackhi_ps(r0, r1), _mm_unpackhi_ps(r2, r3));
            let t = [
                _mm_movelh_ps(a0, a1),
                _mm_movehl_ps(a1, a0),
                _mm_movelh_ps(a2, a3),
                _mm_movehl_ps(a3, a2),
            ];
            for (m, v) in t.into_iter().enumerate() {
                // SAFETY: (i0 + m) * 12 + 4q + 4 <= depth * 12 <= dst's length.
                unsafe { _mm_storeu_ps(out.add((i0 + m) * MICRO_ROWS + 4 * q), v) };
            }
        }
    }
    depth
}

/// A 32-bit step as eight-lane AVX2 arithmetic sees it: its vector, and the multiply-add of a
/// step broadcast to every lane with eight steps of B into eight sums (C's values, f32 or int32
/// bits in f32 slots).
pub(super) trait Step8: Copy {
    type V: Copy;
    /// # Safety
    /// The CPU has AVX2 and FMA (true of every function here).
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// As for `zero`; `p` points to eight steps.
    unsafe fn load(p: *const Self) -> Self::V;
    /// # Safety
    /// As for `zero`; `p` points to one step.
    unsafe fn splat(p: *const Self) -> Self::V;
    /// # Safety
    /// As for `zero`.
    unsafe fn mul_add(x: Self::V, b: Self::V, acc: Self::V) -> Self::V;
    /// # Safety
    /// As for `zero`; the lanes of `mask` that are set lie inside C.
    unsafe fn load_c(c: *const f32, mask: __m256i) -> Self::V;
    /// # Safety
    /// As for `load_c`.
    unsafe fn store_c(c: *mut f32, mask: __m256i, v: Self::V);
}

impl Step8 for f32 {
    type V = __m256;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(p: *const f32) -> __m256 {
        // SAFETY: the caller's contract.
        unsafe { _mm256_broadcast_ss(&*p) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_add(x: __m256, b: __m256, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(x, b, acc)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_c(c: *const f32, mask: __m256i) -> __m256 {
        // SAFETY: the caller's contract; masked lanes are not read.
        unsafe { _mm256_maskload_ps(c, mask) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_c(c: *mut f32, mask: __m256i, v: __m256) {
        // SAFETY: the caller's contract; masked lanes are not written.
        unsafe { _mm256_maskstore_ps(c, mask, v) }
    }
}

/// Two int16 inputs in a u32 (input `2p` in the low half); sums are int32.
impl Step8 for u32 {
    type V = __m256i;
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const u32) -> __m256i {
        // SAFETY: the caller's contract.
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn splat(p: *const u32) -> __m256i {
        // SAFETY: the caller's contract.
        unsafe { _mm256_set1_epi32(p.read() as i32) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn mul_add(x: __m256i, b: __m256i, acc: __m256i) -> __m256i {
        // Activations are 0..=255 and weights -127..=127 (int8.rs), so each pair's sum is
        // exact, and so is the int32 total for any K these models have.
        _mm256_add_epi32(acc, _mm256_madd_epi16(x, b))
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_c(c: *const f32, mask: __m256i) -> __m256i {
        // SAFETY: the caller's contract; masked lanes are not read.
        unsafe { _mm256_maskload_epi32(c.cast(), mask) }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn store_c(c: *mut f32, mask: __m256i, v: __m256i) {
        // SAFETY: the caller's contract; masked lanes are not written.
        unsafe { _mm256_maskstore_epi32(c.cast(), mask, v) }
    }
}

/// `R` rows of A (packed, MICRO_ROWS per step) times one block of a packed panel into C.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `s.depth` x MICRO_ROWS steps, `b` `s.depth` x PANEL
/// steps, and C's first `s.cols` values of each of `R` rows (`s.ldc` apart) lie in one
/// allocation (what `super::micro` asserts).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro<T: Step8, const R: usize>(
    s: &Block,
    a: *const T,
    b: *const T,
    c: *mut f32,
) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let masks: [__m256i; V] = std::array::from_fn(|v| {
        let live = s.cols.saturating_sub(8 * v).min(8) as i32;
        _mm256_cmpgt_epi32(_mm256_set1_epi32(live), lanes)
    });
    for half in 0..V / HALF {
        let col = half * HALF * 8;
        let masks = [masks[half * HALF], masks[half * HALF + 1]];
        let mut r0 = 0;
        while r0 < R {
            // SAFETY: the caller's contract, for rows r0.. (< R) and columns col..col + 16.
            unsafe {
                // C by `wrapping_add`: past a ragged last panel's columns the pointer may
                // leave C, and the masks keep every access inside.
                let (a, b, c) = (a.add(r0), b.add(col), c.wrapping_add(r0 * s.ldc + col));
                match R - r0 {
                    1 => rows::<T, 1>(s, a, b, c, &masks),
                    2 => rows::<T, 2>(s, a, b, c, &masks),
                    3 => rows::<T, 3>(s, a, b, c, &masks),
                    4 => rows::<T, 4>(s, a, b, c, &masks),
                    5 => rows::<T, 5>(s, a, b, c, &masks),
                    _ => rows::<T, GROUP>(s, a, b, c, &masks),
                }
            }
            r0 += GROUP;
        }
    }
}

/// `G` rows starting at `a` (step `i` of row `g` at `a[i * MICRO_ROWS + g]`) times the 16
/// columns of the panel from `b` (rows PANEL apart) into C from `c`.
///
/// # Safety
/// As for [`micro`], for these `G` rows and 16 columns.
// Index loops over the register arrays: they unroll fully (G and HALF are constants).
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<T: Step8, const G: usize>(
    s: &Block,
    a: *const T,
    b: *const T,
    c: *mut f32,
    masks: &[__m256i; HALF],
) {
    // SAFETY: the CPU has AVX2 and FMA (this function's contract).
    let mut acc = [[unsafe { T::zero() }; HALF]; G];
    if s.resume {
        for g in 0..G {
            for v in 0..HALF {
                let at = c.wrapping_add(g * s.ldc + 8 * v);
                // SAFETY: row g's first `cols` values lie inside C; masked lanes are not read.
                acc[g][v] = unsafe { T::load_c(at, masks[v]) };
            }
        }
    }
    for i in 0..s.depth {
        if i % 2 == 0 {
            let at = s.prefetch_b.wrapping_add(i * PANEL);
            _mm_prefetch::<_MM_HINT_T1>(at.cast());
        }
        // SAFETY: i < depth; B holds depth x PANEL steps, and these 16 lie in the panel row.
        let bv: [T::V; HALF] =
            std::array::from_fn(|v| unsafe { T::load(b.add(i * PANEL + 8 * v)) });
        for g in 0..G {
            // SAFETY: i < depth, g < G <= MICRO_ROWS; A holds depth x MICRO_ROWS steps.
            let x = unsafe { T::splat(a.add(i * MICRO_ROWS + g)) };
            for v in 0..HALF {
                // SAFETY: the CPU has AVX2 and FMA (this function's contract).
                acc[g][v] = unsafe { T::mul_add(x, bv[v], acc[g][v]) };
            }
        }
    }
    for g in 0..G {
        for v in 0..HALF {
            let at = c.wrapping_add(g * s.ldc + 8 * v);
            // SAFETY: as for the loads.
            unsafe { T::store_c(at, masks[v], acc[g][v]) };
        }
    }
}
