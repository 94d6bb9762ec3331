//! The SIMD level host kernels run at: the fastest the CPU supports, decided at run time, or another
//! one forced with `ASCEND_KERNELS_LEVEL=portable|avx2|avx512|avx512bf16|amx` (a level the CPU lacks
//! is never used).

use std::sync::OnceLock;

/// A SIMD level, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plain Rust the compiler vectorises for the baseline target (any CPU, aarch64 included).
    Portable,
    /// x86-64 AVX2 + FMA (and F16C).
    Avx2,
    /// x86-64 AVX-512F.
    Avx512,
    /// x86-64 AVX-512F with AVX-512 BF16 (native bf16 dot products for bf16 matmuls).
    Avx512Bf16,
    /// AVX-512 BF16 plus AMX tiles (Sapphire Rapids and later), which bf16 GEMMs and the bf16
    /// products of prefill attention use; everything else runs as at `Avx512Bf16`.
    Amx,
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [Level::Portable, Level::Avx2, Level::Avx512, Level::Avx512Bf16, Level::Amx];

    /// `portable`, `avx2`, `avx512`, `avx512bf16` or `amx`.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Avx512Bf16 => "avx512bf16",
            Level::Amx => "amx",
        }
    }

    /// Parses a name as [`Level::name`] prints it.
    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s.trim())
    }
}

/// The best level this CPU supports.
pub fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        // The AVX-512 levels run AVX2/FMA code too (edge tiles, lower-level kernels): a VM exposing
        // avx512f but masking FMA gets the portable level, not an illegal instruction. F16C (f16
        // rows at the AVX2 level) came before AVX2 on every CPU that has both.
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            if std::arch::is_x86_feature_detected!("avx512bf16") {
                return if crate::amx::enabled() { Level::Amx } else { Level::Avx512Bf16 };
            }
            return Level::Avx512;
        }
        if avx2 {
            return Level::Avx2;
        }
    }
    Level::Portable
}

/// Every level this CPU can run, lowest first (the tests run each).
pub fn available() -> Vec<Level> {
    Level::ALL.into_iter().filter(|&l| l <= detected()).collect()
}

/// The level kernels use: [`preferred`], or `ASCEND_KERNELS_LEVEL` (read once) where it names a
/// level the CPU has (a higher one is lowered to [`detected`]).
pub fn active() -> Level {
    static ACTIVE: OnceLock<Level> = OnceLock::new();
    *ACTIVE.get_or_init(|| {
        let best = detected();
        match std::env::var("ASCEND_KERNELS_LEVEL").ok().as_deref().map(Level::parse) {
            Some(Some(forced)) => forced.min(best),
            Some(None) => {
                let level = preferred();
                eprintln!(
                    "ascend-kernels: ASCEND_KERNELS_LEVEL must be portable, avx2, avx512, avx512bf16 or amx; using {}",
                    level.name()
                );
                level
            }
            None => preferred(),
        }
    })
}

/// The fastest level for this CPU: [`detected`], except AVX-512 BF16 without AMX where its bf16
/// dot products (`vdpbf16ps`) are clearly slower than f32 FMAs on converted values, as on Sapphire
/// Rapids-class cores in VMs that hide AMX (half the product rate: 70 vs 36 µs for the same
/// products; bf16 prefill 127 vs 226 GFLOPS): there it is [`Level::Avx512`]. That comparison is timed once per process, in about
/// a millisecond (both microkernels on the same products in L1); the levels above stay available
/// to tests and to `ASCEND_KERNELS_LEVEL`.
pub fn preferred() -> Level {
    match detected() {
        Level::Avx512Bf16 if !crate::gemm::bf16_products_pay() => Level::Avx512,
        best => best,
    }
}
