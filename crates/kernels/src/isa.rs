//! Which instruction set a kernel runs with, as a value that proves the CPU has it.
//!
//! Every row kernel and the attention kernel is compiled three times: for the baseline target,
//! with AVX2 and FMA enabled (AMD Zen 3 and other CPUs without AVX-512), and with AVX-512
//! enabled ([`multiversion!`]). The copies run the same source with the same operation order
//! (Rust never contracts a multiply and an add into an FMA on its own), so they give the same
//! bits; the wider copies only run faster (the baseline x86-64 target has no vector floor, so
//! its `exp` calls libm's `floorf` per value). An [`Isa`] picks the copy: it can only be
//! made for an instruction set this CPU has, which is what makes the dispatch safe.

/// An instruction-set level this CPU runs (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(Level);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    Baseline,
    Avx2,
    Avx512,
}

impl Isa {
    /// The compilation target's baseline (no run-time features): runs everywhere.
    pub fn baseline() -> Isa {
        Isa(Level::Baseline)
    }

    /// AVX2 with FMA, where this CPU has them.
    pub fn avx2() -> Option<Isa> {
        has_avx2_fma().then_some(Isa(Level::Avx2))
    }

    /// AVX-512F, where this CPU has it.
    pub fn avx512() -> Option<Isa> {
        has_avx512f().then_some(Isa(Level::Avx512))
    }

    /// The widest level this CPU runs: what the kernels use by default.
    pub fn best() -> Isa {
        Isa::avx512().or_else(Isa::avx2).unwrap_or(Isa::baseline())
    }

    /// Every level this CPU runs, the baseline first.
    pub fn all() -> Vec<Isa> {
        [Some(Isa::baseline()), Isa::avx2(), Isa::avx512()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// `baseline`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self.0 {
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether this is the AVX2 level (and so whether the CPU has AVX2 and FMA).
    pub(crate) fn is_avx2(self) -> bool {
        self.0 == Level::Avx2
    }

    /// Whether this is the AVX-512 level (and so whether the CPU has AVX-512F).
    pub(crate) fn is_avx512(self) -> bool {
        self.0 == Level::Avx512
    }
}

/// Whether this CPU has AVX-512F (cached by the standard library after the first call).
pub(crate) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// This CPU's family and model as `cpuid` gives them (`6.143` for Intel Sapphire Rapids),
/// `unknown` off x86-64.
pub(crate) fn cpu_model() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let eax = std::arch::x86_64::__cpuid(1).eax;
        let (model, family) = ((eax >> 4) & 0xF, (eax >> 8) & 0xF);
        let (ext_model, ext_family) = ((eax >> 16) & 0xF, (eax >> 20) & 0xFF);
        // The SDM's rule: the extended fields count for families 6 and 15 (model) and 15
        // (family).
        let model = if family == 6 || family == 15 {
            (ext_model << 4) | model
        } else {
            model
        };
        let family = if family == 15 {
            family + ext_family
        } else {
            family
        };
        format!("{family}.{model}")
    }
    #[cfg(not(target_arch = "x86_64"))]
    return "unknown".into();
}

/// Whether this CPU has AVX2 and FMA.
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// `multiversion!` turns `fn name(isa: Isa, args) body` into a function that runs `body`
/// compiled with AVX-512 when `isa` is [`Isa::avx512`]'s, with AVX2 and FMA when it is
/// [`Isa::avx2`]'s, and compiled for the baseline target otherwise (the body may pass `isa` on to the kernels it calls).
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($isa:ident: Isa, $($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($isa: $crate::isa::Isa, $($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, unused_variables)]
            fn generic($isa: $crate::isa::Isa, $($arg: $ty),*) $body
            /// # Safety
            /// The CPU has AVX-512F.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn wide($isa: $crate::isa::Isa, $($arg: $ty),*) {
                generic($isa, $($arg),*)
            }
            /// # Safety
            /// The CPU has AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2($isa: $crate::isa::Isa, $($arg: $ty),*) {
                generic($isa, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $isa.is_avx512() {
                // SAFETY: an AVX-512 `Isa` exists only where the CPU has AVX-512F.
                return unsafe { wide($isa, $($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $isa.is_avx2() {
                // SAFETY: an AVX2 `Isa` exists only where the CPU has AVX2 and FMA.
                return unsafe { avx2($isa, $($arg),*) };
            }
            generic($isa, $($arg),*)
        }
    };
}

pub(crate) use multiversion;
