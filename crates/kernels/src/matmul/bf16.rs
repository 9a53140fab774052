//! `x @ w` with bf16 inputs and f32 accumulation: the matrix products of `compute: bf16`.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, which has no bf16 kernel
//! (candle's bf16 matmul was slower than f32 here). Three kernels, the first this CPU has:
//! - Intel AMX (Sapphire Rapids and later) multiplies bf16 tiles at many times the f32 FMA rate;
//!   a GEMM on tiles is short: one micro-kernel, below, in inline assembly (AMX intrinsics are
//!   not stable in Rust).
//! - AVX512-BF16 (AMD Zen 4 and later, Intel Cooper Lake): `vdpbf16ps` multiplies pairs of bf16
//!   at twice the f32 FMA rate, in the panel kernel of `panels.rs`.
//! - Otherwise the same rounded values go through the f32 products of `f32.rs`.
//!
//! `LLMEMBED_NO_AMX=1` and `LLMEMBED_NO_AVX512BF16=1` turn the first two off (to compare the
//! kernels on one machine). The kernel in use is part of the model's description, so the store
//! never mixes the vectors of two kernels.
//!
//! Numerics, the same for all three: the weights are rounded to bf16 once, at load; each
//! activation row is rounded to bf16 (round to nearest even) at the product; products and sums
//! are f32, and every output is one chain over the inputs. The kernels differ in the order of
//! that chain: `vdpbf16ps` adds each pair's second product before its first (Intel SDM), and so
//! does AMX on Sapphire Rapids (on Emerald Rapids AMX's sums round otherwise, in an order the
//! SDM does not state: see [`Bf16Kernel::fingerprint`]); the f32 fallback adds the inputs in
//! order.
//!
//! AMX's tiles (`amx.rs`, shared with int8's `tdpbusd`) hold the same pairs as `vdpbf16ps`'s
//! steps: inputs `2p` and `2p + 1` in one u32.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::Switches;
use super::amx::{self, TILE_STEPS, TileOp, Tiles};
use super::f32::PackedF32;
use super::gated::Gated;
use super::panels::{DotBf16, Kernel, PAIR, PANEL, Panels};
use crate::isa::{Isa, multiversion};
use crate::{Error, Result};

/// Which kernel runs the bf16 products on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Kernel {
    Amx,
    Avx512Bf16,
    /// The rounded values through the f32 products.
    F32,
}

impl Bf16Kernel {
    /// Every kernel, in the order [`Bf16Kernel::detect`] prefers them.
    pub const ALL: [Bf16Kernel; 3] = [Bf16Kernel::Amx, Bf16Kernel::Avx512Bf16, Bf16Kernel::F32];

    /// The first kernel this process can use (checked once): [`Bf16Kernel::choose`] with this
    /// CPU and this process's environment. AMX's tile state is requested from the kernel only
    /// when `LLMEMBED_NO_AMX` is not set.
    pub fn detect() -> Bf16Kernel {
        static KERNEL: OnceLock<Bf16Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let switches = Switches::from_process_env();
            let cpu = Bf16Cpu {
                amx: !switches.no_amx && amx::request(TileOp::Bf16),
                avx512bf16: DotBf16::available(),
            };
            Bf16Kernel::choose(cpu, switches)
        })
    }

    /// The first kernel that `cpu` has and `switches` leave on: AMX, then AVX512-BF16, then
    /// the f32 products.
    pub fn choose(cpu: Bf16Cpu, switches: Switches) -> Bf16Kernel {
        if cpu.amx && !switches.no_amx {
            Bf16Kernel::Amx
        } else if cpu.avx512bf16 && !switches.no_avx512bf16 {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::F32
        }
    }

    /// Whether this process can run the kernel (AMX also needs the permission that `detect`
    /// asks for).
    pub fn runs_here(self) -> bool {
        match self {
            Bf16Kernel::Amx => Bf16Kernel::detect() == Bf16Kernel::Amx,
            Bf16Kernel::Avx512Bf16 => DotBf16::available(),
            Bf16Kernel::F32 => true,
        }
    }

    /// The kernel's name.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Amx => "amx",
            Bf16Kernel::Avx512Bf16 => "avx512bf16",
            Bf16Kernel::F32 => "f32",
        }
    }

    /// What the model's description (and so the store's fingerprint) calls the kernel: its
    /// name, and for AMX the CPU's family and model too (`amx-6.143`). Why: `tdpbf16ps`
    /// rounds its sums differently from one generation to the next (Sapphire Rapids follows
    /// the SDM's chain, Emerald Rapids, family 6 model 207, does not), so two AMX CPUs may not
    /// give the same bits.
    pub fn fingerprint(self) -> String {
        match self {
            Bf16Kernel::Amx => format!("amx-{}", crate::isa::cpu_model()),
            _ => self.name().into(),
        }
    }
}

