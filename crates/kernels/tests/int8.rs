//! The int8 products: the VNNI, AVX2 and portable kernels give the same bits, all give exactly
//! the quantised product that `matmul/int8.rs` states (computed here one integer at a time), rows
//! do not depend on their batch, the outlier rule takes out planted outlier channels and so
//! keeps the product close to f64, and the switch turns VNNI off. Each test prints which
//! kernels ran (`--nocapture`).

use llmembed_kernels::{I8Kernel, Outliers, PackedI8};

/// Ragged row blocks, a partial last panel, several passes over the inputs (K / 4 > 1024
/// steps), K not a multiple of 4.
const SHAPES: &[(usize, usize, usize)] = &[
    (29, 4201, 45),
    (12, 577, 32),
    (5, 3, 7),
    (37, 70, 45),
    (1, 1, 1),
];

fn inputs(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
        .collect();
    (a, w)
}

fn kernels() -> Vec<I8Kernel> {
    let all = I8Kernel::ALL;
    let ran: Vec<&str> = all
        .iter()
        .filter(|k| k.runs_here())
        .map(|k| k.name())
        .collect();
    let missing: Vec<&str> = all
        .iter()
        .filter(|k| !k.runs_here())
        .map(|k| k.name())
        .collect();
    println!("int8 kernels: ran {ran:?}; not available on this CPU: {missing:?}");
    all.into_iter().filter(|k| k.runs_here()).collect()
}

fn product(
    kernel: I8Kernel,
    o: Outliers,
    a: &[f32],
    w: &[f32],
    mkn: (usize, usize, usize),
) -> Vec<f32> {
    let (m, k, n) = mkn;
    PackedI8::new(w, k, n, kernel, o)
        .unwrap()
        .matmul(a, m)
        .unwrap()
}

/// The stated product without outliers, one integer at a time: per output column
/// `s_w = max|w| / 127`, `q_w = round_ties_even(w / s_w)`; per row `q_x = round_ties_even(x *
/// (127 / max|x|))`, `s_x = max|x| / 127`; `y = s_w * (s_x * sum q_x q_w)`.
fn stated(a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for j in 0..n {
        let max = (0..k).fold(0f32, |mx, p| mx.max(w[p * n + j].abs()));
        let s_w = max / 127.0;
        let qw: Vec<i32> = (0..k)
            .map(|p| {
                if s_w == 0.0 {
                    0
                } else {
                    (w[p * n + j] / s_w).round_ties_even().clamp(-127.0, 127.0) as i32
                }
            })
            .collect();
        for i in 0..m {
            let row = &a[i * k..(i + 1) * k];
            let max = row.iter().fold(0f32, |mx, v| mx.max(v.abs()));
            let inv = if max == 0.0 { 0.0 } else { 127.0 / max };
            let sum: i32 = row
                .iter()
                .zip(&qw)
                .map(|(x, q)| (x * inv).round_ties_even().clamp(-127.0, 127.0) as i32 * q)
                .sum();
            y[i * n + j] = s_w * (max / 127.0 * sum as f32);
        }
    }
    y
}

#[test]
fn every_kernel_gives_the_stated_product_bit_for_bit() {
    for kernel in kernels() {
        for &(m, k, n) in SHAPES {
            let (a, w) = inputs(m, k, n);
            let got = product(kernel, Outliers::NONE, &a, &w, (m, k, n));
            let want = stated(&a, &w, m, k, n);
            for (i, (g, s)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == s.to_bits(),
                    "{} ({m}, {k}, {n}) output {i}: {g} != stated {s}",
                    kernel.name()
                );
            }
        }
    }
}

