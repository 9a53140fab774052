//! The AMX products (Intel Sapphire Rapids and later): `tdpbf16ps` for `compute: bf16` and
//! `tdpbusd` for `compute: int8`. Both multiply tiles of 16 rows x 64 bytes whose 32-bit
//! "steps" hold the inputs one multiply-add takes (two bf16, or four int8), so one layout and
//! one loop serve both; only the instruction differs. The micro-kernel is inline assembly
//! (AMX intrinsics are not stable in Rust).
//!
//! Tile layout (Intel SDM, TDPBF16PS / TDPBUSD): C (16 x 16, f32 or int32) += A (16 rows x 16
//! steps) . B, where B's tile row `s` holds step `s` of each of 16 columns ("VNNI" order).
//! - B, packed once ([`Tiles::new`]): for each block of 32 output columns, for each block of
//!   16 steps, two 1 KiB tiles (columns 0..16 and 16..32 of the block).
//! - A, laid out per call ([`tile_steps`], or bf16's own rounding packer): for each block of 32
//!   rows, for each block of 16 steps, two tiles (rows 0..16 and 16..32).
//!
//! Padding rows, steps and columns are zeros, so they add nothing.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Steps per tile row (64 bytes).
pub(crate) const TILE_STEPS: usize = 16;
/// Rows of A and columns of B per micro-kernel call (2 x 2 tiles).
pub(crate) const BLOCK: usize = 32;
/// Steps (u32) per tile.
const TILE: usize = TILE_STEPS * 16;
/// Step blocks per pass over a band, at most: longer products go in equal passes of at most
/// this many, so that the band's A tiles for one pass (64 step blocks x 2 KiB for each of its
/// row blocks of 32) stay in L2 with a group of B, each pass continuing from the sums in C. On
/// one Sapphire Rapids core, bf16 over 256 rows: K = 4864 (Qwen2.5-Coder-0.5B's down product)
/// 0.74 -> 1.04 TFLOP/s, K = 8960 (1.5B's) 0.64 -> 0.95; passes of 32 cost K = 1536 10%.
const PASS_KBLOCKS: usize = 64;
/// Steps between the tile loop's scratch stores (see `tile_block!`).
const STORE_EVERY: usize = 8;
/// B tiles per group of column blocks in [`Tiles::band`], at most (a block's whole depth counts,
/// so one block may be larger): about a seventh of a Sapphire Rapids core's 2 MiB L2, beside the
/// band's A tiles. On one core over K = 576 and 1536 columns, groups of 8 blocks (288 KiB) ran
/// the bf16 tile loop 10% faster than single blocks and 2% faster than 16.
const GROUP_BYTES: usize = 288 * 1024;

/// The tile multiply-add of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TileOp {
    /// `tdpbf16ps`: bf16 pairs, f32 sums.
    Bf16,
    /// `tdpbusd`: u8 quads of A times s8 quads of B, exact int32 sums (as bits in C's f32 slots).
    I8,
}

/// Asks Linux for the tile state, where the CPU has AMX-TILE and the multiply of `op`
/// (AMX-BF16 or AMX-INT8); false where it has not or the kernel refuses.
#[cfg(target_arch = "x86_64")]
pub(crate) fn request(op: TileOp) -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE, bit 25 = AMX-INT8.
    let leaf7 = core::arch::x86_64::__cpuid_count(7, 0);
    let multiply = match op {
        TileOp::Bf16 => 1 << 22,
        TileOp::I8 => 1 << 25,
    };
    if leaf7.edx & multiply == 0 || leaf7.edx & (1 << 24) == 0 {
        return false;
    }
    // Linux hands out the 8 KiB tile state only on request: arch_prctl(ARCH_REQ_XCOMP_PERM,
    // XFEATURE_XTILEDATA). The permission is per process, so threads made later share it, and
    // asking again is harmless.
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
pub(crate) fn request(_op: TileOp) -> bool {
    false
}

