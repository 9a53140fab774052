//! The matrix kernels: every kernel this CPU has gives exactly the summation order its module
//! states (bit for bit, against the chain computed here one f32 operation at a time), rows do
//! not depend on their batch, and the `LLMEMBED_NO_*` switches change which bf16 kernel runs.
//! Each test prints which kernels ran and which this CPU lacks (`--nocapture` shows it).

use llmembed_kernels::matmul::{Bf16Cpu, Switches, bf16_round};
use llmembed_kernels::{Bf16Kernel, F32Kernel, PackedBf16, PackedF32};

/// Shapes with ragged row blocks (M not a multiple of 12 or 32), a partial last panel (N not a
/// multiple of 32), several passes over the inputs (K > 1024 steps) and an odd K.
const SHAPES: &[(usize, usize, usize)] = &[(29, 2100, 45), (12, 577, 32), (5, 3, 7), (37, 70, 45)];

fn inputs(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let w: Vec<f32> = (0..k * n)
        .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
        .collect();
    (a, w)
}

/// Prints which of `all` ran here and which this CPU lacks.
fn report(what: &str, all: &[(&str, bool)]) {
    let ran: Vec<&str> = all.iter().filter(|k| k.1).map(|k| k.0).collect();
    let missing: Vec<&str> = all.iter().filter(|k| !k.1).map(|k| k.0).collect();
    println!("{what}: ran {ran:?}; not available on this CPU: {missing:?}");
}

/// The bf16 kernels this CPU runs: the detected one and the fallbacks below it.
fn bf16_kernels() -> Vec<Bf16Kernel> {
    let all = Bf16Kernel::ALL;
    report("bf16 kernels", &all.map(|k| (k.name(), k.runs_here())));
    all.into_iter().filter(|k| k.runs_here()).collect()
}

fn f32_kernels() -> Vec<F32Kernel> {
    let all = [F32Kernel::Avx512, F32Kernel::Avx2, F32Kernel::Candle];
    report("f32 kernels", &all.map(|k| (k.name(), k.runs_here())));
    all.into_iter().filter(|k| k.runs_here()).collect()
}

fn f32_product(kernel: F32Kernel, a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    PackedF32::with_kernel(w, k, n, kernel)
        .unwrap()
        .matmul(a, m)
        .unwrap()
}

fn bf16_product(
    kernel: Bf16Kernel,
    a: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    PackedBf16::new(w, k, n, kernel)
        .unwrap()
        .matmul(a, m)
        .unwrap()
}

/// The f32 panels (AVX-512 and AVX2): each output is `acc = fma(a_p, w_p, acc)` for p = 0, 1,
/// ... in order, from zero, exactly (so the two kernels give the same bits). candle's matmul (gemm's order) is checked against an f64 product
/// instead, within 1e-6 of the output's scale `sum |a_p w_p|` (measured: 1e-7 at worst).
#[test]
fn f32_kernels_follow_their_stated_order() {
    for kernel in f32_kernels() {
        for &(m, k, n) in SHAPES {
            let (a, w) = inputs(m, k, n);
            let got = f32_product(kernel, &a, &w, m, k, n);
            let mut worst = 0f64;
            for i in 0..m {
                for j in 0..n {
                    let g = got[i * n + j];
                    if kernel != F32Kernel::Candle {
                        let mut want = 0f32;
                        for p in 0..k {
                            want = a[i * k + p].mul_add(w[p * n + j], want);
                        }
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{kernel:?} ({m},{k},{n}) [{i},{j}]: {g} vs {want}"
                        );
                    } else {
                        let want: f64 = (0..k)
                            .map(|p| a[i * k + p] as f64 * w[p * n + j] as f64)
                            .sum();
                        let scale: f64 = (0..k)
                            .map(|p| (a[i * k + p] as f64 * w[p * n + j] as f64).abs())
                            .sum();
                        worst = worst.max((g as f64 - want).abs() / scale);
                    }
                }
            }
            if kernel == F32Kernel::Candle {
                println!("candle ({m},{k},{n}): worst error / sum |a w| = {worst:e}");
                assert!(worst <= 1e-6, "{kernel:?} ({m},{k},{n}): {worst:e}");
            }
        }
    }
}