/// The stated product with the outlier rule, one row and one integer at a time: the row's sum
/// of squares in 16 lanes (channel `c` in lane `c % 16`, the lanes then added in order); the
/// channels ordered by magnitude (larger first, ties: lower channel) and taken out while the
/// next is over `ratio` times the RMS of the values left below it, at most `max`; the rest
/// quantised with the largest magnitude left; each outlier's products `v * q_w` added in f32 in
/// that order: `y = s_w * (s_x * sum + extra)`.
fn stated_with_outliers(
    a: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    rule: Outliers,
) -> Vec<f32> {
    let columns: Vec<(f32, Vec<i32>)> = (0..n)
        .map(|j| {
            let max = (0..k).fold(0f32, |mx, p| mx.max(w[p * n + j].abs()));
            let s_w = max / 127.0;
            let q = (0..k)
                .map(|p| {
                    if s_w == 0.0 {
                        0
                    } else {
                        (w[p * n + j] / s_w).round_ties_even().clamp(-127.0, 127.0) as i32
                    }
                })
                .collect();
            (s_w, q)
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        let mut lanes = [0f32; 16];
        for (c, v) in row.iter().enumerate() {
            lanes[c % 16] += v * v;
        }
        let mut rest_sq = lanes.iter().sum::<f32>() as f64;
        let mut order: Vec<usize> = (0..k).collect();
        order.sort_by(|&p, &q| row[q].abs().total_cmp(&row[p].abs()).then(p.cmp(&q)));
        let mut outliers = Vec::new();
        let mut len = k;
        for &c in &order {
            let v = row[c].abs() as f64;
            let below = (rest_sq - v * v).max(0.0);
            let out = len >= 2 && v > rule.ratio as f64 * (below / (len - 1) as f64).sqrt();
            if outliers.len() == rule.max || !out {
                break;
            }
            outliers.push(c);
            rest_sq -= v * v;
            len -= 1;
        }
        let rest_max = order.get(outliers.len()).map_or(0.0, |&c| row[c].abs());
        let inv = if rest_max == 0.0 {
            0.0
        } else {
            127.0 / rest_max
        };
        for (j, (s_w, q_w)) in columns.iter().enumerate() {
            let sum: i32 = (0..k)
                .filter(|c| !outliers.contains(c))
                .map(|c| (row[c] * inv).round_ties_even().clamp(-127.0, 127.0) as i32 * q_w[c])
                .sum();
            let mut extra = 0f32;
            for &c in &outliers {
                extra += row[c] * q_w[c] as f32;
            }
            y[i * n + j] = s_w * (rest_max / 127.0 * sum as f32 + extra);
        }
    }
    y
}

/// The outlier rule as stated, bit for bit: rows with none, one, several, more than the cap,
/// several of the same magnitude (the lower channel goes first, which decides the one left
/// when there are more than the cap), in one lane and spread over lanes, short and long rows.
#[test]
fn every_kernel_gives_the_stated_outlier_rule_bit_for_bit() {
    // The default cap of eight, and a cap of twelve, which takes all nine of the last row's
    // spikes: more than the AVX-512 scaling looks up before its loop.
    let caps = [
        Outliers::DEFAULT,
        Outliers {
            max: 12,
            ratio: 8.0,
        },
    ];
    for (rule, kernel) in caps
        .into_iter()
        .flat_map(|r| kernels().into_iter().map(move |k| (r, k)))
    {
        for &(m, k, n) in &[(12, 577, 45), (9, 40, 33), (3, 4201, 17)] {
            let (mut a, w) = inputs(m, k, n);
            let plant: &[&[(usize, f32)]] = &[
                &[],
                &[(5, 70.0)],
                &[(3, 50.0), (19, -50.0), (35, 50.0)],
                &[(0, 40.0), (16, -40.0), (32, 41.0)],
                &[
                    (1, 90.0),
                    (2, -80.0),
                    (6, 70.0),
                    (9, 60.0),
                    (11, 55.0),
                    (13, -50.0),
                ],
                &[
                    (7, 30.0),
                    (8, 31.0),
                    (10, 32.0),
                    (12, 33.0),
                    (14, 34.0),
                    (15, 35.0),
                ],
                &[(17, 36.0), (18, 37.0), (20, 38.0), (21, -39.0), (22, 40.0)],
                &[(4, 9.0), (24, 9.0)],
                &[(25, -12.0)],
                // Nine of one magnitude, over the cap of eight: the highest channel stays.
                &[
                    (26, 60.0),
                    (27, -60.0),
                    (28, 60.0),
                    (29, 60.0),
                    (30, -60.0),
                    (31, 60.0),
                    (33, 60.0),
                    (34, 60.0),
                    (42, -60.0),
                ],
            ];
            for (i, spikes) in plant.iter().cycle().take(m).enumerate() {
                for &(c, v) in spikes.iter() {
                    if c < k {
                        a[i * k + c] = v;
                    }
                }
            }
            let got = product(kernel, rule, &a, &w, (m, k, n));
            let want = stated_with_outliers(&a, &w, (m, k, n), rule);
            for (i, (g, s)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == s.to_bits(),
                    "{} {} ({m}, {k}, {n}) row {} output {}: {g} != stated {s}",
                    kernel.name(),
                    rule.name(),
                    i / n,
                    i % n
                );
            }
        }
    }
}

