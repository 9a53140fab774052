//! A gated MLP's fused product (`matmul_gated` on weights packed from `interleave_gate_up`)
//! gives exactly the bits of the product of the plain (gate | up) weights followed by the bias
//! and `Rows::gated`, for every kernel of every dtype this CPU runs: the fusion moves where the
//! outputs live, never how they are computed. Each test prints which kernels ran
//! (`--nocapture`).

use llmembed_kernels::{
    Bf16Kernel, F32Kernel, Gated, I8Kernel, Outliers, PackedBf16, PackedF32, PackedI8, Rows,
    gate_up_column, gated_width, interleave_gate_up,
};

/// (rows, inputs, ffn): several bands of rows and a ragged last micro block (200, 29), a
/// ragged last panel pair (ffn 45, 33, 7), several passes over the inputs (f32: K > 1024
/// steps; int8: K / 4 > 1024), one row.
const SHAPES: &[(usize, usize, usize)] = &[
    (200, 70, 33),
    (29, 2100, 45),
    (100, 577, 64),
    (5, 3, 7),
    (1, 4201, 32),
];

/// Inputs with a few large channels (so that int8 rows have outliers), weights and a bias
/// for (gate | up), K x 2 ffn.
fn inputs(m: usize, k: usize, ffn: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..m * k)
        .map(|i| {
            let v = ((i * 7919 % 1000) as f32 / 500.0) - 1.0;
            if (i % k) % 37 == 5 { 40.0 * v } else { v }
        })
        .collect();
    let w: Vec<f32> = (0..k * 2 * ffn)
        .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
        .collect();
    let b: Vec<f32> = (0..2 * ffn).map(|i| (i % 13) as f32 / 6.0 - 1.0).collect();
    (x, w, b)
}

/// The unfused reference: `y = x @ w (+ b)`, then `Rows::gated`.
fn reference(mut y: Vec<f32>, bias: Option<&[f32]>, ffn: usize, gelu: bool) -> Vec<f32> {
    if let Some(b) = bias {
        Rows::best().add_bias(&mut y, b);
    }
    Rows::best().gated(&y, ffn, gelu)
}

/// Runs `check(kernel name, x, plain w, interleaved w, shape, gated)` over every shape,
/// activation and bias.
fn each_case(mut check: impl FnMut(&[f32], &[f32], &[f32], (usize, usize, usize), Gated)) {
    for &(m, k, ffn) in SHAPES {
        let (x, w, b) = inputs(m, k, ffn);
        let wide = interleave_gate_up(&w, k, ffn);
        let wide_bias = interleave_gate_up(&b, 1, ffn);
        assert_eq!(wide.len(), k * gated_width(ffn));
        for gelu in [false, true] {
            for bias in [None, Some(&wide_bias[..])] {
                let g = Gated { ffn, gelu, bias };
                check(&x, &w, &wide, (m, k, ffn), g);
            }
        }
    }
}

/// The kernels of `all` this CPU runs, printed under `what`.
fn kernels_here<K: Copy>(
    what: &str,
    all: impl IntoIterator<Item = K>,
    runs_here: fn(K) -> bool,
    name: fn(K) -> &'static str,
) -> Vec<K> {
    let kernels: Vec<K> = all.into_iter().filter(|&k| runs_here(k)).collect();
    let names: Vec<&str> = kernels.iter().map(|&k| name(k)).collect();
    println!("{what} kernels {names:?}");
    kernels
}

fn int8_kernels() -> Vec<I8Kernel> {
    kernels_here("int8", I8Kernel::ALL, I8Kernel::runs_here, I8Kernel::name)
}

fn bf16_kernels() -> Vec<Bf16Kernel> {
    kernels_here(
        "bf16",
        Bf16Kernel::ALL,
        Bf16Kernel::runs_here,
        Bf16Kernel::name,
    )
}

/// Outputs of the whole-MLP tests' down projection.
const DOWN_OUT: usize = 24;

/// The whole-MLP tests' down projection: `ffn` inputs x [`DOWN_OUT`] outputs.
fn down_weights(ffn: usize) -> Vec<f32> {
    (0..ffn * DOWN_OUT)
        .map(|i| ((i * 7727 % 1009) as f32 / 504.5) - 1.0)
        .collect()
}

fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    let same = got
        .iter()
        .zip(want)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same && got.len() == want.len(), "{what}");
}

/// A whole MLP with a down projection of `ffn + 1` inputs is refused, naming both widths.
fn assert_refuses_other_width<T: std::fmt::Debug>(result: llmembed_kernels::Result<T>, ffn: usize) {
    let e = result.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "down projection takes {} inputs, the MLP is {ffn} wide",
            ffn + 1
        )),
        "{e}"
    );
}

/// The plain bias of a case whose interleaved bias is `g.bias`.
fn plain_bias(g: &Gated, ffn: usize) -> Option<Vec<f32>> {
    g.bias.map(|_| inputs(1, 1, ffn).2)
}

