//! `C = A·B` and `C = A·Bᵀ` (weights stored `[N, K]` as in linear layers), optionally batched and with a
//! bias, on device buffers and a stream. Inputs f32, f16 or bf16; accumulation in f32; output in the
//! input type or f32. Every argument is validated before anything is enqueued.
//!
//! Implemented here: the host path (simulator streams), with the SIMD level chosen at run time
//! ([`crate::cpu`]); products with m ≤ 32 (decode, small batches) take a bandwidth-bound path that
//! reads each weight once; bf16 products use native bf16 dot products where the CPU has AVX-512 BF16. On an NPU stream
//! the same call runs aclnnMm / aclnnBatchMatMul ([`crate::npu`]).

use crate::cpu::{self, Level};
use crate::gemm::{gemm, ToF32, View};
use ascend_rt::{bf16, f16, DeviceBuffer, DeviceRepr, Error, Result, Stream};
use std::sync::Arc;

/// Largest m that takes the bandwidth-bound decode path (each weight read once).
pub const DECODE_MAX_M: usize = crate::decode::MAX_M;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for super::f16 {}
    impl Sealed for super::bf16 {}
}

/// Element types of matmul inputs and outputs: f32, f16, bf16.
pub trait Element: DeviceRepr + ToF32 + crate::simd::Lanes + sealed::Sealed {
    /// Rounds an f32 to this type.
    fn from_f32(v: f32) -> Self;

    /// Rounds `scale · x` for each value `x` of `src` into `dst` (as long), as
    /// [`Element::from_f32`] does.
    fn scaled_from_f32(src: &[f32], scale: f32, dst: &mut [Self]) {
        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = Self::from_f32(s * scale));
    }
}

impl Element for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f16 {
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }

    /// `vcvtps2ph` in vector registers from the AVX2 level up (see `round_lanes`), else by
    /// [`round_f16`].
    fn scaled_from_f32(src: &[f32], scale: f32, dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if round_vectors(src, scale, dst) {
            return;
        }
        round_f16(src, scale, dst)
    }
}

/// `f16::from_f32(scale · x)` for each value: scaled a chunk at a time, then rounded by `half`'s
/// slice conversion (value by value, rounding a 512² f16 product took a fifth of its matmul).
fn round_f16(src: &[f32], scale: f32, dst: &mut [f16]) {
    use half::slice::HalfFloatSliceExt;
    let mut chunk = [0f32; 256];
    for (s, d) in src.chunks(256).zip(dst.chunks_mut(256)) {
        let c = &mut chunk[..s.len().min(d.len())];
        c.iter_mut().zip(s).for_each(|(c, &x)| *c = x * scale);
        d[..c.len()].convert_from_f32_slice(c);
    }
}

impl Element for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }

    /// The same bits as `bf16::from_f32` (round to nearest even, NaN made quiet), in vector
    /// registers from the AVX2 level up (see `round_lanes`), else by [`round_bf16`].
    fn scaled_from_f32(src: &[f32], scale: f32, dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if round_vectors(src, scale, dst) {
            return;
        }
        round_bf16(src, scale, dst)
    }
}

/// 16-bit element types whose rounding from f32 has vector forms: 16 lanes with AVX-512F, 8 with
/// AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
trait Narrow: Element {
    /// `from_f32` of each lane, bit for bit, as the raw values.
    ///
    /// # Safety
    /// Called from code compiled for AVX-512F.
    unsafe fn narrow16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i;

    /// As [`Narrow::narrow16`], for 8 lanes.
    ///
    /// # Safety
    /// Called from code compiled for AVX2 and F16C.
    unsafe fn narrow8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m128i;
}

/// `vcvtps2ph`, nearest with ties to even: `f16::from_f32`'s rounding, which `half` does with the
/// same instruction where the CPU has F16C.
#[cfg(target_arch = "x86_64")]
impl Narrow for f16 {
    #[inline(always)]
    unsafe fn narrow16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: AVX-512F (contract).
        unsafe { _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x) }
    }
    #[inline(always)]
    unsafe fn narrow8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        // SAFETY: F16C (contract).
        unsafe { _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x) }
    }
}

