//! Self-attention over packed sequences: the texts of a batch are concatenated row after row (no
//! padding rows, no mask tensor), and each sequence attends only to its own tokens: the earlier
//! ones (causal, with a sliding window the last `window` of them), or all of them (bidirectional,
//! EmbeddingGemma; with a sliding window those less than `window` positions away on either side).
//!
//! Why not candle ops: on short texts the tensor-op version (split, reshape, transpose, RoPE,
//! repeat kv heads, two batched matmuls, scale, mask, softmax, transpose back) spent more time
//! copying and dispatching than multiplying, and padded every text to the longest of its batch.
//! Here one task per sequence does all of it in place, with the same f32 arithmetic as HF
//! (q/k RMSNorm, RoPE, `q.k * scale`, softmax with the max subtracted, weighted sum of v).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use crate::isa::{Isa, multiversion};
use crate::rows;

/// What the kernel needs to know about the model.
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Leading dims of each head that RoPE rotates.
    pub rotary_dim: usize,
    /// Rotate pairs (2i, 2i+1) (llama.cpp's permuted GGUF weights) or halves (HF `rotate_half`).
    pub interleaved: bool,
    pub scale: f32,
    pub eps: f32,
}

/// cos/sin tables of one RoPE base for positions `0..t`: (t, rotary_dim / 2) each.
pub struct Rope {
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl Rope {
    /// As HF computes them: f32 inverse frequencies, f32 angle = position * inv_freq.
    pub fn new(theta: f32, rotary_dim: usize, t: usize) -> Rope {
        let inv: Vec<f32> = (0..rotary_dim / 2)
            .map(|i| 1.0f32 / theta.powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(t * inv.len());
        let mut sin = Vec::with_capacity(t * inv.len());
        for p in 0..t {
            for f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Rope { cos, sin }
    }
}

/// A bias added to every score by the distance `key - query`, per head (MPNet's relative
/// position buckets, looked up once by the model): head `h`'s value for distance `d` is
/// `table[h * (2 * max_len - 1) + d + max_len - 1]`, for sequences of at most `max_len` tokens.
pub struct RelativeBias {
    pub table: Vec<f32>,
    pub max_len: usize,
}

impl RelativeBias {
    /// Head `h`'s values for the keys of query `i`: entry `j` is the bias of key `j`.
    #[inline(always)]
    fn for_query(&self, h: usize, i: usize) -> &[f32] {
        let width = 2 * self.max_len - 1;
        &self.table[h * width + self.max_len - 1 - i..(h + 1) * width]
    }
}

/// What one block adds to the model's [`AttentionShape`].
pub struct LayerAttention<'a> {
    pub rope: &'a Rope,
    /// Sliding window (keys less than `window` positions away), or global attention.
    pub window: Option<usize>,
    /// Queries see earlier keys only (decoders), else keys on both sides (encoders).
    pub causal: bool,
    /// Per-head RMSNorm weights of q and k (gemma3, qwen3).
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    /// Added to the scores after the scale, before the softmax (MPNet), as HF adds it.
    pub bias: Option<&'a RelativeBias>,
}

/// `qkv` holds, per packed row, q (n_heads * head_dim), k and v (n_kv_heads * head_dim each);
/// `lens` are the sequences' lengths in row order. Returns the attention output before the
/// output projection: per row, n_heads * head_dim.
pub fn attend(s: &AttentionShape, layer: &LayerAttention, qkv: &[f32], lens: &[usize]) -> Vec<f32> {
    attend_on(Isa::best(), s, layer, qkv, lens)
}

/// [`attend`] at a given instruction-set level (every level gives the same bits).
pub fn attend_on(
    isa: Isa,
    s: &AttentionShape,
    layer: &LayerAttention,
    qkv: &[f32],
    lens: &[usize],
) -> Vec<f32> {
    attend_after_on(isa, s, layer, &[], qkv, lens)
}

/// [`attend`] for sequences that all begin with the same rows, given once: `shared` holds those
/// rows (q, k and v as in `qkv`; positions `0..shared rows`), `qkv` and `lens` each sequence's
/// own rows after them. Only the own rows' outputs are computed, the same bits as [`attend`]
/// over the whole sequences gives those rows (a query's scores, softmax and weighted sum do
/// not depend on which queries share its tile). Why: a prompt's template, run once for a
/// batch's texts (the decoder's shared prefix), would otherwise be copied before every text and
/// its queries attended again for each.
pub fn attend_after(
    s: &AttentionShape,
    layer: &LayerAttention,
    shared: &[f32],
    qkv: &[f32],
    lens: &[usize],
) -> Vec<f32> {
    attend_after_on(Isa::best(), s, layer, shared, qkv, lens)
}

/// [`attend_after`] at a given instruction-set level (every level gives the same bits).
pub fn attend_after_on(
    isa: Isa,
    s: &AttentionShape,
    layer: &LayerAttention,
    shared: &[f32],
    qkv: &[f32],
    lens: &[usize],
) -> Vec<f32> {
    let q_dim = s.n_heads * s.head_dim;
    let stride = q_dim + 2 * s.n_kv_heads * s.head_dim;
    let rows: usize = lens.iter().sum();
    debug_assert_eq!(qkv.len(), rows * stride);
    assert!(
        shared.len().is_multiple_of(stride),
        "attention: {} shared values are not whole rows of {stride}",
        shared.len()
    );
    let before = shared.len() / stride;
    if let Some(b) = layer.bias {
        assert!(
            b.table.len() == s.n_heads * (2 * b.max_len - 1)
                && lens.iter().all(|&l| before + l <= b.max_len),
            "relative bias of {} values for {} heads and sequences of at most {} tokens",
            b.table.len(),
            s.n_heads,
            b.max_len
        );
    }
    // Each task zeroes its own rows (in its own thread, just before it writes them) instead of
    // the caller zeroing the whole output before the fork.
    let mut out: Vec<f32> = Vec::with_capacity(rows * q_dim);
    // Split the output (and input) into one disjoint chunk per sequence.
    let mut tasks = Vec::with_capacity(lens.len());
    let mut rest = &mut out.spare_capacity_mut()[..rows * q_dim];
    let mut start = 0;
    for &len in lens {
        let (mine, tail) = rest.split_at_mut(len * q_dim);
        tasks.push((mine, &qkv[start * stride..(start + len) * stride], len));
        rest = tail;
        start += len;
    }
    tasks.into_par_iter().for_each(|(out, qkv, len)| {
        out.fill(MaybeUninit::new(0.0));
        // SAFETY: every value was just written, and MaybeUninit<f32> has f32's layout.
        let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
        let sequence = Sequence {
            shared,
            own: qkv,
            before,
            len: before + len,
            stride,
        };
        attend_sequence(isa, s, layer, &sequence, out)
    });
    // SAFETY: the sequences' chunks cover all rows * q_dim values, and each was zeroed above.
    unsafe { out.set_len(rows * q_dim) };
    out
}

/// One sequence's q, k and v rows: `before` shared rows, then its own; `len` in all.
struct Sequence<'a> {
    shared: &'a [f32],
    own: &'a [f32],
    before: usize,
    len: usize,
    stride: usize,
}

impl Sequence<'_> {
    #[inline(always)]
    fn row(&self, j: usize) -> &[f32] {
        match j.checked_sub(self.before) {
            None => &self.shared[j * self.stride..(j + 1) * self.stride],
            Some(own) => &self.own[own * self.stride..(own + 1) * self.stride],
        }
    }
}

