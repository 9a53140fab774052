//! The multiply-add peak of one core: 24 independent chains of AVX-512 `vfmadd` (f32), of
//! `vdpbf16ps` (bf16 pairs) and of `vpdpbusd` (int8 quads, counted as two operations per
//! multiply-add like the others), plus AVX2 `vfmadd` and AVX2 `vpmaddwd` + `vpaddd` (int16
//! pairs, what `compute: int8` runs without VNNI), each for about a second; where the CPU has
//! AMX (Intel Sapphire Rapids and later), also 4 independent chains of the tile multiplies
//! `tdpbf16ps` and `tdpbusd` on 16 x 64-byte tiles (what `compute: bf16` and `int8` run
//! there), and then the 2 x 2 tile loop of the AMX products fed from L1 and L2 with and without
//! storing its sums (what those multiplies reach in a product), and walking its operands as a
//! product does with its sums stored into a hot buffer or into C; and the inner loops of the f32,
//! bf16 and int8 panel kernels fed from L1 and L2, for the same reason (int8 also with
//! `vpdpbusd`'s operands swapped, so that the broadcast step could be its memory operand). The
//! README's "peaks at N GFLOP/s per core" figures come from here.
//!
//! Usage (a standalone file, not part of the workspace):
//!   rustc --edition 2024 -O -C target-cpu=native scripts/peers/fma_peak.rs -o /tmp/fma_peak
//!   /tmp/fma_peak
use std::arch::x86_64::*;
use std::time::Instant;

const CHAINS: usize = 24;

#[target_feature(enable = "avx512f")]
fn fma_zmm(n: usize) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); CHAINS];
    let (x, y) = (_mm512_set1_ps(1.000_000_1), _mm512_set1_ps(0.999_999));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(x, y, *a);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[target_feature(enable = "avx512f,avx512bf16")]
fn dpbf16_zmm(n: usize) -> f32 {
    let mut acc = [_mm512_set1_ps(0.0); CHAINS];
    // SAFETY: any 512 bits are a valid vector of 32 bf16 (here 1.0 in every half).
    let x: __m512bh = unsafe { std::mem::transmute(_mm512_set1_epi32(0x3f80_3f80)) };
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, x, x);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
}

#[target_feature(enable = "avx512f,avx512vnni")]
fn dpbusd_zmm(n: usize) -> f32 {
    let mut acc = [_mm512_setzero_si512(); CHAINS];
    let (x, y) = (_mm512_set1_epi8(1), _mm512_set1_epi8(-1));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm512_dpbusd_epi32(*a, x, y);
        }
    }
    acc.iter().map(|&a| _mm512_reduce_add_epi32(a) as f32).sum()
}

#[target_feature(enable = "avx2,fma")]
fn fma_ymm(n: usize) -> f32 {
    let mut acc = [_mm256_set1_ps(0.0); CHAINS / 2];
    let (x, y) = (_mm256_set1_ps(1.000_000_1), _mm256_set1_ps(0.999_999));
    for _ in 0..n {
        for a in acc.iter_mut() {
            *a = _mm256_fmadd_ps(x, y, *a);
        }
    }
    let mut lanes = [0f32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a));
    // SAFETY: lanes holds 8 f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
    lanes.iter().sum()
}

#[target_feature(enable = "avx2")]
fn maddwd_ymm(n: usize) -> f32 {
    let mut acc: [__m256i; CHAINS / 2] = std::array::from_fn(|i| _mm256_set1_epi32(i as i32));
    let y = _mm256_set1_epi16(-1);
    for _ in 0..n {
        for a in acc.iter_mut() {
            // The accumulator is also the multiplicand: integer sums of a constant product
            // would be folded into one multiplication by the compiler.
            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(*a, y));
        }
    }
    let mut lanes = [0i32; 8];
    let sum = acc
        .iter()
        .fold(_mm256_setzero_si256(), |s, &a| _mm256_add_epi32(s, a));
    // SAFETY: lanes holds 8 i32.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), sum) };
    lanes.iter().map(|&l| l as f32).sum()
}

