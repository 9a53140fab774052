//! Causal self-attention over packed sequences: the texts of a batch are concatenated row after
//! row (no padding rows, no mask tensor), and each sequence attends only to its own earlier
//! tokens (and, with a sliding window, to the last `window` of them).
//!
//! Why not candle ops: on short texts the tensor-op version (split, reshape, transpose, RoPE,
//! repeat kv heads, two batched matmuls, scale, mask, softmax, transpose back) spent more time
//! copying and dispatching than multiplying, and padded every text to the longest of its batch.
//! Here one task per sequence does all of it in place, with the same f32 arithmetic as HF
//! (q/k RMSNorm, RoPE, `q.k * scale`, softmax with the max subtracted, weighted sum of v).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::kernels::{self, multiversion};

/// What the kernel needs to know about the model.
pub(crate) struct AttentionShape {
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
pub(crate) struct Rope {
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

/// What one block adds to the model's [`AttentionShape`].
pub(crate) struct LayerAttention<'a> {
    pub rope: &'a Rope,
    /// Sliding window (keys within the last `window` positions), or global attention.
    pub window: Option<usize>,
    /// Per-head RMSNorm weights of q and k (gemma3, qwen3).
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
}

/// `qkv` holds, per packed row, q (n_heads * head_dim), k and v (n_kv_heads * head_dim each);
/// `lens` are the sequences' lengths in row order. Returns the attention output before the
/// output projection: per row, n_heads * head_dim.
pub(crate) fn attend(
    s: &AttentionShape,
    layer: &LayerAttention,
    qkv: &[f32],
    lens: &[usize],
) -> Vec<f32> {
    let q_dim = s.n_heads * s.head_dim;
    let stride = q_dim + 2 * s.n_kv_heads * s.head_dim;
    let rows: usize = lens.iter().sum();
    debug_assert_eq!(qkv.len(), rows * stride);
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
        attend_sequence(s, layer, qkv, len, out)
    });
    // SAFETY: the sequences' chunks cover all rows * q_dim values, and each was zeroed above.
    unsafe { out.set_len(rows * q_dim) };
    out
}

/// Keys per score block: one AVX-512 vector of scores.
const KEY_BLOCK: usize = 16;

multiversion! {
    /// One sequence's attention (`qkv` and `out` are its rows), compiled for AVX-512 where the
    /// CPU has it. Each kv head's keys are stored transposed (head_dim, keys) so that the scores
    /// of 16 keys come out of one pass over the query with no horizontal sums; every score is
    /// summed over the head dims in order, so the result does not depend on the vector width.
    fn attend_sequence(
        s: &AttentionShape,
        layer: &LayerAttention,
        qkv: &[f32],
        len: usize,
        out: &mut [f32],
    ) {
        let hd = s.head_dim;
        let q_dim = s.n_heads * hd;
        let kv_dim = s.n_kv_heads * hd;
        let stride = q_dim + 2 * kv_dim;
        let groups = s.n_heads / s.n_kv_heads;
        // Keys padded to whole blocks; the padding columns stay zero and their scores unused.
        let padded = len.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let mut keys_t = vec![0f32; hd * padded];
        let mut values = vec![0f32; len * hd];
        let mut k = vec![0f32; hd];
        let mut q = vec![0f32; hd];
        let mut scores = vec![0f32; padded];
        for g in 0..s.n_kv_heads {
            for j in 0..len {
                let row = &qkv[j * stride..(j + 1) * stride];
                k.copy_from_slice(&row[q_dim + g * hd..q_dim + (g + 1) * hd]);
                if let Some(w) = layer.k_norm {
                    rms_norm(&mut k, w, s.eps);
                }
                apply_rope(&mut k, j, layer.rope, s);
                for (d, &v) in k.iter().enumerate() {
                    keys_t[d * padded + j] = v;
                }
                values[j * hd..(j + 1) * hd]
                    .copy_from_slice(&row[q_dim + kv_dim + g * hd..q_dim + kv_dim + (g + 1) * hd]);
            }
            for h in g * groups..(g + 1) * groups {
                for i in 0..len {
                    q.copy_from_slice(&qkv[i * stride + h * hd..i * stride + (h + 1) * hd]);
                    if let Some(w) = layer.q_norm {
                        rms_norm(&mut q, w, s.eps);
                    }
                    apply_rope(&mut q, i, layer.rope, s);
                    let lo = layer.window.map_or(0, |w| (i + 1).saturating_sub(w));
                    // Whole blocks from the one holding `lo` to the one holding `i`, four at a
                    // time (four independent sums keep the adders busy).
                    let mut j0 = lo / KEY_BLOCK * KEY_BLOCK;
                    let end = (i + 1).div_ceil(KEY_BLOCK) * KEY_BLOCK;
                    while j0 < end {
                        match (end - j0) / KEY_BLOCK {
                            1 => score_blocks::<1>(&q, s.scale, &keys_t, padded, j0, &mut scores),
                            2 => score_blocks::<2>(&q, s.scale, &keys_t, padded, j0, &mut scores),
                            3 => score_blocks::<3>(&q, s.scale, &keys_t, padded, j0, &mut scores),
                            _ => score_blocks::<4>(&q, s.scale, &keys_t, padded, j0, &mut scores),
                        }
                        j0 += 4 * KEY_BLOCK;
                    }
                    let live = &mut scores[lo..=i];
                    let max = max16(live);
                    for v in live.iter_mut() {
                        *v = kernels::exp(*v - max);
                    }
                    let sum = sum16(live);
                    for v in live.iter_mut() {
                        *v /= sum;
                    }
                    let o = &mut out[i * q_dim + h * hd..i * q_dim + (h + 1) * hd];
                    weighted_values(live, &values[lo * hd..(i + 1) * hd], o);
                }
            }
        }
    }
}

