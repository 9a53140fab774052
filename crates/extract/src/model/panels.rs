//! The blocked matrix product behind both compute dtypes: weights packed once into 32-column
//! panels, activations packed per call, and an AVX-512 micro-kernel of 12 rows x 32 columns
//! (24 accumulators) that runs one multiply-add per (row, column, step).
//!
//! A "step" is one 32-bit value of the inner dimension, and the two kernels differ only in it:
//! - [`FmaF32`] (`compute: f32`): a step is one f32 input; `vfmadd` per step.
//! - [`DotBf16`] (`compute: bf16` on CPUs with AVX512-BF16 but no AMX, such as AMD Zen 4): a step
//!   is a pair of consecutive inputs rounded to bf16 and held in one u32; `vdpbf16ps` per step,
//!   twice the multiply rate of f32 FMA.
//!
//! Why by hand: candle's CPU matmul goes through the `gemm` crate, whose stable-Rust build runs
//! AVX2 kernels only (its AVX-512 ones need nightly), which caps it near half of what these cores
//! do with AVX-512, and it has no bf16 dot-product kernel.
//!
//! Numerics: every output is one f32 chain over the steps in order, whatever the batch, the
//! row's position in it or the thread split, so a text's vectors do not depend on its
//! neighbours.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

use llmembed_core::{Error, Result};
use rayon::prelude::*;

/// Columns of B per panel: two AVX-512 registers.
const PANEL: usize = 32;
/// Rows of A per micro-kernel call: 12 x 2 accumulators, plus the two B vectors and the
/// broadcast, fit in the 32 vector registers.
const MICRO_ROWS: usize = 12;
/// Rows of A per task, at most: a band of A stays in L2 while every B panel passes over it.
const BAND_ROWS: usize = 96;
/// Steps per pass over a band: a block of B (1024 x 32 steps, 128 KiB) stays in L2 while the
/// band's micro blocks pass over it; each further pass repacks A and reloads C. On AMD Zen 4,
/// 1024 ran f32 products about 3% faster than L1-sized blocks of 256 (and bf16 the same); most
/// of the models' products now take one pass.
const DEPTH: usize = 1024;

/// A 32-bit value of the inner dimension: an f32 input, or two bf16 inputs in a u32.
pub(crate) trait Step: Copy + Send + Sync + 'static {
    const ZERO: Self;
}
impl Step for f32 {
    const ZERO: f32 = 0.0;
}
impl Step for u32 {
    const ZERO: u32 = 0;
}

/// One kind of step and its micro-kernel.
pub(crate) trait Kernel {
    type Step: Step;
    /// Whether this CPU runs the kernel (checked once by whoever packs weights for it).
    fn available() -> bool;
    /// `R` rows of packed A times one block of a packed panel, into C (see [`micro`]).
    ///
    /// # Safety
    /// [`Kernel::available`] holds; the pointers are valid for the extents in `s`.
    unsafe fn micro<const R: usize>(
        s: &Block,
        a: *const Self::Step,
        b: *const Self::Step,
        c: *mut f32,
    );
}

/// f32 inputs, one FMA per input.
pub(crate) struct FmaF32;
/// bf16 input pairs (input `2p` in the low half of step `p`), one `vdpbf16ps` per pair.
pub(crate) struct DotBf16;

/// A weight matrix of `k` steps x `n` outputs in panels of [`PANEL`] columns, each `k` rows of
/// 32 contiguous steps; the last panel padded with zero columns.
///
/// The memory is its own anonymous mapping, which Linux is asked to back with 2 MiB pages. Why:
/// a model's weights are far bigger than what the TLB covers with 4 KiB pages (SmolLM2's are 420
/// MB in f32), and every block of B the kernel starts on is on pages it has not used since the
/// last batch; with 2 MiB pages the products ran about 4% faster. The advice is only a hint:
/// without transparent huge pages the memory is the same, on 4 KiB pages.
pub(crate) struct Panels<T: Step> {
    map: memmap2::MmapMut,
    k: usize,
    n: usize,
    step: PhantomData<T>,
}