/// A weight matrix keeps the weights of the outlier channels it meets for later products: a run
/// of products on one packed matrix, whose rows' outlier channels sweep every input twice over,
/// gives each product its stated bits, with channels met for the first time or kept.
#[test]
fn outlier_channels_kept_between_products_give_the_stated_bits() {
    let (k, n, m) = (40, 33, 4);
    for kernel in kernels() {
        let (_, w) = inputs(m, k, n);
        let packed = PackedI8::new(&w, k, n, kernel, Outliers::DEFAULT).unwrap();
        for product in 0..20 {
            let (mut a, _) = inputs(m, k, n);
            for r in 0..m {
                a[r * k + (4 * product + r) % k] = 60.0;
                a[r * k + (4 * product + r + 17) % k] = -45.0;
            }
            let got = packed.matmul(&a, m).unwrap();
            let want = stated_with_outliers(&a, &w, (m, k, n), Outliers::DEFAULT);
            for (i, (g, s)) in got.iter().zip(&want).enumerate() {
                assert!(
                    g.to_bits() == s.to_bits(),
                    "{} product {product} row {} output {}: {g} != stated {s}",
                    kernel.name(),
                    i / n,
                    i % n
                );
            }
        }
    }
}

/// Integer sums do not depend on their order, so VNNI, AVX2 and the portable loop agree bit
/// for bit, outliers included (the kernels this CPU lacks are named by `kernels()`).
#[test]
fn int8_kernels_give_the_same_bits() {
    let ran = kernels();
    if ran.len() < 2 {
        println!("only the portable kernel runs on this CPU: it is compared with itself");
    }
    for o in [Outliers::NONE, Outliers::DEFAULT] {
        for &(m, k, n) in SHAPES {
            let (mut a, w) = inputs(m, k, n);
            // Planted outliers in a few channels.
            for i in 0..m {
                a[i * k + (7 % k)] *= 60.0;
                a[i * k + (k / 2)] -= 45.0;
            }
            let outs: Vec<Vec<f32>> = ran
                .iter()
                .map(|&kernel| product(kernel, o, &a, &w, (m, k, n)))
                .collect();
            for out in &outs[1..] {
                assert!(
                    out.iter()
                        .zip(&outs[0])
                        .all(|(x, y)| x.to_bits() == y.to_bits()),
                    "({m}, {k}, {n}) {o:?}: kernels differ"
                );
            }
        }
    }
}

/// A row's result does not depend on the other rows of the product, bit for bit.
#[test]
fn rows_are_independent_of_the_batch() {
    let (m, k, n) = (200, 2100, 96);
    let (mut a, w) = inputs(m, k, n);
    for i in (0..m).step_by(3) {
        a[i * k + i % k] = 80.0;
    }
    for kernel in kernels() {
        for o in [Outliers::NONE, Outliers::DEFAULT] {
            let packed = PackedI8::new(&w, k, n, kernel, o).unwrap();
            let all = packed.matmul(&a, m).unwrap();
            for i in [0, 11, 12, 31, 32, 95, 96, 199] {
                let one = packed.matmul(&a[i * k..(i + 1) * k], 1).unwrap();
                assert!(
                    one == all[i * n..(i + 1) * n],
                    "{} {o:?}: row {i} differs alone and in the batch",
                    kernel.name()
                );
            }
        }
    }
}

/// Cosine of each output row with the f64 product: int8 keeps rows very close; with planted
/// outlier channels (60x the row's values) the row scale set by them leaves the other channels
/// a few levels, and the outlier rule restores the closeness.
#[test]
fn outlier_channels_are_taken_out_of_the_scale() {
    let (m, k, n) = (16, 576, 64);
    let (mut a, w) = inputs(m, k, n);
    let worst_cosine = |a: &[f32], o: Outliers| -> f64 {
        let y = product(I8Kernel::detect(), o, a, &w, (m, k, n));
        let mut worst = 1f64;
        for i in 0..m {
            let exact: Vec<f64> = (0..n)
                .map(|j| {
                    (0..k)
                        .map(|p| a[i * k + p] as f64 * w[p * n + j] as f64)
                        .sum()
                })
                .collect();
            let got = &y[i * n..(i + 1) * n];
            let dot: f64 = exact.iter().zip(got).map(|(e, g)| e * *g as f64).sum();
            let ne: f64 = exact.iter().map(|e| e * e).sum::<f64>().sqrt();
            let ng: f64 = got.iter().map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
            worst = worst.min(dot / (ne * ng));
        }
        worst
    };
    let plain = worst_cosine(&a, Outliers::NONE);
    for i in 0..m {
        for ch in [3, 100, 401] {
            a[i * k + ch] = 60.0 * if (i + ch) % 2 == 0 { 1.0 } else { -1.0 };
        }
    }
    let spiked_none = worst_cosine(&a, Outliers::NONE);
    let spiked_rule = worst_cosine(&a, Outliers::DEFAULT);
    println!(
        "worst row cosine to f64: plain {plain:.6}, with outlier channels {spiked_none:.6} \
         without the rule, {spiked_rule:.6} with it"
    );
    assert!(plain > 0.9995, "{plain}");
    assert!(spiked_rule > 0.9995, "{spiked_rule}");
    assert!(
        1.0 - spiked_none > 10.0 * (1.0 - spiked_rule),
        "the rule did not help: {spiked_none} vs {spiked_rule}"
    );
}