/// What a CPU offers the bf16 products (input of [`Bf16Kernel::choose`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bf16Cpu {
    /// AMX-BF16 and AMX-TILE, with the tile state granted to this process.
    pub amx: bool,
    /// AVX-512F and AVX512-BF16.
    pub avx512bf16: bool,
}

/// A weight matrix (K inputs x N outputs) rounded to bf16, ready for [`PackedBf16::matmul`].
pub struct PackedBf16 {
    k: usize,
    n: usize,
    repr: Repr,
}

enum Repr {
    /// Pairs of inputs as for `Pairs`, in AMX tiles.
    Tiles(Tiles),
    /// Pairs of inputs (2p in the low half, 2p + 1 in the high half; a zero after an odd last
    /// input) in panels, for `vdpbf16ps`.
    Pairs(Panels<u32>),
    /// The rounded values, for the f32 products.
    Dense(PackedF32),
}

/// f32 -> bf16 bits, round to nearest even (NaN stays NaN). Branch-free, so loops vectorise.
#[inline(always)]
pub(crate) fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let nan = ((b >> 16) | 0x40) as u16;
    if x.is_nan() { nan } else { rounded }
}

/// `x` rounded to the nearest bf16 (ties to even), as the products round their inputs.
#[inline]
pub fn bf16_round(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

impl PackedBf16 {
    /// Rounds and packs `w`, K rows of N values (inputs x outputs, as `x @ w` takes it), for
    /// `kernel` ([`Bf16Kernel::detect`]'s, or one below it that this CPU also runs).
    pub fn new(w: &[f32], k: usize, n: usize, kernel: Bf16Kernel) -> Result<Self> {
        const OP: &str = "pack bf16 weights";
        super::check_pack(OP, kernel.name(), kernel.runs_here(), w, k, n)?;
        let vals = w;
        let repr = match kernel {
            Bf16Kernel::F32 => {
                let rounded: Vec<f32> = vals.iter().map(|&x| bf16_round(x)).collect();
                Repr::Dense(PackedF32::new(&rounded, k, n)?)
            }
            Bf16Kernel::Avx512Bf16 | Bf16Kernel::Amx => {
                // Pair rows: inputs 2p and 2p + 1 of each column in one u32.
                let pairs = super::pack_steps(vals, n, 2, |v| bf16_bits(v) as u32);
                if kernel == Bf16Kernel::Amx {
                    Repr::Tiles(Tiles::new(&pairs, k.div_ceil(2), n))
                } else {
                    Repr::Pairs(Panels::new(&pairs, k.div_ceil(2), n)?)
                }
            }
        };
        Ok(PackedBf16 { k, n, repr })
    }

    /// The kernel that multiplies, as `describe()` names it.
    pub fn kernel(&self) -> Bf16Kernel {
        match self.repr {
            Repr::Tiles(_) => Bf16Kernel::Amx,
            Repr::Pairs(_) => Bf16Kernel::Avx512Bf16,
            Repr::Dense(_) => Bf16Kernel::F32,
        }
    }

    /// `x @ w` for `x` (M, K) f32 row-major: (M, N) f32 row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let k = x.len().checked_div(m).unwrap_or(self.k);
        if k != self.k || k * m != x.len() {
            return Err(Error::new(
                "bf16 matmul",
                format!("input is ({m}, {k}), weights are ({}, {})", self.k, self.n),
            ));
        }
        match &self.repr {
            Repr::Dense(w) => {
                let rounded: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
                w.matmul(&rounded, m)
            }
            Repr::Pairs(w) => Ok(w.matmul_from::<DotBf16>(&band_pairs(x, k), m)),
            Repr::Tiles(w) => {
                let kblocks = w.kblocks();
                let fill_a = |mb: usize, dst: &mut [MaybeUninit<u32>]| {
                    let rows = amx::block_rows(m, mb);
                    tile_rows(
                        Isa::best(),
                        &x[rows.start * k..rows.end * k],
                        k,
                        kblocks,
                        dst,
                    );
                };
                Ok(w.matmul(TileOp::Bf16, m, fill_a, |_, _, _| {}))
            }
        }
    }
}

