//! The two x86 register widths the row kernels are written for: AVX-512F (16 f32 lanes, 32
//! registers) and AVX2 with FMA (8 lanes, 16 registers). The kernels in `x86` are written once
//! against [`Width`] and compiled per width.

use super::Lanes;
use std::arch::x86_64::*;

/// A vector width for f32 arithmetic: its register type and the operations the kernels use.
///
/// # Safety (every method)
/// The CPU has the width's features ([`W512`]: AVX-512F; [`W256`]: AVX2, FMA and F16C) and the
/// caller is compiled for them (else each operation is a call); pointers are valid for `LANES`
/// values.
pub trait Width {
    /// One register of f32 lanes.
    type F: Copy;
    /// f32 lanes per register.
    const LANES: usize;
    /// Vector registers the ISA has: what a kernel's block of accumulators must fit in.
    const REGS: usize;
    /// The lowest kernel level whose CPUs have this width's features.
    const LEVEL: crate::cpu::Level;
    unsafe fn zero() -> Self::F;
    unsafe fn splat(x: f32) -> Self::F;
    unsafe fn load(p: *const f32) -> Self::F;
    unsafe fn store(p: *mut f32, v: Self::F);
    /// `LANES` values of any source type, as f32.
    unsafe fn row<T: Lanes>(p: *const T) -> Self::F;
    /// Whether [`Width::row2`] splits rows of `T` into even- and odd-indexed values
    /// ([`Lanes::SPLIT`], at AVX-512).
    fn split<T: Lanes>() -> bool;
    /// `2·LANES` values of any source type, as f32: the first `LANES` and the next, or the
    /// even-indexed and the odd ones where [`Width::split`].
    unsafe fn row2<T: Lanes>(p: *const T) -> [Self::F; 2];
    /// `2·LANES` f32 values in the order [`Width::row2`] gives values of `T`.
    unsafe fn load2<T: Lanes>(p: *const f32) -> [Self::F; 2];
    /// Stores two registers in [`Width::row2`]'s order for `T` as `2·LANES` values in order.
    unsafe fn store2<T: Lanes>(p: *mut f32, v: [Self::F; 2]);
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b + c`, fused.
    unsafe fn fmadd(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    /// The sum of the lanes.
    unsafe fn sum(v: Self::F) -> f32;
    /// The sums of the lanes of four registers, as `[Σa, Σb, Σc, Σd]`.
    unsafe fn sum4(v: [Self::F; 4]) -> __m128;
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    /// The smaller per lane; `b` where either is NaN (as `minps`).
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// The larger per lane; `b` where either is NaN (as `maxps`).
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// The largest lane (none NaN).
    unsafe fn max_lane(v: Self::F) -> f32;
    /// `2ⁿ` per lane, for `t = n + magic` where `magic` (1.5·2²³) left the integer n in the low
    /// mantissa bits: the exponent step of [`crate::attention::softmax::exp`].
    unsafe fn pow2(t: Self::F, magic: Self::F) -> Self::F;
    /// `a · b` where `x` is not below `limit` (or is NaN), else 0.
    unsafe fn mul_unless_below(x: Self::F, limit: f32, a: Self::F, b: Self::F) -> Self::F;
    /// The first `n` (at most `LANES`) values at `p`, `fill` in the other lanes (their memory is not
    /// read).
    unsafe fn load_first(p: *const f32, n: usize, fill: f32) -> Self::F;
    /// Stores the first `n` (at most `LANES`) lanes at `p` (the memory after them is not written).
    unsafe fn store_first(p: *mut f32, v: Self::F, n: usize);
}

/// AVX-512F: 16 lanes.
pub struct W512;

/// AVX2 with FMA (and F16C for f16 rows): 8 lanes.
pub struct W256;

impl Width for W512 {
    type F = __m512;
    const LANES: usize = 16;
    const REGS: usize = 32;
    const LEVEL: crate::cpu::Level = crate::cpu::Level::Avx512;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: the trait's contract.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn row<T: Lanes>(p: *const T) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { T::load16(p) }
    }
    #[inline(always)]
    fn split<T: Lanes>() -> bool {
        T::SPLIT
    }
    #[inline(always)]
    unsafe fn row2<T: Lanes>(p: *const T) -> [__m512; 2] {
        // SAFETY: the trait's contract.
        unsafe { T::load32(p) }
    }
    #[inline(always)]
    unsafe fn load2<T: Lanes>(p: *const f32) -> [__m512; 2] {
        // SAFETY: the trait's contract.
        unsafe {
            let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            if !T::SPLIT {
                return [a, b];
            }
            let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
            [_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)]
        }
    }
    #[inline(always)]
    unsafe fn store2<T: Lanes>(p: *mut f32, [a, b]: [__m512; 2]) {
        // SAFETY: the trait's contract.
        unsafe {
            let (first, second) = match T::SPLIT {
                false => (a, b),
                true => {
                    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
                    (_mm512_permutex2var_ps(a, first, b), _mm512_permutex2var_ps(a, second, b))
                }
            };
            _mm512_storeu_ps(p, first);
            _mm512_storeu_ps(p.add(16), second);
        }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m512, b: __m512, c: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_reduce_add_ps(v) }
    }
    #[inline(always)]
    unsafe fn sum4([a, b, c, d]: [__m512; 4]) -> __m128 {
        // SAFETY: the trait's contract.
        unsafe {
            // Within each 128-bit lane: pairwise sums of (a, b) and (c, d) — a02 b02 a13 b13 and
            // c02 d02 c13 d13 — then lo = a02 b02 c02 d02 and hi = a13 b13 c13 d13, whose sum holds
            // each vector's partial sum of that lane.
            let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            let lo = _mm512_shuffle_ps::<0b01_00_01_00>(ab, cd);
            let hi = _mm512_shuffle_ps::<0b11_10_11_10>(ab, cd);
            let x = _mm512_add_ps(lo, hi);
            // Across the four 128-bit lanes: add lanes 2, 3 to 0, 1, then lane 1 to lane 0.
            let y = _mm512_add_ps(x, _mm512_shuffle_f32x4::<0b01_00_11_10>(x, x));
            let z = _mm512_add_ps(y, _mm512_shuffle_f32x4::<0b10_11_00_01>(y, y));
            _mm512_castps512_ps128(z)
        }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max_lane(v: __m512) -> f32 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_reduce_max_ps(v) }
    }
    #[inline(always)]
    unsafe fn pow2(t: __m512, magic: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe {
            let n = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
            _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(n, _mm512_set1_epi32(127))))
        }
    }
    #[inline(always)]
    unsafe fn mul_unless_below(x: __m512, limit: f32, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the trait's contract.
        unsafe { _mm512_maskz_mul_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(limit)), a, b) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize, fill: f32) -> __m512 {
        // SAFETY: the trait's contract; masked-off lanes are not read.
        unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), first_lanes16(n), p) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
        // SAFETY: the trait's contract; masked-off lanes are not written.
        unsafe { _mm512_mask_storeu_ps(p, first_lanes16(n), v) }
    }
}

/// The mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn first_lanes16(n: usize) -> __mmask16 {
    (((1u32 << n.min(16)) - 1) & 0xffff) as __mmask16
}

impl Width for W256 {
    type F = __m256;
    const LANES: usize = 8;
    const REGS: usize = 16;
    const LEVEL: crate::cpu::Level = crate::cpu::Level::Avx2;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: the trait's contract.
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn row<T: Lanes>(p: *const T) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { T::load8(p) }
    }
    /// Never: an AVX2 lane split would take a shuffle per register.
    #[inline(always)]
    fn split<T: Lanes>() -> bool {
        false
    }
    #[inline(always)]
    unsafe fn row2<T: Lanes>(p: *const T) -> [__m256; 2] {
        // SAFETY: the trait's contract.
        unsafe { [T::load8(p), T::load8(p.add(8))] }
    }
    #[inline(always)]
    unsafe fn load2<T: Lanes>(p: *const f32) -> [__m256; 2] {
        // SAFETY: the trait's contract.
        unsafe { [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))] }
    }
    #[inline(always)]
    unsafe fn store2<T: Lanes>(p: *mut f32, [a, b]: [__m256; 2]) {
        // SAFETY: the trait's contract.
        unsafe {
            _mm256_storeu_ps(p, a);
            _mm256_storeu_ps(p.add(8), b);
        }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: __m256, b: __m256, c: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        // SAFETY: the trait's contract.
        unsafe {
            let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let y = _mm_add_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_add_ss(y, _mm_movehdup_ps(y)))
        }
    }
    #[inline(always)]
    unsafe fn sum4([a, b, c, d]: [__m256; 4]) -> __m128 {
        // SAFETY: the trait's contract.
        unsafe {
            // As W512's, with two 128-bit lanes to add at the end.
            let ab = _mm256_add_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let cd = _mm256_add_ps(_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
            let lo = _mm256_shuffle_ps::<0b01_00_01_00>(ab, cd);
            let hi = _mm256_shuffle_ps::<0b11_10_11_10>(ab, cd);
            let x = _mm256_add_ps(lo, hi);
            _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x))
        }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max_lane(v: __m256) -> f32 {
        // SAFETY: the trait's contract.
        unsafe {
            let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let y = _mm_max_ps(x, _mm_movehl_ps(x, x));
            _mm_cvtss_f32(_mm_max_ss(y, _mm_movehdup_ps(y)))
        }
    }
    #[inline(always)]
    unsafe fn pow2(t: __m256, magic: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe {
            let n = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127))))
        }
    }
    #[inline(always)]
    unsafe fn mul_unless_below(x: __m256, limit: f32, a: __m256, b: __m256) -> __m256 {
        // SAFETY: the trait's contract.
        unsafe { _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLT_UQ>(x, _mm256_set1_ps(limit)), _mm256_mul_ps(a, b)) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize, fill: f32) -> __m256 {
        // SAFETY: the trait's contract; masked-off lanes are not read.
        unsafe {
            let m = first_lanes8(n);
            _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))
        }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        // SAFETY: the trait's contract; masked-off lanes are not written.
        unsafe { _mm256_maskstore_ps(p, first_lanes8(n), v) }
    }
}

/// The mask (all ones per lane) of the first `n` (at most 8) lanes.
///
/// # Safety
/// AVX2.
#[inline(always)]
unsafe fn first_lanes8(n: usize) -> __m256i {
    // SAFETY: the caller's contract.
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}