#[test]
fn bad_shapes_and_values_are_errors() {
    let w = vec![0.5f32; 16];
    let e = PackedI8::new(&w, 3, 4, I8Kernel::Portable, Outliers::NONE)
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "pack int8 weights: 16 values are not (3, 4)");
    let mut bad = w.clone();
    bad[6] = f32::NAN;
    let e = PackedI8::new(&bad, 4, 4, I8Kernel::Portable, Outliers::NONE)
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "pack int8 weights: weight (1, 2) is NaN");
    for kernel in kernels() {
        let packed = PackedI8::new(&w, 4, 4, kernel, Outliers::DEFAULT).unwrap();
        let e = packed.matmul(&[0.0; 6], 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "int8 matmul: input has 6 values, not 2 rows of 4 (weights are (4, 4))"
        );
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let e = packed
                .matmul(&[0.0, 1.0, 2.0, 3.0, 0.0, bad, 0.0, 0.0], 2)
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "int8 matmul: row 1 of the input has a value that is not finite"
            );
        }
        assert_eq!(packed.matmul(&[0.0; 4], 1).unwrap(), vec![0.0; 4]);
    }
    for kernel in [I8Kernel::Amx, I8Kernel::Vnni, I8Kernel::Avx2] {
        match PackedI8::new(&w, 4, 4, kernel, Outliers::NONE) {
            Ok(_) => assert!(kernel.runs_here()),
            Err(e) => assert_eq!(
                e.to_string(),
                format!(
                    "pack int8 weights: the {} kernel does not run on this CPU",
                    kernel.name()
                )
            ),
        }
    }
}

/// `choose` for every combination, and `detect` in fresh processes (this test binary again)
/// with and without `LLMEMBED_NO_AMX` and `LLMEMBED_NO_AVX512VNNI`.
#[test]
fn the_switch_turns_vnni_off() {
    for amx in [false, true] {
        for vnni in [false, true] {
            for avx2 in [false, true] {
                for off in [false, true] {
                    let want = if amx {
                        I8Kernel::Amx
                    } else if vnni && !off {
                        I8Kernel::Vnni
                    } else if avx2 {
                        I8Kernel::Avx2
                    } else {
                        I8Kernel::Portable
                    };
                    assert_eq!(I8Kernel::choose(amx, vnni, avx2, off), want);
                }
            }
        }
    }
    const CHILD: &str = "LLMEMBED_KERNELS_I8_CHILD";
    if std::env::var_os(CHILD).is_some() {
        println!("kernel={}", I8Kernel::detect().name());
        return;
    }
    let run = |off: &[&str]| -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "the_switch_turns_vnni_off", "--nocapture"])
            .env(CHILD, "1")
            .env_remove("LLMEMBED_NO_AMX")
            .env_remove("LLMEMBED_NO_AVX512VNNI");
        for var in off {
            cmd.env(var, "1");
        }
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix("kernel="))
            .unwrap_or_else(|| panic!("child printed no kernel: {out}"))
            .to_string()
    };
    let fallback = if I8Kernel::Avx2.runs_here() {
        "avx2i16"
    } else {
        "i8portable"
    };
    let vnni = if I8Kernel::Vnni.runs_here() {
        "avx512vnni"
    } else {
        fallback
    };
    let amx = I8Kernel::Amx.runs_here();
    assert_eq!(run(&[]), if amx { "amxint8" } else { vnni });
    assert_eq!(run(&["LLMEMBED_NO_AMX"]), vnni);
    assert_eq!(
        run(&["LLMEMBED_NO_AVX512VNNI"]),
        if amx { "amxint8" } else { fallback }
    );
    assert_eq!(
        run(&["LLMEMBED_NO_AMX", "LLMEMBED_NO_AVX512VNNI"]),
        fallback
    );
}