impl PackedBf16 {
    /// A gated MLP's first product and its activation ([`super::gated`]): the weights were
    /// packed from [`super::interleave_gate_up`]'s matrix. The same bits as
    /// [`PackedBf16::matmul`] then [`crate::Rows::gated`].
    pub fn matmul_gated(&self, x: &[f32], m: usize, gated: &Gated) -> Result<Vec<f32>> {
        gated.check("bf16 gated matmul", self.n)?;
        match &self.repr {
            Repr::Pairs(w) if m * self.k == x.len() => Ok(w.matmul_pairs_from::<DotBf16>(
                &band_pairs(x, self.k),
                m,
                gated.ffn,
                |_, j, tile, out| gated.finish_pair(j, tile, out),
            )),
            _ => Ok(gated.after(self.matmul(x, m)?, m)),
        }
    }

    /// A gated MLP but its down projection's bias: `down(act(x @ gate) * (x @ up))`, `self`
    /// the gate and up weights packed from [`super::interleave_gate_up`]'s matrix, `down` the
    /// (ffn, out) ones. The same bits as `down.matmul(&self.matmul_gated(x, m, gated)?, m)`.
    /// On AMX (both products in tiles, no gate and up bias) the activation runs inside the
    /// down product's layout of each 32-row block of A, a pair of gate and up panels (32
    /// activations a row, one step block of the down product) at a time, rounded to bf16
    /// tiles while in L1: the (m, ffn) activations are never written whole and read back from
    /// memory (Qwen2.5-Coder-1.5B: 14 MiB each way per 392-row product).
    pub fn matmul_mlp(
        &self,
        down: &PackedBf16,
        x: &[f32],
        m: usize,
        gated: &Gated,
    ) -> Result<Vec<f32>> {
        gated.check("bf16 gated MLP", self.n)?;
        gated.check_down("bf16 gated MLP", down.k)?;
        match (&self.repr, &down.repr) {
            (Repr::Tiles(_), Repr::Tiles(tiles)) if gated.bias.is_none() && gated.ffn > 0 => {
                let y = self.matmul(x, m)?;
                let width = self.n;
                debug_assert_eq!(tiles.kblocks(), gated.ffn.div_ceil(PANEL));
                let fill_a = |mb: usize, dst: &mut [MaybeUninit<u32>]| {
                    let rows = amx::block_rows(m, mb);
                    let y = &y[rows.start * width..rows.end * width];
                    // Pair j's 32 activations (PANEL) of each row are the down product's step
                    // block j (32 inputs, two tiles): made and rounded a pair at a time in L1.
                    let mut act = [MaybeUninit::<f32>::uninit(); amx::BLOCK * PANEL];
                    // A step block's two tiles: 32 rows of 16 steps.
                    for (j, tiles) in dst.chunks_exact_mut(amx::BLOCK * TILE_STEPS).enumerate() {
                        let live = gated.pair_columns(j);
                        let act = &mut act[..rows.len() * live];
                        gated.activate_pair_into(j, &y[j * PAIR..], width, act, live, 0);
                        // SAFETY: the pair wrote `live` values of every row, and
                        // MaybeUninit<f32> has f32's layout.
                        let act: &[f32] =
                            unsafe { std::slice::from_raw_parts(act.as_ptr().cast(), act.len()) };
                        tile_rows(Isa::best(), act, live, 1, tiles);
                    }
                };
                Ok(tiles.matmul(TileOp::Bf16, m, fill_a, |_, _, _| {}))
            }
            _ => down.matmul(&self.matmul_gated(x, m, gated)?, m),
        }
    }
}