/// [`round_bf16`]'s steps on 32-bit lanes, NaNs chosen by mask, then narrowed.
#[cfg(target_arch = "x86_64")]
impl Narrow for bf16 {
    #[inline(always)]
    unsafe fn narrow16(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: AVX-512F (contract).
        unsafe {
            let b = _mm512_castps_si512(x);
            let high = _mm512_srli_epi32::<16>(b);
            let odd = _mm512_and_si512(high, _mm512_set1_epi32(1));
            let rounded =
                _mm512_srli_epi32::<16>(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)), odd));
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
            _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, _mm512_or_si512(high, _mm512_set1_epi32(0x40))))
        }
    }
    #[inline(always)]
    unsafe fn narrow8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m128i {
        use std::arch::x86_64::*;
        // SAFETY: AVX2 (contract).
        unsafe {
            let b = _mm256_castps_si256(x);
            let high = _mm256_srli_epi32::<16>(b);
            let odd = _mm256_and_si256(high, _mm256_set1_epi32(1));
            let rounded =
                _mm256_srli_epi32::<16>(_mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd));
            let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
            let bits = _mm256_blendv_epi8(rounded, _mm256_or_si256(high, _mm256_set1_epi32(0x40)), nan);
            // Every lane is below 2¹⁶: packing saturates nothing. It packs within 128-bit halves
            // (each half's four values twice); quads 0 and 2 hold the eight in order.
            let packed = _mm256_packus_epi32(bits, bits);
            _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(packed))
        }
    }
}

/// [`Element::scaled_from_f32`] in `LANES`-wide registers (16: AVX-512F, 8: AVX2 and F16C). What
/// it replaced, per row of a decode step's output (64 sequences of 16 tokens, hot cache, one core,
/// AVX-512): for bf16, the compiled plain loop (25 operations per 16 values: the NaN choice made on
/// 16-bit lanes, through masks widened to vectors), 425 µs a step, now 393; for f16, `half`'s slice
/// conversion, which zeroed a 1 KiB buffer on every call and converted through it, 573 µs (its
/// queries also converted by `half`), now 388 (both converted in registers).
///
/// # Safety
/// Called from code compiled for the width's features (see [`Narrow`]), on a CPU that has them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn round_lanes<E: Narrow, const LANES: usize>(src: &[f32], scale: f32, dst: &mut [E]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let whole = n / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        // SAFETY: LANES values at i < whole in both slices (E is 16 bits, as the stored lanes);
        // the width's features (contract).
        unsafe {
            let (s, d) = (src.as_ptr().add(i), dst.as_mut_ptr().add(i));
            if LANES == 16 {
                let x = _mm512_mul_ps(_mm512_loadu_ps(s), _mm512_set1_ps(scale));
                _mm256_storeu_si256(d as *mut __m256i, E::narrow16(x));
            } else {
                let x = _mm256_mul_ps(_mm256_loadu_ps(s), _mm256_set1_ps(scale));
                _mm_storeu_si128(d as *mut __m128i, E::narrow8(x));
            }
        }
    }
    for (d, &s) in dst[whole..n].iter_mut().zip(&src[whole..n]) {
        *d = E::from_f32(s * scale);
    }
}

/// [`round_lanes`] with AVX-512F.
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn round_avx512<E: Narrow>(src: &[f32], scale: f32, dst: &mut [E]) {
    // SAFETY: compiled for AVX-512F, which the CPU has (contract).
    unsafe { round_lanes::<E, 16>(src, scale, dst) }
}

/// [`round_lanes`] with AVX2 and F16C.
///
/// # Safety
/// The CPU has AVX2 and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn round_avx2<E: Narrow>(src: &[f32], scale: f32, dst: &mut [E]) {
    // SAFETY: compiled for AVX2 and F16C, which the CPU has (contract).
    unsafe { round_lanes::<E, 8>(src, scale, dst) }
}