/// Keys per score block: one AVX-512 vector of scores.
const KEY_BLOCK: usize = 16;
/// Queries per tile: a tile's scores and weighted sums are computed side by side, which gives
/// the adders independent sums to work on (one query's sums form a single chain per block).
const QUERY_TILE: usize = 4;
/// Key blocks (scores) or head-dim blocks of 16 (weighted sums) per pass over a tile: with
/// QUERY_TILE queries, 16 AVX-512 sums held in registers.
const TILE_BLOCKS: usize = 4;

/// How many rows ahead the loops over a sequence's q, k and v rows fetch the rows they will
/// read. Why: the rows lie `stride` values apart (3,840 bytes for SmolLM2), nearly one 4 KiB
/// page per row, where the hardware's stride prefetchers stop, and their copies were about 2%
/// of a SmolLM2 bf16 extraction's samples, nearly all waiting on those loads.
const ROWS_AHEAD: usize = 4;

/// Asks for the cache lines of `values` (a hint: it changes no values).
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: prefetching never faults, and the pointer is inside `values`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

multiversion! {
    /// One sequence's attention (`out` gets its own rows' outputs), compiled for AVX-512 where the
    /// CPU has it. Each kv head's keys are stored transposed (head_dim, keys) so that the scores
    /// of 16 keys come out of one pass over the query with no horizontal sums. Queries go
    /// QUERY_TILE at a time; every score is still summed over the head dims in order, and every
    /// output over the keys in order, so the result depends neither on the vector width nor on
    /// the tiling.
    fn attend_sequence(
        isa: Isa,
        s: &AttentionShape,
        layer: &LayerAttention,
        seq: &Sequence,
        out: &mut [f32],
    ) {
        let hd = s.head_dim;
        let q_dim = s.n_heads * hd;
        let kv_dim = s.n_kv_heads * hd;
        let groups = s.n_heads / s.n_kv_heads;
        // Queries `before..len` (the own rows); keys `0..len`.
        let (before, len) = (seq.before, seq.len);
        let own = len - before;
        // Keys padded to whole blocks; the padding columns stay zero and their scores unused.
        let padded = len.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let mut keys_t = vec![0f32; hd * padded];
        let mut values = vec![0f32; len * hd];
        let mut k = vec![0f32; hd];
        // One head's queries (the own rows'), normed and rotated, padded to whole tiles with
        // zero rows.
        let mut queries = vec![0f32; own.div_ceil(QUERY_TILE) * QUERY_TILE * hd];
        // A tile's scores, then its probabilities: QUERY_TILE rows of `padded`.
        let mut probs = vec![0f32; QUERY_TILE * padded];
        // Query i's keys: window_start(i) ..= window_end(i).
        let window_start = |i: usize| layer.window.map_or(0, |w| (i + 1).saturating_sub(w));
        let window_end = |i: usize| match (layer.causal, layer.window) {
            (true, _) => i,
            (false, None) => len - 1,
            (false, Some(w)) => (i + w - 1).min(len - 1),
        };
        for g in 0..s.n_kv_heads {
            // Where kv head g's key and value lie in a packed row.
            let (k_at, v_at) = (q_dim + g * hd, q_dim + kv_dim + g * hd);
            for j in 0..len {
                if j + ROWS_AHEAD < len {
                    let ahead = seq.row(j + ROWS_AHEAD);
                    prefetch(&ahead[k_at..k_at + hd]);
                    prefetch(&ahead[v_at..v_at + hd]);
                }
                let row = seq.row(j);
                k.copy_from_slice(&row[k_at..k_at + hd]);
                if let Some(w) = layer.k_norm {
                    rms_norm(&mut k, w, s.eps);
                }
                apply_rope(&mut k, j, layer.rope, s);
                for (d, &v) in k.iter().enumerate() {
                    keys_t[d * padded + j] = v;
                }
                values[j * hd..(j + 1) * hd].copy_from_slice(&row[v_at..v_at + hd]);
            }
            for h in g * groups..(g + 1) * groups {
                let q_cols = h * hd..(h + 1) * hd;
                for (r, q) in queries.chunks_exact_mut(hd).take(own).enumerate() {
                    if r + ROWS_AHEAD < own {
                        prefetch(&seq.row(before + r + ROWS_AHEAD)[q_cols.clone()]);
                    }
                    q.copy_from_slice(&seq.row(before + r)[q_cols.clone()]);
                    if let Some(w) = layer.q_norm {
                        rms_norm(q, w, s.eps);
                    }
                    apply_rope(q, before + r, layer.rope, s);
                }
                for r0 in (0..own).step_by(QUERY_TILE) {
                    let i0 = before + r0;
                    let last = (i0 + QUERY_TILE).min(len) - 1;
                    // The keys any query of the tile sees: from the first query's window start
                    // (the earliest) to the last query's window end (the latest); scored in
                    // whole blocks.
                    let first_key = window_start(i0);
                    let last_key = window_end(last);
                    let keys = first_key / KEY_BLOCK * KEY_BLOCK..(last_key + 1).div_ceil(KEY_BLOCK) * KEY_BLOCK;
                    let tile = &queries[r0 * hd..(r0 + QUERY_TILE) * hd];
                    score_tile(isa, tile, s.scale, &keys_t, padded, keys, &mut probs);
                    // Softmax over each query's own keys; zero weight for the tile's other keys.
                    let mut lives: [&mut [f32]; QUERY_TILE] = Default::default();
                    for ((i, row), live) in (i0..=last).zip(probs.chunks_exact_mut(padded)).zip(&mut lives) {
                        let (lo, hi) = (window_start(i), window_end(i));
                        row[first_key..lo].fill(0.0);
                        row[hi + 1..=last_key].fill(0.0);
                        *live = &mut row[lo..=hi];
                        if let Some(bias) = layer.bias {
                            for (v, b) in live.iter_mut().zip(&bias.for_query(h, i)[lo..=hi]) {
                                *v += b;
                            }
                        }
                    }
                    softmax(isa, &mut lives[..=last - i0]);
                    let rows = &mut out[r0 * q_dim..];
                    let mut sink = OutputTile { rows, queries: last + 1 - i0, q_dim, at: h * hd };
                    weighted_tile(isa, &probs, padded, first_key..last_key + 1, &values, hd, &mut sink);
                }
            }
        }
    }
}