/// Asks Linux for the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)),
/// made as a raw syscall so that this file needs no crate.
fn request_amx() -> bool {
    let rc: i64;
    // SAFETY: arch_prctl (158) with two integer arguments; the kernel clobbers rcx and r11.
    unsafe {
        std::arch::asm!("syscall", inlateout("rax") 158i64 => rc, in("rdi") 0x1023i64,
            in("rsi") 18i64, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    rc == 0
}

/// Tile configuration: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileCfg {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// `n` rounds of 4 independent tile multiply-adds (`$op`: tmm0..3 += products of tmm4..7, which
/// hold zeros: the multiply's cost does not depend on the values).
macro_rules! amx_chains {
    ($name:ident, $op:literal) => {
        fn $name(n: usize) -> f32 {
            let cfg = tile_config();
            let mut out = [0f32; 256];
            // SAFETY: the caller checked AMX and was granted the tile state; `out` holds one
            // tile (16 rows of 64 bytes).
            unsafe {
                std::arch::asm!(
                    "ldtilecfg [{cfg}]",
                    "tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3",
                    "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                    "2:",
                    concat!($op, " tmm0, tmm4, tmm5"),
                    concat!($op, " tmm1, tmm4, tmm6"),
                    concat!($op, " tmm2, tmm5, tmm7"),
                    concat!($op, " tmm3, tmm6, tmm7"),
                    "dec {n}",
                    "jnz 2b",
                    "tilestored [{out} + {stride}], tmm0",
                    "tilerelease",
                    cfg = in(reg) &cfg,
                    n = inout(reg) n => _,
                    out = in(reg) out.as_mut_ptr(),
                    stride = in(reg) 64usize,
                    options(nostack),
                );
            }
            out.iter().sum()
        }
    };
}
amx_chains!(amx_bf16, "tdpbf16ps");
amx_chains!(amx_int8, "tdpbusd");

/// One block of the 2 x 2 tile loop of llmembed's AMX products (`tile_block!` in
/// `crates/kernels/src/matmul/amx.rs`, copied: this file stands alone): `steps` steps, each
/// loading two A tiles and two B tiles (1 KiB each; A and B move on `da` and `db` bytes a
/// step), then four multiply-adds `$op` into the four accumulators, which start from zero; the
/// kernel's store of one accumulator to `scratch` every `every` steps (`usize::MAX`: none); at
/// the end the four accumulators stored into `c`, 32 rows `ldc` bytes apart (`$store`; none:
/// not stored).
///
/// # Safety
/// Tiles configured (16 rows x 64 bytes), the CPU has `$op`; every load inside its buffer,
/// `c` 32 rows of 32 f32 `ldc` bytes apart and `scratch` 1 KiB, both on 64-byte lines.
macro_rules! tile_block {
    ($name:ident, $op:literal $(, $store:literal)*) => {
        #[allow(clippy::too_many_arguments)]
        #[inline(always)]
        unsafe fn $name(
            a: *const u8,
            b: *const u8,
            (da, db): (usize, usize),
            steps: usize,
            every: usize,
            c: *mut f32,
            ldc: usize,
            scratch: *mut f32,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                std::arch::asm!(
                    "tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7",
                    "mov {j}, {every}",
                    "2:",
                    "tileloadd tmm0, [{a} + {s64}]",
                    "tileloadd tmm2, [{b} + {s64}]",
                    concat!($op, " tmm4, tmm0, tmm2"),
                    "tileloadd tmm3, [{b} + {s64} + 1024]",
                    concat!($op, " tmm5, tmm0, tmm3"),
                    "tileloadd tmm1, [{a} + {s64} + 1024]",
                    concat!($op, " tmm6, tmm1, tmm2"),
                    concat!($op, " tmm7, tmm1, tmm3"),
                    "add {a}, {da}",
                    "add {b}, {db}",
                    "dec {j}",
                    "jnz 3f",
                    "tilestored [{scratch} + {s64}], tmm4",
                    "mov {j}, {every}",
                    "3:",
                    "dec {k}",
                    "jnz 2b",
                    $($store,)*
                    "/* {c} {c1} {ldc} */",
                    a = inout(reg) a => _,
                    b = inout(reg) b => _,
                    da = in(reg) da,
                    db = in(reg) db,
                    k = inout(reg) steps => _,
                    j = out(reg) _,
                    every = in(reg) every,
                    s64 = in(reg) 64usize,
                    c = in(reg) c,
                    c1 = in(reg) c.byte_add(16 * ldc),
                    ldc = in(reg) ldc,
                    scratch = in(reg) scratch,
                    options(nostack),
                );
            }
        }
    };
}
macro_rules! tile_block_stored {
    ($name:ident, $op:literal) => {
        tile_block!(
            $name,
            $op,
            "tilestored [{c} + {ldc}], tmm4",
            "tilestored [{c} + {ldc} + 64], tmm5",
            "tilestored [{c1} + {ldc}], tmm6",
            "tilestored [{c1} + {ldc} + 64], tmm7"
        );
    };
}
tile_block_stored!(block_bf16, "tdpbf16ps");
tile_block_stored!(block_int8, "tdpbusd");
tile_block!(block_bf16_unstored, "tdpbf16ps");
tile_block!(block_int8_unstored, "tdpbusd");

/// The function type of [`tile_block!`]'s blocks.
type Block = unsafe fn(*const u8, *const u8, (usize, usize), usize, usize, *mut f32, usize, *mut f32);

/// Palette 1, eight tiles of 16 rows x 64 bytes: the kernel's configuration.
fn tile_config() -> TileCfg {
    let mut cfg = TileCfg { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    cfg
}

/// `bytes` pseudo-random bytes 0x30..0x3f (finite bf16 values and int8 quads, never denormal
/// or NaN) from `seed`, with 64 more so that a 64-byte line can start them.
fn tile_bytes(bytes: usize, seed: &mut u32) -> Vec<u8> {
    (0..bytes + 64)
        .map(|_| {
            *seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (*seed >> 24) as u8 & 0x0f | 0x30
        })
        .collect()
}

/// Where the first 64-byte line of `v` starts ([`tile_bytes`] gives 64 bytes to spare).
fn line_start(v: &[u8]) -> *const u8 {
    v[v.as_ptr().align_offset(64)..].as_ptr()
}

/// The loop fed from memory: blocks of 48 steps (K = 1536 bf16, Qwen2.5-Coder-1.5B's) whose
/// sums go to a hot buffer (or nowhere: `block` unstored), with the kernel's scratch store every
/// `every` steps (`usize::MAX`: none). A or B either stays on one step's tiles (in L1) or walks
/// a 576 KiB buffer (in L2, past L1). The inputs are pseudo-random bytes: with zeros the loop
/// runs faster than with real data (Sapphire Rapids, no scratch stores: 2,430 against 2,030
/// GFLOP/s in L1; spread bf16 values of either sign run as these do), while the bare
/// multiplies above do not depend on their tiles' values.
#[inline(always)]
fn amx_fed(block: Block, n: usize, a_walks: bool, b_walks: bool, every: usize) -> f32 {
    const STEPS: usize = 48;
    const BLOCKS: usize = 6;
    let cfg = tile_config();
    let mut seed = 12345u32;
    let (a, b) = (tile_bytes(BLOCKS * STEPS * 2048, &mut seed), tile_bytes(BLOCKS * STEPS * 2048, &mut seed));
    let (a, b) = (line_start(&a), line_start(&b));
    let (mut out, skip) = on_line(5 * 256, |_| 0.0);
    let c = out[skip..].as_mut_ptr();
    let (da, db) = (if a_walks { 2048usize } else { 0 }, if b_walks { 2048usize } else { 0 });
    // SAFETY: the caller checked AMX and was granted the tile state; every load stays inside
    // its buffer (BLOCKS x STEPS steps of 2 KiB when walking, the first step otherwise), `c`
    // holds four tiles on lines (rows 128 bytes apart) and then the scratch tile.
    unsafe {
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &cfg, options(nostack));
        for i in 0..n.div_ceil(STEPS) {
            let at = i % BLOCKS * STEPS;
            block(a.add(at * da), b.add(at * db), (da, db), STEPS, every, c, 128, c.add(1024));
        }
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
    out.iter().sum()
}

/// The loop as the products walk it, over SmolLM2-135M's gate and up product (K = 576: blocks
/// of 18 steps; 512 rows, 3,072 columns): a group of 8 column blocks of B (288 KiB,
/// `GROUP_BYTES` in amx.rs) stays in L2 while each of the 16 row blocks of A (36 KiB each)
/// passes over it, each A block taken for the group's 8 B blocks in turn, group after group
/// (B: 3.4 MiB in all); the kernel's scratch store every 8 steps. The sums go either into a
/// 512 x 3,072 f32 C at the block's place (its rows 12 KiB apart, as the product stores
/// them) or to a hot buffer. Against the rows above: how much of the gap between the tile loop
/// and the products (README) is the walk, and how much the stores into C.
#[inline(always)]
fn amx_as_fed(block: Block, n: usize, into_c: bool) -> f32 {
    const STEPS: usize = 18;
    const ROW_BLOCKS: usize = 16;
    const GROUP: usize = 8;
    const COLS: usize = 3072;
    const COL_BLOCKS: usize = COLS / 32;
    let cfg = tile_config();
    let mut seed = 12345u32;
    let size = STEPS * 2048;
    let (a, b) = (tile_bytes(ROW_BLOCKS * size, &mut seed), tile_bytes(COL_BLOCKS * size, &mut seed));
    let (a, b) = (line_start(&a), line_start(&b));
    let (mut c_all, skip_c) = on_line(ROW_BLOCKS * 32 * COLS, |_| 0.0);
    let c_all = c_all[skip_c..].as_mut_ptr();
    let (mut hot, skip) = on_line(5 * 256, |_| 0.0);
    let hot = hot[skip..].as_mut_ptr();
    // SAFETY: as `amx_fed`; every block's loads stay inside A's 16 blocks and B's 96, and its
    // stores inside C (rows 32 mb.., columns 32 nb..) or the hot buffer.
    unsafe {
        std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) &cfg, options(nostack));
        for i in 0..n / STEPS {
            let group = i / (ROW_BLOCKS * GROUP) % (COL_BLOCKS / GROUP);
            let (mb, nb) = (i / GROUP % ROW_BLOCKS, group * GROUP + i % GROUP);
            let (c, ldc) = if into_c {
                (c_all.add(mb * 32 * COLS + nb * 32), COLS * 4)
            } else {
                (hot, 128)
            };
            block(a.add(mb * size), b.add(nb * size), (2048, 2048), STEPS, 8, c, ldc, hot.add(1024));
        }
        std::arch::asm!("tilerelease", options(nostack, nomem));
        *c_all.add(ROW_BLOCKS * 32 * COLS / 2) + *hot
    }
}