/// [`Element::scaled_from_f32`] in the widest registers of the active level ([`cpu::active`]:
/// `ASCEND_KERNELS_LEVEL` lowers it too); false (nothing written) below AVX2.
#[cfg(target_arch = "x86_64")]
fn round_vectors<E: Narrow>(src: &[f32], scale: f32, dst: &mut [E]) -> bool {
    match cpu::active() {
        // SAFETY: the active level is at most the detected one, which has AVX-512F from
        // `Avx512` up.
        Level::Avx512 | Level::Avx512Bf16 | Level::Amx => unsafe { round_avx512(src, scale, dst) },
        // SAFETY: as above; the detected level has AVX2 and F16C from `Avx2` up.
        Level::Avx2 => unsafe { round_avx2(src, scale, dst) },
        Level::Portable => return false,
    }
    true
}

/// `bf16::from_f32(scale · x)` for each value, written without branches so that the loop
/// vectorises.
#[inline(always)]
fn round_bf16(src: &[f32], scale: f32, dst: &mut [bf16]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        let s = s * scale;
        let b = s.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        let quiet = ((b >> 16) | 0x40) as u16;
        *d = bf16::from_bits(if s.is_nan() { quiet } else { rounded });
    }
}

/// The shape of a (batched) matmul: `batch` products of `[m, k] · [k, n]` (or `· [n, k]ᵀ`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Number of products (A and C are `batch` consecutive matrices).
    pub batch: usize,
    /// Rows of A and C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The reduced dimension.
    pub k: usize,
    /// B is stored `[n, k]` (linear-layer weights) and used transposed.
    pub transpose_b: bool,
    /// B is one matrix shared by every product of the batch (weights), not `batch` matrices.
    pub shared_b: bool,
}

impl Shape {
    /// One `[m, k] · [k, n]` product.
    pub fn new(m: usize, n: usize, k: usize) -> Shape {
        Shape { batch: 1, m, n, k, transpose_b: false, shared_b: false }
    }

    /// With B stored `[n, k]` and used transposed.
    pub fn transposed_b(self) -> Shape {
        Shape { transpose_b: true, ..self }
    }

    /// `batch` products; `shared_b`: one B for all of them.
    pub fn batched(self, batch: usize, shared_b: bool) -> Shape {
        Shape { batch, shared_b, ..self }
    }
}

/// A matmul launch: `Matmul::new(shape).run(stream, &a, &b, bias, &mut c)`.
#[derive(Clone, Copy, Debug)]
pub struct Matmul {
    shape: Shape,
    level: Option<Level>,
}

/// Checks the operands of a matmul of shape `s`: non-empty, lengths matching the shape, the
/// output of the input's type or f32.
pub(crate) fn check_operands<T: Element, O: Element>(
    s: &Shape,
    a: &DeviceBuffer<T>,
    b: &DeviceBuffer<T>,
    bias: Option<&DeviceBuffer<T>>,
    c: &DeviceBuffer<O>,
) -> Result<()> {
    if O::ACL_DTYPE != T::ACL_DTYPE && O::ACL_DTYPE != ascend_sys_dtype_f32() {
        return Err(Error::InvalidArgument("the output must have the input's type or be f32".into()));
    }
    if [s.batch, s.m, s.n, s.k].contains(&0) {
        return Err(Error::InvalidArgument(format!("empty matmul {s:?}")));
    }
    let want = crate::args::expect_len;
    want("A", a.len(), &[s.batch, s.m, s.k])?;
    want("B", b.len(), &[if s.shared_b { 1 } else { s.batch }, s.k, s.n])?;
    want("C", c.len(), &[s.batch, s.m, s.n])?;
    if let Some(bias) = bias {
        want("bias", bias.len(), &[s.n])?;
    }
    Ok(())
}

impl Matmul {
    /// A matmul of `shape` at the active SIMD level.
    pub fn new(shape: Shape) -> Matmul {
        Matmul { shape, level: None }
    }

