//! The f32 micro-kernel for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 3, Intel before
//! Ice Lake): the same panels, packing and order as the AVX-512 kernel, so the same bits. Each
//! output is one `vfmadd` chain over the steps in order, like `avx512::micro_f32`; only the
//! vectors are 8 lanes wide, and with 16 registers the rows go two at a time (two rows x four
//! vectors of accumulators, four B vectors and a broadcast).

use std::arch::x86_64::*;

use super::{Block, MICRO_ROWS, PANEL};

/// Vectors per panel row.
const V: usize = PANEL / 8;

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
    let mut r0 = 0;
    while r0 < R {
        // SAFETY: the caller's contract, for rows r0 and r0 + 1 (< R).
        unsafe {
            if r0 + 1 < R {
                rows::<2>(s, a.add(r0), b, c.add(r0 * s.ldc), &masks);
            } else {
                rows::<1>(s, a.add(r0), b, c.add(r0 * s.ldc), &masks);
            }
        }
        r0 += 2;
    }
}

/// `G` rows starting at `a` (step `i` of row `g` at `a[i * MICRO_ROWS + g]`) into C from `c`.
///
/// # Safety
/// As for [`micro_f32`], for these `G` rows.
// Index loops over the register arrays: they unroll fully (G and V are constants).
#[allow(clippy::needless_range_loop)]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows<const G: usize>(
    s: &Block,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    masks: &[__m256i; V],
) {
    let mut acc = [[_mm256_setzero_ps(); V]; G];
    if s.resume {
        for g in 0..G {
            for v in 0..V {
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
        // SAFETY: i < depth; B holds depth x PANEL steps.
        let bv: [__m256; V] =
            std::array::from_fn(|v| unsafe { _mm256_loadu_ps(b.add(i * PANEL + 8 * v)) });
        for g in 0..G {
            // SAFETY: i < depth, g < G <= MICRO_ROWS; A holds depth x MICRO_ROWS steps.
            let x = unsafe { _mm256_broadcast_ss(&*a.add(i * MICRO_ROWS + g)) };
            for v in 0..V {
                acc[g][v] = _mm256_fmadd_ps(x, bv[v], acc[g][v]);
            }
        }
    }
    for g in 0..G {
        for v in 0..V {
            // SAFETY: as for the loads.
            unsafe { _mm256_maskstore_ps(c.add(g * s.ldc + 8 * v), masks[v], acc[g][v]) };
        }
    }
}