/// Steps per block of [`panel_f32`]: a block of B is 16 KiB, in L1 with the 6 KiB of A.
const PANEL_STEPS: usize = 128;

/// `len` f32 values on a 64-byte line (the kernel's packed weights are page-aligned), filled
/// by `f`.
fn on_line(len: usize, f: impl Fn(usize) -> f32) -> (Vec<f32>, usize) {
    let mut v = vec![0f32; len + 16];
    let skip = (64 - v.as_ptr() as usize % 64) % 64 / 4;
    for i in 0..len {
        v[skip + i] = f(i);
    }
    (v, skip)
}

/// `$name(n, b_walks)`: the inner loop of one of llmembed's panel kernels
/// (`crates/kernels/src/matmul/panels/avx512.rs`), fed from memory: per step, two B vectors
/// loaded, and each of twelve A values broadcast from memory into two multiply-adds, 24 chains
/// in all; blocks of 128 steps whose accumulators start from zero and are stored at the
/// block's end. A stays on one block (6 KiB); B stays on one block (16 KiB, in L1) or walks
/// a 1 MiB buffer (from L2). A step is a 32-bit value, moved as an f32's bits whatever the
/// kernel reads in it (`$vec`); `$madd` is the kernel's multiply-add.
macro_rules! panel_loop {
    ($(#[$doc:meta])* fn $name:ident($features:literal, $vec:ty) {
        values: $values:expr,
        madd: |$acc:ident, $x:ident, $b:ident| $madd:expr $(,)?
    }) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        fn $name(n: usize, b_walks: bool) -> f32 {
            const B_BLOCKS: usize = 64;
            let (a, a0) = on_line(PANEL_STEPS * 12, $values);
            let (b, b0) = on_line(B_BLOCKS * PANEL_STEPS * 32, $values);
            let mut check = 0f32;
            for block in 0..n / PANEL_STEPS {
                let bb = if b_walks { block % B_BLOCKS } else { 0 };
                let b = &b[b0 + bb * PANEL_STEPS * 32..][..PANEL_STEPS * 32];
                let a = &a[a0..][..PANEL_STEPS * 12];
                let mut acc = [[_mm512_setzero_ps(); 2]; 12];
                for i in 0..PANEL_STEPS {
                    // SAFETY: i < PANEL_STEPS; b holds PANEL_STEPS rows of 32 values; any 512
                    // bits are a valid `$vec`.
                    let bv: [$vec; 2] = unsafe {
                        [
                            std::mem::transmute(_mm512_loadu_ps(b.as_ptr().add(i * 32))),
                            std::mem::transmute(_mm512_loadu_ps(b.as_ptr().add(i * 32 + 16))),
                        ]
                    };
                    for (r, acc) in acc.iter_mut().enumerate() {
                        // SAFETY: as above.
                        let $x: $vec = unsafe { std::mem::transmute(_mm512_set1_ps(a[i * 12 + r])) };
                        for (acc, $b) in acc.iter_mut().zip(bv) {
                            let $acc = *acc;
                            *acc = $madd;
                        }
                    }
                }
                // Every block's sums stored, as the kernel stores its block's C.
                std::hint::black_box(&acc);
                check += _mm512_reduce_add_ps(acc[block % 12][block % 2]);
            }
            check
        }
    };
}

