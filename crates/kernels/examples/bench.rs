//! Throughput of each kernel this CPU runs, on SmolLM2-135M's shapes (hidden 576, MLP 1536,
//! 9 heads of 64 over 3 kv heads), for one batch of 512 packed tokens:
//! `cargo run --release -p llmembed-kernels --example bench`. The whole model's throughput is
//! `cargo xtask bench extract`; this isolates the kernels (same inputs every run, best of 5).

use std::time::Instant;

use llmembed_kernels::attention::{AttentionShape, LayerAttention, Rope, attend_on};
use llmembed_kernels::{
    Bf16Kernel, F32Kernel, Gated, I8Kernel, Isa, Outliers, PackedBf16, PackedF32, PackedI8, Rows,
    gated_width, interleave_gate_up,
};

const ROWS: usize = 512;
/// (name, inputs, outputs) of one block's products.
const PRODUCTS: &[(&str, usize, usize)] = &[
    ("qkv", 576, 960),
    ("o", 576, 576),
    ("gate_up", 576, 3072),
    ("down", 1536, 576),
];

fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104729) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

/// Best of 5 runs, in seconds.
fn best(mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// One product's input rows and weights.
struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    k: usize,
    n: usize,
}

fn main() {
    println!("threads: {}", rayon::current_num_threads());
    let cases: Vec<Case> = PRODUCTS
        .iter()
        .enumerate()
        .map(|(i, &(_, k, n))| Case {
            x: values(ROWS * k, i),
            w: values(k * n, i + 7),
            k,
            n,
        })
        .collect();
    let flops: f64 = cases.iter().map(|c| 2.0 * (ROWS * c.k * c.n) as f64).sum();
    let gflops = |secs: f64| flops / secs / 1e9;
    // Packing is once per model: only the products are timed.
    for kernel in [F32Kernel::Avx512, F32Kernel::Avx2, F32Kernel::Candle] {
        if !kernel.runs_here() {
            println!(
                "matmul f32 {:>10}: not available on this CPU",
                kernel.name()
            );
            continue;
        }
        let packed: Vec<PackedF32> = cases
            .iter()
            .map(|c| PackedF32::with_kernel(&c.w, c.k, c.n, kernel).unwrap())
            .collect();
        let secs = best(|| {
            for (p, c) in packed.iter().zip(&cases) {
                std::hint::black_box(p.matmul(&c.x, ROWS).unwrap());
            }
        });
        println!(
            "matmul f32 {:>10}: {:6.1} GFLOP/s",
            kernel.name(),
            gflops(secs)
        );
    }
    for kernel in Bf16Kernel::ALL {
        if !kernel.runs_here() {
            println!(
                "matmul bf16 {:>9}: not available on this CPU",
                kernel.name()
            );
            continue;
        }
        let packed: Vec<PackedBf16> = cases
            .iter()
            .map(|c| PackedBf16::new(&c.w, c.k, c.n, kernel).unwrap())
            .collect();
        let secs = best(|| {
            for (p, c) in packed.iter().zip(&cases) {
                std::hint::black_box(p.matmul(&c.x, ROWS).unwrap());
            }
        });
        println!(
            "matmul bf16 {:>9}: {:6.1} GFLOP/s",
            kernel.name(),
            gflops(secs)
        );
    }

    // int8: GFLOP/s counts the same multiply-adds as f32's; with outliers, every row has two
    // channels 50x the others (the rule then takes them out).
    let spiked: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| {
            let mut x = c.x.clone();
            for row in x.chunks_exact_mut(c.k) {
                row[5] *= 50.0;
                row[c.k / 3] *= -50.0;
            }
            x
        })
        .collect();
    for kernel in I8Kernel::ALL {
        if !kernel.runs_here() {
            println!(
                "matmul int8 {:>9}: not available on this CPU",
                kernel.name()
            );
            continue;
        }
        for (label, rule, inputs) in [
            ("no outliers", Outliers::NONE, None),
            ("rule, none found", Outliers::DEFAULT, None),
            ("rule, 2 per row", Outliers::DEFAULT, Some(&spiked)),
        ] {
            let packed: Vec<PackedI8> = cases
                .iter()
                .map(|c| PackedI8::new(&c.w, c.k, c.n, kernel, rule).unwrap())
                .collect();
            let secs = best(|| {
                for (i, (p, c)) in packed.iter().zip(&cases).enumerate() {
                    let x = inputs.map_or(&c.x, |s| &s[i]);
                    std::hint::black_box(p.matmul(x, ROWS).unwrap());
                }
            });
            println!(
                "matmul int8 {:>9}: {:6.1} GFLOP/s ({label})",
                kernel.name(),
                gflops(secs)
            );
        }
    }

    // A gated MLP's first product and its activation, as two steps (the product, then
    // `Rows::gated`) and fused (`matmul_gated` on the interleaved weights): microseconds for
    // 512 rows of SmolLM2's gate and up (576 -> 2 x 1536), SiLU.
    let (hidden, ffn) = (576, 1536);
    let x = values(ROWS * hidden, 8);
    let w = values(hidden * 2 * ffn, 9);
    let wide = interleave_gate_up(&w, hidden, ffn);
    let gated = Gated {
        ffn,
        gelu: false,
        bias: None,
    };
    let both_ways = |dtype: &str, product: &dyn Fn() -> Vec<f32>, fused: &dyn Fn() -> Vec<f32>| {
        let two_steps = best(|| {
            std::hint::black_box(Rows::best().gated(&product(), ffn, false));
        });
        let fused = best(|| {
            std::hint::black_box(fused());
        });
        println!(
            "gated mlp {dtype:>4}: product + activation {:7.0} us, fused {:7.0} us ({:.2}x)",
            two_steps * 1e6,
            fused * 1e6,
            two_steps / fused
        );
    };
    if F32Kernel::detect() != F32Kernel::Candle {
        let plain = PackedF32::new(&w, hidden, 2 * ffn).unwrap();
        let wide = PackedF32::new(&wide, hidden, gated_width(ffn)).unwrap();
        both_ways("f32", &|| plain.matmul(&x, ROWS).unwrap(), &|| {
            wide.matmul_gated(&x, ROWS, &gated).unwrap()
        });
    }
    let bf16 = Bf16Kernel::detect();
    let plain = PackedBf16::new(&w, hidden, 2 * ffn, bf16).unwrap();
    let fused = PackedBf16::new(&wide, hidden, gated_width(ffn), bf16).unwrap();
    both_ways("bf16", &|| plain.matmul(&x, ROWS).unwrap(), &|| {
        fused.matmul_gated(&x, ROWS, &gated).unwrap()
    });
    let int8 = I8Kernel::detect();
    let plain = PackedI8::new(&w, hidden, 2 * ffn, int8, Outliers::DEFAULT).unwrap();
    let fused = PackedI8::new(&wide, hidden, gated_width(ffn), int8, Outliers::DEFAULT).unwrap();
    both_ways("int8", &|| plain.matmul(&x, ROWS).unwrap(), &|| {
        fused.matmul_gated(&x, ROWS, &gated).unwrap()
    });

    let levels = [Some(Isa::baseline()), Isa::avx2(), Isa::avx512()];
    let (h, f) = (576, 1536);
    let x = values(ROWS * h, 1);
    let y = values(ROWS * h, 2);
    let w = values(h, 3);
    let gu = values(ROWS * 2 * f, 4);
    let shape = AttentionShape {
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
        rotary_dim: 64,
        interleaved: false,
        scale: 0.125,
        eps: 1e-5,
    };
    let rope = Rope::new(10_000.0, 64, 64);
    let layer = LayerAttention {
        rope: &rope,
        window: None,
        causal: true,
        q_norm: None,
        k_norm: None,
        bias: None,
    };
    // Eight texts of 64 tokens.
    let qkv = values(ROWS * 15 * 64, 5);
    let lens = [64; ROWS / 64];
    for isa in levels {
        let Some(isa) = isa else {
            println!("rows / attention: a level is not available on this CPU");
            continue;
        };
        let k = Rows::new(isa);
        let us = |secs: f64| secs * 1e6;
        let rms = best(|| {
            std::hint::black_box(k.rms_norm(&x, &w, 1e-5));
        });
        let add_rms = best(|| {
            let mut x = x.clone();
            std::hint::black_box(k.add_rms_norm(&mut x, &y, &w, 1e-5));
        });
        let gated = best(|| {
            std::hint::black_box(k.gated(&gu, f, false));
        });
        let attn = best(|| {
            std::hint::black_box(attend_on(isa, &shape, &layer, &qkv, &lens));
        });
        println!(
            "{:>8}: rms_norm {:6.0} us, add_rms_norm {:6.0} us (with a copy), gated silu {:6.0} us, attention (8 x 64 tokens) {:6.0} us",
            isa.name(),
            us(rms),
            us(add_rms),
            us(gated),
            us(attn)
        );
    }
}
