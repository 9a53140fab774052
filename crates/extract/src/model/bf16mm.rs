//! `x @ w` with bf16 inputs and f32 accumulation: the matrix products of `compute: bf16`.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, which has no bf16 kernel
//! (candle's bf16 matmul was slower than f32 here). Three kernels, the first this CPU has:
//! - Intel AMX (Sapphire Rapids and later) multiplies bf16 tiles at many times the f32 FMA rate;
//!   a GEMM on tiles is short: one micro-kernel, below, in inline assembly (AMX intrinsics are
//!   not stable in Rust).
//! - AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake): `vdpbf16ps` multiplies pairs of bf16
//!   at twice the f32 FMA rate, in the panel kernel of `panels` ([`DotBf16`]).
//! - Otherwise the same rounded values go through the f32 products of `f32mm`.
//!
//! `LLMEMBED_NO_AMX=1` and `LLMEMBED_NO_AVX512BF16=1` turn the first two off (to compare the
//! kernels on one machine). The kernel in use is part of the model's description, so the store
//! never mixes the vectors of two kernels.
//!
//! Numerics, the same for all three: the weights are rounded to bf16 once, at load; each
//! activation row is rounded to bf16 (round to nearest even) at the product; products and sums
//! are f32, and every output is one chain over the inputs. The kernels differ in the order of
//! that chain: AMX and `vdpbf16ps` add each pair's second product before its first (Intel SDM),
//! the f32 fallback adds the inputs in order.
//!
//! Tile layout (Intel SDM, TDPBF16PS): C(16x16 f32) += A(16 rows x 32 bf16) . B, where B's tile
//! row `r` holds, for each of 16 columns `n`, the pair (w[2r][n], w[2r+1][n]) ("VNNI" order).
//! The weights are packed once into such tiles: for each block of 32 output columns, for each
//! block of 32 inputs, two 1 KiB tiles (columns 0..16 and 16..32 of the block).

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use llmembed_core::{Error, Result};
use rayon::prelude::*;

use super::f32mm::PackedF32;
use super::kernels::multiversion;
use super::panels::{DotBf16, Kernel, Panels};

const TILE_K: usize = 32; // bf16 values per tile row (64 bytes)
const BLOCK: usize = 32; // rows of A / columns of B per micro-kernel call (2 x 2 tiles)

/// Which kernel runs the bf16 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bf16Kernel {
    Amx,
    Avx512Bf16,
    /// The rounded values through the f32 products.
    F32,
}

impl Bf16Kernel {
    /// The first kernel this process can use (checked once).
    pub fn detect() -> Bf16Kernel {
        static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let off = |var: &str| std::env::var_os(var).is_some();
            if !off("LLMEMBED_NO_AMX") && request_amx() {
                Bf16Kernel::Amx
            } else if !off("LLMEMBED_NO_AVX512BF16") && DotBf16::available() {
                Bf16Kernel::Avx512Bf16
            } else {
                Bf16Kernel::F32
            }
        })
    }

    /// Whether this process can run the kernel (AMX also needs the permission that `detect`
    /// asks for).
    fn runs_here(self) -> bool {
        match self {
            Bf16Kernel::Amx => Bf16Kernel::detect() == Bf16Kernel::Amx,
            Bf16Kernel::Avx512Bf16 => DotBf16::available(),
            Bf16Kernel::F32 => true,
        }
    }

    /// The name in the model's description (and so in the store's fingerprint).
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            Bf16Kernel::F32 => "f32",
        }
    }
}

/// A weight matrix (K inputs x N outputs) rounded to bf16, ready for [`matmul`].
pub(crate) struct PackedBf16 {
    k: usize,
    n: usize,
    repr: Repr,
}

enum Repr {
    /// AMX tiles, K and N padded with zeros to multiples of 32.
    Tiles {
        kp: usize,
        np: usize,
        data: Vec<u16>,
    },
    /// Pairs of inputs (2p in the low half, 2p + 1 in the high half; a zero after an odd last
    /// input) in panels, for `vdpbf16ps`.
    Pairs(Panels<u32>),
    /// The rounded values, for the f32 products.
    Dense(PackedF32),
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN). Branch-free, so loops vectorise.
#[inline(always)]
fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) | 0x40) as u16;
    if x.is_nan() { nan } else { rounded }
}

#[inline]
fn bf16_round(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

#[cfg(target_arch = "x86_64")]
fn request_amx() -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE.
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 22) == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    // Linux hands out the 8 KiB tile state only on request: arch_prctl(ARCH_REQ_XCOMP_PERM,
    // XFEATURE_XTILEDATA). The permission is per process, so threads made later share it.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain syscall with integer arguments.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    rc == 0
}

