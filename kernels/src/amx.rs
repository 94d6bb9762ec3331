//! Intel AMX (Advanced Matrix Extensions): whether this process may use its tiles, and the bf16 tile
//! microkernel of the bf16 GEMMs at [`Level::Amx`](crate::cpu::Level::Amx).
//!
//! One `tdpbf16ps` multiplies a 16 × 32 block of A by a 32 × 16 block of B (16 × 16 × 32 products):
//! sixteen times the bf16 products of an AVX-512 `vdpbf16ps` per instruction. Stable Rust has
//! neither AMX intrinsics nor AMX feature detection, so detection reads CPUID, Linux's permission
//! is asked with `arch_prctl`, and the kernel is inline assembly (the assembler takes AMX mnemonics
//! without a target feature).

/// Whether the CPU has AMX tiles with bf16 products and Linux granted this process the tile data
/// state (`ARCH_REQ_XCOMP_PERM`; without that grant the first tile instruction raises SIGILL).
/// Asked once; later calls return the first answer.
pub fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(request)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[allow(unused_unsafe)] // `__cpuid_count` is safe to call in newer Rust, unsafe in the oldest we support
fn request() -> bool {
    use std::arch::x86_64::__cpuid_count;
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE. Leaf 7 exists when leaf 0 says so.
    // SAFETY: CPUID is available on every x86-64 CPU.
    let max_leaf = unsafe { __cpuid_count(0, 0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    // SAFETY: as above; leaf 7 exists.
    let edx = unsafe { __cpuid_count(7, 0) }.edx;
    if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with an integer argument; it changes only this process's permitted state
    // components. A kernel without AMX support refuses it (we then use AVX-512).
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn request() -> bool {
    false
}

/// Rows of A (and of the tile) per microkernel call.
pub const MR: usize = 32;
/// Columns of B (and of the tile) per microkernel call.
pub const NR: usize = 32;
/// Depth step of one `tdpbf16ps` (bf16 values per A tile row); packed depths are padded to it.
pub const K_STEP: usize = 32;

/// Palette 1 with tmm0–tmm7 all 16 rows × 64 bytes: tmm0–3 the four 16 × 16 f32 quarters of the
/// 32 × 32 result, tmm4–5 the two 16-row halves of A, tmm6–7 the two 16-column halves of B.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
};

thread_local! {
    /// Live [`Tiles`] guards on this thread.
    static CONFIGURED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The tile registers configured on this thread for [`tile_bf16`], released (`tilerelease`) when
/// the last guard of the thread drops. Loading the configuration costs about as much as a small
/// tile product, so a GEMM holds one guard across all its tiles. Guards nest.
pub struct Tiles {
    _thread_bound: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Configures the tiles (unless a guard of this thread already did). Panics unless [`enabled`].
    pub fn configure() -> Tiles {
        assert!(enabled(), "AMX tiles are not available to this process");
        CONFIGURED.with(|n| {
            if n.get() == 0 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AMX is enabled for this process and CONFIG is a valid palette-1
                // configuration; only this module's code uses the tiles on our threads.
                unsafe {
                    std::arch::asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack, readonly))
                };
            }
            n.set(n.get() + 1);
        });
        Tiles { _thread_bound: std::marker::PhantomData }
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        CONFIGURED.with(|n| {
            n.set(n.get() - 1);
            if n.get() == 0 {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the tiles were configured by this thread's first guard; releasing them
                // returns the tile state to its initial value.
                unsafe {
                    std::arch::asm!("tilerelease", options(nostack, nomem))
                };
            }
        });
    }
}

