//! The AVX-512 parts of the panel product: the 12-row transpose that packs A, and the two
//! micro-kernels (f32 FMA, bf16 pair dot products, int8 quad dot products), one macro body with the step as parameter.

use std::arch::x86_64::*;

use super::{Block, MICRO_ROWS, PANEL, Step, TileScale};

/// Packs the first steps of twelve rows (all of the same length) in whole groups of 16:
/// `dst[i * 12 + r] = rows[r][i]`. Returns how many steps it packed. The values move
/// through f32 registers as bits (unpacks and shuffles only), so u32 steps pass unchanged.
///
/// # Safety
/// The CPU has AVX-512F.
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
            madd: |$acc:ident, $x:ident, $bv:ident| $madd:expr
            $(, scale: $scale:ident)? $(,)?
        }
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU has the kernel's features; `a` holds `s.depth` x MICRO_ROWS steps, `b`
        /// `s.depth` x PANEL steps, and C's first `s.cols` values of each of `R` rows (`s.ldc`
        /// apart) lie in one allocation (what `super::micro` asserts).
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
                        // Past a ragged last panel's columns the pointer may leave C
                        // (`wrapping_add`, never `add`); the mask keeps the load inside.
                        let at = c.wrapping_add(r * s.ldc + 16 * v);
                        // SAFETY: the caller checked that row r's first `cols` values lie
                        // inside C, and the mask reads no others.
                        acc[r][v] = unsafe { _mm512_maskz_loadu_ps(masks[v], at) };
                    }
                }
            }
            for i in 0..s.depth {
                if i % 2 == 0 {
                    let at = s.prefetch_b.wrapping_add(i * PANEL);
                    _mm_prefetch::<_MM_HINT_T1>(at.cast());
                }
                // SAFETY: an all-zero vector register is a valid value of every vector type.
                let mut bv: [$bvec; V] = [unsafe { std::mem::zeroed() }; V];
                for v in 0..V {
                    // SAFETY: i < depth; B holds depth x PANEL steps.
                    let $bp = unsafe { b.add(i * PANEL + 16 * v) };
                    // SAFETY: as above.
                    bv[v] = unsafe { $load_b };
                }
                for r in 0..R {
                    // SAFETY: i < depth, r < R <= MICRO_ROWS; A holds depth x MICRO_ROWS steps.
                    let $ap = unsafe { a.add(i * MICRO_ROWS + r) };
                    // SAFETY: as above.
                    let $x = unsafe { $broadcast };
                    for v in 0..V {
                        let ($acc, $bv) = (acc[r][v], bv[v]);
                        acc[r][v] = $madd;
                    }
                }
            }
            $(
                if let Some(t) = &s.scale {
                    for r in 0..R {
                        // SAFETY: the caller's contract (`super::micro` checks the scale's
                        // extents).
                        acc[r] = unsafe { $scale(acc[r], r, t, &masks) };
                    }
                }
            )?
            for r in 0..R {
                for v in 0..V {
                    let at = c.wrapping_add(r * s.ldc + 16 * v);
                    // SAFETY: as for the loads.
                    unsafe { _mm512_mask_storeu_ps(at, masks[v], acc[r][v]) };
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

micro_kernel! {
    /// int8 steps: `vpdpbusd` adds the four products of a step's u8 activations and s8
    /// weights to each int32 lane, exactly (no saturation); the int32 sums travel in the f32
    /// accumulators and C as bits (casts move no data).
    fn micro_i8(u32, "avx512f,avx512bw,avx512vl,avx512vnni", __m512i) {
        load_b: |p| _mm512_loadu_si512(p.cast()),
        broadcast: |p| _mm512_set1_epi32(*p as i32),
        madd: |acc, x, b| _mm512_castsi512_ps(_mm512_dpbusd_epi32(_mm512_castps_si512(acc), x, b)),
        scale: scale_i8,
    }
}

/// Row `r` of int8's sums in the accumulators (int32 bits) turned into outputs while still in
/// registers ([`TileScale`]): `y = s_w * (s_x * (sum - shift) + extra)`, the operations of
/// `int8::descale_avx512` in its order (a product then a sum, each rounded, no FMA; `extra`
/// only for a row with outliers), so its bits. Why here: scaling in a pass of its own over the
/// band's outputs read and wrote every output once more, and with its calls was about 7% of a
/// SmolLM2 int8 extraction's samples on AMD Zen 5. The row goes in and out by value: with the
/// accumulators behind a reference, the compiler kept them in memory around the call (a
/// `memset` on every micro-kernel call).
///
/// # Safety
/// The CPU has AVX-512F, -BW and -VL; `t` holds row `r` and the block's columns (what
/// `super::micro` asserts), and every outlier's weights are `t.n` long.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn scale_i8(
    sums: [__m512; PANEL / 16],
    r: usize,
    t: &TileScale,
    masks: &[__mmask16; PANEL / 16],
) -> [__m512; PANEL / 16] {
    const V: usize = PANEL / 16;
    let row_scale = _mm512_set1_ps(t.row_scales[r]);
    // Past a last panel's columns the pointers may leave their slices (`wrapping_add`, never
    // `add`): the masks keep the loads inside.
    // SAFETY: masked loads read only the block's columns, which `t` holds.
    let mut x: [__m512; V] = std::array::from_fn(|v| unsafe {
        let at = t.shift.as_ptr().wrapping_add(16 * v);
        let shift = _mm512_maskz_loadu_epi32(masks[v], at.cast());
        let int = _mm512_sub_epi32(_mm512_castps_si512(sums[v]), shift);
        _mm512_mul_ps(row_scale, _mm512_cvtepi32_ps(int))
    });
    let outliers = &t.outliers[t.starts[r]..t.starts[r + 1]];
    if !outliers.is_empty() {
        let mut extra = [_mm512_setzero_ps(); V];
        for &(value, weights) in outliers {
            let value = _mm512_set1_ps(value);
            for v in 0..V {
                let at = weights.as_ptr().wrapping_add(t.col + 16 * v);
                // SAFETY: the block's columns of the outlier's weights, `t.col + cols <= t.n`
                // (asserted by the caller); the mask leaves the rest unread.
                let w = unsafe { _mm_maskz_loadu_epi8(masks[v], at.cast()) };
                let w = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(w));
                extra[v] = _mm512_add_ps(extra[v], _mm512_mul_ps(value, w));
            }
        }
        for v in 0..V {
            x[v] = _mm512_add_ps(x[v], extra[v]);
        }
    }
    // SAFETY: as above.
    std::array::from_fn(|v| unsafe {
        let scales = _mm512_maskz_loadu_ps(masks[v], t.scales.as_ptr().wrapping_add(16 * v));
        _mm512_mul_ps(scales, x[v])
    })
}