impl<T: Step> Panels<T> {
    /// Packs `w`, `k` rows of `n` steps, row-major.
    pub fn new(w: &[T], k: usize, n: usize) -> Result<Panels<T>> {
        assert_eq!(w.len(), k * n, "panels: {} values for ({k}, {n})", w.len());
        let len = n.div_ceil(PANEL) * k * PANEL;
        // Whole 2 MiB pages: Linux places a mapping on a 2 MiB boundary only when its length
        // is a multiple of 2 MiB (and a last partial page would stay small).
        const HUGE_PAGE: usize = 2 << 20;
        let bytes = (len * size_of::<T>()).next_multiple_of(HUGE_PAGE);
        let map = memmap2::MmapOptions::new()
            .len(bytes)
            .map_anon()
            .map_err(|e| Error::compute("allocate weight panels", e))?;
        // Before the first write, so that the pages are huge from their first fault.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let mut panels = Panels {
            map,
            k,
            n,
            step: PhantomData,
        };
        let data = panels.as_mut_slice();
        for (row, values) in w.chunks_exact(n.max(1)).enumerate() {
            for (p, chunk) in values.chunks(PANEL).enumerate() {
                let at = (p * k + row) * PANEL;
                data[at..at + chunk.len()].copy_from_slice(chunk);
            }
        }
        Ok(panels)
    }

    fn len(&self) -> usize {
        self.n.div_ceil(PANEL) * self.k * PANEL
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: the mapping holds `len` 4-byte steps (anonymous maps start zeroed, a valid
        // f32 and u32) and is page-aligned.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast(), self.len()) }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as for as_slice, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().cast(), self.len()) }
    }

    /// `a @ self` for `a` (m, k) steps row-major: (m, n) f32 row-major. `K` must be the kernel
    /// the panels were packed for, and available.
    pub fn matmul<K: Kernel<Step = T>>(&self, a: &[T], m: usize) -> Vec<f32> {
        assert_eq!(
            a.len(),
            m * self.k,
            "panel matmul: A is not ({m}, {})",
            self.k
        );
        panel_matmul::<K>(a, m, self.k, self.as_slice(), self.n)
    }
}

fn panel_matmul<K: Kernel>(a: &[K::Step], m: usize, k: usize, b: &[K::Step], n: usize) -> Vec<f32> {
    if m == 0 || n == 0 || k == 0 {
        return vec![0f32; m * n];
    }
    // Every element of C is written by the first input block's micro-kernel call that covers
    // it, before any later block reads it back.
    let mut c: Vec<MaybeUninit<f32>> = Vec::with_capacity(m * n);
    // SAFETY: MaybeUninit needs no initialisation.
    unsafe { c.set_len(m * n) };
    // Bands of rows, as many as keep every thread busy, none over BAND_ROWS, and each a whole
    // number of micro blocks but the last: a band's ragged last block runs a narrower kernel
    // (when every band had one, those took about 7% of the time).
    let threads = rayon::current_num_threads().max(1);
    let bands = m.div_ceil(BAND_ROWS).div_ceil(threads) * threads;
    let blocks = m.div_ceil(MICRO_ROWS);
    let mut tasks = Vec::with_capacity(bands);
    let (mut c_rest, mut a_rest) = (&mut c[..], a);
    for band in 0..bands {
        let band_blocks = blocks / bands + usize::from(band < blocks % bands);
        let rows = (band_blocks * MICRO_ROWS).min(a_rest.len() / k);
        if rows == 0 {
            continue;
        }
        let (c_band, c_tail) = c_rest.split_at_mut(rows * n);
        let (a_band, a_tail) = a_rest.split_at(rows * k);
        tasks.push((c_band, a_band));
        (c_rest, a_rest) = (c_tail, a_tail);
    }
    debug_assert!(a_rest.is_empty());
    tasks.into_par_iter().for_each(|(c_band, a_band)| {
        let rows = a_band.len() / k;
        // Steps in blocks of DEPTH, so that a panel's block of B (DEPTH x 32) stays in cache
        // while every row of the band passes over it; later blocks continue the chains from
        // the values stored in C, so the result is the unblocked chain's, bit for bit.
        let micro_blocks = rows.div_ceil(MICRO_ROWS);
        let mut a_packed: Vec<K::Step> =
            vec![K::Step::ZERO; micro_blocks * MICRO_ROWS * DEPTH.min(k)];
        for k0 in (0..k).step_by(DEPTH) {
            let depth = (k - k0).min(DEPTH);
            // The band's slice of A, interleaved per micro block (step-major, MICRO_ROWS
            // values per step), so that the kernel reads it as one sequential stream.
            for (rows_in, dst) in a_band
                .chunks(MICRO_ROWS * k)
                .zip(a_packed.chunks_exact_mut(MICRO_ROWS * depth))
            {
                pack_micro_block(rows_in, k, k0..k0 + depth, dst);
            }
            let panels = n.div_ceil(PANEL);
            for p in 0..panels {
                let cols = (n - p * PANEL).min(PANEL);
                let b_block = &b[(p * k + k0) * PANEL..(p * k + k0 + depth) * PANEL];
                // The block of B that the next panel (or the next input block, or the next
                // band) starts with: its lines are fetched into L2 while this panel's
                // blocks compute, instead of stalling the first call on it.
                let next_b = if p + 1 < panels {
                    ((p + 1) * k + k0) * PANEL
                } else if k0 + depth < k {
                    (k0 + depth) * PANEL
                } else {
                    0
                };
                for mb in 0..micro_blocks {
                    let r0 = mb * MICRO_ROWS;
                    let r = (rows - r0).min(MICRO_ROWS);
                    let a_block = &a_packed[mb * MICRO_ROWS * depth..(mb + 1) * MICRO_ROWS * depth];
                    // Each call fetches a quarter of the next block (a line every two
                    // steps); later calls fetch nothing new.
                    let prefetch_b = if mb < 4 {
                        b.as_ptr().wrapping_add(next_b + mb * depth * PANEL / 4)
                    } else {
                        b_block.as_ptr()
                    };
                    // The tile of C that the next call resumes from.
                    let next_c = if mb + 1 < micro_blocks {
                        (r0 + MICRO_ROWS) * n + p * PANEL
                    } else {
                        (p + 1) * PANEL
                    };
                    let block = Block {
                        rows: r,
                        depth,
                        ldc: n,
                        cols,
                        resume: k0 > 0,
                        prefetch_b: prefetch_b.cast(),
                        prefetch_c: c_band.as_ptr().wrapping_add(next_c).cast(),
                    };
                    micro::<K>(&block, a_block, b_block, &mut c_band[r0 * n + p * PANEL..]);
                }
            }
        }
    });
    // SAFETY: all m * n elements were written above.
    let mut c = std::mem::ManuallyDrop::new(c);
    unsafe { Vec::from_raw_parts(c.as_mut_ptr().cast(), c.len(), c.capacity()) }
}