/// One tile row, 64 bytes on a cache line of its own. Why: tile rows that straddle two lines
/// load and store at a fraction of the speed (Sapphire Rapids, 2 x 2 tile blocks' bf16
/// products over K = 576 with their operands in L1: 2.8 TFLOP/s a core with every row on its
/// line, 0.8 with A and B 16 bytes off, as `Vec<u32>` from the allocator may leave them); so
/// tiles' memory is whole lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; TILE_STEPS]);

/// Room for `len` u32 (a multiple of 16) on whole lines, not initialised.
fn uninit_lines(len: usize) -> Vec<MaybeUninit<Line>> {
    debug_assert_eq!(len % TILE_STEPS, 0);
    let mut lines = Vec::with_capacity(len / TILE_STEPS);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { lines.set_len(len / TILE_STEPS) };
    lines
}

/// The u32 of `lines`, in order.
fn line_steps(lines: &[Line]) -> &[u32] {
    // SAFETY: a `Line` is 16 u32 with no padding.
    unsafe { std::slice::from_raw_parts(lines.as_ptr().cast(), lines.len() * TILE_STEPS) }
}

/// The u32 of `lines`, in order, to write.
fn line_steps_mut(lines: &mut [MaybeUninit<Line>]) -> &mut [MaybeUninit<u32>] {
    // SAFETY: a `MaybeUninit<Line>` is 16 `MaybeUninit<u32>` with no padding.
    unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * TILE_STEPS) }
}

/// A weight matrix of `steps` x `n` 32-bit steps in B tiles (see the module docs).
pub(crate) struct Tiles {
    /// Blocks of 16 steps (the steps padded with zeros to whole blocks).
    kblocks: usize,
    /// Columns padded with zeros to whole blocks of 32.
    np: usize,
    n: usize,
    data: Vec<Line>,
}

impl Tiles {
    /// Lays out `w`, `steps` rows of `n` steps (row-major), in tiles.
    pub fn new(w: &[u32], steps: usize, n: usize) -> Tiles {
        assert_eq!(
            w.len(),
            steps * n,
            "tiles: {} steps for ({steps}, {n})",
            w.len()
        );
        let kblocks = steps.div_ceil(TILE_STEPS);
        let np = n.div_ceil(BLOCK) * BLOCK;
        let mut data = vec![Line([0; TILE_STEPS]); kblocks * np];
        // One task per block of 32 columns, whose tiles are one stretch of `data`: a model's
        // load is mostly such single-threaded copies.
        let block_lines = kblocks * 2 * TILE / TILE_STEPS;
        data.par_chunks_mut(block_lines.max(1))
            .enumerate()
            .for_each(|(nb, lines)| {
                let cols = nb * BLOCK..((nb + 1) * BLOCK).min(n);
                for (s, values) in w.chunks_exact(n.max(1)).enumerate() {
                    for (col, &v) in cols.clone().zip(&values[cols.clone()]) {
                        let at = Tiles::at(kblocks, s, col) - nb * block_lines * TILE_STEPS;
                        lines[at / TILE_STEPS].0[at % TILE_STEPS] = v;
                    }
                }
            });
        Tiles {
            kblocks,
            np,
            n,
            data,
        }
    }

    /// Where step `s` of column `col` lies: tile (column block, step block, column half), row
    /// `s % 16`, slot `col % 16`.
    fn at(kblocks: usize, s: usize, col: usize) -> usize {
        let (nb, kb, half) = (col / BLOCK, s / TILE_STEPS, col % BLOCK / 16);
        ((nb * kblocks + kb) * 2 + half) * TILE + (s % TILE_STEPS) * 16 + col % 16
    }

    /// Step `s` of every column, in column order: 16 columns (one tile row) at a time, the
    /// last run cut at `n`.
    pub fn step_of_columns(&self, s: usize) -> impl Iterator<Item = &[u32]> {
        (0..self.n).step_by(16).map(move |c0| {
            let at = Tiles::at(self.kblocks, s, c0);
            &line_steps(&self.data)[at..at + (self.n - c0).min(16)]
        })
    }

    /// Blocks of 16 steps: what [`tile_steps`] and `fill_a` lay out per 32-row block.
    pub fn kblocks(&self) -> usize {
        self.kblocks
    }