panel_loop! {
    /// f32 (`micro_f32`): against the bare `vfmadd` above, what the f32 products can reach on
    /// this core with their operands in cache: on Sapphire Rapids the loop in L1 runs at about
    /// 87% of the bare multiply-adds, however it is unrolled or shaped (README).
    fn panel_f32("avx512f", __m512) {
        values: |i| (i % 7) as f32 * 1e-3,
        madd: |acc, x, b| _mm512_fmadd_ps(x, b, acc),
    }
}

panel_loop! {
    /// bf16 pairs (`micro_bf16`, what `compute: bf16` runs on CPUs with AVX512-BF16 and no
    /// AMX): each step two bf16 values near 1e-3 (0x3a83 and a little more; which values does
    /// not matter, only that no sum turns denormal), one `vdpbf16ps` per multiply-add.
    fn panel_bf16("avx512f,avx512bf16", __m512bh) {
        values: |i| f32::from_bits(0x3a83_3a83 + (i % 7) as u32),
        madd: |acc, x, b| _mm512_dpbf16_ps(acc, x, b),
    }
}

panel_loop! {
    /// int8 quads (`micro_i8`, `compute: int8` with AVX512-VNNI): the broadcast A step is
    /// `vpdpbusd`'s unsigned operand, B's vectors its signed one.
    fn panel_i8("avx512f,avx512vnni", __m512i) {
        values: |i| f32::from_bits(0x0102_0304 + (i % 7) as u32),
        madd: |acc, x, b| _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), x, b)),
    }
}