/// Scores `scale * (q . k_j)` of the `N * KEY_BLOCK` keys from `j0` into `scores[j0..]`; `keys_t` is
/// (head_dim, padded) and every block is whole.
#[inline(always)]
fn score_blocks<const N: usize>(
    q: &[f32],
    scale: f32,
    keys_t: &[f32],
    padded: usize,
    j0: usize,
    scores: &mut [f32],
) {
    let width = N * KEY_BLOCK;
    assert!(j0 + width <= padded && keys_t.len() >= q.len() * padded && j0 + width <= scores.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the assert bounds every access.
        unsafe { avx512::score_blocks::<N>(q, scale, keys_t, padded, j0, scores) };
        return;
    }
    let mut acc = [0f32; 4 * KEY_BLOCK];
    for (d, &qd) in q.iter().enumerate() {
        let keys = &keys_t[d * padded + j0..d * padded + j0 + width];
        for (a, k) in acc[..width].iter_mut().zip(keys) {
            *a += qd * k;
        }
    }
    for (dst, a) in scores[j0..j0 + width].iter_mut().zip(&acc) {
        *dst = a * scale;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::KEY_BLOCK;

    /// [`super::score_blocks`] with its N blocks of sums held in N registers (the compiler kept
    /// the portable version's sums on the stack: a store and a load per head dim). The same
    /// arithmetic, `acc + q_d * k`, rounded twice, so the same bits.
    // Index loops over the register array: it unrolls fully (N is a constant).
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn score_blocks<const N: usize>(
        q: &[f32],
        scale: f32,
        keys_t: &[f32],
        padded: usize,
        j0: usize,
        scores: &mut [f32],
    ) {
        let mut acc = [_mm512_setzero_ps(); N];
        let keys = keys_t.as_ptr().wrapping_add(j0);
        for (d, &qd) in q.iter().enumerate() {
            let qv = _mm512_set1_ps(qd);
            for b in 0..N {
                // SAFETY: the caller checked that row d's keys j0..j0 + N * 16 lie in keys_t.
                let k = unsafe { _mm512_loadu_ps(keys.add(d * padded + b * KEY_BLOCK)) };
                acc[b] = _mm512_add_ps(acc[b], _mm512_mul_ps(qv, k));
            }
        }
        let scale = _mm512_set1_ps(scale);
        for b in 0..N {
            // SAFETY: the caller checked that scores[j0..j0 + N * 16] exists.
            unsafe {
                let dst = scores.as_mut_ptr().add(j0 + b * KEY_BLOCK);
                _mm512_storeu_ps(dst, _mm512_mul_ps(acc[b], scale));
            }
        }
    }
}

/// Head dims per pass of [`weighted_values`]: four AVX-512 accumulators kept in registers.
const VALUE_CHUNK: usize = 64;

/// `out = sum_j p_j * v_j` over the rows of `values` (one per weight), accumulated in key order,
/// [`VALUE_CHUNK`] head dims at a time so that the sums stay in registers.
#[inline(always)]
fn weighted_values(weights: &[f32], values: &[f32], out: &mut [f32]) {
    let hd = out.len();
    let mut d0 = 0;
    while d0 + VALUE_CHUNK <= hd {
        let mut acc = [[0f32; 16]; VALUE_CHUNK / 16];
        for (&p, v) in weights.iter().zip(values.chunks_exact(hd)) {
            for (a, v) in acc.iter_mut().zip(v[d0..d0 + VALUE_CHUNK].chunks_exact(16)) {
                for l in 0..16 {
                    a[l] += p * v[l];
                }
            }
        }
        out[d0..d0 + VALUE_CHUNK].copy_from_slice(acc.as_flattened());
        d0 += VALUE_CHUNK;
    }
    if d0 < hd {
        let tail = &mut out[d0..];
        tail.fill(0.0);
        for (&p, v) in weights.iter().zip(values.chunks_exact(hd)) {
            for (a, v) in tail.iter_mut().zip(&v[d0..]) {
                *a += p * v;
            }
        }
    }
}

/// Maximum in 16 fixed lanes (scores are finite).
#[inline(always)]
fn max16(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    for c in x.chunks(16) {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = if v > *l { v } else { *l };
        }
    }
    lanes
        .into_iter()
        .fold(f32::NEG_INFINITY, |m, v| if v > m { v } else { m })
}

/// Sum in 16 fixed lanes, then pairwise across lanes (the same result at any vector width).
#[inline(always)]
fn sum16(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for c in x.chunks(16) {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
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
    if s.interleaved {
        for i in 0..half {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * cos[i] - b * sin[i];
            x[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    } else {
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i] + a * sin[i];
        }
    }
}