/// The steps of a band of `x`'s rows (k values each), rounded to bf16 pairs by the band's own
/// task ([`Panels::matmul_from`]).
fn band_pairs(x: &[f32], k: usize) -> impl Fn(usize, usize) -> Cow<'static, [u32]> + Sync + '_ {
    move |row0, rows| Cow::Owned(bf16_pairs(&x[row0 * k..(row0 + rows) * k], rows, k))
}

/// `x` (m rows of k) rounded to bf16 pairs, the steps of [`DotBf16`].
fn bf16_pairs(x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let mut pairs: Vec<u32> = Vec::with_capacity(m * k.div_ceil(2));
    if k > 0 {
        round_pairs(
            Isa::best(),
            x,
            k,
            &mut pairs.spare_capacity_mut()[..m * k.div_ceil(2)],
        );
        // SAFETY: round_pairs wrote every one of the m * k.div_ceil(2) pairs.
        unsafe { pairs.set_len(m * k.div_ceil(2)) };
    }
    pairs
}

multiversion! {
    /// Rounds rows of `k` f32 to bf16 pairs, writing every element of `dst`: `k.div_ceil(2)`
    /// u32 per row, input 2p in the low half of pair p (a zero after an odd last input).
    fn round_pairs(isa: Isa, src: &[f32], k: usize, dst: &mut [MaybeUninit<u32>]) {
        for (row, out) in src.chunks_exact(k).zip(dst.chunks_exact_mut(k.div_ceil(2))) {
            // Whole groups of 32 inputs sixteen lanes at a time where the CPU has AVX-512.
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if isa.is_avx512() {
                for (x, o) in row.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
                    // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F; 32
                    // inputs, 16 slots.
                    unsafe { round_32_avx512(x.as_ptr(), o.as_mut_ptr().cast()) };
                }
                done = k / 32 * 32;
            }
            let (row, out) = (&row[done..], &mut out[done / 2..]);
            let k = k - done;
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

multiversion! {
    /// Rounds up to 32 rows of `k` f32 to bf16 pairs laid out as one 32-row block of AMX A
    /// tiles (`dst`, `kblocks` blocks of 16 pairs; the layout of [`amx::tile_steps`]), writing
    /// every element: padding rows and pairs get zeros.
    fn tile_rows(isa: Isa, src: &[f32], k: usize, kblocks: usize, dst: &mut [MaybeUninit<u32>]) {
        let rows = src.len() / k;
        for r in 0..amx::BLOCK {
            for kb in 0..kblocks {
                let at = amx::a_row_at(r, kb);
                let tile_row = &mut dst[at..at + TILE_STEPS];
                let from = (kb * 2 * TILE_STEPS).min(k);
                let to = if r < rows { (from + 2 * TILE_STEPS).min(k) } else { from };
                let inputs = if r < rows { &src[r * k + from..r * k + to] } else { &[] };
                #[cfg(target_arch = "x86_64")]
                if isa.is_avx512() && inputs.len() == 2 * TILE_STEPS {
                    // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F; 32
                    // inputs, 16 slots.
                    unsafe { round_32_avx512(inputs.as_ptr(), tile_row.as_mut_ptr().cast()) };
                    continue;
                }
                let (whole, last) = inputs.split_at(inputs.len() / 2 * 2);
                let mut d = tile_row.iter_mut();
                // The pairs first: a zip stops at its first side's end without taking a
                // slot from the second.
                for (pair, o) in whole.chunks_exact(2).zip(d.by_ref()) {
                    *o = MaybeUninit::new(bf16_bits(pair[0]) as u32 | (bf16_bits(pair[1]) as u32) << 16);
                }
                // (`d.next()` only when there is an odd input: it takes a slot.)
                if let [x] = last
                    && let Some(o) = d.next()
                {
                    *o = MaybeUninit::new(bf16_bits(*x) as u32);
                }
                for o in d {
                    *o = MaybeUninit::new(0);
                }
            }
        }
    }
}

/// 32 f32 (`x`) rounded as [`bf16_bits`] rounds them, written as 16 pairs to `out`, the
/// rounding on sixteen lanes at once: the compiler's code for [`tile_rows`]' loop was scalar,
/// and the rounding was a fifth of a bf16 extraction on AMX (Sapphire Rapids). Not
/// `vcvtne2ps2bf16`: it flushes denormals to zero, which `bf16_bits` (and so every other bf16
/// product) does not.
///
/// # Safety
/// The CPU has AVX-512F; `x` holds 32 values and `out` room for 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_32_avx512(x: *const f32, out: *mut u32) {
    use std::arch::x86_64::*;
    let (one, half, magnitude, inf, quiet) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0x7FFF),
        _mm512_set1_epi32(0x7FFF_FFFF),
        _mm512_set1_epi32(0x7F80_0000),
        _mm512_set1_epi32(0x40),
    );
    for h in 0..2 {
        // SAFETY: 16 values at 16 * h < 32, 8 slots at 8 * h < 16 (the caller's contract).
        unsafe {
            let b = _mm512_loadu_si512(x.add(16 * h).cast());
            let high = _mm512_srli_epi32::<16>(b);
            let bias = _mm512_add_epi32(half, _mm512_and_si512(high, one));
            let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(b, bias));
            let is_nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(b, magnitude), inf);
            let bits = _mm512_mask_blend_epi32(is_nan, rounded, _mm512_or_si512(high, quiet));
            // `vpmovdw` keeps each lane's low half: input 2p in the low half of pair p.
            _mm256_storeu_si256(out.add(8 * h).cast(), _mm512_cvtepi32_epi16(bits));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both packers that round (row-major pairs for the panels, tiles for AMX) give the pairs
    /// of `bf16_bits` value by value, corner values and padding included: checked here on any
    /// CPU, since the AMX products that read the tiles run only on Sapphire Rapids and later.
    #[test]
    fn rounding_packers_give_the_pairs_of_bf16_bits() {
        for (rows, k) in [
            (1usize, 1usize),
            (3, 31),
            (32, 32),
            (17, 33),
            (32, 95),
            (5, 64),
            (30, 131),
            (7, 70),
        ] {
            // Every seventh value one whose rounding is a corner: NaNs (quiet, signalling,
            // negative), infinities, denormals, ties to even both ways, the largest finite
            // values (which round to infinity).
            let corners = [
                0x7FC0_0000u32,
                0x7F80_0001,
                0xFFC0_0001,
                0x7F80_0000,
                0xFF80_0000,
                0x0000_0001,
                0x8007_FFFF,
                0x3F80_8000,
                0x3F81_8000,
                0x7F7F_FFFF,
                0xFF7F_FFFF,
            ];
            let x: Vec<f32> = (0..rows * k)
                .map(|i| match i % 7 {
                    3 => f32::from_bits(corners[i / 7 % corners.len()]),
                    _ => ((i * 7919) % 1999) as f32 / 999.0 - 1.0,
                })
                .collect();
            let steps = k.div_ceil(2);
            let kblocks = steps.div_ceil(TILE_STEPS);
            let len = kblocks * 2 * 16 * TILE_STEPS;
            let mut got = vec![MaybeUninit::new(u32::MAX); len];
            tile_rows(Isa::best(), &x, k, kblocks, &mut got);
            // The pairs one value at a time through `bf16_bits` (what both packers' AVX-512
            // code must equal), as the row-major packer lays them out.
            let pairs: Vec<u32> = x
                .chunks_exact(k)
                .flat_map(|row| {
                    row.chunks(2).map(|p| {
                        bf16_bits(p[0]) as u32 | p.get(1).map_or(0, |&v| bf16_bits(v) as u32) << 16
                    })
                })
                .collect();
            assert_eq!(bf16_pairs(&x, rows, k), pairs, "({rows}, {k}) row-major");
            let mut want = vec![MaybeUninit::new(u32::MAX - 1); len];
            amx::tile_steps(&pairs, steps, kblocks, &mut want);
            // SAFETY: both were filled with values before the packers wrote over them.
            let (got, want): (Vec<u32>, Vec<u32>) = unsafe {
                (
                    got.iter().map(|v| v.assume_init()).collect(),
                    want.iter().map(|v| v.assume_init()).collect(),
                )
            };
            assert_eq!(got, want, "({rows}, {k})");
        }
    }
}