/// Scores `scale * (q . k_j)` of the QUERY_TILE queries of `tile` (QUERY_TILE rows of
/// head_dim) for the keys `keys` (whole blocks) into `scores` (QUERY_TILE rows of `padded`).
/// `keys_t` is (head_dim, padded).
#[inline(always)]
fn score_tile(
    isa: Isa,
    tile: &[f32],
    scale: f32,
    keys_t: &[f32],
    padded: usize,
    keys: std::ops::Range<usize>,
    scores: &mut [f32],
) {
    let hd = tile.len() / QUERY_TILE;
    assert!(keys.start.is_multiple_of(KEY_BLOCK) && keys.end.is_multiple_of(KEY_BLOCK));
    assert!(keys.end <= padded);
    assert!(keys_t.len() >= hd * padded && scores.len() >= QUERY_TILE * padded);
    let mut j0 = keys.start;
    while j0 < keys.end {
        let blocks = ((keys.end - j0) / KEY_BLOCK).min(TILE_BLOCKS);
        #[cfg(target_arch = "x86_64")]
        if isa.is_avx512() {
            macro_rules! dispatch {
                ($($n:literal)*) => {
                    match blocks {
                        // SAFETY: an AVX-512 `isa` means the CPU has AVX-512F, and the asserts bound every access.
                        $($n => unsafe { avx512::score_tile::<$n>(tile, scale, keys_t, padded, j0, scores) },)*
                        _ => unreachable!(),
                    }
                };
            }
            dispatch!(1 2 3 4);
            j0 += blocks * KEY_BLOCK;
            continue;
        }
        let width = blocks * KEY_BLOCK;
        for (q, row) in tile.chunks_exact(hd).zip(scores.chunks_exact_mut(padded)) {
            let mut acc = [0f32; TILE_BLOCKS * KEY_BLOCK];
            for (d, &qd) in q.iter().enumerate() {
                let keys = &keys_t[d * padded + j0..d * padded + j0 + width];
                for (a, k) in acc[..width].iter_mut().zip(keys) {
                    *a += qd * k;
                }
            }
            for (dst, a) in row[j0..j0 + width].iter_mut().zip(&acc) {
                *dst = a * scale;
            }
        }
        j0 += width;
    }
}