    /// Forces a SIMD level (tests and benchmarks; one the CPU lacks is refused at `run`).
    pub fn level(self, level: Level) -> Matmul {
        Matmul { level: Some(level), ..self }
    }

    /// Enqueues `c = a · b (+ bias)` on `stream`. `c` is `T` or `f32`. Errors (nothing enqueued) for
    /// shapes that do not match the buffers, buffers on another device, or a backend without a path.
    pub fn run<T: Element, O: Element>(
        &self,
        stream: &Arc<Stream>,
        a: &DeviceBuffer<T>,
        b: &DeviceBuffer<T>,
        bias: Option<&DeviceBuffer<T>>,
        c: &mut DeviceBuffer<O>,
    ) -> Result<()> {
        let s = self.shape;
        check_operands(&s, a, b, bias, c)?;
        if !stream.context().runtime().host_addressable() {
            return crate::npu::run(stream, &s, a, b, bias, c);
        }
        let level = self.level.unwrap_or_else(cpu::active);
        if level > cpu::detected() {
            return Err(Error::Unsupported(format!("this CPU cannot run the {} level", level.name())));
        }
        let mut l = stream.host_launch()?;
        let (ah, bh) = (l.read(a)?, l.read(b)?);
        let biash = bias.map(|x| l.read(x)).transpose()?;
        let mut ch = l.write(c)?;
        l.launch(move || {
            // SAFETY: inside the kernel the views are live and ordered after their writes.
            let (a, b, c) = unsafe { (ah.as_slice(), bh.as_slice(), ch.as_mut_slice()) };
            // SAFETY: as above.
            let bias = biash.map(|x| unsafe { x.as_slice() });
            host_matmul(level, s, a, b, bias, c);
        })
    }
}

/// The view as bf16, when `T` is bf16.
fn as_bf16<T: Element>(v: View<'_, T>) -> Option<View<'_, bf16>> {
    (T::ACL_DTYPE == <bf16 as DeviceRepr>::ACL_DTYPE).then(|| {
        // SAFETY: T is bf16 (same dtype tag; the Element types are sealed), so the slice is one of bf16.
        let data = unsafe { std::slice::from_raw_parts(v.data.as_ptr() as *const bf16, v.data.len()) };
        View { data, rs: v.rs, cs: v.cs }
    })
}

fn ascend_sys_dtype_f32() -> i32 {
    <f32 as DeviceRepr>::ACL_DTYPE
}

/// The host computation (runs on the stream). f32 results go straight into `c`; others are
/// computed into a per-thread f32 buffer and rounded from it (a fresh zeroed buffer per call, and
/// the copy from it into an f32 `c`, made f32 matmuls 9-14 % slower at 512³-2048³: page faults
/// and memory traffic).
fn host_matmul<T: Element, O: Element>(level: Level, s: Shape, a: &[T], b: &[T], bias: Option<&[T]>, c: &mut [O]) {
    let (m, n, k) = (s.m, s.n, s.k);
    let mut staging = STAGING.take();
    for i in 0..s.batch {
        let av = View { data: &a[i * m * k..(i + 1) * m * k], rs: k, cs: 1 };
        let bi = if s.shared_b { 0 } else { i };
        let bdata = &b[bi * k * n..(bi + 1) * k * n];
        let bv = if s.transpose_b { View { data: bdata, rs: 1, cs: k } } else { View { data: bdata, rs: n, cs: 1 } };
        let out = &mut c[i * m * n..(i + 1) * m * n];
        let staged = O::as_f32_slice_mut(out).is_none();
        let acc = match O::as_f32_slice_mut(out) {
            Some(out) => out,
            None => crate::gemm::grow_aligned(&mut staging, m * n),
        };
        // Every path writes all of `acc` (none adds to what was there).
        if m <= crate::decode::MAX_M {
            let a32: Vec<f32> = av.data.iter().map(|x| x.to_f32()).collect();
            crate::decode::decode(level, m, n, k, &a32, bv, acc);
        } else if let (Level::Avx512Bf16 | Level::Amx, Some(a16), Some(b16)) = (level, as_bf16(av), as_bf16(bv)) {
            crate::gemm::gemm_bf16(level, (m, n, k), a16, b16, acc);
        } else {
            gemm(level, m, n, k, av, bv, acc);
        }
        if let Some(bias) = bias {
            for row in acc.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b.to_f32());
            }
        }
        if staged {
            let acc = crate::gemm::grow_aligned(&mut staging, m * n);
            for (row, out) in acc.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
                O::scaled_from_f32(row, 1.0, out);
            }
        }
    }
    if staging.capacity() * std::mem::size_of::<f32>() <= KEEP_STAGING_BYTES {
        STAGING.set(staging);
    }
}

