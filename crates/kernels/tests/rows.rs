//! The row kernels and attention: the baseline, AVX2 and AVX-512 builds give the same bits (those
//! this CPU has; the test says which did not run), and both match the textbook formulas in
//! f64 within stated tolerances, so the comparison cannot pass on two equally wrong results.

use llmembed_kernels::attention::{
    AttentionShape, LayerAttention, RelativeBias, Rope, attend_after_on, attend_on,
};
use llmembed_kernels::{Isa, Rows};

/// Rows of widths that hit the 16-lane tails (37) and the models' widths (576).
const WIDTHS: &[usize] = &[37, 576];
const ROWS: usize = 45;

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 / 1000.0 - 1.0) * 3.0)
        .collect()
}

/// The levels this CPU runs, printed.
fn levels() -> Vec<Isa> {
    let all = Isa::all();
    for (level, have) in [("avx2", Isa::avx2()), ("avx512", Isa::avx512())] {
        if have.is_none() {
            println!("{level}: not available on this CPU; that build did not run");
        }
    }
    println!(
        "ran: {:?}",
        all.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    all
}

fn assert_same_bits(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{what}: value {i} differs: {} vs {}", a[i], b[i]);
    }
}

/// |got - want| <= tol * (1 + |want|) everywhere.
fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs() / (1.0 + w.abs()))
        .fold(0f64, f64::max);
    println!("{what}: worst error {worst:.1e} (bound {tol:.0e})");
    assert!(worst <= tol, "{what}: worst error {worst:e} > {tol:e}");
}

fn rms_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f64> {
    x.chunks(w.len())
        .flat_map(|row| {
            let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / row.len() as f64;
            let r = 1.0 / (ms + eps as f64).sqrt();
            row.iter()
                .zip(w)
                .map(move |(&v, &w)| v as f64 * r * w as f64)
        })
        .collect()
}

fn gelu_ref(x: f64) -> f64 {
    0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044715 * x * x * x)).tanh())
}

/// The exact GELU, erf from its Taylor series (inputs here are within |x| <= 3, where the
/// series' cancellation costs less than 1e-12).
fn gelu_erf_ref(x: f64) -> f64 {
    let y = x / std::f64::consts::SQRT_2;
    let (mut term, mut sum, mut n) = (y, y, 0.0);
    while term.abs() > 1e-18 {
        n += 1.0;
        term *= -y * y / n;
        sum += term / (2.0 * n + 1.0);
    }
    0.5 * x * (1.0 + 2.0 / std::f64::consts::PI.sqrt() * sum)
}

