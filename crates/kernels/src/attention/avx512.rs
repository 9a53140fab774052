//! The AVX-512 tiles of the attention kernel: the same arithmetic as the portable loops of
//! `mod.rs`, in the same order, so the same bits.

use std::arch::x86_64::*;

use super::{KEY_BLOCK, OutputTile, QUERY_TILE};

/// [`super::score_tile`] for N key blocks from `j0`, its QUERY_TILE x N sums in registers.
/// The same arithmetic as the portable loop, `acc + q_d * k` rounded twice, so the same
/// bits.
///
/// # Safety
/// The CPU has AVX-512F; `keys_t` holds head_dim rows of `padded` keys with
/// `j0 + N * 16 <= padded`, and `scores` QUERY_TILE rows of `padded` (what `super::score_tile`
/// asserts).
// Index loops over the register arrays: they unroll fully (the bounds are constants).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn score_tile<const N: usize>(
    tile: &[f32],
    scale: f32,
    keys_t: &[f32],
    padded: usize,
    j0: usize,
    scores: &mut [f32],
) {
    let hd = tile.len() / QUERY_TILE;
    let mut acc = [[_mm512_setzero_ps(); N]; QUERY_TILE];
    let keys = keys_t.as_ptr().wrapping_add(j0);
    for d in 0..hd {
        let mut k = [_mm512_setzero_ps(); N];
        for b in 0..N {
            // SAFETY: the caller checked that row d's keys j0..j0 + N * 16 lie in keys_t.
            k[b] = unsafe { _mm512_loadu_ps(keys.add(d * padded + b * KEY_BLOCK)) };
        }
        for q in 0..QUERY_TILE {
            let qv = _mm512_set1_ps(tile[q * hd + d]);
            for b in 0..N {
                acc[q][b] = _mm512_add_ps(acc[q][b], _mm512_mul_ps(qv, k[b]));
            }
        }
    }
    let scale = _mm512_set1_ps(scale);
    for q in 0..QUERY_TILE {
        for b in 0..N {
            // SAFETY: the caller checked that scores holds QUERY_TILE rows of `padded`.
            unsafe {
                let dst = scores.as_mut_ptr().add(q * padded + j0 + b * KEY_BLOCK);
                _mm512_storeu_ps(dst, _mm512_mul_ps(acc[q][b], scale));
            }
        }
    }
}

/// [`super::weighted_tile`] for N blocks of 16 head dims from `d0`, its QUERY_TILE x N
/// sums in registers: `acc + p * v` rounded twice, in key order, like the portable loop.
///
/// # Safety
/// The CPU has AVX-512F; `values` holds the rows `keys` of `hd` values with `d0 + N * 16 <= hd`
/// (what `super::weighted_tile` asserts).
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weighted_tile<const N: usize>(
    probs: &[f32],
    padded: usize,
    keys: std::ops::Range<usize>,
    values: &[f32],
    hd: usize,
    d0: usize,
    out: &mut OutputTile,
) {
    let mut acc = [[_mm512_setzero_ps(); N]; QUERY_TILE];
    for j in keys {
        let mut v = [_mm512_setzero_ps(); N];
        for b in 0..N {
            // SAFETY: the caller checked that values holds the tile's keys.
            v[b] = unsafe { _mm512_loadu_ps(values.as_ptr().add(j * hd + d0 + 16 * b)) };
        }
        for q in 0..QUERY_TILE {
            let p = _mm512_set1_ps(probs[q * padded + j]);
            for b in 0..N {
                acc[q][b] = _mm512_add_ps(acc[q][b], _mm512_mul_ps(p, v[b]));
            }
        }
    }
    for q in 0..out.queries {
        for b in 0..N {
            let at = q * out.q_dim + out.at + d0 + 16 * b;
            assert!(at + 16 <= out.rows.len());
            // SAFETY: just checked.
            unsafe { _mm512_storeu_ps(out.rows.as_mut_ptr().add(at), acc[q][b]) };
        }
    }
}

/// [`super::max16`] in one register: each lane's maximum over its values in order as the
/// portable loop keeps it (`_mm512_max_ps(v, m)` is `v > m ? v : m`), then the lanes reduced in
/// a tree rather than in lane order. Why the tree gives the same softmax: the maximum of finite
/// scores is one of them whatever the order, except that a zero maximum may come out as +0 or
/// -0, and every use of it is `v - max`, which is `v` for any other `v` either way, and `±0`
/// for a zero `v`, whose `exp` is 1 either way. The portable version's chain of 15 dependent
/// compares, with its lanes kept on the stack, was 2% of a SmolLM2 extraction.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max16(x: &[f32]) -> f32 {
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        // SAFETY: a whole chunk of 16 values.
        m = _mm512_max_ps(unsafe { _mm512_loadu_ps(c.as_ptr()) }, m);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let live = first_lanes(rest.len());
        // SAFETY: the mask covers only the remainder's values.
        let v = unsafe { _mm512_maskz_loadu_ps(live, rest.as_ptr()) };
        m = _mm512_mask_max_ps(m, live, v, m);
    }
    _mm512_reduce_max_ps(m)
}