/// Copies the steps `inputs` of each row of `rows` (row-major, `k` steps each, at most
/// MICRO_ROWS rows) into `dst` step-major: MICRO_ROWS values per step.
fn pack_micro_block<T: Step>(rows: &[T], k: usize, inputs: std::ops::Range<usize>, dst: &mut [T]) {
    let depth = inputs.len();
    if rows.len() == MICRO_ROWS * k {
        // The common case: sixteen steps of the twelve rows at a time through an AVX-512
        // register transpose; the last steps with twelve sequential reads and one sequential
        // write per step.
        let rows: [&[T]; MICRO_ROWS] =
            std::array::from_fn(|r| &rows[r * k + inputs.start..r * k + inputs.end]);
        // SAFETY: panels are multiplied only where the CPU has AVX-512F (every kernel needs
        // it); steps are 4-byte values, moved as bits.
        #[cfg(target_arch = "x86_64")]
        let done = unsafe { avx512::pack12(&rows, dst) };
        #[cfg(not(target_arch = "x86_64"))]
        let done = 0;
        for (i, out) in dst
            .chunks_exact_mut(MICRO_ROWS)
            .take(depth)
            .enumerate()
            .skip(done)
        {
            for (o, row) in out.iter_mut().zip(&rows) {
                *o = row[i];
            }
        }
    } else {
        for (r, row) in rows.chunks_exact(k).enumerate() {
            let row = &row[inputs.clone()];
            for (o, &v) in dst.iter_mut().skip(r).step_by(MICRO_ROWS).zip(row) {
                *o = v;
            }
        }
    }
}

/// One micro-kernel call's shape.
pub(crate) struct Block {
    /// Rows of A and C, at most [`MICRO_ROWS`].
    rows: usize,
    /// Steps summed in this call.
    depth: usize,
    /// Distance between rows of C.
    ldc: usize,
    /// Columns of C written (the panel's real columns).
    cols: usize,
    /// Continue from the values in C instead of from zero.
    resume: bool,
    /// Memory to prefetch into L2, a line every two steps; only a hint, so any address will
    /// do (it is never read).
    prefetch_b: *const u8,
    /// A C tile (MICRO_ROWS rows of PANEL values, `ldc` apart) to prefetch into L1; a hint too.
    prefetch_c: *const f32,
}