/// Largest f32 staging buffer (f16 and bf16 outputs) a stream thread keeps between calls.
const KEEP_STAGING_BYTES: usize = 64 << 20;

thread_local! {
    static STAGING: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ties both ways (for bf16 and for f16), the largest finite values and f16's overflow, infinities,
    /// NaNs, subnormals of both, zeros, and a sweep of ordinary bit patterns.
    fn rounding_cases() -> Vec<f32> {
        let ties = [0x3f80_8000u32, 0x3f81_8000, 0x3f80_7fff, 0x3f80_1000, 0x3f80_3000, 0x477f_f000];
        let edges = [0x7f7f_ffffu32, 0xff7f_ffff, 0x0000_8001, 0x8000_0001, 0x3380_0001, 0xb3a0_0000];
        let mut xs: Vec<f32> = ties.iter().chain(&edges).map(|&b| f32::from_bits(b)).collect();
        xs.extend([f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), 0.0, -0.0]);
        xs.extend((0..100_000u32).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
        xs
    }

    /// `E::scaled_from_f32` gives the bits of `E::from_f32` for every case, scaled or not.
    fn slice_rounding_matches_scalar<E: Element + Default>(bits: fn(E) -> u16, round: fn(&[f32], f32, &mut [E])) {
        let xs = rounding_cases();
        for scale in [1.0, 0.37] {
            let mut got = vec![E::default(); xs.len()];
            round(&xs, scale, &mut got);
            for (x, &g) in xs.iter().zip(&got) {
                assert_eq!(bits(g), bits(E::from_f32(x * scale)), "{:#010x} · {scale}", x.to_bits());
            }
        }
    }

    #[test]
    fn bf16_slice_rounding_matches_the_scalar_one_bit_for_bit() {
        slice_rounding_matches_scalar::<bf16>(bf16::to_bits, bf16::scaled_from_f32);
    }

    #[test]
    fn f16_slice_rounding_matches_the_scalar_one_bit_for_bit() {
        slice_rounding_matches_scalar::<f16>(f16::to_bits, f16::scaled_from_f32);
    }

    /// The portable forms, which `scaled_from_f32` does not choose on a CPU with AVX2 (nor with
    /// AVX-512 unless `ASCEND_KERNELS_LEVEL=portable`).
    #[test]
    fn portable_roundings_match_the_scalar_ones_bit_for_bit() {
        slice_rounding_matches_scalar::<bf16>(bf16::to_bits, super::round_bf16);
        slice_rounding_matches_scalar::<f16>(f16::to_bits, super::round_f16);
    }

    /// The AVX2 forms, which `scaled_from_f32` does not choose on a CPU with AVX-512.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_roundings_match_the_scalar_ones_bit_for_bit() {
        if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c")) {
            return; // nothing to run it on; the portable rounding is the scalar one
        }
        // SAFETY (both): the CPU has AVX2 and F16C, just checked.
        slice_rounding_matches_scalar::<bf16>(bf16::to_bits, |s, k, d| unsafe { super::round_avx2(s, k, d) });
        slice_rounding_matches_scalar::<f16>(f16::to_bits, |s, k, d| unsafe { super::round_avx2(s, k, d) });
    }
}