#[test]
fn fused_f32_and_bf16_products_give_the_unfused_bits() {
    let f32_kernels = kernels_here(
        "f32",
        [F32Kernel::Avx512, F32Kernel::Avx2, F32Kernel::Candle],
        F32Kernel::runs_here,
        F32Kernel::name,
    );
    let bf16_kernels = bf16_kernels();
    let mut cases = 0;
    each_case(|x, w, wide, (m, k, ffn), g| {
        let b = plain_bias(&g, ffn);
        for &kernel in &f32_kernels {
            let plain = PackedF32::with_kernel(w, k, 2 * ffn, kernel).unwrap();
            let want = reference(plain.matmul(x, m).unwrap(), b.as_deref(), ffn, g.gelu);
            let fused = PackedF32::with_kernel(wide, k, gated_width(ffn), kernel).unwrap();
            let got = fused.matmul_gated(x, m, &g).unwrap();
            assert_eq!(got.len(), m * ffn);
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "f32 {} ({m}, {k}, {ffn}) {g:?}", kernel.name());
            cases += 1;
        }
        for &kernel in &bf16_kernels {
            let plain = PackedBf16::new(w, k, 2 * ffn, kernel).unwrap();
            let want = reference(plain.matmul(x, m).unwrap(), b.as_deref(), ffn, g.gelu);
            let fused = PackedBf16::new(wide, k, gated_width(ffn), kernel).unwrap();
            let got = fused.matmul_gated(x, m, &g).unwrap();
            let same = got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "bf16 {} ({m}, {k}, {ffn}) {g:?}", kernel.name());
            cases += 1;
        }
    });
    assert!(cases >= SHAPES.len() * 4 * 2);
}

#[test]
fn fused_int8_products_give_the_unfused_bits_with_outliers() {
    let kernels = int8_kernels();
    each_case(|x, w, wide, (m, k, ffn), g| {
        let b = plain_bias(&g, ffn);
        for &kernel in &kernels {
            for rule in [Outliers::DEFAULT, Outliers::NONE] {
                let plain = PackedI8::new(w, k, 2 * ffn, kernel, rule).unwrap();
                let want = reference(plain.matmul(x, m).unwrap(), b.as_deref(), ffn, g.gelu);
                let fused = PackedI8::new(wide, k, gated_width(ffn), kernel, rule).unwrap();
                let got = fused.matmul_gated(x, m, &g).unwrap();
                let same = got
                    .iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "int8 {} {rule:?} ({m}, {k}, {ffn}) {g:?}",
                    kernel.name()
                );
            }
        }
    });
}

#[test]
fn whole_bf16_mlps_give_the_bits_of_their_two_products() {
    // `matmul_mlp` against the fused product then the down product, for every bf16 kernel
    // this CPU runs: on AMX (without a gate and up bias) it activates each 32-row block of the
    // down product's input as it lays it out, pair by pair; everywhere else it is those two
    // calls. Rows 200 and 29 are several blocks and a partial one; ffn 45, 33 and 7 end in a
    // partial pair (a partial step block of the down product).
    let kernels = bf16_kernels();
    let mut cases = 0;
    each_case(|x, _, wide, (m, k, ffn), g| {
        let down_w = down_weights(ffn);
        for &kernel in &kernels {
            let gate_up = PackedBf16::new(wide, k, gated_width(ffn), kernel).unwrap();
            let down = PackedBf16::new(&down_w, ffn, DOWN_OUT, kernel).unwrap();
            let want = down
                .matmul(&gate_up.matmul_gated(x, m, &g).unwrap(), m)
                .unwrap();
            let got = gate_up.matmul_mlp(&down, x, m, &g).unwrap();
            assert_eq!(got.len(), m * DOWN_OUT);
            let what = format!("bf16 MLP {} ({m}, {k}, {ffn}) {g:?}", kernel.name());
            assert_same_bits(&got, &want, &what);
            cases += 1;
        }
        let gate_up = PackedBf16::new(wide, k, gated_width(ffn), kernels[0]).unwrap();
        let down = PackedBf16::new(&vec![0.5; (ffn + 1) * 3], ffn + 1, 3, kernels[0]).unwrap();
        assert_refuses_other_width(gate_up.matmul_mlp(&down, x, m, &g), ffn);
    });
    assert!(cases >= SHAPES.len() * 4);
}

