//! `x @ w` with bf16 inputs and f32 accumulation: the matrix products of `compute: bf16`.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, whose stable-Rust build runs
//! AVX2 kernels (its AVX-512 ones need nightly) and has no bf16 kernel at all (candle's bf16
//! matmul was slower than f32 here). Intel AMX (Sapphire Rapids and later) multiplies bf16
//! tiles at many times the f32 FMA rate, and a GEMM on tiles is short: one micro-kernel, below,
//! in inline assembly (AMX intrinsics are not stable in Rust).
//!
//! Numerics, identical on both paths: the weights are rounded to bf16 once, at load; each
//! activation row is rounded to bf16 (round to nearest even) at the product; products and sums
//! are f32. Where AMX is missing (other CPUs, or `LLMEMBED_NO_AMX=1`), the same rounded values
//! are multiplied by the f32 products of `f32mm`, so results differ only in summation order.
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

const TILE_K: usize = 32; // bf16 values per tile row (64 bytes)
const BLOCK: usize = 32; // rows of A / columns of B per micro-kernel call (2 x 2 tiles)

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

/// Whether AMX bf16 tiles can be used by this process (CPU support + Linux permission,
/// requested once), unless `LLMEMBED_NO_AMX` is set.
pub(crate) fn amx_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("LLMEMBED_NO_AMX").is_some() {
            return false;
        }
        request_amx()
    })
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
    /// Rounds and packs `w`, a (K, N) f32 tensor (inputs x outputs, as `x @ w` takes it).
    pub fn new(w: &Tensor) -> Result<Self> {
        let e = |x: candle_core::Error| Error::compute("pack bf16 weights", x);
        let (k, n) = w.dims2().map_err(e)?;
        let vals: Vec<f32> = w.flatten_all().and_then(|t| t.to_vec1()).map_err(e)?;
        if !amx_available() {
            let rounded: Vec<f32> = vals.iter().map(|&x| bf16_round(x)).collect();
            let t = Tensor::from_vec(rounded, (k, n), &Device::Cpu).map_err(e)?;
            return Ok(PackedBf16 {
                k,
                n,
                repr: Repr::Dense(PackedF32::new(t)?),
            });
        }
        let kp = k.div_ceil(TILE_K) * TILE_K;
        let np = n.div_ceil(BLOCK) * BLOCK;
        let kblocks = kp / TILE_K;
        let mut data = vec![0u16; kp * np];
        for (row, values) in vals.chunks_exact(n).enumerate() {
            let (kb, r) = (row / TILE_K, row % TILE_K);
            for (col, v) in values.iter().enumerate() {
                let (nb, c) = (col / BLOCK, col % BLOCK);
                // Tile (nb, kb, half c/16); in it, row r/2 holds the pairs (w[2i][c], w[2i+1][c]).
                let tile = (nb * kblocks + kb) * 2 + c / 16;
                data[tile * 512 + (r / 2) * TILE_K + 2 * (c % 16) + r % 2] = bf16_bits(*v);
            }
        }
        Ok(PackedBf16 {
            k,
            n,
            repr: Repr::Tiles { kp, np, data },
        })
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
            Repr::Tiles { kp, np, data } => Ok(amx_matmul(x, m, k, *kp, data, *np, self.n)),
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
        // SAFETY: only called after `amx_available()` (the weights were packed as tiles);
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
    unreachable!("AMX is x86_64 only; amx_available() is false elsewhere")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths against an f64 product of the same bf16-rounded values, on shapes that need
    /// every kind of padding (M, K, N not multiples of 32).
    #[test]
    fn matches_f64_product_of_rounded_values() {
        for (m, k, n) in [(1, 32, 32), (37, 70, 45), (64, 576, 96), (100, 96, 200)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
                .collect();
            let w: Vec<f32> = (0..k * n)
                .map(|i| ((i * 104729 % 997) as f32 / 498.5) - 1.0)
                .collect();
            let wt = Tensor::from_vec(w.clone(), (k, n), &Device::Cpu).unwrap();
            let got = PackedBf16::new(&wt).unwrap().matmul(&a, m).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| bf16_round(a[i * k + p]) as f64 * bf16_round(w[p * n + j]) as f64)
                        .sum();
                    let g = got[i * n + j] as f64;
                    assert!(
                        (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "({m},{k},{n}) [{i},{j}]: {g} vs {want} (amx: {})",
                        amx_available()
                    );
                }
            }
        }
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
