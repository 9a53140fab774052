//! Causal self-attention over packed sequences: the texts of a batch are concatenated row after
//! row (no padding rows, no mask tensor), and each sequence attends only to its own earlier
//! tokens (and, with a sliding window, to the last `window` of them).
//!
//! Why not candle ops: on short texts the tensor-op version (split, reshape, transpose, RoPE,
//! repeat kv heads, two batched matmuls, scale, mask, softmax, transpose back) spent more time
//! copying and dispatching than multiplying, and padded every text to the longest of its batch.
//! Here one task per sequence does all of it in place, with the same f32 arithmetic as HF
//! (q/k RMSNorm, RoPE, `q.k * scale`, softmax with the max subtracted, weighted sum of v).

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
    let mut out = vec![0f32; rows * q_dim];
    // Split the output (and input) into one disjoint chunk per sequence.
    let mut tasks = Vec::with_capacity(lens.len());
    let mut rest: &mut [f32] = &mut out;
    let mut start = 0;
    for &len in lens {
        let (mine, tail) = rest.split_at_mut(len * q_dim);
        tasks.push((mine, &qkv[start * stride..(start + len) * stride], len));
        rest = tail;
        start += len;
    }
    tasks
        .into_par_iter()
        .for_each(|(out, qkv, len)| attend_sequence(s, layer, qkv, len, out));
    out
}

multiversion! {
    /// One sequence's attention (`qkv` and `out` are its rows), compiled for AVX-512 where the
    /// CPU has it (same arithmetic, wider lanes; sums are kept in 16 fixed lanes whatever the
    /// vector width).
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
        let mut keys = vec![0f32; len * hd];
        let mut values = vec![0f32; len * hd];
        let mut q = vec![0f32; hd];
        let mut scores = vec![0f32; len];
        let mut acc = vec![0f32; hd];
        for g in 0..s.n_kv_heads {
            for j in 0..len {
                let row = &qkv[j * stride..(j + 1) * stride];
                let k = &mut keys[j * hd..(j + 1) * hd];
                k.copy_from_slice(&row[q_dim + g * hd..q_dim + (g + 1) * hd]);
                if let Some(w) = layer.k_norm {
                    rms_norm(k, w, s.eps);
                }
                apply_rope(k, j, layer.rope, s);
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
                    let mut max = f32::NEG_INFINITY;
                    for j in lo..=i {
                        let v = dot(&q, &keys[j * hd..(j + 1) * hd]) * s.scale;
                        scores[j] = v;
                        max = max.max(v);
                    }
                    let mut sum = 0f32;
                    for v in &mut scores[lo..=i] {
                        *v = kernels::exp(*v - max);
                        sum += *v;
                    }
                    acc.fill(0.0);
                    for j in lo..=i {
                        let p = scores[j] / sum;
                        for (a, v) in acc.iter_mut().zip(&values[j * hd..(j + 1) * hd]) {
                            *a += p * v;
                        }
                    }
                    out[i * q_dim + h * hd..i * q_dim + (h + 1) * hd].copy_from_slice(&acc);
                }
            }
        }
    }
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
    // Pairwise across lanes, in a fixed order (vector shuffles, not a chain of 15 adds).
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