/// `tile[r · 32 + j] = Σ_p a[r][p] · b[p][j]` over `kcp` depths for a 32 × 32 block. `a` holds
/// the A tiles in the order they are loaded: per step of [`K_STEP`] depths, 32 rows of 32 values
/// (so every tile load reads 1 KiB in a row); `b` is `kcp / 2` rows of 32 (k, k+1) pairs (the VNNI
/// layout of the packed B strips). Panics unless [`enabled`], if `kcp` is not a multiple of
/// [`K_STEP`], or if a panel is shorter than `kcp · 32`.
pub fn tile_bf16(kcp: usize, a: &[u16], b: &[u16], tile: &mut [f32; NR * MR]) {
    assert!(kcp.is_multiple_of(K_STEP) && a.len() >= kcp * MR && b.len() >= kcp * NR);
    let _tiles = Tiles::configure();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tiles are configured (the guard); every load reads inside `a` and `b` (lengths
    // checked above: per step, two 16-row tiles of each) and the stores write the 32 × 32 `tile`.
    unsafe {
        let a = Operand { ptr: a.as_ptr(), stride: K_STEP * 2, half: 16 * K_STEP, step: K_STEP * MR };
        let b = Operand { ptr: b.as_ptr(), stride: NR * 2 * 2, half: 32, step: K_STEP * NR };
        product_2x2(kcp / K_STEP, a, b, tile.as_mut_ptr(), NR * 4, false)
    };
}

/// bf16 FLOPs (two per product) of one `tdpbf16ps` on full 16 × 16 × 32 tiles.
pub const FLOPS_PER_PRODUCT: u64 = 16 * 16 * 32 * 2;

/// Runs `4 · steps` tile products on zeroed registers (no memory traffic): the tile unit's
/// throughput, behind `limits.amx_peak`. Panics unless [`enabled`].
pub fn product_probe(steps: u64) {
    let _tiles = Tiles::configure();
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tiles are configured (the guard); the products read and write tile registers only.
    unsafe {
        use std::arch::asm;
        asm!("tilezero tmm4", "tilezero tmm5", "tilezero tmm6", "tilezero tmm7", options(nostack, nomem));
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        for _ in 0..steps {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
        }
    }
}

/// One operand of [`product_2x2`] in memory: the two 16-row tiles of a depth step start at `ptr` and
/// `ptr + half` (elements), their rows `stride` bytes apart; each further step of [`K_STEP`] depths
/// starts `step` elements further. A tiles are 16 rows × 32 values; B tiles are 16 rows of 16
/// (k, k+1) pairs (VNNI).
#[derive(Clone, Copy)]
pub(crate) struct Operand {
    pub ptr: *const u16,
    pub stride: usize,
    pub half: usize,
    pub step: usize,
}

/// `C (+)= A · B` for a 32 × 32 block over `steps` steps of [`K_STEP`] depths, operands read where
/// they lie (no packing): `c` is the block's first f32, its rows `c_stride` bytes apart; with
/// `accumulate` the block is loaded first, else the products start from zero.
///
/// # Safety
/// A live [`Tiles`] guard on this thread; every tile the operands describe (16 rows of 64 bytes
/// at their stride, for each step) is readable, and the 32 rows of 128 bytes at `c` are readable
/// and writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn product_2x2(steps: usize, a: Operand, b: Operand, c: *mut f32, c_stride: usize, accumulate: bool) {
    use std::arch::asm;
    // SAFETY (every block below): the contract, for the four 16 × 16 quarters of C and each step's
    // tiles of A and B.
    let (c1, c2) = unsafe { (c.add(16), c.byte_add(16 * c_stride)) };
    let c3 = unsafe { c2.add(16) };
    if accumulate {
        unsafe {
            asm!(
                "tileloadd tmm0, [{c0} + {sc} * 1]",
                "tileloadd tmm1, [{c1} + {sc} * 1]",
                "tileloadd tmm2, [{c2} + {sc} * 1]",
                "tileloadd tmm3, [{c3} + {sc} * 1]",
                c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, sc = in(reg) c_stride,
                options(nostack, readonly),
            );
        }
    } else {
        unsafe { asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem)) };
    }
    for k in 0..steps {
        unsafe {
            let a0 = a.ptr.add(k * a.step);
            let b0 = b.ptr.add(k * b.step);
            asm!(
                "tileloadd tmm4, [{a0} + {sa} * 1]",
                "tileloadd tmm6, [{b0} + {sb} * 1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b1} + {sb} * 1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {sa} * 1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0,
                a1 = in(reg) a0.add(a.half),
                b0 = in(reg) b0,
                b1 = in(reg) b0.add(b.half),
                sa = in(reg) a.stride,
                sb = in(reg) b.stride,
                options(nostack, readonly),
            );
        }
    }
    unsafe {
        asm!(
            "tilestored [{c0} + {sc} * 1], tmm0",
            "tilestored [{c1} + {sc} * 1], tmm1",
            "tilestored [{c2} + {sc} * 1], tmm2",
            "tilestored [{c3} + {sc} * 1], tmm3",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, sc = in(reg) c_stride,
            options(nostack),
        );
    }
}
