//! The AMX product (Intel Sapphire Rapids and later): A rounded to bf16 and laid out in tiles
//! per call, B packed in tiles once (see the tile layout in `bf16.rs`), and one micro-kernel in
//! inline assembly (AMX intrinsics are not stable in Rust).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{BLOCK, TILE_K, bf16_bits};
use crate::isa::{Isa, multiversion};

/// The AMX product: A (M, K) f32 row-major, packed B; returns (M, N) f32 row-major.
pub(super) fn matmul(
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
        pack_rows(
            Isa::best(),
            &a[mb * BLOCK * k..(mb * BLOCK + rows) * k],
            k,
            kblocks,
            dst,
        );
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
            // SAFETY: tiles exist only where `detect` found AMX, which requested the tile state
            // for this process.
            let _tiles = unsafe { TileConfig::load() };
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
    fn pack_rows(isa: Isa, src: &[f32], k: usize, kblocks: usize, dst: &mut [MaybeUninit<u16>]) {
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
    /// Configures this thread's tiles until the value is dropped.
    ///
    /// # Safety
    /// The CPU has AMX and the process was granted the tile state (`request_amx()`).
    unsafe fn load() -> TileConfig {
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
        // SAFETY: the caller's contract; the config is a valid palette-1 layout.
        unsafe {
            core::arch::asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly));
        }
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured (`load`'s caller had AMX).
        unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// C[0..32, 0..32] = A . B for one 32-row block of packed A and one 32-column block of packed
/// B (both: per 32 inputs, two 1 KiB tiles). `ldc` is C's row stride in bytes.
///
/// # Safety
/// Tiles configured (`TileConfig`), pointers valid for the extents above.
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
