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
        let live: __mmask16 = (1u16 << rest.len()) - 1;
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
        let live: __mmask16 = (1u16 << rest.len()) - 1;
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