/// Where a tile's outputs go: `queries` rows of `rows` (`q_dim` apart), head_dim values each,
/// from column `at`.
struct OutputTile<'a> {
    rows: &'a mut [f32],
    queries: usize,
    q_dim: usize,
    at: usize,
}

/// `out_q = sum_j p_qj * v_j` for the tile's queries, over the keys `keys` in order; `probs` is
/// QUERY_TILE rows of `padded`, zero outside each query's own keys (adding a zero product
/// leaves a sum's bits as they were), `values` (keys, head_dim).
#[inline(always)]
fn weighted_tile(
    isa: Isa,
    probs: &[f32],
    padded: usize,
    keys: std::ops::Range<usize>,
    values: &[f32],
    hd: usize,
    out: &mut OutputTile,
) {
    assert!(keys.end <= padded && probs.len() >= QUERY_TILE * padded);
    assert!(values.len() >= keys.end * hd && out.queries <= QUERY_TILE);
    assert!(out.queries == 0 || out.rows.len() >= (out.queries - 1) * out.q_dim + out.at + hd);
    let mut d0 = 0;
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        while d0 + 16 <= hd {
            let blocks = ((hd - d0) / 16).min(TILE_BLOCKS);
            macro_rules! dispatch {
                ($($n:literal)*) => {
                    match blocks {
                        // SAFETY: an AVX-512 `isa` means the CPU has AVX-512F, and the asserts bound every access.
                        $($n => unsafe { avx512::weighted_tile::<$n>(probs, padded, keys.clone(), values, hd, d0, out) },)*
                        _ => unreachable!(),
                    }
                };
            }
            dispatch!(1 2 3 4);
            d0 += blocks * 16;
        }
    }
    // The columns AVX-512 left, if any: with none left, the loops below would still walk
    // every (query, key) over empty slices (1.5% of a SmolLM2 int8 run's samples).
    if d0 == hd {
        return;
    }
    for q in 0..out.queries {
        let p = &probs[q * padded..(q + 1) * padded];
        let dst = &mut out.rows[q * out.q_dim + out.at + d0..q * out.q_dim + out.at + hd];
        dst.fill(0.0);
        for j in keys.clone() {
            for (a, v) in dst.iter_mut().zip(&values[j * hd + d0..(j + 1) * hd]) {
                *a += p[j] * v;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;

/// Each query's scores (finite; a tile's queries) turned into probabilities in place:
/// `exp(v - max)` over the sum of them, the maximum and the sum taken in 16 fixed lanes
/// ([`max16`], [`sum16`]); with AVX-512, [`avx512::softmax`] (the same bits).
#[inline(always)]
fn softmax(isa: Isa, queries: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        return unsafe { avx512::softmax(queries) };
    }
    for live in queries {
        let max = max16(isa, live);
        for v in live.iter_mut() {
            *v = rows::exp(*v - max);
        }
        let sum = sum16(isa, live);
        for v in live.iter_mut() {
            *v /= sum;
        }
    }
}

/// Maximum in 16 fixed lanes (scores are finite); with AVX-512, [`avx512::max16`].
#[inline(always)]
fn max16(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        return unsafe { avx512::max16(x) };
    }
    let _ = isa;
    let mut lanes = [f32::NEG_INFINITY; 16];
    // Whole chunks, then the rest: over `chunks(16)`, whose last chunk may be short, the
    // compiler kept the lanes on the stack and stored them back on every chunk.
    let mut whole = x.chunks_exact(16);
    for c in &mut whole {
        for l in 0..16 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    for (l, &v) in lanes.iter_mut().zip(whole.remainder()) {
        *l = if v > *l { v } else { *l };
    }
    lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// Sum in 16 fixed lanes, then pairwise across lanes (the same result at any vector width);
/// with AVX-512, [`avx512::sum16`] (the same bits).
#[inline(always)]
fn sum16(isa: Isa, x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa.is_avx512() {
        // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
        return unsafe { avx512::sum16(x) };
    }
    let _ = isa;
    let mut lanes = [0f32; 16];
    // Whole chunks, then the rest, as in `max16` (each lane's sum in the same order).
    let mut whole = x.chunks_exact(16);
    for c in &mut whole {
        for l in 0..16 {
            lanes[l] += c[l];
        }
    }
    for (l, v) in lanes.iter_mut().zip(whole.remainder()) {
        *l += v;
    }
    fold_lanes(lanes)
}

/// Dot product summed in 16 fixed lanes, then pairwise across lanes (so the result does not
/// depend on the vector width the code was compiled for).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] += x[l] * y[l];
        }
    }
    for (l, (x, y)) in ar.iter().zip(br).enumerate() {
        lanes[l] += x * y;
    }
    fold_lanes(lanes)
}