#[cfg(not(target_arch = "x86_64"))]
fn request_amx() -> bool {
    false
}

impl PackedBf16 {
    /// Rounds and packs `w`, a (K, N) f32 tensor (inputs x outputs, as `x @ w` takes it), for
    /// `kernel` ([`Bf16Kernel::detect`]'s, or one below it that this CPU also runs).
    pub fn new(w: &Tensor, kernel: Bf16Kernel) -> Result<Self> {
        let e =
            |x: candle_core::Error| Error::compute("pack bf16 weights", super::candle_message(&x));
        if !kernel.runs_here() {
            return Err(Error::compute(
                "pack bf16 weights",
                format!("the {} kernel does not run on this CPU", kernel.name()),
            ));
        }
        let (k, n) = w.dims2().map_err(e)?;
        let vals: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).map_err(e)?;
        let repr = match kernel {
            Bf16Kernel::F32 => {
                let rounded: Vec<f32> = vals.iter().map(|&x| bf16_round(x)).collect();
                let t = Tensor::from_vec(rounded, (k, n), &Device::Cpu).map_err(e)?;
                Repr::Dense(PackedF32::new(t)?)
            }
            Bf16Kernel::Avx512Bf16 => {
                // Pair rows: inputs 2p and 2p + 1 of each column in one u32.
                let mut pairs = vec![0u32; k.div_ceil(2) * n];
                for (row, values) in vals.chunks_exact(n.max(1)).enumerate() {
                    let (dst, shift) = (&mut pairs[row / 2 * n..(row / 2 + 1) * n], row % 2 * 16);
                    for (d, &v) in dst.iter_mut().zip(values) {
                        *d |= (bf16_bits(v) as u32) << shift;
                    }
                }
                Repr::Pairs(Panels::new(&pairs, k.div_ceil(2), n)?)
            }
            Bf16Kernel::Amx => {
                let kp = k.div_ceil(TILE_K) * TILE_K;
                let np = n.div_ceil(BLOCK) * BLOCK;
                let kblocks = kp / TILE_K;
                let mut data = vec![0u16; kp * np];
                for (row, values) in vals.chunks_exact(n).enumerate() {
                    let (kb, r) = (row / TILE_K, row % TILE_K);
                    for (col, v) in values.iter().enumerate() {
                        let (nb, c) = (col / BLOCK, col % BLOCK);
                        // Tile (nb, kb, half c/16); in it, row r/2 holds the pairs
                        // (w[2i][c], w[2i+1][c]).
                        let tile = (nb * kblocks + kb) * 2 + c / 16;
                        data[tile * 512 + (r / 2) * TILE_K + 2 * (c % 16) + r % 2] = bf16_bits(*v);
                    }
                }
                Repr::Tiles { kp, np, data }
            }
        };
        Ok(PackedBf16 { k, n, repr })
    }

    /// The kernel that multiplies, as `describe()` names it.
    pub fn kernel(&self) -> Bf16Kernel {
        match self.repr {
            Repr::Tiles { .. } => Bf16Kernel::Amx,
            Repr::Pairs(_) => Bf16Kernel::Avx512Bf16,
            Repr::Dense(_) => Bf16Kernel::F32,
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> candle_core::Result<Vec<f32>> {
        let k = x.len().checked_div(m).unwrap_or(self.k);
        if k != self.k || k * m != x.len() {
            candle_core::bail!(
                "bf16 matmul: input is ({m}, {k}), weights are ({}, {})",
                self.k,
                self.n
            );
        }
        match &self.repr {
            Repr::Dense(w) => {
                let rounded: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
                w.matmul(&rounded, m)
            }
            Repr::Pairs(w) => {
                let mut pairs: Vec<u32> = Vec::with_capacity(m * k.div_ceil(2));
                if k > 0 {
                    round_pairs(x, k, &mut pairs.spare_capacity_mut()[..m * k.div_ceil(2)]);
                    // SAFETY: round_pairs wrote every one of the m * k.div_ceil(2) pairs.
                    unsafe { pairs.set_len(m * k.div_ceil(2)) };
                }
                Ok(w.matmul::<DotBf16>(&pairs, m))
            }
            Repr::Tiles { kp, np, data } => Ok(amx_matmul(x, m, k, *kp, data, *np, self.n)),
        }
    }
}

multiversion! {
    /// Rounds rows of `k` f32 to bf16 pairs, writing every element of `dst`: `k.div_ceil(2)`
    /// u32 per row, input 2p in the low half of pair p (a zero after an odd last input).
    fn round_pairs(src: &[f32], k: usize, dst: &mut [MaybeUninit<u32>]) {
        for (row, out) in src.chunks_exact(k).zip(dst.chunks_exact_mut(k.div_ceil(2))) {
            let (whole, last) = row.split_at(k / 2 * 2);
            for (o, pair) in out.iter_mut().zip(whole.chunks_exact(2)) {
                *o = MaybeUninit::new(bf16_bits(pair[0]) as u32 | (bf16_bits(pair[1]) as u32) << 16);
            }
            if let [x] = last {
                out[k / 2] = MaybeUninit::new(bf16_bits(*x) as u32);
            }
        }
    }
}

/// The AMX product: A (M, K) f32 row-major, packed B; returns (M, N) f32 row-major.
fn amx_matmul(
    a: &[f32],
    m: usize,
    k: usize,
    kp: usize,
    b: &[u16],
    np: usize,
    n: usize,
) -> Vec<f32> {
    let mp = m.div_ceil(BLOCK) * BLOCK;
    let kblocks = kp / TILE_K;
    let block = kblocks * 2 * 512; // u16 per 32-row block of A, per 32-column block of B
    // A in bf16, laid out in tiles like B (per 32-row block, per 32 inputs: two 16-row tiles),
    // so that the kernel reads both operands as sequential streams; padding rows and columns
    // are zeros.
    let mut ab: Vec<MaybeUninit<u16>> = Vec::with_capacity(mp * kp);
    // SAFETY: MaybeUninit needs no initialisation; pack_rows writes every element.
    unsafe { ab.set_len(mp * kp) };
    ab.par_chunks_mut(block).enumerate().for_each(|(mb, dst)| {
        let rows = m.saturating_sub(mb * BLOCK).min(BLOCK);
        pack_rows(&a[mb * BLOCK * k..(mb * BLOCK + rows) * k], k, kblocks, dst);
    });
    // SAFETY: every element was written by pack_rows.
    let ab: Vec<u16> = unsafe {
        let mut ab = std::mem::ManuallyDrop::new(ab);
        Vec::from_raw_parts(ab.as_mut_ptr().cast(), ab.len(), ab.capacity())
    };
    // Every element of C is written by exactly one tile store below.
    let mut c: Vec<MaybeUninit<f32>> = Vec::with_capacity(mp * np);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { c.set_len(mp * np) };
    // Threads take bands of 32-row blocks; within a band, each 32-column block of B is reused
    // across the band's rows while it is hot in cache.
    let threads = rayon::current_num_threads().max(1);
    let row_blocks = mp / BLOCK;
    let band = row_blocks.div_ceil(threads).max(1);
    c.par_chunks_mut(band * BLOCK * np)
        .zip(ab.par_chunks(band * block))
        .for_each(|(c_band, a_band)| {
            let _tiles = TileConfig::load();
            for nb in 0..np / BLOCK {
                let bp = b[nb * block..(nb + 1) * block].as_ptr();
                for mb in 0..a_band.len() / block {
                    // SAFETY: the A block is `block` bf16 inside `a_band`; the B block is
                    // `block` bf16 inside `b`; the C block is 32 rows x 32 columns inside
                    // `c_band` (rows of np f32). Tiles are configured for this thread.
                    unsafe {
                        tile_block(
                            a_band.as_ptr().add(mb * block),
                            bp,
                            kblocks,
                            c_band.as_mut_ptr().add(mb * BLOCK * np + nb * BLOCK).cast(),
                            np * 4,
                        );
                    }
                }
            }
        });
    // SAFETY: all mp * np elements were written above.
    let c: Vec<f32> = unsafe {
        let mut c = std::mem::ManuallyDrop::new(c);
        Vec::from_raw_parts(c.as_mut_ptr().cast(), c.len(), c.capacity())
    };
    // Drop the padding: rows beyond m, columns beyond n.
    if np == n {
        let mut c = c;
        c.truncate(m * n);
        c
    } else {
        let mut out = Vec::with_capacity(m * n);
        for row in c.chunks(np).take(m) {
            out.extend_from_slice(&row[..n]);
        }
        out
    }
}

multiversion! {
    /// Rounds up to 32 rows of `k` f32 into one 32-row block of A tiles (`dst`), writing every
    /// element: the padding rows and columns get zeros.
    fn pack_rows(src: &[f32], k: usize, kblocks: usize, dst: &mut [MaybeUninit<u16>]) {
        let rows = src.len() / k;
        for r in 0..BLOCK {
            let (half, rr) = (r / 16, r % 16);
            for kb in 0..kblocks {
                let at = ((kb * 2 + half) * 16 + rr) * TILE_K;
                let tile_row = &mut dst[at..at + TILE_K];
                let from = (kb * TILE_K).min(k);
                let to = (from + TILE_K).min(k);
                let live = if r < rows { to - from } else { 0 };
                if live > 0 {
                    let row = &src[r * k + from..r * k + to];
                    for (d, s) in tile_row[..live].iter_mut().zip(row) {
                        *d = MaybeUninit::new(bf16_bits(*s));
                    }
                }
                tile_row[live..].fill(MaybeUninit::new(0));
            }
        }
    }
}

/// The tile configuration of this thread while alive: eight tiles of 16 rows x 64 bytes.
struct TileConfig;

#[repr(C, align(64))]
struct TileCfgBytes {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn load() -> TileConfig {
        let mut cfg = TileCfgBytes {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = 16;
        }
        // SAFETY: only called for weights packed as tiles, so after `request_amx()` succeeded;
        // the config is a valid palette-1 layout.
        unsafe {
            core::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        }
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured.
        unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// C[0..32, 0..32] = A . B for one 32-row block of packed A and one 32-column block of packed
/// B (both: per 32 inputs, two 1 KiB tiles). `ldc` is C's row stride in bytes.
///
/// # Safety
/// Tiles configured (`TileConfig`), pointers valid for the extents above.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_block(a: *const u16, b: *const u16, kblocks: usize, c: *mut f32, ldc: usize) {
    // SAFETY: see the function's contract. tmm0/1: A rows 0..16 / 16..32; tmm2/3: B columns
    // 0..16 / 16..32; tmm4..7: the four 16x16 f32 accumulators.
    unsafe {
        core::arch::asm!(
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            "2:",
            "tileloadd tmm0, [{a} + {s64}]",
            "tileloadd tmm1, [{a} + {s64} + 1024]",
            "tileloadd tmm2, [{b} + {s64}]",
            "tileloadd tmm3, [{b} + {s64} + 1024]",
            // The next step's A tiles (2 KiB, contiguous) into L1 while these multiply: the
            // tile registers are not renamed, so a load that misses L1 stalls the chain.
            "prefetcht0 [{a} + 2048]",
            "prefetcht0 [{a} + 2112]",
            "prefetcht0 [{a} + 2176]",
            "prefetcht0 [{a} + 2240]",
            "prefetcht0 [{a} + 2304]",
            "prefetcht0 [{a} + 2368]",
            "prefetcht0 [{a} + 2432]",
            "prefetcht0 [{a} + 2496]",
            "prefetcht0 [{a} + 2560]",
            "prefetcht0 [{a} + 2624]",
            "prefetcht0 [{a} + 2688]",
            "prefetcht0 [{a} + 2752]",
            "prefetcht0 [{a} + 2816]",
            "prefetcht0 [{a} + 2880]",
            "prefetcht0 [{a} + 2944]",
            "prefetcht0 [{a} + 3008]",
            "prefetcht0 [{a} + 3072]",
            "prefetcht0 [{a} + 3136]",
            "prefetcht0 [{a} + 3200]",
            "prefetcht0 [{a} + 3264]",
            "prefetcht0 [{a} + 3328]",
            "prefetcht0 [{a} + 3392]",
            "prefetcht0 [{a} + 3456]",
            "prefetcht0 [{a} + 3520]",
            "prefetcht0 [{a} + 3584]",
            "prefetcht0 [{a} + 3648]",
            "prefetcht0 [{a} + 3712]",
            "prefetcht0 [{a} + 3776]",
            "prefetcht0 [{a} + 3840]",
            "prefetcht0 [{a} + 3904]",
            "prefetcht0 [{a} + 3968]",
            "prefetcht0 [{a} + 4032]",
            "tdpbf16ps tmm4, tmm0, tmm2",
            "tdpbf16ps tmm5, tmm0, tmm3",
            "tdpbf16ps tmm6, tmm1, tmm2",
            "tdpbf16ps tmm7, tmm1, tmm3",
            "add {a}, 2048",
            "add {b}, 2048",
            "dec {k}",
            "jnz 2b",
            "tilestored [{c} + {ldc}], tmm4",
            "tilestored [{c} + {ldc} + 64], tmm5",
            "tilestored [{c1} + {ldc}], tmm6",
            "tilestored [{c1} + {ldc} + 64], tmm7",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            k = inout(reg) kblocks => _,
            s64 = in(reg) 64usize,
            c = in(reg) c,
            c1 = in(reg) c.byte_add(16 * ldc),
            ldc = in(reg) ldc,
            options(nostack),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_block(_: *const u16, _: *const u16, _: usize, _: *mut f32, _: usize) {
    unreachable!("AMX is x86_64 only; request_amx() is false elsewhere")
}

#[cfg(test)]
mod tests {
    use super::super::panels::FmaF32;
    use super::*;

    /// The kernels this CPU runs: the detected one and the fallbacks below it.
    fn kernels() -> Vec<Bf16Kernel> {
        let mut all = vec![Bf16Kernel::detect()];
        if Bf16Kernel::detect() == Bf16Kernel::Amx && DotBf16::available() {
            all.push(Bf16Kernel::Avx512Bf16);
        }
        if *all.last().unwrap() != Bf16Kernel::F32 {
            all.push(Bf16Kernel::F32);
        }
        all
    }

    fn inputs(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let w: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
            .collect();
        (a, w)
    }

    fn product(kernel: Bf16Kernel, a: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let wt = Tensor::from_vec(w.to_vec(), (k, n), &Device::Cpu).unwrap();
        PackedBf16::new(&wt, kernel).unwrap().matmul(a, m).unwrap()
    }

    /// Every kernel against an f64 product of the same bf16-rounded values, on shapes that
    /// need every kind of padding (M, K, N not multiples of 32, K odd).
    #[test]
    fn matches_f64_product_of_rounded_values() {
        for (m, k, n) in [
            (1, 32, 32),
            (37, 70, 45),
            (64, 576, 96),
            (100, 96, 200),
            (13, 33, 17),
        ] {
            let (a, w) = inputs(m, k, n);
            for kernel in kernels() {
                let got = product(kernel, &a, &w, m, k, n);
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|p| {
                                bf16_round(a[i * k + p]) as f64 * bf16_round(w[p * n + j]) as f64
                            })
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

    /// The panel kernels give exactly the chain their module docs state, computed here one f32
    /// add at a time (each product of two bf16 values is exact in f32): the f32 fallback adds
    /// the inputs in order, `vdpbf16ps` each pair's second input before its first. Shapes with
    /// several passes over the inputs (K = 2100: 1050 pairs), ragged rows and an odd K.
    #[test]
    fn panel_kernels_follow_their_stated_order() {
        for (m, k, n) in [(29, 2100, 45), (12, 577, 32), (5, 3, 7)] {
            let (a, w) = inputs(m, k, n);
            let term = |i: usize, p: usize, j: usize| {
                if p < k {
                    bf16_round(a[i * k + p]) * bf16_round(w[p * n + j])
                } else {
                    0.0
                }
            };
            for kernel in kernels() {
                // AMX's chain order inside a tile is the hardware's; candle's (the f32
                // fallback without AVX-512) is gemm's.
                if kernel == Bf16Kernel::Amx || !FmaF32::available() {
                    continue;
                }
                let got = product(kernel, &a, &w, m, k, n);
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
                        assert_eq!(
                            g.to_bits(),
                            want.to_bits(),
                            "{kernel:?} ({m},{k},{n}) [{i},{j}]: {g} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A row's result does not depend on the other rows of the product, with every kernel.
    #[test]
    fn rows_are_independent_of_the_batch() {
        let (m, k, n) = (200, 2100, 96);
        let (a, w) = inputs(m, k, n);
        for kernel in kernels() {
            let all = product(kernel, &a, &w, m, k, n);
            for i in [0, 11, 12, 95, 96, 199] {
                let one = product(kernel, &a[i * k..(i + 1) * k], &w, 1, k, n);
                assert_eq!(one, all[i * n..(i + 1) * n], "{kernel:?} row {i}");
            }
        }
    }

    /// Weights are never packed for a kernel this CPU cannot run (it would fault at the first
    /// product).
    #[test]
    fn packing_for_a_missing_kernel_is_an_error() {
        let w = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16, Bf16Kernel::F32] {
            let packed = PackedBf16::new(&w, kernel);
            assert_eq!(packed.is_ok(), kernel.runs_here(), "{kernel:?}");
            if let Err(e) = packed {
                assert!(e.to_string().contains("does not run on this CPU"), "{e}");
            }
        }
        assert!(Bf16Kernel::F32.runs_here() && Bf16Kernel::detect().runs_here());
    }

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(bf16_round(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(bf16_round(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(bf16_round(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(bf16_round(f32::NAN).is_nan());
    }
}