/// C[..rows][..cols] (+)= A_block . B_block, with `a` one packed micro block (depth x
/// MICRO_ROWS) and `c` starting at the block's first element.
fn micro<K: Kernel>(s: &Block, a: &[K::Step], b: &[K::Step], c: &mut [MaybeUninit<f32>]) {
    assert!(s.rows >= 1 && a.len() == s.depth * MICRO_ROWS);
    assert!(b.len() == s.depth * PANEL && s.cols <= PANEL);
    assert!(c.len() >= (s.rows - 1) * s.ldc + s.cols);
    macro_rules! dispatch {
        ($($r:literal)*) => {
            match s.rows {
                // SAFETY: panels exist only where the kernel is available; the asserts above
                // bound every access.
                $($r => unsafe { K::micro::<$r>(s, a.as_ptr(), b.as_ptr(), c.as_mut_ptr().cast()) },)*
                _ => unreachable!("micro-kernel rows {} > {MICRO_ROWS}", s.rows),
            }
        };
    }
    dispatch!(1 2 3 4 5 6 7 8 9 10 11 12);
}

#[cfg(target_arch = "x86_64")]
fn has_avx512f() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

impl Kernel for FmaF32 {
    type Step = f32;

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512f();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const f32, b: *const f32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::micro_f32::<R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

impl Kernel for DotBf16 {
    type Step = u32;

    fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return has_avx512f() && std::arch::is_x86_feature_detected!("avx512bf16");
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    unsafe fn micro<const R: usize>(s: &Block, a: *const u32, b: *const u32, c: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract.
        unsafe {
            avx512::micro_bf16::<R>(s, a, b, c)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (s, a, b, c);
            unreachable!("panels are packed only on x86_64")
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Block, MICRO_ROWS, PANEL, Step};

    /// Packs the first steps of twelve rows (all of the same length) in whole groups of 16:
    /// `dst[i * 12 + r] = rows[r][i]`. Returns how many steps it packed. The values move
    /// through f32 registers as bits (unpacks and shuffles only), so u32 steps pass unchanged.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack12<T: Step>(rows: &[&[T]; MICRO_ROWS], dst: &mut [T]) -> usize {
        const { assert!(size_of::<T>() == 4) };
        let depth = rows[0].len() / 16 * 16;
        assert!(rows.iter().all(|r| r.len() >= depth) && dst.len() >= depth * MICRO_ROWS);
        let mut i0 = 0;
        while i0 < depth {
            // Rows 12..16 of the 16 x 16 transpose are zero (and never stored).
            let mut r = [_mm512_setzero_ps(); 16];
            for (v, row) in r.iter_mut().zip(rows) {
                // SAFETY: i0 + 16 <= depth <= the row's length.
                *v = unsafe { _mm512_loadu_ps(row.as_ptr().add(i0).cast()) };
            }
            // 32-bit, then 64-bit interleaves within 128-bit lanes: b[4q + m], lane L, holds
            // rows 4q..4q+4 at step 4L + m.
            let mut a = [_mm512_setzero_ps(); 16];
            for p in 0..8 {
                a[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
                a[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
            }
            let mut b = [_mm512_setzero_ps(); 16];
            for q in 0..4 {
                let pd = |x: __m512| _mm512_castps_pd(x);
                let (a0, a1, a2, a3) = (
                    pd(a[4 * q]),
                    pd(a[4 * q + 1]),
                    pd(a[4 * q + 2]),
                    pd(a[4 * q + 3]),
                );
                b[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
                b[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
                b[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
                b[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
            }
            // Then 128-bit lanes across the four groups of rows: step 4L + m.
            for m in 0..4 {
                let c0 = _mm512_shuffle_f32x4::<0x88>(b[m], b[4 + m]);
                let c1 = _mm512_shuffle_f32x4::<0xDD>(b[m], b[4 + m]);
                let d0 = _mm512_shuffle_f32x4::<0x88>(b[8 + m], b[12 + m]);
                let d1 = _mm512_shuffle_f32x4::<0xDD>(b[8 + m], b[12 + m]);
                let out = [
                    (m, _mm512_shuffle_f32x4::<0x88>(c0, d0)),
                    (4 + m, _mm512_shuffle_f32x4::<0x88>(c1, d1)),
                    (8 + m, _mm512_shuffle_f32x4::<0xDD>(c0, d0)),
                    (12 + m, _mm512_shuffle_f32x4::<0xDD>(c1, d1)),
                ];
                for (j, v) in out {
                    // SAFETY: step i0 + j < depth, and dst holds depth * 12 values.
                    unsafe {
                        let at = dst.as_mut_ptr().add((i0 + j) * MICRO_ROWS);
                        _mm512_mask_storeu_ps(at.cast(), 0x0FFF, v);
                    }
                }
            }
            i0 += 16;
        }
        depth
    }

    /// One micro-kernel: `$name::<R>(s, a, b, c)` runs R rows of A (`$step` values) times one
    /// block of a packed panel into C. The kernels share everything but the step: how a row
    /// of B (32 steps, two vectors `$bvec`) is loaded, how one step of A is broadcast, and the
    /// multiply-add `acc += x . b`.
    macro_rules! micro_kernel {
        (
            $(#[$doc:meta])*
            fn $name:ident($step:ty, $features:literal, $bvec:ty) {
                load_b: |$bp:ident| $load_b:expr,
                broadcast: |$ap:ident| $broadcast:expr,
                madd: |$acc:ident, $x:ident, $bv:ident| $madd:expr $(,)?
            }
        ) => {
            $(#[$doc])*
            // Index loops over the register arrays: they unroll fully (R and V are constants)
            // and read like the algebra.
            #[allow(clippy::needless_range_loop)]
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $name<const R: usize>(
                s: &Block,
                a: *const $step,
                b: *const $step,
                c: *mut f32,
            ) {
                const V: usize = PANEL / 16;
                let mut masks = [0 as __mmask16; V];
                for (v, m) in masks.iter_mut().enumerate() {
                    let live = s.cols.saturating_sub(16 * v).min(16);
                    *m = if live == 16 {
                        0xFFFF
                    } else {
                        ((1u32 << live) - 1) as __mmask16
                    };
                }
                for r in 0..MICRO_ROWS {
                    for v in 0..V {
                        let at = s.prefetch_c.wrapping_add(r * s.ldc + 16 * v);
                        _mm_prefetch::<_MM_HINT_T0>(at.cast());
                    }
                }
                let mut acc = [[_mm512_setzero_ps(); V]; R];
                if s.resume {
                    for r in 0..R {
                        for v in 0..V {
                            // SAFETY: the caller checked that row r's first `cols` values lie
                            // inside C.
                            acc[r][v] = unsafe {
                                _mm512_maskz_loadu_ps(masks[v], c.add(r * s.ldc + 16 * v))
                            };
                        }
                    }
                }
                for i in 0..s.depth {
                    if i % 2 == 0 {
                        let at = s.prefetch_b.wrapping_add(i * PANEL);
                        _mm_prefetch::<_MM_HINT_T1>(at.cast());
                    }
                    let mut bv: [$bvec; V] = [unsafe { std::mem::zeroed() }; V];
                    for v in 0..V {
                        // SAFETY (all reads): i < depth; B holds depth x PANEL steps, A depth
                        // x MICRO_ROWS.
                        let $bp = unsafe { b.add(i * PANEL + 16 * v) };
                        bv[v] = unsafe { $load_b };
                    }
                    for r in 0..R {
                        let $ap = unsafe { a.add(i * MICRO_ROWS + r) };
                        let $x = unsafe { $broadcast };
                        for v in 0..V {
                            let ($acc, $bv) = (acc[r][v], bv[v]);
                            acc[r][v] = $madd;
                        }
                    }
                }
                for r in 0..R {
                    for v in 0..V {
                        // SAFETY: as for the loads.
                        unsafe {
                            _mm512_mask_storeu_ps(c.add(r * s.ldc + 16 * v), masks[v], acc[r][v])
                        };
                    }
                }
            }
        };
    }

    micro_kernel! {
        /// f32 steps: `acc = fma(a, b, acc)`, one rounding per input.
        fn micro_f32(f32, "avx512f", __m512) {
            load_b: |p| _mm512_loadu_ps(p),
            broadcast: |p| _mm512_set1_ps(*p),
            madd: |acc, x, b| _mm512_fmadd_ps(x, b, acc),
        }
    }

    micro_kernel! {
        /// bf16 pair steps: `vdpbf16ps`, which (Intel SDM) adds the product of the pair's high
        /// halves (input 2p + 1), then of its low halves (input 2p), each exact in f32 and each
        /// sum rounded to nearest even, with denormal inputs and outputs flushed to zero.
        fn micro_bf16(u32, "avx512f,avx512bf16", __m512bh) {
            load_b: |p| std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())),
            broadcast: |p| std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*p as i32)),
            madd: |acc, x, b| _mm512_dpbf16_ps(acc, x, b),
        }
    }
}