panel_loop! {
    /// int8 quads with the operands' roles swapped: B's vectors unsigned, the broadcast A step
    /// signed, the operand `vpdpbusd` can take from memory as a broadcast (`{1to16}`).
    fn panel_i8_swapped("avx512f,avx512vnni", __m512i) {
        values: |i| f32::from_bits(0x0102_0304 + (i % 7) as u32),
        madd: |acc, x, b| _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), b, x)),
    }
}

fn time(name: &str, flops_per_iter: usize, run: impl Fn(usize) -> f32) {
    let n = 20_000_000;
    let start = Instant::now();
    let check = run(n);
    let s = start.elapsed().as_secs_f64();
    println!(
        "{name}: {:.1} GFLOP/s per core (checksum {check})",
        (n * flops_per_iter) as f64 / s / 1e9
    );
}

fn main() {
    let has = |f: &str| match f {
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512bf16" => is_x86_feature_detected!("avx512bf16"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        // CPUID.(EAX=7, ECX=0):EDX bits 22, 24, 25: AMX-BF16, AMX-TILE, AMX-INT8 (the
        // feature-detection macro's AMX names are not stable).
        "amx" => __cpuid_count(7, 0).edx & (0b1101 << 22) == 0b1101 << 22,
        _ => is_x86_feature_detected!("fma"),
    };
    if has("avx512f") {
        // SAFETY (all three): the CPU has the features checked.
        time("f32 vfmadd zmm", CHAINS * 32, |n| unsafe { fma_zmm(n) });
        // One step: 24 multiply-adds of 16 lanes.
        time("f32 12x32 panel loop, A and B in L1", 24 * 32, |n| unsafe {
            panel_f32(n, false)
        });
        time("f32 12x32 panel loop, A in L1, B from L2", 24 * 32, |n| unsafe {
            panel_f32(n, true)
        });
    }
    if has("avx512f") && has("avx512bf16") {
        time("bf16 vdpbf16ps zmm", CHAINS * 64, |n| unsafe {
            dpbf16_zmm(n)
        });
        time("bf16 12x32 panel loop, A and B in L1", 24 * 64, |n| unsafe {
            panel_bf16(n, false)
        });
        time("bf16 12x32 panel loop, A in L1, B from L2", 24 * 64, |n| unsafe {
            panel_bf16(n, true)
        });
    }
    if has("avx512f") && has("avx512vnni") {
        time("int8 vpdpbusd zmm", CHAINS * 128, |n| unsafe {
            dpbusd_zmm(n)
        });
        for (fed, b_walks) in [("A and B in L1", false), ("A in L1, B from L2", true)] {
            time(&format!("int8 12x32 panel loop, {fed}"), 24 * 128, |n| unsafe {
                panel_i8(n, b_walks)
            });
            time(&format!("int8 12x32 panel loop, roles swapped, {fed}"), 24 * 128, |n| unsafe {
                panel_i8_swapped(n, b_walks)
            });
        }
    }
    if has("amx") && request_amx() {
        // Per tile multiply: 16 x 16 outputs of 32 bf16 pairs, or of 64 int8 quads
        // (two operations per multiply-add).
        time("bf16 amx tdpbf16ps", 4 * 16 * 16 * 32 * 2, amx_bf16);
        time("int8 amx tdpbusd", 4 * 16 * 16 * 64 * 2, amx_int8);
        // The kernel stores a scratch tile every 8 steps (`STORE_EVERY` in amx.rs); without.
        let (kernel, never) = (8, usize::MAX);
        time("bf16 amx 2x2 tile loop, A and B in L1, sums not stored", 4 * 16 * 16 * 32 * 2, |n| {
            amx_fed(block_bf16_unstored, n, false, false, never)
        });
        time("int8 amx 2x2 tile loop, A and B in L1, sums not stored", 4 * 16 * 16 * 64 * 2, |n| {
            amx_fed(block_int8_unstored, n, false, false, never)
        });
        time("bf16 amx 2x2 tile loop, A and B in L1, no scratch stores", 4 * 16 * 16 * 32 * 2, |n| {
            amx_fed(block_bf16, n, false, false, never)
        });
        time("int8 amx 2x2 tile loop, A and B in L1, no scratch stores", 4 * 16 * 16 * 64 * 2, |n| {
            amx_fed(block_int8, n, false, false, never)
        });
        for (a_walks, b_walks, fed) in [
            (false, false, "A and B in L1"),
            (false, true, "A in L1, B from L2"),
            (true, true, "A and B from L2"),
        ] {
            time(&format!("bf16 amx 2x2 tile loop, {fed}"), 4 * 16 * 16 * 32 * 2, |n| {
                amx_fed(block_bf16, n, a_walks, b_walks, kernel)
            });
            time(&format!("int8 amx 2x2 tile loop, {fed}"), 4 * 16 * 16 * 64 * 2, |n| {
                amx_fed(block_int8, n, a_walks, b_walks, kernel)
            });
        }
        for (into_c, sums) in [(false, "sums to a hot buffer"), (true, "sums into C")] {
            let fed = format!("as SmolLM2's gate and up product walks it, {sums}");
            time(&format!("bf16 amx 2x2 tile loop, {fed}"), 4 * 16 * 16 * 32 * 2, |n| {
                amx_as_fed(block_bf16, n, into_c)
            });
            time(&format!("int8 amx 2x2 tile loop, {fed}"), 4 * 16 * 16 * 64 * 2, |n| {
                amx_as_fed(block_int8, n, into_c)
            });
        }
    }
    if has("fma") {
        time("f32 vfmadd ymm", CHAINS / 2 * 16, |n| unsafe { fma_ymm(n) });
        // Sixteen int16 multiply-adds per `vpmaddwd`.
        time("int8 vpmaddwd ymm", CHAINS / 2 * 32, |n| unsafe {
            maddwd_ymm(n)
        });
    }
}