fn silu_ref(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Every row kernel at every level: the same bits, and the formula in f64 within 2e-6 (1 + |x|)
/// (measured at worst: 2.3e-7, GELU; 3.1e-7 LayerNorm), additions within 4e-7 (measured 4.8e-8).
#[test]
fn row_kernels_give_the_same_bits_at_every_level() {
    let eps = 1e-5f32;
    for &h in WIDTHS {
        let x = values(ROWS * h, 1);
        let y = values(ROWS * h, 2);
        let w = values(h, 3);
        let b = values(h, 4);
        let mut outs: Vec<Vec<Vec<f32>>> = Vec::new();
        for isa in levels() {
            let k = Rows::new(isa);
            assert_eq!(k.isa(), isa);
            let mut out = Vec::new();
            let rms = k.rms_norm(&x, &w, eps);
            assert_close("rms_norm", &rms, &rms_ref(&x, &w, eps), 2e-6);
            out.push(rms);
            let ln = k.layer_norm(&x, &w, &b, eps);
            let ln_ref: Vec<f64> = x
                .chunks(h)
                .flat_map(|row| {
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / h as f64;
                    let var =
                        row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / h as f64;
                    let r = 1.0 / (var + eps as f64).sqrt();
                    let (w, b) = (&w, &b);
                    row.iter()
                        .enumerate()
                        .map(move |(i, &v)| (v as f64 - mean) * r * w[i] as f64 + b[i] as f64)
                })
                .collect();
            assert_close("layer_norm", &ln, &ln_ref, 2e-6);
            out.push(ln);
            // The encoders' fused residual + LayerNorm is the two steps, bit for bit.
            let (mut x1, mut x2) = (x.clone(), x.clone());
            let fused = k.add_layer_norm(&mut x1, &y, &w, &b, eps);
            k.add_assign(&mut x2, &y);
            assert_same_bits("add_layer_norm residual vs add_assign", &x1, &x2);
            assert_same_bits(
                "add_layer_norm vs add_assign + layer_norm",
                &fused,
                &k.layer_norm(&x2, &w, &b, eps),
            );
            out.push(fused);
            let mut g = x.clone();
            k.gelu_erf(&mut g);
            let g_ref: Vec<f64> = x.iter().map(|&v| gelu_erf_ref(v as f64)).collect();
            assert_close("gelu_erf", &g, &g_ref, 2e-6);
            out.push(g);
            // The fused residual + norm is the two steps, bit for bit.
            let (mut x1, mut x2) = (x.clone(), x.clone());
            let fused = k.add_rms_norm(&mut x1, &y, &w, eps);
            k.add_assign(&mut x2, &y);
            assert_same_bits("add_rms_norm residual vs add_assign", &x1, &x2);
            assert_same_bits(
                "add_rms_norm vs add_assign + rms_norm",
                &fused,
                &k.rms_norm(&x2, &w, eps),
            );
            let sum_ref: Vec<f64> = x
                .iter()
                .zip(&y)
                .map(|(&a, &b)| a as f64 + b as f64)
                .collect();
            assert_close("add_assign", &x2, &sum_ref, 4e-7);
            out.push(x1);
            out.push(fused);
            let mut biased = x.clone();
            k.add_bias(&mut biased, &b);
            let bias_ref: Vec<f64> = x
                .iter()
                .enumerate()
                .map(|(i, &v)| v as f64 + b[i % h] as f64)
                .collect();
            assert_close("add_bias", &biased, &bias_ref, 4e-7);
            out.push(biased);
            // A text's mean pooling: the rows summed in f64 in order (the stage's own loop
            // before this kernel, so the stores keep their bits), against the mean in f64.
            let rows: Vec<&[f32]> = x.chunks(h).collect();
            let mut mean = vec![0f32; h];
            k.mean(&rows, &mut mean);
            let mut sums = vec![0f64; h];
            for row in &rows {
                for (s, &v) in sums.iter_mut().zip(*row) {
                    *s += v as f64;
                }
            }
            let loop_mean: Vec<f32> = sums.iter().map(|s| (s / ROWS as f64) as f32).collect();
            assert_same_bits("mean vs the f64 loop", &mean, &loop_mean);
            let mean_ref: Vec<f64> = (0..h)
                .map(|i| rows.iter().map(|r| r[i] as f64).sum::<f64>() / ROWS as f64)
                .collect();
            assert_close("mean", &mean, &mean_ref, 1e-7);
            out.push(mean);
            for gelu in [false, true] {
                let act = |v: f64| if gelu { gelu_ref(v) } else { silu_ref(v) };
                // Rows of [gate (h) | up (h)].
                let gated = k.gated(&x[..ROWS / 2 * 2 * h], h, gelu);
                let gated_ref: Vec<f64> = x[..ROWS / 2 * 2 * h]
                    .chunks(2 * h)
                    .flat_map(|gu| (0..h).map(move |i| act(gu[i] as f64) * gu[h + i] as f64))
                    .collect();
                assert_close(&format!("gated gelu={gelu}"), &gated, &gated_ref, 2e-6);
                out.push(gated);
                let mut a = x.clone();
                k.activate(&mut a, gelu);
                let act_ref: Vec<f64> = x.iter().map(|&v| act(v as f64)).collect();
                assert_close(&format!("activate gelu={gelu}"), &a, &act_ref, 2e-6);
                out.push(a);
            }
            outs.push(out);
        }
        for (isa, other) in Isa::all()[1..].iter().zip(&outs[1..]) {
            for (i, (a, b)) in outs[0].iter().zip(other).enumerate() {
                assert_same_bits(
                    &format!("width {h}, kernel output {i}, baseline vs {}", isa.name()),
                    a,
                    b,
                );
            }
        }
    }
}

struct Case {
    shape: AttentionShape,
    window: Option<usize>,
    qk_norm: bool,
    causal: bool,
    /// A relative position bias on the scores (MPNet).
    bias: bool,
}

fn cases() -> Vec<Case> {
    let shape = |head_dim: usize, rotary_dim: usize, interleaved: bool| AttentionShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim,
        rotary_dim,
        interleaved,
        scale: 1.0 / (head_dim as f32).sqrt(),
        eps: 1e-6,
    };
    vec![
        // Llama-like: global attention, halves, head_dim a multiple of 16.
        Case {
            shape: shape(64, 64, false),
            window: None,
            qk_norm: false,
            causal: true,
            bias: false,
        },
        // GGUF llama: interleaved pairs.
        Case {
            shape: shape(64, 64, true),
            window: None,
            qk_norm: false,
            causal: true,
            bias: false,
        },
        // Gemma-like: q/k norms and a sliding window; head_dim with a tail of 8 past the 16s.
        Case {
            shape: shape(40, 40, false),
            window: Some(7),
            qk_norm: true,
            causal: true,
            bias: false,
        },
        // Phi-like: partial rotary.
        Case {
            shape: shape(48, 16, false),
            window: None,
            qk_norm: false,
            causal: true,
            bias: false,
        },
        // EmbeddingGemma-like: bidirectional, global and with a sliding window on both sides.
        Case {
            shape: shape(40, 40, false),
            window: None,
            qk_norm: true,
            causal: false,
            bias: false,
        },
        Case {
            shape: shape(40, 40, false),
            window: Some(7),
            qk_norm: true,
            causal: false,
            bias: false,
        },
        // MPNet-like: bidirectional, no RoPE, a relative position bias per head.
        Case {
            shape: shape(32, 0, false),
            window: None,
            qk_norm: false,
            causal: false,
            bias: true,
        },
    ]
}