    /// `a @ self` for `m` rows of A, (m, n) f32 row-major (for [`TileOp::I8`], int32 bits in
    /// f32 slots). `fill_a(block, dst)` lays out rows `32 * block..` of A in tiles (as
    /// [`tile_steps`] does), writing every one of `dst`'s `kblocks * 2 * 256` steps; it runs in
    /// parallel. Then `finish(row, values, first_column)` on each finished row's stretch of
    /// columns (a 32-row block's group of column blocks, see [`Tiles::band`]), by the thread
    /// that computed them, while they are in that core's L1 or L2 (int8 scales its sums there:
    /// after the whole band, a wide product's rows had left the cache). Every value gets one
    /// call. The CPU has AMX with `op`'s multiply, and [`request`] granted the tile state.
    pub fn matmul(
        &self,
        op: TileOp,
        m: usize,
        fill_a: impl Fn(usize, &mut [MaybeUninit<u32>]) + Sync,
        finish: impl Fn(usize, &mut [f32], usize) + Sync,
    ) -> Vec<f32> {
        let n = self.n;
        if m == 0 || n == 0 {
            return vec![0f32; m * n];
        }
        let blocks = m.div_ceil(BLOCK);
        let block = self.kblocks * 2 * TILE; // steps per 32-row block of A, per 32-column block of B
        let mut a = uninit_lines(blocks * block);
        line_steps_mut(&mut a)
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(mb, dst)| fill_a(mb, dst));
        // SAFETY: every element was written by fill_a (its contract), and MaybeUninit<Line>
        // has Line's layout.
        let a: Vec<Line> = unsafe {
            let mut a = std::mem::ManuallyDrop::new(a);
            Vec::from_raw_parts(a.as_mut_ptr().cast(), a.len(), a.capacity())
        };
        let a = line_steps(&a);
        // Every element of C is written below: stored by the tiles or copied from a block's sums.
        let mut c: Vec<MaybeUninit<f32>> = Vec::with_capacity(m * n);
        // SAFETY: MaybeUninit needs no initialisation.
        unsafe { c.set_len(m * n) };
        // Threads take bands of 32-row blocks; within a band, each group of column blocks of B
        // is reused across the band's rows while it is hot in cache (`band`).
        let threads = rayon::current_num_threads().max(1);
        let band = blocks.div_ceil(threads).max(1);
        c.par_chunks_mut(band * BLOCK * n)
            .zip(a.par_chunks(band * block))
            .enumerate()
            .for_each(|(b, (c_band, a_band))| {
                self.band(op, a_band, c_band, block, &|r, values, col| {
                    finish(b * band * BLOCK + r, values, col)
                });
            });
        // SAFETY: all m * n elements were written above.
        unsafe {
            let mut c = std::mem::ManuallyDrop::new(c);
            Vec::from_raw_parts(c.as_mut_ptr().cast(), c.len(), c.capacity())
        }
    }

    /// One thread's band: every 32-row block of `a_band` times every 32-column block of B,
    /// into `c_band`'s whole rows of `n` (as many as it holds: the last block may be part
    /// padding). Column blocks go in groups whose B tiles fit [`GROUP_BYTES`]: each group stays
    /// in L2 while every row block passes over it, and a row block's sums land on neighbouring
    /// columns (lines the next blocks finish) instead of one 128-byte strip per row.
    ///
    /// A full block whose rows start on lines (C from [`crate::LineAligned`], `n` a multiple of
    /// 16) is stored by the tiles straight into C; any other goes to a buffer on whole lines
    /// and its live rows and columns are copied: tile stores that straddle lines cost more than
    /// the copy. Both give the same values. Once a row block has a group's columns, `finish`
    /// gets each of its rows' stretch of them: `finish(row of the band, values, first column)`.
    #[cfg(target_arch = "x86_64")]
    fn band(
        &self,
        op: TileOp,
        a_band: &[u32],
        c_band: &mut [MaybeUninit<f32>],
        block: usize,
        finish: &dyn Fn(usize, &mut [f32], usize),
    ) {
        #[repr(C, align(64))]
        struct Sums([MaybeUninit<f32>; BLOCK * BLOCK]);
        let n = self.n;
        let rows = c_band.len() / n;
        let on_lines = (c_band.as_ptr() as usize).is_multiple_of(64) && n.is_multiple_of(16);
        let mut sums = Sums([MaybeUninit::uninit(); BLOCK * BLOCK]);
        let data = line_steps(&self.data);
        let col_blocks = self.np / BLOCK;
        let passes = self.kblocks.div_ceil(PASS_KBLOCKS);
        let per_pass = self.kblocks.div_ceil(passes);
        let group = (GROUP_BYTES / (per_pass * 2 * TILE * 4)).max(1);
        // SAFETY: tiles exist only where `request` granted the tile state (the caller's
        // contract).
        let _tiles = unsafe { TileConfig::load() };
        for pass in 0..passes {
            let (k0, k1) = (pass * per_pass, ((pass + 1) * per_pass).min(self.kblocks));
            let last = pass + 1 == passes;
            for nb0 in (0..col_blocks).step_by(group) {
                for mb in 0..a_band.len() / block {
                    let live = (rows - mb * BLOCK).min(BLOCK);
                    for nb in nb0..(nb0 + group).min(col_blocks) {
                        let (c0, cols) = (nb * BLOCK, (n - nb * BLOCK).min(BLOCK));
                        let direct = on_lines && live == BLOCK && cols == BLOCK;
                        // A block that is not stored straight into C has all its steps in the
                        // first pass: its sums cannot wait in C between passes.
                        let (from, to) = match (direct, pass) {
                            (true, _) => (k0, k1),
                            (false, 0) => (0, self.kblocks),
                            (false, _) => continue,
                        };
                        let ap = a_band[mb * block + from * 2 * TILE..].as_ptr();
                        let bp = data[nb * block + from * 2 * TILE..(nb + 1) * block].as_ptr();
                        let (cp, ldc) = if direct {
                            (c_band[mb * BLOCK * n + c0..].as_mut_ptr().cast(), n * 4)
                        } else {
                            (sums.0.as_mut_ptr().cast(), BLOCK * 4)
                        };
                        // SAFETY: the A block's steps `from..to` lie inside `a_band`, the B
                        // block's inside `data`, both on whole lines; `cp` is 32 rows of 32
                        // values, `ldc` bytes apart, on whole lines: `sums`, or (direct) C's
                        // rows 32 * mb.. (all inside the band, `live` = 32) and columns
                        // c0..c0 + 32 (inside n), which start on lines as C and n do, and which
                        // the previous pass stored when `from` > 0. Tiles are configured.
                        unsafe {
                            let steps = to - from;
                            match (op, from > 0) {
                                (TileOp::Bf16, false) => tile_block_bf16(ap, bp, steps, cp, ldc),
                                (TileOp::Bf16, true) => {
                                    tile_block_bf16_resume(ap, bp, steps, cp, ldc)
                                }
                                (TileOp::I8, false) => tile_block_i8(ap, bp, steps, cp, ldc),
                                (TileOp::I8, true) => tile_block_i8_resume(ap, bp, steps, cp, ldc),
                            }
                        }
                        if direct {
                            continue;
                        }
                        for (r, row_sums) in sums.0.chunks_exact(BLOCK).take(live).enumerate() {
                            let at = (mb * BLOCK + r) * n + c0;
                            // A length the compiler knows for whole blocks: two vector moves,
                            // not a call to memcpy.
                            if cols == BLOCK {
                                c_band[at..at + BLOCK].copy_from_slice(row_sums);
                            } else {
                                c_band[at..at + cols].copy_from_slice(&row_sums[..cols]);
                            }
                        }
                    }
                    if !last {
                        continue;
                    }
                    let (c0, c1) = (nb0 * BLOCK, ((nb0 + group) * BLOCK).min(n));
                    for r in mb * BLOCK..mb * BLOCK + live {
                        let row = &mut c_band[r * n + c0..r * n + c1];
                        // SAFETY: the group's blocks wrote every value of the row's stretch
                        // (tile stores or the copy), and MaybeUninit<f32> has f32's layout.
                        let values = unsafe {
                            std::slice::from_raw_parts_mut(row.as_mut_ptr().cast(), row.len())
                        };
                        finish(r, values, c0);
                    }
                }
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn band(
        &self,
        _: TileOp,
        _: &[u32],
        _: &mut [MaybeUninit<f32>],
        _: usize,
        _: &dyn Fn(usize, &mut [f32], usize),
    ) {
        unreachable!("AMX is x86_64 only; request() is false elsewhere")
    }
}

/// The rows of A that 32-row block `mb` of an `m`-row product holds (the last block may hold
/// fewer: the rest of its tiles are padding), as `fill_a` lays them out.
pub(crate) fn block_rows(m: usize, mb: usize) -> std::ops::Range<usize> {
    (mb * BLOCK).min(m)..((mb + 1) * BLOCK).min(m)
}

/// Where row `r` (of 32) of an A block starts its steps `16 * kb..16 * kb + 16`: tile (step
/// block, row half), row `r % 16`.
pub(crate) fn a_row_at(r: usize, kb: usize) -> usize {
    ((kb * 2 + r / 16) * 16 + r % 16) * TILE_STEPS
}

/// Lays out up to 32 rows of `steps` steps each (`src`, row-major) as one 32-row block of A
/// tiles (`dst`, `kblocks` blocks of 16 steps), writing every element: padding rows and steps
/// get zeros.
pub(crate) fn tile_steps(src: &[u32], steps: usize, kblocks: usize, dst: &mut [MaybeUninit<u32>]) {
    let rows = src.len().checked_div(steps).unwrap_or(0);
    for r in 0..BLOCK {
        for kb in 0..kblocks {
            let at = a_row_at(r, kb);
            let tile_row = &mut dst[at..at + TILE_STEPS];
            let from = (kb * TILE_STEPS).min(steps);
            let live = if r < rows {
                (from + TILE_STEPS).min(steps) - from
            } else {
                0
            };
            for (d, &s) in tile_row
                .iter_mut()
                .zip(&src[(r * steps + from).min(src.len())..][..live])
            {
                *d = MaybeUninit::new(s);
            }
            tile_row[live..].fill(MaybeUninit::new(0));
        }
    }
}

/// The tile configuration of this thread while alive: eight tiles of 16 rows x 64 bytes.
#[cfg(target_arch = "x86_64")]
struct TileConfig;

#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct TileCfgBytes {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

#[cfg(target_arch = "x86_64")]
impl TileConfig {
    /// Configures this thread's tiles until the value is dropped.
    ///
    /// # Safety
    /// The CPU has AMX and the process was granted the tile state ([`request`]).
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

#[cfg(target_arch = "x86_64")]
impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: releases the tile state this thread configured (`load`'s caller had AMX).
        unsafe { core::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `tile_block_bf16` / `tile_block_i8`: C[0..32, 0..32] = A . B for one 32-row block of A
/// tiles and one 32-column block of B tiles (both: per 16 steps, two 1 KiB tiles), with the
/// multiply `$op`; the `_resume` ones C += A . B (the accumulators start from C, `$start`).
/// `ldc` is C's row stride in bytes. Every [`STORE_EVERY`] steps the loop also stores one
/// accumulator to a scratch tile on its own stack, a store whose value is of no use (why: in
/// the loop).
macro_rules! tile_block {
    ($name:ident, $op:literal, $($start:literal),+) => {
        /// # Safety
        /// Tiles configured (`TileConfig`), the CPU has the multiply, pointers valid for the
        /// extents above.
        #[cfg(target_arch = "x86_64")]
        unsafe fn $name(a: *const u32, b: *const u32, kblocks: usize, c: *mut f32, ldc: usize) {
            // Where the loop stores an accumulator every STORE_EVERY steps (see below).
            #[repr(C, align(64))]
            struct Scratch([MaybeUninit<u8>; 1024]);
            let mut scratch = Scratch([MaybeUninit::uninit(); 1024]);
            // SAFETY: see the function's contract. tmm0/1: A rows 0..16 / 16..32; tmm2/3: B
            // columns 0..16 / 16..32; tmm4..7: the four 16x16 accumulators.
            unsafe {
                core::arch::asm!(
                    $($start,)+
                    "mov {j}, {every}",
                    "2:",
                    // Each tile loaded just before the first multiply that reads it, so
                    // that loads overlap the multiplies before them (the tile registers are
                    // not renamed: a load waits for the multiplies that read the tile's last
                    // value). +3-7% for int8's tiles on Sapphire Rapids, bf16's unchanged.
                    "tileloadd tmm0, [{a} + {s64}]",
                    "tileloadd tmm2, [{b} + {s64}]",
                    // The next step block's A tiles (2 KiB, contiguous) into L1 while these
                    // multiply: the tile registers are not renamed, so a load that misses L1
                    // stalls the chain.
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
                    concat!($op, " tmm4, tmm0, tmm2"),
                    "tileloadd tmm3, [{b} + {s64} + 1024]",
                    concat!($op, " tmm5, tmm0, tmm3"),
                    "tileloadd tmm1, [{a} + {s64} + 1024]",
                    concat!($op, " tmm6, tmm1, tmm2"),
                    concat!($op, " tmm7, tmm1, tmm3"),
                    "add {a}, 2048",
                    "add {b}, 2048",
                    // Every STORE_EVERY steps, one accumulator stored to a scratch tile (its
                    // value is of no use): a block of more than about 32 steps with no tile
                    // store in it ran 10-20% slower on Sapphire Rapids, its final stores then
                    // waiting far longer (one core, bf16, A and B in L1, blocks of 48 steps:
                    // 2,012 GFLOP/s, 2,415-2,441 with these stores; 96 steps 2,250 ->
                    // 2,448-2,478; A and B from L2, 48 steps: 1,252-1,543 -> 1,779; 18
                    // steps unchanged).
                    "dec {j}",
                    "jnz 3f",
                    "tilestored [{scratch} + {s64}], tmm4",
                    "mov {j}, {every}",
                    "3:",
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
                    j = out(reg) _,
                    every = const STORE_EVERY,
                    scratch = in(reg) scratch.0.as_mut_ptr(),
                    options(nostack),
                );
            }
        }
    };
}

// From zero, or (`_resume`) from the sums in C: the tiles hold f32 / int32 exactly, so a product
// split over its steps gives the same bits as one pass.
macro_rules! tile_blocks {
    ($from_zero:ident, $resume:ident, $op:literal) => {
        tile_block!(
            $from_zero,
            $op,
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7"
        );
        tile_block!(
            $resume,
            $op,
            "tileloadd tmm4, [{c} + {ldc}]",
            "tileloadd tmm5, [{c} + {ldc} + 64]",
            "tileloadd tmm6, [{c1} + {ldc}]",
            "tileloadd tmm7, [{c1} + {ldc} + 64]"
        );
    };
}

tile_blocks!(tile_block_bf16, tile_block_bf16_resume, "tdpbf16ps");
tile_blocks!(tile_block_i8, tile_block_i8_resume, "tdpbusd");

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::matmul::bf16::bf16_bits;

    const SIGN: u32 = 0x8000_0000;

    /// C's block as the tiles leave it, whether they store straight into C (its rows on lines)
    /// or into the buffer that is then copied (C 16 bytes off its lines): the same bits, on a
    /// shape with partial row and column blocks, several groups of column blocks and two passes
    /// over the steps; and `finish` sees every value once, after its tiles.
    #[test]
    fn tiles_stored_straight_into_c_give_the_copied_values() {
        for op in [TileOp::Bf16, TileOp::I8] {
            if !request(op) {
                println!("{op:?}: no AMX with this multiply here: not run");
                continue;
            }
            // 70 step blocks: two passes of 35 (PASS_KBLOCKS), 70 KiB of B per column block
            // and pass, so groups of 4 over 7 column blocks (the last one partial).
            let (m, steps, n) = (70, 1120, 208);
            let value = |i: usize| {
                let x = ((i * 7919) % 2001) as f32 / 1000.0 - 1.0;
                match op {
                    TileOp::Bf16 => (u32::from(bf16_bits(x)) * 0x10001) ^ (i as u32 & 0x7),
                    TileOp::I8 => (i as u32).wrapping_mul(2_654_435_761),
                }
            };
            let w: Vec<u32> = (0..steps * n).map(value).collect();
            let a: Vec<u32> = (0..m * steps).map(|i| value(i + 17)).collect();
            let tiles = Tiles::new(&w, steps, n);
            let block = tiles.kblocks * 2 * TILE;
            let blocks = m.div_ceil(BLOCK);
            let mut laid = uninit_lines(blocks * block);
            for (mb, dst) in line_steps_mut(&mut laid).chunks_mut(block).enumerate() {
                let rows = block_rows(m, mb);
                let rows = &a[rows.start * steps..rows.end * steps];
                tile_steps(rows, steps, tiles.kblocks, dst);
            }
            // SAFETY: tile_steps wrote every element.
            let laid: Vec<Line> = laid
                .into_iter()
                .map(|l| unsafe { l.assume_init() })
                .collect();
            let product = |offset: usize| {
                let mut c = vec![Line([0; 16]); (m * n).div_ceil(16) + 1];
                let c = &mut line_steps_mut_init(&mut c)[offset..offset + m * n];
                // `finish` sees every value once, as it is in C at the end: it flips the sign.
                let seen: Vec<AtomicU32> = (0..m * n).map(|_| AtomicU32::new(0)).collect();
                tiles.band(op, line_steps(&laid), c, block, &|r, values, col| {
                    for (j, v) in values.iter_mut().enumerate() {
                        seen[r * n + col + j].fetch_add(1, Ordering::Relaxed);
                        *v = f32::from_bits(v.to_bits() ^ SIGN);
                    }
                });
                let once = seen.iter().all(|s| s.load(Ordering::Relaxed) == 1);
                assert!(once, "{op:?}: a value finished other than once");
                // SAFETY: band wrote every value.
                c.iter()
                    .map(|v| unsafe { v.assume_init() }.to_bits() ^ SIGN)
                    .collect::<Vec<u32>>()
            };
            let (on_lines, off_lines) = (product(0), product(4));
            for (i, (x, y)) in on_lines.iter().zip(&off_lines).enumerate() {
                let (r, j) = (i / n, i % n);
                assert_eq!(x, y, "{op:?}: row {r}, column {j}");
                // And both the product: int8's int32 sums exactly, bf16's within 1e-5 of the
                // f64 sum of its exact terms' magnitudes.
                let pairs = (0..steps).map(|s| (a[r * steps + s], w[s * n + j]));
                match op {
                    TileOp::I8 => {
                        let want: i32 = pairs
                            .flat_map(|(x, y)| {
                                (0..4).map(move |q| {
                                    i32::from((x >> (8 * q)) as u8)
                                        * i32::from((y >> (8 * q)) as i8)
                                })
                            })
                            .sum();
                        assert_eq!(*x as i32, want, "int8: row {r}, column {j}");
                    }
                    TileOp::Bf16 => {
                        let half =
                            |v: u32, h: u32| f64::from(f32::from_bits((v >> (16 * h)) << 16));
                        let terms: Vec<f64> = pairs
                            .flat_map(|(x, y)| (0..2).map(move |h| half(x, h) * half(y, h)))
                            .collect();
                        let (want, size) = (
                            terms.iter().sum::<f64>(),
                            terms.iter().map(|t| t.abs()).sum::<f64>(),
                        );
                        let got = f64::from(f32::from_bits(*x));
                        assert!(
                            (got - want).abs() <= 1e-5 * size,
                            "bf16: row {r}, column {j}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// `lines`' u32 as MaybeUninit<f32> to write: C for `band`.
    fn line_steps_mut_init(lines: &mut [Line]) -> &mut [MaybeUninit<f32>] {
        // SAFETY: a Line is 16 u32 with no padding; f32 has u32's layout.
        unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast(), lines.len() * 16) }
    }
}
