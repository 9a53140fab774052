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