/// Attention in f64 after HF: q/k RMSNorm, RoPE, softmax of scaled scores over the causal or
/// bidirectional (windowed) keys, weighted sum of v.
fn attention_ref(c: &Case, layer: &LayerAttention, qkv: &[f32], lens: &[usize]) -> Vec<f64> {
    let s = &c.shape;
    let (hd, q_dim, kv_dim) = (
        s.head_dim,
        s.n_heads * s.head_dim,
        s.n_kv_heads * s.head_dim,
    );
    let stride = q_dim + 2 * kv_dim;
    let prep = |v: &[f32], pos: usize, norm: Option<&[f32]>| -> Vec<f64> {
        let mut v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
        if let Some(w) = norm {
            let ms = v.iter().map(|x| x * x).sum::<f64>() / hd as f64;
            let r = 1.0 / (ms + s.eps as f64).sqrt();
            v.iter_mut().zip(w).for_each(|(x, &w)| *x *= r * w as f64);
        }
        let half = s.rotary_dim / 2;
        for i in 0..half {
            let (cos, sin) = (
                layer.rope.cos[pos * half + i] as f64,
                layer.rope.sin[pos * half + i] as f64,
            );
            let (a, b) = if s.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (x, y) = (v[a], v[b]);
            v[a] = x * cos - y * sin;
            v[b] = y * cos + x * sin;
        }
        v
    };
    let mut out = Vec::new();
    let mut start = 0;
    for &len in lens {
        let row = |j: usize| &qkv[(start + j) * stride..(start + j + 1) * stride];
        for i in 0..len {
            for h in 0..s.n_heads {
                let g = h / (s.n_heads / s.n_kv_heads);
                let q = prep(&row(i)[h * hd..(h + 1) * hd], i, layer.q_norm);
                let lo = layer.window.map_or(0, |w| (i + 1).saturating_sub(w));
                // HF's bidirectional sliding window: |i - j| < window.
                let hi = match (layer.causal, layer.window) {
                    (true, _) => i,
                    (false, None) => len - 1,
                    (false, Some(w)) => (i + w - 1).min(len - 1),
                };
                let scores: Vec<f64> = (lo..=hi)
                    .map(|j| {
                        let k = prep(
                            &row(j)[q_dim + g * hd..q_dim + (g + 1) * hd],
                            j,
                            layer.k_norm,
                        );
                        let score =
                            q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() * s.scale as f64;
                        let bias = layer.bias.map_or(0.0, |b| {
                            b.table[h * (2 * b.max_len - 1) + j + b.max_len - 1 - i] as f64
                        });
                        score + bias
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for d in 0..hd {
                    let v: f64 = (lo..=hi)
                        .map(|j| e[j - lo] / sum * row(j)[q_dim + kv_dim + g * hd + d] as f64)
                        .sum();
                    out.push(v);
                }
            }
        }
        start += len;
    }
    out
}

/// Attention at every level gives the same bits, a sequence gives the same bits alone as
/// packed with others and after shared rows given once, and the result is HF's formula in f64 within 5e-6 (1 + |x|) (measured at
/// worst: 7.0e-7, with q/k norms and a window).
#[test]
fn attention_gives_the_same_bits_at_every_level_and_batch() {
    let lens = [1, 17, 40, 5];
    let rows: usize = lens.iter().sum();
    for (n, c) in cases().iter().enumerate() {
        let s = &c.shape;
        let stride = (s.n_heads + 2 * s.n_kv_heads) * s.head_dim;
        let qkv: Vec<f32> = values(rows * stride, n).iter().map(|v| v / 2.0).collect();
        let rope = Rope::new(10_000.0, s.rotary_dim, 40);
        let norm = values(s.head_dim, 9)
            .iter()
            .map(|v| 1.0 + v / 4.0)
            .collect::<Vec<f32>>();
        let bias = RelativeBias {
            table: values(s.n_heads * (2 * 40 - 1), 11),
            max_len: 40,
        };
        let layer = LayerAttention {
            rope: &rope,
            window: c.window,
            causal: c.causal,
            q_norm: c.qk_norm.then_some(&norm[..]),
            k_norm: c.qk_norm.then_some(&norm[..]),
            bias: c.bias.then_some(&bias),
        };
        let want = attention_ref(c, &layer, &qkv, &lens);
        let mut outs = Vec::new();
        for isa in levels() {
            let all = attend_on(isa, s, &layer, &qkv, &lens);
            assert_close(&format!("case {n} {}", isa.name()), &all, &want, 5e-6);
            // Each sequence alone.
            let q_dim = s.n_heads * s.head_dim;
            let mut start = 0;
            for &len in &lens {
                let one = attend_on(
                    isa,
                    s,
                    &layer,
                    &qkv[start * stride..(start + len) * stride],
                    &[len],
                );
                assert_same_bits(
                    &format!("case {n} {}: sequence of {len} alone vs packed", isa.name()),
                    &one,
                    &all[start * q_dim..(start + len) * q_dim],
                );
                // Its first rows given once as shared rows (`attend_after`), with the rest as
                // its own: its own rows' outputs, the same bits, from any split (so from any
                // alignment of the query tiles), also beside another sequence after the same
                // shared rows.
                for before in [1, 3, 4, 7, 16, 17].into_iter().filter(|&b| b < len) {
                    let (shared, own) =
                        qkv[start * stride..(start + len) * stride].split_at(before * stride);
                    let after = attend_after_on(isa, s, &layer, shared, own, &[len - before]);
                    assert_same_bits(
                        &format!(
                            "case {n} {}: sequence of {len} after {before} shared rows",
                            isa.name()
                        ),
                        &after,
                        &all[(start + before) * q_dim..(start + len) * q_dim],
                    );
                    let twice: Vec<f32> = own.iter().chain(own).copied().collect();
                    let both = attend_after_on(
                        isa,
                        s,
                        &layer,
                        shared,
                        &twice,
                        &[len - before, len - before],
                    );
                    assert_same_bits(
                        &format!("case {n} {}: two sequences after shared rows", isa.name()),
                        &both[(len - before) * q_dim..],
                        &after,
                    );
                }
                start += len;
            }
            outs.push(all);
        }
        for (isa, other) in Isa::all()[1..].iter().zip(&outs[1..]) {
            let what = format!("case {n}: baseline vs {}", isa.name());
            assert_same_bits(&what, &outs[0], other);
        }
    }
}
