//! The f32 micro-kernel for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 3, Intel before
//! Ice Lake): the same panels, packing and order as the AVX-512 kernel, so the same bits. Each
//! output is one `vfmadd` chain over the steps in order, like `avx512::micro_f32`; only the
//! vectors are 8 lanes wide, and with 16 registers a pass takes six rows by half a panel.

use std::arch::x86_64::*;

use super::{Block, MICRO_ROWS, PANEL};

/// Vectors per panel row.
const V: usize = PANEL / 8;
/// Vectors per pass: the panel goes in two halves of 16 columns.
const HALF: usize = V / 2;
/// Rows per pass: 6 rows x 2 vectors of accumulators, two B vectors and a broadcast fit the
/// 16 registers (BLIS's 6 x 16 shape for this instruction set).
const GROUP: usize = 6;

/// `R` rows of A (packed, MICRO_ROWS per step) times one block of a packed panel into C.
///
/// # Safety
/// The CPU has AVX2 and FMA; `a` holds `s.depth` x MICRO_ROWS steps, `b` `s.depth` x PANEL
/// steps, and C's first `s.cols` values of each of `R` rows (`s.ldc` apart) lie in one
/// allocation (what `super::micro` asserts).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn micro_f32<const R: usize>(
    s: &Block,
    a: *const f32,
    b: *const f32,
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
                let (a, b, c) = (a.add(r0), b.add(col), c.add(r0 * s.ldc + col));
                match R - r0 {
                    1 => rows::<1>(s, a, b, c, &masks),
                    2 => rows::<2>(s, a, b, c, &masks),
                    3 => rows::<3>(s, a, b, c, &masks),
                    4 => rows::<4>(s, a, b, c, &masks),
                    5 => rows::<5>(s, a, b, c, &masks),
                    _ => rows::<GROUP>(s, a, b, c, &masks),
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
/// As for [`micro_f32`], for these `G` rows and 16 columns.
// Index loops over the register arrays: they unroll fully (G and HALF are constants).
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const G: usize>(
    s: &Block,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    masks: &[__m256i; HALF],
) {
    let mut acc = [[_mm256_setzero_ps(); HALF]; G];
    if s.resume {
        for g in 0..G {
            for v in 0..HALF {
                // SAFETY: row g's first `cols` values lie inside C; masked lanes are not read.
                acc[g][v] = unsafe { _mm256_maskload_ps(c.add(g * s.ldc + 8 * v), masks[v]) };
            }
        }
    }
    for i in 0..s.depth {
        if i % 2 == 0 {
            let at = s.prefetch_b.wrapping_add(i * PANEL);
            _mm_prefetch::<_MM_HINT_T1>(at.cast());
        }
        // SAFETY: i < depth; B holds depth x PANEL steps, and these 16 lie in the panel row.
        let bv: [__m256; HALF] =
            std::array::from_fn(|v| unsafe { _mm256_loadu_ps(b.add(i * PANEL + 8 * v)) });
        for g in 0..G {
            // SAFETY: i < depth, g < G <= MICRO_ROWS; A holds depth x MICRO_ROWS steps.
            let x = unsafe { _mm256_broadcast_ss(&*a.add(i * MICRO_ROWS + g)) };
            for v in 0..HALF {
                acc[g][v] = _mm256_fmadd_ps(x, bv[v], acc[g][v]);
            }
        }
    }
    for g in 0..G {
        for v in 0..HALF {
            // SAFETY: as for the loads.
            unsafe { _mm256_maskstore_ps(c.add(g * s.ldc + 8 * v), masks[v], acc[g][v]) };
        }
    }
}