/// Pairwise across lanes, in a fixed order (vector shuffles, not a chain of 15 adds).
#[inline(always)]
fn fold_lanes(mut lanes: [f32; 16]) -> f32 {
    let mut width = 8;
    while width > 0 {
        for l in 0..width {
            lanes[l] += lanes[l + width];
        }
        width /= 2;
    }
    lanes[0]
}

/// HF RMSNorm in f32: x * rsqrt(mean(x^2) + eps) * w.
#[inline(always)]
fn rms_norm(x: &mut [f32], w: &[f32], eps: f32) {
    let ms = dot(x, x) / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    for (v, w) in x.iter_mut().zip(w) {
        *v = *v * r * w;
    }
}

#[inline(always)]
fn apply_rope(x: &mut [f32], pos: usize, rope: &Rope, s: &AttentionShape) {
    let half = s.rotary_dim / 2;
    let cos = &rope.cos[pos * half..(pos + 1) * half];
    let sin = &rope.sin[pos * half..(pos + 1) * half];
    // Iterators over split slices rather than indices: no bounds checks, so the loops
    // vectorise (indexed, the rotate-half loop ran scalar and was most of this kernel's own
    // time on Gemma-3's 256-wide heads). The same operations per value, so the same bits.
    if s.interleaved {
        for ((p, c), s) in x[..2 * half].chunks_exact_mut(2).zip(cos).zip(sin) {
            let (a, b) = (p[0], p[1]);
            p[0] = a * c - b * s;
            p[1] = a * s + b * c;
        }
    } else {
        let (lo, hi) = x[..2 * half].split_at_mut(half);
        for (((x0, x1), c), s) in lo.iter_mut().zip(hi.iter_mut()).zip(cos).zip(sin) {
            let (a, b) = (*x0, *x1);
            *x0 = a * c - b * s;
            *x1 = b * c + a * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reductions of a softmax row at every level: the sum's bits, and the maximum's value
    /// (its sign where it is zero may differ, see `avx512::max16`), for every remainder of 16,
    /// rows of zeros of both signs included.
    #[test]
    fn row_reductions_agree_at_every_level() {
        let mut state = 0x2545_f491_u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 100.0 - 10.0
        };
        for len in 1..50 {
            let values: Vec<f32> = (0..len).map(|_| next()).collect();
            let probs: Vec<f32> = values.iter().map(|v| rows::exp(*v)).collect();
            let zeros: Vec<f32> = (0..len)
                .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
                .collect();
            for isa in Isa::all() {
                let what = format!("{} over {len} values", isa.name());
                let base = Isa::baseline();
                assert_eq!(max16(isa, &values), max16(base, &values), "max, {what}");
                assert_eq!(max16(isa, &zeros), 0.0, "max of zeros, {what}");
                assert_eq!(
                    sum16(isa, &probs).to_bits(),
                    sum16(base, &probs).to_bits(),
                    "sum, {what}"
                );
            }
        }
    }
}