/// The bf16 kernels give exactly the chain their module states, computed here one f32 add at a
/// time (each product of two bf16 values is exact in f32): the f32 fallback adds the inputs in
/// order; `vdpbf16ps`, and AMX's `tdpbf16ps` on Sapphire Rapids (family 6 model 143), add each
/// pair's second input before its first (Intel SDM), pairs in order. AMX on other CPUs may
/// round its sums otherwise (Emerald Rapids, 6.207, does: 197 of the 1,305 outputs of the
/// first shape follow the chain), which is why its fingerprint names the CPU; there the test
/// counts and prints how many follow.
#[test]
fn bf16_kernels_follow_their_stated_order() {
    const SAPPHIRE_RAPIDS_AMX: &str = "amx-6.143";
    for kernel in bf16_kernels() {
        let exact = kernel != Bf16Kernel::Amx || kernel.fingerprint() == SAPPHIRE_RAPIDS_AMX;
        let (mut follow, mut outputs) = (0, 0);
        // The fallback's order is the f32 panels'; candle's (without AVX-512 or AVX2) is gemm's.
        if kernel == Bf16Kernel::F32 && F32Kernel::detect() == F32Kernel::Candle {
            println!("bf16 f32 fallback runs candle's matmul here: order not checked");
            continue;
        }
        for &(m, k, n) in SHAPES {
            let (a, w) = inputs(m, k, n);
            let term = |i: usize, p: usize, j: usize| {
                if p < k {
                    bf16_round(a[i * k + p]) * bf16_round(w[p * n + j])
                } else {
                    0.0
                }
            };
            let got = bf16_product(kernel, &a, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let mut want = 0f32;
                    for pair in 0..k.div_ceil(2) {
                        let (first, second) = (term(i, 2 * pair, j), term(i, 2 * pair + 1, j));
                        if kernel == Bf16Kernel::F32 {
                            want += first;
                            want += second;
                        } else {
                            want += second;
                            want += first;
                        }
                    }
                    let g = got[i * n + j];
                    outputs += 1;
                    follow += usize::from(g.to_bits() == want.to_bits());
                    if exact {
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{kernel:?} ({m},{k},{n}) [{i},{j}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
        println!(
            "{}: {follow} of {outputs} outputs follow the stated chain",
            kernel.fingerprint()
        );
    }
}

/// Every bf16 kernel against an f64 product of the same bf16-rounded values, on shapes that
/// need every kind of padding, within 1e-4 (1 + |x|) (measured: under 1e-6).
#[test]
fn bf16_kernels_match_f64_product_of_rounded_values() {
    for kernel in bf16_kernels() {
        for (m, k, n) in [
            (1, 32, 32),
            (37, 70, 45),
            (64, 576, 96),
            (100, 96, 200),
            (13, 33, 17),
        ] {
            let (a, w) = inputs(m, k, n);
            let got = bf16_product(kernel, &a, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| bf16_round(a[i * k + p]) as f64 * bf16_round(w[p * n + j]) as f64)
                        .sum();
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{kernel:?} ({m},{k},{n}) [{i},{j}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}

/// A row's result does not depend on the other rows of the product, bit for bit, with every
/// kernel that promises it (all but candle's).
#[test]
fn rows_are_independent_of_the_batch() {
    let (m, k, n) = (200, 2100, 96);
    let (a, w) = inputs(m, k, n);
    type Product = Box<dyn Fn(&[f32], usize) -> Vec<f32>>;
    let mut products: Vec<(String, Product)> = Vec::new();
    for kernel in f32_kernels()
        .into_iter()
        .filter(|&k| k != F32Kernel::Candle)
    {
        let packed = PackedF32::with_kernel(&w, k, n, kernel).unwrap();
        products.push((
            format!("f32 {}", kernel.name()),
            Box::new(move |a, m| packed.matmul(a, m).unwrap()),
        ));
    }
    for kernel in bf16_kernels() {
        let packed = PackedBf16::new(&w, k, n, kernel).unwrap();
        products.push((
            format!("bf16 {}", kernel.name()),
            Box::new(move |a, m| packed.matmul(a, m).unwrap()),
        ));
    }
    for (name, product) in &products {
        let all = product(&a, m);
        for i in [0, 11, 12, 31, 32, 95, 96, 199] {
            let one = product(&a[i * k..(i + 1) * k], 1);
            assert!(
                one == all[i * n..(i + 1) * n],
                "{name}: row {i} differs alone and in the batch"
            );
        }
    }
}

/// Weights are never packed for a kernel this CPU cannot run (it would fault at the first
/// product), and wrong shapes are errors naming the op.
#[test]
fn packing_for_a_missing_kernel_or_a_wrong_shape_is_an_error() {
    let w = vec![0f32; 16];
    for kernel in Bf16Kernel::ALL {
        match PackedBf16::new(&w, 4, 4, kernel) {
            Ok(_) => assert!(kernel.runs_here(), "{kernel:?}"),
            Err(e) => {
                assert!(!kernel.runs_here(), "{kernel:?}: {e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "pack bf16 weights: the {} kernel does not run on this CPU",
                        kernel.name()
                    )
                );
            }
        }
    }
    assert!(Bf16Kernel::F32.runs_here() && Bf16Kernel::detect().runs_here());
    let e = PackedF32::new(&w, 3, 4).err().unwrap();
    assert_eq!(e.to_string(), "pack f32 weights: 16 values are not (3, 4)");
    let packed = PackedF32::new(&w, 4, 4).unwrap();
    let e = packed.matmul(&[0.0; 6], 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "f32 matmul: input has 6 values, not 2 rows of 4 (weights are (4, 4))"
    );
    let packed = PackedBf16::new(&w, 4, 4, Bf16Kernel::detect()).unwrap();
    let e = packed.matmul(&[0.0; 6], 2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "bf16 matmul: input is (2, 3), weights are (4, 4)"
    );
}

#[test]
fn rounding_is_nearest_even() {
    assert_eq!(bf16_round(1.0), 1.0);
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
    assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 1.0);
    assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
    assert_eq!(bf16_round(-1.0 - 3.0 / 256.0), -1.0 - 4.0 / 256.0);
    assert!(bf16_round(f32::NAN).is_nan());
}

/// The choice as a function of what the CPU has and which switches are set: every combination.
#[test]
fn switches_turn_kernels_off_in_order() {
    use Bf16Kernel::*;
    for amx in [false, true] {
        for avx512bf16 in [false, true] {
            for no_amx in [false, true] {
                for no_avx512bf16 in [false, true] {
                    let cpu = Bf16Cpu { amx, avx512bf16 };
                    let switches = Switches {
                        no_amx,
                        no_avx512bf16,
                        ..Switches::default()
                    };
                    let want = if amx && !no_amx {
                        Amx
                    } else if avx512bf16 && !no_avx512bf16 {
                        Avx512Bf16
                    } else {
                        F32
                    };
                    assert_eq!(
                        Bf16Kernel::choose(cpu, switches),
                        want,
                        "{cpu:?} {switches:?}"
                    );
                }
            }
        }
    }
    let set = |names: &'static [&'static str]| move |v: &str| names.contains(&v);
    assert_eq!(Switches::from_env(set(&[])), Switches::default());
    assert_eq!(
        Switches::from_env(set(&["LLMEMBED_NO_AMX"])),
        Switches {
            no_amx: true,
            ..Switches::default()
        }
    );
    assert_eq!(
        Switches::from_env(set(&["LLMEMBED_NO_AVX512VNNI"])),
        Switches {
            no_avx512vnni: true,
            ..Switches::default()
        }
    );
    assert_eq!(
        Switches::from_env(set(&["LLMEMBED_NO_AVX512BF16"])),
        Switches {
            no_avx512bf16: true,
            ..Switches::default()
        }
    );
}

/// `detect` in fresh processes (this test binary again, running only this test) with each
/// combination of `LLMEMBED_NO_AMX` / `LLMEMBED_NO_AVX512BF16` set: the kernel it picks is
/// `choose` with this CPU's features and those switches. On an AVX512-BF16 CPU without AMX
/// (AMD Zen 4), `LLMEMBED_NO_AVX512BF16=1` moves it from `avx512bf16` to `f32`.
#[test]
fn detect_follows_the_environment() {
    const CHILD: &str = "LLMEMBED_KERNELS_DETECT_CHILD";
    if std::env::var_os(CHILD).is_some() {
        println!("kernel={}", Bf16Kernel::detect().name());
        return;
    }
    let run = |switches: &[&str]| -> String {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "detect_follows_the_environment",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env_remove("LLMEMBED_NO_AMX")
        .env_remove("LLMEMBED_NO_AVX512BF16");
        for s in switches {
            cmd.env(s, "1");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child {switches:?}: {stdout}");
        // libtest prints the test's name on the same line first.
        let at = stdout
            .find("kernel=")
            .unwrap_or_else(|| panic!("child {switches:?} printed no kernel: {stdout}"));
        let name = stdout[at + "kernel=".len()..].split_whitespace().next();
        name.unwrap_or_default().to_string()
    };
    let plain = run(&[]);
    let cpu = Bf16Cpu {
        amx: plain == Bf16Kernel::Amx.name(),
        avx512bf16: Bf16Kernel::Avx512Bf16.runs_here(),
    };
    println!("this CPU: {cpu:?}; detect() without switches: {plain}");
    for switches in [
        &[][..],
        &["LLMEMBED_NO_AMX"][..],
        &["LLMEMBED_NO_AVX512BF16"][..],
        &["LLMEMBED_NO_AMX", "LLMEMBED_NO_AVX512BF16"][..],
    ] {
        let want = Bf16Kernel::choose(cpu, Switches::from_env(|v| switches.contains(&v)));
        let got = run(switches);
        println!("{switches:?}: detect() = {got}");
        assert_eq!(got, want.name(), "{switches:?}");
    }
    if cpu.avx512bf16 && !cpu.amx {
        assert_eq!(run(&["LLMEMBED_NO_AVX512BF16"]), "f32");
        assert_eq!(plain, "avx512bf16");
    }
}