/// [`super::sum16`] in one register: lane `l` sums values `l`, `l + 16`, ... in order, the rest
/// added only to its own lanes, then [`super::fold_lanes`]'s pairs (8 apart, 4, 2, 1) as
/// half-register adds: the same additions in the same order, so the same bits.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn sum16(x: &[f32]) -> f32 {
    let mut s = _mm512_setzero_ps();
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        // SAFETY: a whole chunk of 16 values.
        s = _mm512_add_ps(s, unsafe { _mm512_loadu_ps(c.as_ptr()) });
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let live = first_lanes(rest.len());
        // SAFETY: the mask covers only the remainder's values.
        let v = unsafe { _mm512_maskz_loadu_ps(live, rest.as_ptr()) };
        s = _mm512_mask_add_ps(s, live, s, v);
    }
    // Lanes 0..8 += 8..16, then 0..4 += 4..8, 0..2 += 2..4, 0 += 1.
    let lo = _mm512_castps512_ps256(s);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
    let s8 = _mm256_add_ps(lo, hi);
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
    _mm_cvtss_f32(s1)
}

/// The mask of a vector's first `len` lanes (`len` at most 16): the values of a last chunk.
#[inline(always)]
fn first_lanes(len: usize) -> __mmask16 {
    debug_assert!(len <= 16);
    ((1u32 << len) - 1) as __mmask16
}

/// [`super::softmax`] over 16 values at a time, the last ones under a mask: [`max16`],
/// `exp(v - max)` ([`exp16`]), [`sum16`], then `v / sum`, each value's operations those of the
/// portable loops, so the same bits. Each step runs over all the tile's queries before the
/// next: one query's steps form a single chain of dependent operations (its reductions, the
/// exponential's polynomial, the division), which the queries' chains side by side overlap.
/// Why by hand: over rows of a few dozen scores the compiler's loops ran their last values
/// one at a time, through a scalar `exp` each.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax(queries: &mut [&mut [f32]]) {
    // Each chunk of 16 values of a query, under the mask of its values, through `f`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn each_chunk(live: &mut [f32], f: impl Fn(__m512) -> __m512) {
        for c in live.chunks_mut(16) {
            let mask = first_lanes(c.len());
            // SAFETY: the mask covers only the chunk's values.
            unsafe {
                let v = _mm512_maskz_loadu_ps(mask, c.as_ptr());
                _mm512_mask_storeu_ps(c.as_mut_ptr(), mask, f(v));
            }
        }
    }
    let mut across = [_mm512_setzero_ps(); QUERY_TILE];
    for (max, live) in across.iter_mut().zip(queries.iter()) {
        // SAFETY: the CPU has AVX-512F (the caller's contract).
        *max = _mm512_set1_ps(unsafe { max16(live) });
    }
    for (&max, live) in across.iter().zip(queries.iter_mut()) {
        each_chunk(live, |v| exp16(_mm512_sub_ps(v, max)));
    }
    for (sum, live) in across.iter_mut().zip(queries.iter()) {
        // SAFETY: as above.
        *sum = _mm512_set1_ps(unsafe { sum16(live) });
    }
    for (&sum, live) in across.iter().zip(queries.iter_mut()) {
        each_chunk(live, |v| _mm512_div_ps(v, sum));
    }
}

/// [`crate::rows::exp`] on 16 lanes: its operations in its order (each product and sum
/// rounded on its own, no FMA), so its bits for finite inputs (its clamp and
/// `_mm512_max_ps`/`_mm512_min_ps` agree on them; masked-off lanes compute on zeros).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    use crate::rows::exp_consts::*;
    let c = _mm512_set1_ps;
    let (mul, add, sub) = (_mm512_mul_ps, _mm512_add_ps, _mm512_sub_ps);
    let x = _mm512_min_ps(_mm512_max_ps(x, c(LOWEST)), c(HIGHEST));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC }>(add(
        mul(x, c(LOG2E)),
        c(0.5),
    ));
    let r = sub(sub(x, mul(n, c(LN2_HI))), mul(n, c(LN2_LO)));
    let mut p = c(POLY[0]);
    for &k in &POLY[1..] {
        p = add(mul(p, r), c(k));
    }
    let p = add(mul(p, r), c(0.5));
    let p = add(add(mul(mul(p, r), r), r), c(1.0));
    let two_n = _mm512_slli_epi32::<23>(_mm512_castps_si512(add(n, c(TWO_TO_N))));
    mul(p, _mm512_castsi512_ps(two_n))
}