#[test]
fn whole_int8_mlps_give_the_bits_of_their_two_products() {
    // `matmul_mlp` against the fused product then the down product, for every int8 kernel this
    // CPU runs and both outlier rules: on AMX (without a gate and up bias) each 32-row block of
    // the down product's input is activated a few rows at a time and quantised as the product
    // lays it out; everywhere else it is those two calls. The inputs' large channels give the
    // activations outliers too.
    let kernels = int8_kernels();
    let mut cases = 0;
    each_case(|x, _, wide, (m, k, ffn), g| {
        let down_w = down_weights(ffn);
        for &kernel in &kernels {
            for rule in [Outliers::DEFAULT, Outliers::NONE] {
                let gate_up = PackedI8::new(wide, k, gated_width(ffn), kernel, rule).unwrap();
                let down = PackedI8::new(&down_w, ffn, DOWN_OUT, kernel, rule).unwrap();
                let want = down
                    .matmul(&gate_up.matmul_gated(x, m, &g).unwrap(), m)
                    .unwrap();
                let got = gate_up.matmul_mlp(&down, x, m, &g).unwrap();
                assert_eq!(got.len(), m * DOWN_OUT);
                let what = format!(
                    "int8 MLP {} {rule:?} ({m}, {k}, {ffn}) {g:?}",
                    kernel.name()
                );
                assert_same_bits(&got, &want, &what);
                cases += 1;
            }
        }
        let rule = Outliers::DEFAULT;
        let gate_up = PackedI8::new(wide, k, gated_width(ffn), kernels[0], rule).unwrap();
        let down = PackedI8::new(&vec![0.5; (ffn + 1) * 3], ffn + 1, 3, kernels[0], rule).unwrap();
        assert_refuses_other_width(gate_up.matmul_mlp(&down, x, m, &g), ffn);
    });
    assert!(cases >= SHAPES.len() * 4 * 2);
}

#[test]
fn gate_up_column_is_where_interleave_puts_each_column() {
    // Whole pairs of panels, a ragged last pair, and widths under one panel.
    for ffn in [1, 7, 32, 33, 45, 64, 96, 100] {
        let k = 3;
        // Every value names its row and column: (row, gate or up column) -> distinct.
        let w: Vec<f32> = (0..k * 2 * ffn).map(|i| i as f32 + 1.0).collect();
        let wide = interleave_gate_up(&w, k, ffn);
        let width = gated_width(ffn);
        let mut placed = vec![0f32; k * width];
        for row in 0..k {
            for o in 0..2 * ffn {
                let col = gate_up_column(ffn, o);
                assert!(
                    col < width,
                    "ffn {ffn}: column {o} placed at {col} of {width}"
                );
                placed[row * width + col] = w[row * 2 * ffn + o];
            }
        }
        assert_eq!(placed, wide, "ffn {ffn}");
    }
}

#[test]
fn gated_products_check_their_shapes() {
    let (x, w, _) = inputs(3, 8, 40);
    let wide = interleave_gate_up(&w, 8, 40);
    let packed = PackedF32::new(&wide, 8, gated_width(40)).unwrap();
    let short = [0f32; 10];
    let cases = [
        (
            Gated {
                ffn: 32,
                gelu: false,
                bias: None,
            },
            "not the 64 of a gated MLP 32 wide",
        ),
        (
            Gated {
                ffn: 40,
                gelu: false,
                bias: Some(&short),
            },
            "bias has 10 values, not 128",
        ),
    ];
    for (g, want) in cases {
        let e = packed.matmul_gated(&x, 3, &g).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let g = Gated {
        ffn: 40,
        gelu: true,
        bias: None,
    };
    let e = packed
        .matmul_gated(&x[..20], 3, &g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("input has 20 values, not 3 rows of 8"), "{e}");
}

#[test]
fn int8_products_name_the_first_row_that_is_not_finite() {
    // 300 rows are several bands, each quantised by its own task: the bad rows in two of them
    // (and in no particular order of finishing) give the lowest, as one pass over all rows did.
    let (m, k, ffn) = (300, 64, 32);
    let (mut x, w, _) = inputs(m, k, ffn);
    x[250 * k + 3] = f32::NAN;
    x[130 * k + 60] = f32::INFINITY;
    let wide = interleave_gate_up(&w, k, ffn);
    let g = Gated {
        ffn,
        gelu: false,
        bias: None,
    };
    for kernel in int8_kernels() {
        let plain = PackedI8::new(&w, k, 2 * ffn, kernel, Outliers::DEFAULT).unwrap();
        let fused = PackedI8::new(&wide, k, gated_width(ffn), kernel, Outliers::DEFAULT).unwrap();
        let e = plain.matmul(&x, m).unwrap_err().to_string();
        assert_eq!(
            e,
            "int8 matmul: row 130 of the input has a value that is not finite",
            "{}",
            kernel.name()
        );
        let e = fused.matmul_gated(&x, m, &g).unwrap_err().to_string();
        assert!(
            e.ends_with("row 130 of the input has a value that is not finite"),
            "{}: {e}",
            kernel.name()
        );
        let down = PackedI8::new(&w[..ffn * 8], ffn, 8, kernel, Outliers::DEFAULT).unwrap();
        let e = fused.matmul_mlp(&down, &x, m, &g).unwrap_err().to_string();
        assert!(
            e.ends_with("row 130 of the input has a value that is not finite"),
            "{}: {e}",
            kernel.name()
        );
    }
}
