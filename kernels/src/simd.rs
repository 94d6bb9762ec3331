//! Vector primitives per SIMD level, for kernels that are monomorphised per level: the compiler
//! vectorises plain loops over short rows poorly (dot products come out two lanes wide), and
//! converting bf16/f16 rows into f32 buffers first costs more cache traffic than the arithmetic.

use crate::attention::softmax::RowState;
use crate::gemm::ToF32;
use crate::lines::Lines;

/// Row operations on f32 vectors against rows of a source type (f32, f16 or bf16) at arbitrary
/// offsets of a slice (rows of a paged cache are not evenly spaced).
pub(crate) trait Simd {
    /// Whether `f32::mul_add` is a fused instruction at this level (a slow library call otherwise).
    const FMA: bool;

    /// The online-softmax step ([`RowState::update`]) of each row of `states`: row i's `n` scores
    /// at `scores[i·stride..]` (`rows` is `(stride, n)`), its factor to `alphas[i]`; in vector
    /// registers where this level can. Panics if a row lies outside `scores` or `alphas` is short.
    #[inline(always)]
    fn softmax_rows(states: &mut [RowState], scores: &mut [f32], rows: (usize, usize), alphas: &mut [f32]) {
        plain_softmax_rows(states, scores, rows, alphas, Self::FMA);
    }

    /// `out[k][j] = q[k] · src[offs[j] ..][.. q[k].len()]` for every j, for K queries of the same
    /// length against the same rows (each row read once for all K).
    fn dots<T: Lanes, const K: usize>(q: [&[f32]; K], src: &[T], offs: &[usize], out: [&mut [f32]; K]);

    /// `acc[k] += Σⱼ p[k][j] · src[offs[j] ..][.. acc[k].len()]` for K weight vectors over the same
    /// rows (each row read once for all K). Where this level can, the rows of `ahead` (offsets into
    /// its slice, as long as the rows' `d`) are prefetched into L2 meanwhile, one per row summed,
    /// and it returns true; else it returns false (nothing prefetched). Spread so, the prefetches
    /// of the next key tile keep memory busy without stalling the sums in a burst of them.
    fn weighted_sums<T: Lanes, const K: usize>(
        p: [&[f32]; K],
        src: &[T],
        offs: &[usize],
        acc: [&mut [f32]; K],
        ahead: (&[T], &[usize]),
    ) -> bool;

    /// `out[i] = a[i·lda ..][..w.len()] · w` for each of the `out.len()` (≤ 16) rows of `a`: one row of
    /// weights against a few activation rows (decode-shaped matmul); each weight is loaded once.
    #[inline(always)]
    fn rows_dot<T: Lanes>(a: &[f32], lda: usize, w: &[T], out: &mut [f32]) {
        let k = w.len();
        if T::INLINE_CONVERT {
            for (i, o) in out.iter_mut().enumerate() {
                *o = Generic::dot::<T, 64, WEIGHTS_AHEAD>(w, &a[i * lda..i * lda + k]);
            }
            return;
        }
        let mut row = vec![0f32; k];
        T::slice_to_f32(w, &mut row);
        for (i, o) in out.iter_mut().enumerate() {
            *o = Generic::dot::<f32, 64, 0>(&row, &a[i * lda..i * lda + k]);
        }
    }

    /// [`Simd::rows_dot`] for two rows of weights: `out[r][i] = a row i · w[r]` (each activation
    /// chunk loaded once for both).
    #[inline(always)]
    fn rows_dot2<T: Lanes>(a: &[f32], lda: usize, w: [&[T]; 2], out: [&mut [f32]; 2]) {
        let [o0, o1] = out;
        Self::rows_dot(a, lda, w[0], o0);
        Self::rows_dot(a, lda, w[1], o1);
    }

    /// The query rows at `starts` of `q` (`d` values each) times `scale`, as f32, into `out`
    /// (resized), in the order in which [`Simd::token_dots`] reads them against rows of `T`.
    /// Returns whether that order differs from the given one, which only that kernel then reads
    /// (bf16 at AVX-512 takes each 32 values as the even-indexed, then the odd ones: the halves its
    /// keys split into with one operation each). Panics if a row lies outside `q`.
    #[inline(always)]
    fn token_queries<T: Lanes>(q: &[T], starts: &[usize], d: usize, scale: f32, out: &mut Lines) -> bool {
        out.resize(starts.len() * d);
        scaled_queries(q, starts, d, scale, out);
        false
    }

    /// Scores of every query row of an item against the keys at `offs`, token by token: see
    /// [`token_dots_bf16`], here with f32 queries (`heads · per_head` rows, already scaled, in
    /// [`Simd::token_ordered`]'s order) and rows of any source type. Returns false (doing nothing)
    /// where this level has no such kernel or the shapes do not fit it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn token_dots<T: Lanes>(
        q: &[f32],
        heads: usize,
        per_head: usize,
        src: &[T],
        prefetch: &[T],
        offs: &[usize],
        out: &mut [f32],
        stride: usize,
    ) -> bool {
        let _ = (q, heads, per_head, src, prefetch, offs, out, stride);
        false
    }
}

/// How far ahead (bytes) the decode-shaped matmul prefetches each weight row. The hardware
/// prefetchers alone kept too few lines in flight: m = 1 weights (4096², transposed, 2 threads,
/// AVX-512) read at 21 GB/s in bf16, 23 in f16 and 37 in f32 without it, 36, 36 and 46 with it.
pub(crate) const WEIGHTS_AHEAD: usize = 4096;

/// Hints that the cache line at `p` will be read soon (into L1 on x86; nothing elsewhere): the
/// prefetch the kernels issue ahead of their streaming reads. Any address is allowed; nothing is
/// read and nothing can fault.
#[inline(always)]
pub fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing (it cannot fault), whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Source element types of the row operations.
pub trait Lanes: ToF32 {
    /// 16 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `p` must be valid for 16 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

    /// 8 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2 and F16C; `p` must be valid for 8 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Whether [`Lanes::load32`] splits the values into even- and odd-indexed ones.
    const SPLIT: bool = false;

    /// 32 values at `p` as two registers of f32 lanes: the first 16 and the next 16, or where
    /// [`Lanes::SPLIT`] (bf16, whose pairs of values fill 32-bit lanes and convert with one
    /// operation per half, not two per 16 values) the 16 even-indexed values and the 16 odd.
    ///
    /// # Safety
    /// As [`Lanes::load16`], for 32 reads.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load32(p: *const Self) -> [std::arch::x86_64::__m512; 2]
    where
        Self: Sized,
    {
        // SAFETY: forwarded contract.
        unsafe { [Self::load16(p), Self::load16(p.add(16))] }
    }
}

#[cfg(target_arch = "x86_64")]
mod lanes {
    use super::Lanes;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    impl Lanes for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            // SAFETY: forwarded contract.
            unsafe { load_f32(p) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: forwarded contract.
            unsafe { load8_f32(p) }
        }
    }

    impl Lanes for bf16 {
        #[inline(always)]
        unsafe fn load16(p: *const bf16) -> __m512 {
            // SAFETY: forwarded contract.
            unsafe { load_bf16(p as *const u16) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            // SAFETY: forwarded contract.
            unsafe { load8_bf16(p as *const u16) }
        }
        const SPLIT: bool = true;
        #[inline(always)]
        unsafe fn load32(p: *const bf16) -> [__m512; 2] {
            // SAFETY: forwarded contract.
            unsafe { load32_bf16(p as *const u16) }
        }
    }

    impl Lanes for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            // SAFETY: forwarded contract.
            unsafe { load_f16(p as *const u16) }
        }
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: forwarded contract.
            unsafe { load8_f16(p as *const u16) }
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_f32(p: *const f32) -> __m512 {
        // SAFETY: 16 readable values (contract).
        unsafe { _mm512_loadu_ps(p) }
    }

    /// bf16 is the top half of an f32: widen and shift.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_bf16(p: *const u16) -> __m512 {
        // SAFETY: 16 readable values (contract).
        let h = unsafe { _mm256_loadu_si256(p as *const __m256i) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }

    /// Value 2i is the low half of 32-bit lane i, value 2i + 1 the high half: a shift and a mask
    /// make them f32.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load32_bf16(p: *const u16) -> [__m512; 2] {
        // SAFETY: 32 readable values (contract).
        let x = unsafe { _mm512_loadu_si512(p as *const _) };
        let high = _mm512_set1_epi32(0xffff_0000_u32 as i32);
        [_mm512_castsi512_ps(_mm512_slli_epi32::<16>(x)), _mm512_castsi512_ps(_mm512_and_si512(x, high))]
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        // SAFETY: 16 readable values (contract).
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8_f32(p: *const f32) -> __m256 {
        // SAFETY: 8 readable values (contract).
        unsafe { _mm256_loadu_ps(p) }
    }

    /// The 8 values go to both 128-bit halves (a broadcast load: no shuffle), then one byte
    /// shuffle puts 4 of them in the top halves of each half's lanes and zeros below. Half the
    /// arithmetic of widening then shifting, whose shift takes a slot of the FMA ports.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load8_bf16(p: *const u16) -> __m256 {
        // SAFETY: 8 readable values (contract).
        let x = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(p as *const __m128i) });
        // Bytes 2k, 2k + 1 (value k) to the top of lane k; -1 zeros a byte.
        let at = _mm256_setr_epi8(
            -1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7, -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1,
            -1, 14, 15,
        );
        _mm256_castsi256_ps(_mm256_shuffle_epi8(x, at))
    }

    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn load8_f16(p: *const u16) -> __m256 {
        // SAFETY: 8 readable values (contract).
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }
}

#[cfg(not(target_arch = "x86_64"))]
impl Lanes for f32 {}
#[cfg(not(target_arch = "x86_64"))]
impl Lanes for half::bf16 {}
#[cfg(not(target_arch = "x86_64"))]
impl Lanes for half::f16 {}

/// Scores of every query row of an item (`heads · per_head` rows of bf16 queries, head-major) against
/// the bf16 keys at `offs` (KV head 0 of each token; the heads of a token are adjacent), written to
/// `out[r · stride + j]` times `scale`. Tokens are taken in order with all their heads, so the cache is read front
/// to back, and the rows of `prefetch` (the values) at the same offsets are prefetched into L2 meanwhile.
/// Returns false (doing nothing) unless the head size is 64, 96, 128 or 256 and the CPU has AVX-512 BF16.
#[allow(clippy::too_many_arguments)]
pub(crate) fn token_dots_bf16(
    q: &[u16],
    heads: usize,
    per_head: usize,
    src: &[u16],
    prefetch: &[u16],
    offs: &[usize],
    scale: f32,
    out: &mut [f32],
    stride: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let Some(d) = token_shape(q.len(), heads, per_head, (src.len(), prefetch.len()), offs, out.len(), stride)
        else {
            return false;
        };
        let fits = crate::cpu::detected() >= crate::cpu::Level::Avx512Bf16;
        let (qp, sp, pp, op) = (q.as_ptr(), src.as_ptr(), prefetch.as_ptr(), out.as_mut_ptr());
        // SAFETY: AVX-512 BF16 present; every query row holds d values, every token `heads · d` in
        // both slices, and every output position is inside `out` (checked by `token_shape`).
        unsafe {
            match d {
                64 if fits => x86::token_dots_bf16::<2>(qp, heads, per_head, sp, pp, offs, scale, op, stride),
                96 if fits => x86::token_dots_bf16::<3>(qp, heads, per_head, sp, pp, offs, scale, op, stride),
                128 if fits => x86::token_dots_bf16::<4>(qp, heads, per_head, sp, pp, offs, scale, op, stride),
                256 if fits => x86::token_dots_bf16::<8>(qp, heads, per_head, sp, pp, offs, scale, op, stride),
                _ => return false,
            }
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (q, heads, per_head, src, prefetch, offs, scale, out, stride);
        false
    }
}

/// The head size of a token-by-token score call, if its arguments are consistent: `rows = heads ·
/// per_head` query rows in `q_len` values, every token's `heads` rows inside both
/// source slices (`lens`), and every output position inside `out_len`.
fn token_shape(
    q_len: usize,
    heads: usize,
    per_head: usize,
    (src_len, prefetch_len): (usize, usize),
    offs: &[usize],
    out_len: usize,
    stride: usize,
) -> Option<usize> {
    let rows = heads * per_head;
    if rows == 0 || !q_len.is_multiple_of(rows) {
        return None;
    }
    let d = q_len / rows;
    let width = heads * d;
    let fits = offs.len() <= stride
        && out_len >= (rows - 1) * stride + offs.len()
        && offs.iter().all(|&o| o + width <= src_len && o + width <= prefetch_len);
    fits.then_some(d)
}

/// Whether [`weighted_sum4_bf16`] runs for head size `d` and `n` keys on this CPU.
pub(crate) fn bf16_pairs_fit(d: usize, n: usize) -> bool {
    matches!(d, 64 | 96 | 128 | 256) && n <= 64 && crate::cpu::detected() >= crate::cpu::Level::Avx512Bf16
}

/// `acc[k] += Σⱼ p[k][j] · row j` for four weight vectors given in bf16 over bf16 rows, with AVX-512
/// BF16 dot products on pairs of keys (`p[k]` holds a weight per row, then a zero when the count is
/// odd). The rows at `ahead` of `pf` are prefetched into L2 meanwhile, two per pair of keys. Only
/// where [`bf16_pairs_fit`] (panics otherwise).
pub(crate) fn weighted_sum4_bf16(
    p: [&[u16]; 4],
    src: &[u16],
    offs: &[usize],
    acc: [&mut [f32]; 4],
    (pf, ahead): (&[u16], &[usize]),
) {
    let d = acc[0].len();
    let n = offs.len();
    assert!(
        bf16_pairs_fit(d, n)
            && acc.iter().all(|a| a.len() == d)
            && p.iter().all(|x| x.len() >= n.next_multiple_of(2))
            && offs.iter().all(|&o| o + d <= src.len())
            && ahead.iter().all(|&o| o + d <= pf.len()),
        "weighted_sum4_bf16 called outside what it supports"
    );
    #[cfg(target_arch = "x86_64")]
    {
        let pp = p.map(|x| x.as_ptr());
        let ap = acc.map(|a| a.as_mut_ptr());
        // SAFETY: checked above: rows and accumulators hold d values, the weights n rounded up to
        // even; AVX-512 BF16 present. d = 128 and 256 go in pieces of 64 (16 accumulators).
        unsafe {
            match d {
                64 => x86::weighted_sum4_bf16::<2>(pp, src.as_ptr(), offs, ap, 0, (pf.as_ptr(), ahead)),
                96 => x86::weighted_sum4_bf16::<3>(pp, src.as_ptr(), offs, ap, 0, (pf.as_ptr(), ahead)),
                _ => {
                    for d0 in (0..d).step_by(64) {
                        x86::weighted_sum4_bf16::<2>(pp, src.as_ptr(), offs, ap, d0, (pf.as_ptr(), ahead));
                    }
                }
            }
        }
    }
}

/// Rounds `src` to bf16 (nearest, ties to even) into `dst` (their raw bits), 16 at a time with
/// AVX-512 BF16 where the CPU has it. Subnormal inputs become zeros of their sign, as that
/// instruction makes them, at every level and position. Panics if the lengths differ.
pub(crate) fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "round_to_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::detected() >= crate::cpu::Level::Avx512Bf16 {
        // SAFETY: the CPU has AVX-512 BF16; the lengths are equal.
        unsafe { x86::round_to_bf16(src, dst) };
        return;
    }
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = bf16_bits(x);
    }
}

/// One value of [`round_to_bf16`]: subnormals flushed to a zero of their sign, then rounded.
fn bf16_bits(x: f32) -> u16 {
    let x = if x.is_subnormal() { 0f32.copysign(x) } else { x };
    half::bf16::from_f32(x).to_bits()
}

/// The 16 × 16 transpose of 32-bit words: unpacks of 32 and 64 bits within 128-bit lanes, then two
/// rounds of lane shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(crate) fn transpose16(r: [std::arch::x86_64::__m512i; 16]) -> [std::arch::x86_64::__m512i; 16] {
    use std::arch::x86_64::*;
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    // u[4i + j], lane l: rows 4i..4i + 4 of column 4l + j.
    let u: [__m512i; 16] = std::array::from_fn(|x| {
        let (i, j) = (x / 4, x % 4);
        let (a, b) = (t[4 * i + j / 2], t[4 * i + j / 2 + 2]);
        if j % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_i32x4::<0xdd>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_i32x4::<0xdd>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        out[4 + j] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        out[8 + j] = _mm512_shuffle_i32x4::<0xdd>(v0, w0);
        out[12 + j] = _mm512_shuffle_i32x4::<0xdd>(v1, w1);
    }
    out
}

/// Plain loops (the portable level, and head sizes the x86 kernels do not take): rows converted
/// to f32, then partial sums the compiler vectorises.
pub(crate) struct Generic;

impl Generic {
    /// `x · y` with `L` (a power of two) independent partial sums, so the loop vectorises, `x`
    /// converted inline: 16 or 32 for head-sized rows ([`Generic::head_dot`]), 64 for weight rows.
    /// `AHEAD` (bytes, 0 for none): how far ahead `x` is prefetched, for rows that come from memory.
    #[inline(always)]
    fn dot<X: ToF32, const L: usize, const AHEAD: usize>(x: &[X], y: &[f32]) -> f32 {
        let mut acc = [0f32; L];
        let (xc, yc) = (x.chunks_exact(L), y.chunks_exact(L));
        let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a.to_f32() * b).sum();
        for (xs, ys) in xc.zip(yc) {
            // Fixed-size arrays: no bounds checks, so the lanes become vector operations.
            let (xs, ys): (&[X; L], &[f32; L]) = (xs.try_into().unwrap(), ys.try_into().unwrap());
            if AHEAD > 0 {
                for line in (0..std::mem::size_of_val(xs)).step_by(64) {
                    prefetch_line((xs.as_ptr() as *const u8).wrapping_add(line + AHEAD));
                }
            }
            for l in 0..L {
                acc[l] += xs[l].to_f32() * ys[l];
            }
        }
        // Reduce by halves: a sequential sum of the lanes would be one long dependency chain.
        let mut width = L;
        while width > 1 {
            width /= 2;
            for l in 0..width {
                acc[l] += acc[l + width];
            }
        }
        acc[0] + tail
    }

    /// `x · y` for head-sized rows: four or two vectors of partial sums (one is a chain of adds,
    /// each waiting for the last: AVX2 decode spent half its time there).
    #[inline(always)]
    fn head_dot(x: &[f32], y: &[f32]) -> f32 {
        match x.len() % 32 {
            0 => Self::dot::<f32, 32, 0>(x, y),
            _ => Self::dot::<f32, 16, 0>(x, y),
        }
    }

    /// The `buf.len()` values of `src` at `at` as f32: in place for an f32 source, else converted
    /// into `buf`.
    #[inline(always)]
    fn row<'a, T: Lanes>(src: &'a [T], at: usize, buf: &'a mut [f32]) -> &'a [f32] {
        let r = &src[at..at + buf.len()];
        match T::as_f32_slice(r) {
            Some(r) => r,
            None => {
                T::slice_to_f32(r, buf);
                buf
            }
        }
    }
}

impl Simd for Generic {
    const FMA: bool = false;

    #[inline(always)]
    fn dots<T: Lanes, const K: usize>(q: [&[f32]; K], src: &[T], offs: &[usize], mut out: [&mut [f32]; K]) {
        let mut buf = vec![0f32; q[0].len()];
        let n = out.iter().map(|o| o.len()).min().unwrap_or(0);
        for (j, &at) in offs.iter().enumerate().take(n) {
            let row = Self::row(src, at, &mut buf);
            for (o, q) in out.iter_mut().zip(q) {
                o[j] = Self::head_dot(q, row);
            }
        }
    }

    /// Each row converted once for all K. Zero weights are not skipped: 0 · inf is NaN here as at
    /// every other level.
    #[inline(always)]
    fn weighted_sums<T: Lanes, const K: usize>(
        p: [&[f32]; K],
        src: &[T],
        offs: &[usize],
        mut acc: [&mut [f32]; K],
        _ahead: (&[T], &[usize]),
    ) -> bool {
        let mut buf = vec![0f32; acc[0].len()];
        for (j, &at) in offs.iter().enumerate().take(p[0].len()) {
            let row = Self::row(src, at, &mut buf);
            for (a, w) in acc.iter_mut().zip(p.iter().map(|p| p[j])) {
                a.iter_mut().zip(row).for_each(|(a, r)| *a += w * r);
            }
        }
        false
    }
}

/// The query rows at `starts` of `q` (`d` values each) times `scale`, as f32, in order, into `out`
/// (`d` values per row). Panics if a row lies outside `q`.
pub(crate) fn scaled_queries<T: ToF32>(q: &[T], starts: &[usize], d: usize, scale: f32, out: &mut [f32]) {
    for (dst, &at) in out.chunks_exact_mut(d).zip(starts) {
        T::slice_to_f32(&q[at..at + d], dst);
        dst.iter_mut().for_each(|x| *x *= scale);
    }
}

/// [`Simd::softmax_rows`] one row at a time in plain code (`fma`: see [`RowState::update`]).
fn plain_softmax_rows(
    states: &mut [RowState],
    scores: &mut [f32],
    (stride, n): (usize, usize),
    alphas: &mut [f32],
    fma: bool,
) {
    assert!(alphas.len() >= states.len(), "a factor per row");
    for (i, (st, alpha)) in states.iter_mut().zip(alphas).enumerate() {
        *alpha = st.update(&mut scores[i * stride..i * stride + n], fma);
    }
}

/// The x86 levels: f32 arithmetic in registers of width `W` (see `x86::Entry`); the head sizes
/// of `x86::HEAD_SIZES` run its kernels, others the generic ones. Only to be used inside functions
/// compiled for the width's features, on a CPU that has them.
#[cfg(target_arch = "x86_64")]
pub(crate) struct X86<W>(std::marker::PhantomData<W>);

/// AVX-512F (the AVX-512 levels).
#[cfg(target_arch = "x86_64")]
pub(crate) type Avx512 = X86<width::W512>;

/// AVX2, FMA and F16C (the AVX2 level).
#[cfg(target_arch = "x86_64")]
pub(crate) type Avx2 = X86<width::W256>;

#[cfg(target_arch = "x86_64")]
impl<W: x86::Entry> Simd for X86<W> {
    const FMA: bool = true;

    #[inline(always)]
    fn softmax_rows(states: &mut [RowState], scores: &mut [f32], rows: (usize, usize), alphas: &mut [f32]) {
        // SAFETY: the width's features (type contract).
        if !unsafe { W::softmax_rows(states, scores, rows, alphas) } {
            plain_softmax_rows(states, scores, rows, alphas, true);
        }
    }

    #[inline(always)]
    fn token_queries<T: Lanes>(q: &[T], starts: &[usize], d: usize, scale: f32, out: &mut Lines) -> bool {
        // SAFETY: the width's features (type contract).
        unsafe { x86::token_queries::<W, T>(q, starts, d, scale, out) }
    }

    #[inline(always)]
    fn token_dots<T: Lanes>(
        q: &[f32],
        heads: usize,
        per_head: usize,
        src: &[T],
        prefetch: &[T],
        offs: &[usize],
        out: &mut [f32],
        stride: usize,
    ) -> bool {
        let Some(d) = token_shape(q.len(), heads, per_head, (src.len(), prefetch.len()), offs, out.len(), stride)
        else {
            return false;
        };
        let (qp, sp, pp, op) = (q.as_ptr(), src.as_ptr(), prefetch.as_ptr(), out.as_mut_ptr());
        // SAFETY: the width's features (type contract); the shapes were checked by `token_shape`.
        unsafe { W::token_dots(d, qp, heads, per_head, sp, pp, offs, op, stride) }
    }

    #[inline(always)]
    fn dots<T: Lanes, const K: usize>(q: [&[f32]; K], src: &[T], offs: &[usize], mut out: [&mut [f32]; K]) {
        let d = q[0].len();
        let n = out.iter().map(|o| o.len()).min().unwrap_or(0);
        let fits = q.iter().all(|q| q.len() == d) && offs.len() >= n && offs[..n].iter().all(|&o| o + d <= src.len());
        let op = out.each_mut().map(|o| &mut o[..n]);
        // SAFETY: the width's features (type contract); every row and query holds d values and
        // every output n (checked by `fits`).
        if !(fits && unsafe { W::dots(q.map(|q| q.as_ptr()), d, src.as_ptr(), &offs[..n], op) }) {
            Generic::dots(q, src, offs, out);
        }
    }

    /// Where the shapes fit the width's kernel; rows of `ahead` are prefetched if every one lies
    /// inside its slice.
    #[inline(always)]
    fn weighted_sums<T: Lanes, const K: usize>(
        p: [&[f32]; K],
        src: &[T],
        offs: &[usize],
        mut acc: [&mut [f32]; K],
        (pf, ahead): (&[T], &[usize]),
    ) -> bool {
        let (d, n) = (acc[0].len(), p[0].len());
        let fits = acc.iter().all(|a| a.len() == d)
            && p.iter().all(|x| x.len() == n)
            && offs.len() >= n
            && offs[..n].iter().all(|&o| o + d <= src.len());
        let ahead = if ahead.iter().all(|&o| o + d <= pf.len()) { Some(ahead) } else { None };
        let ap = acc.each_mut().map(|a| a.as_mut_ptr());
        let pre = (pf.as_ptr(), ahead.unwrap_or_default());
        // SAFETY: the width's features (type contract); every row and accumulator holds d values,
        // every weight vector n, and so does every row to prefetch (checked above).
        if fits && unsafe { W::weighted_sums(p, d, src.as_ptr(), &offs[..n], ap, pre) } {
            // Rows past the summed ones (more rows ahead than summed) were not prefetched.
            return ahead.is_some_and(|a| a.len() <= n);
        }
        Generic::weighted_sums(p, src, offs, acc, (pf, &[]))
    }

    #[inline(always)]
    fn rows_dot<T: Lanes>(a: &[f32], lda: usize, w: &[T], out: &mut [f32]) {
        let (m, k) = (out.len(), w.len());
        assert!(m == 0 || a.len() >= (m - 1) * lda + k);
        // SAFETY: the width's features (type contract); `a` holds m rows of k at stride lda
        // (checked above), `w` k values.
        if !unsafe { W::rows_dot(a.as_ptr(), lda, w, out) } {
            Generic::rows_dot(a, lda, w, out);
        }
    }

    #[inline(always)]
    fn rows_dot2<T: Lanes>(a: &[f32], lda: usize, w: [&[T]; 2], out: [&mut [f32]; 2]) {
        let (m, k) = (out[0].len(), w[0].len());
        assert!(out[1].len() == m && w[1].len() == k && (m == 0 || a.len() >= (m - 1) * lda + k));
        let [o0, o1] = out;
        // SAFETY: as in `rows_dot`, for both rows of weights and outputs.
        if !unsafe { W::rows_dot2(a.as_ptr(), lda, w, [&mut *o0, &mut *o1]) } {
            Generic::rows_dot2(a, lda, w, [o0, o1]);
        }
    }
}
#[cfg(target_arch = "x86_64")]
pub(crate) mod width;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) use x86::prefetch_row_to;

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Small integers: every product and sum is exact in f32, so any correct order gives equal results.
    /// `token_dots`: whether the level must have the token-by-token kernel (head sizes 64, 80, 96,
    /// 128 and 256).
    fn check<S: Simd, T: Lanes + crate::Element>(token_dots: bool) {
        for d in [16, 40, 64, 80, 96, 128, 256] {
            let keys = 5;
            let offs: Vec<usize> = (0..keys).map(|j| j * (d + 3) + 1).collect();
            let q: Vec<f32> = (0..d).map(|i| (i % 3) as f32 - 1.0).collect();
            let src: Vec<T> = (0..keys * (d + 3) + 1).map(|i| T::from_f32((i % 11) as f32 - 5.0)).collect();
            let row = |j: usize, i: usize| src[offs[j] + i].to_f32();
            let mut got = vec![0.0; keys];
            S::dots([&q], &src, &offs, [&mut got]);
            let want: Vec<f32> = (0..keys).map(|j| (0..d).map(|i| q[i] * row(j, i)).sum()).collect();
            assert_eq!(got, want, "dots d = {d}");
            let p: Vec<f32> = (0..keys).map(|j| j as f32 - 2.0).collect();
            let mut acc: Vec<f32> = (0..d).map(|i| i as f32).collect();
            S::weighted_sums([&p], &src, &offs, [&mut acc], (&src, &offs));
            let want: Vec<f32> = (0..d).map(|i| i as f32 + (0..keys).map(|j| p[j] * row(j, i)).sum::<f32>()).collect();
            assert_eq!(acc, want, "weighted sum d = {d}");
            let q1: Vec<f32> = q.iter().map(|x| 2.0 - x).collect();
            let (mut g0, mut g1) = (vec![0.0; keys], vec![0.0; keys]);
            S::dots([&q, &q1], &src, &offs, [&mut g0, &mut g1]);
            let mut w1 = vec![0.0; keys];
            S::dots([&q1], &src, &offs, [&mut w1]);
            assert_eq!((&g0, &g1), (&got, &w1), "two queries, d = {d}");
            let p1: Vec<f32> = p.iter().map(|x| x * 3.0).collect();
            let (mut a0, mut a1) = (vec![1.0; d], vec![2.0; d]);
            S::weighted_sums([&p, &p1], &src, &offs, [&mut a0, &mut a1], (&src, &[]));
            let (mut b0, mut b1) = (vec![1.0; d], vec![2.0; d]);
            S::weighted_sums([&p], &src, &offs, [&mut b0], (&src, &[]));
            S::weighted_sums([&p1], &src, &offs, [&mut b1], (&src, &[]));
            assert_eq!((a0, a1), (b0, b1), "two weight vectors, d = {d}");
            let p2: Vec<f32> = p.iter().map(|x| 1.0 - x).collect();
            let p3: Vec<f32> = p.iter().map(|x| x * -2.0).collect();
            let mut a4: [Vec<f32>; 4] = [0, 1, 2, 3].map(|k| vec![k as f32; d]);
            let mut b4 = a4.clone();
            {
                let [x0, x1, x2, x3] = &mut a4;
                S::weighted_sums([&p, &p1, &p2, &p3], &src, &offs, [x0, x1, x2, x3], (&src, &offs));
            }
            for (b, w) in b4.iter_mut().zip([&p, &p1, &p2, &p3]) {
                S::weighted_sums([w], &src, &offs, [b], (&src, &[]));
            }
            assert_eq!(a4, b4, "four weight vectors, d = {d}");
            // Token by token (rows per head paired, alone, and both): the same sums where the
            // level has the kernel.
            for (heads, per_head) in [(2, 2), (4, 1), (1, 3)] {
                let (rows, stride) = (heads * per_head, 8);
                let width = heads * d + 3;
                let toks: Vec<usize> = (0..keys).map(|j| (keys - 1 - j) * width).collect();
                let q: Vec<f32> = (0..rows * d).map(|i| (i % 5) as f32 - 2.0).collect();
                let tsrc: Vec<T> = (0..keys * width).map(|i| T::from_f32((i % 11) as f32 - 5.0)).collect();
                let mut got = vec![f32::NAN; rows * stride];
                let (q_src, starts): (Vec<T>, Vec<usize>) =
                    (q.iter().map(|&x| T::from_f32(x)).collect(), (0..rows).map(|r| r * d).collect());
                let mut ordered = Lines::default();
                S::token_queries::<T>(&q_src, &starts, d, 1.0, &mut ordered);
                if S::token_dots(&ordered, heads, per_head, &tsrc, &tsrc, &toks, &mut got, stride) {
                    for r in 0..rows {
                        for (j, &o) in toks.iter().enumerate() {
                            let k = |i: usize| tsrc[o + (r / per_head) * d + i].to_f32();
                            let want: f32 = (0..d).map(|i| q[r * d + i] * k(i)).sum();
                            assert_eq!(
                                got[r * stride + j],
                                want,
                                "token_dots d = {d} {heads}×{per_head} row {r} key {j}"
                            );
                        }
                        assert!(got[r * stride + keys..(r + 1) * stride].iter().all(|x| x.is_nan()), "past the keys");
                    }
                } else {
                    assert!(!token_dots || ![64, 80, 96, 128, 256].contains(&d), "token_dots refused d = {d}");
                }
            }
            for m in [1, 3, 16] {
                let a: Vec<f32> = (0..m * (d + 5)).map(|i| (i % 7) as f32 - 3.0).collect();
                let w = &src[1..1 + d];
                let mut got = vec![0f32; m];
                S::rows_dot(&a, d + 5, w, &mut got);
                let dot = |w: &[T], i: usize| (0..d).map(|p| a[i * (d + 5) + p] * w[p].to_f32()).sum::<f32>();
                let want: Vec<f32> = (0..m).map(|i| dot(w, i)).collect();
                assert_eq!(got, want, "rows_dot m = {m}, d = {d}");
                if m <= 8 {
                    let w2 = &src[d + 3..2 * d + 3];
                    let (mut g0, mut g1) = (vec![0f32; m], vec![0f32; m]);
                    S::rows_dot2(&a, d + 5, [w, w2], [&mut g0, &mut g1]);
                    assert_eq!(g0, want, "rows_dot2 first row, m = {m}, d = {d}");
                    assert_eq!(g1, (0..m).map(|i| dot(w2, i)).collect::<Vec<_>>(), "rows_dot2 second row, m = {m}");
                }
            }
        }
    }

    #[test]
    fn bf16_token_dots_are_exact_on_small_integers() {
        let bits = |v: f32| bf16::from_f32(v).to_bits();
        let f = |b: u16| bf16::from_bits(b).to_f32();
        for d in [64, 96, 128, 256] {
            for (heads, per_head) in [(1, 2), (3, 4), (2, 8), (4, 1), (2, 3)] {
                for keys in [1, 2, 7, 32] {
                    let (rows, width, stride) = (heads * per_head, heads * d, 40);
                    // Tokens spaced unevenly (as blocks of a paged cache are), heads adjacent.
                    let offs: Vec<usize> = (0..keys).map(|j| (keys - 1 - j) * (width + 16) + 3).collect();
                    let src: Vec<u16> = (0..keys * (width + 16) + 3).map(|i| bits((i % 11) as f32 - 5.0)).collect();
                    let q: Vec<u16> = (0..rows * d).map(|i| bits((i % 7) as f32 - 3.0)).collect();
                    let mut out = vec![f32::NAN; rows * stride];
                    let ran = token_dots_bf16(&q, heads, per_head, &src, &src, &offs, 1.0, &mut out, stride);
                    if crate::cpu::detected() < crate::cpu::Level::Avx512Bf16 {
                        assert!(!ran, "runs only with AVX-512 BF16");
                        return;
                    }
                    assert!(ran, "d {d} heads {heads}×{per_head} keys {keys} refused");
                    for r in 0..rows {
                        let h = r / per_head;
                        for (j, &o) in offs.iter().enumerate() {
                            let want: f32 = (0..d).map(|i| f(q[r * d + i]) * f(src[o + h * d + i])).sum();
                            assert_eq!(
                                out[r * stride + j],
                                want,
                                "d {d} heads {heads}×{per_head} keys {keys} row {r} key {j}"
                            );
                        }
                        // Nothing written past the keys.
                        assert!(out[r * stride + keys..(r + 1) * stride].iter().all(|x| x.is_nan()));
                    }
                }
            }
        }
        // An unsupported head size, or a row past the end: refused.
        let src = vec![0u16; 64];
        let mut out = vec![0f32; 2 * 8];
        let q = vec![0u16; 2 * 128];
        assert!(!token_dots_bf16(&q[..2 * 80], 1, 2, &[0u16; 80], &[0u16; 80], &[0], 1.0, &mut out, 8));
        assert!(!token_dots_bf16(&q[..128], 1, 2, &src, &src, &[1], 1.0, &mut out, 8));
    }

    #[test]
    fn bf16_pair_value_sums_are_exact_on_small_integers() {
        for d in [64, 96, 128, 256] {
            for keys in [1, 2, 7, 32] {
                if !bf16_pairs_fit(d, keys) {
                    return; // no AVX-512 BF16 here
                }
                let stride = d + 16;
                let bits = |v: f32| bf16::from_f32(v).to_bits();
                let src: Vec<u16> = (0..keys * stride).map(|i| bits((i % 11) as f32 - 5.0)).collect();
                let offs: Vec<usize> = (0..keys).map(|j| j * stride + 2).collect();
                let p: Vec<Vec<f32>> =
                    (0..4).map(|k| (0..keys).map(|j| ((j + k) % 5) as f32 - 2.0).collect()).collect();
                let pb: Vec<Vec<u16>> = p.iter().map(|w| w.iter().map(|&x| bits(x)).chain([0]).collect()).collect();
                let mut acc: [Vec<f32>; 4] = [0, 1, 2, 3].map(|k| (0..d).map(|i| (i % 3) as f32 + k as f32).collect());
                let want: Vec<Vec<f32>> = (0..4)
                    .map(|k| {
                        (0..d)
                            .map(|i| {
                                acc[k][i]
                                    + (0..keys)
                                        .map(|j| p[k][j] * bf16::from_bits(src[offs[j] + i]).to_f32())
                                        .sum::<f32>()
                            })
                            .collect()
                    })
                    .collect();
                {
                    let [a0, a1, a2, a3] = &mut acc;
                    weighted_sum4_bf16([&pb[0], &pb[1], &pb[2], &pb[3]], &src, &offs, [a0, a1, a2, a3], (&[], &[]));
                }
                assert_eq!(acc.to_vec(), want, "d {d} keys {keys}");
            }
        }
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even_at_every_length() {
        // Halfway cases both ways (1 + 2⁻⁸ rounds down to even, 1 + 3·2⁻⁸ up), values just off
        // halfway, signs, magnitudes from 2⁻¹⁰⁰ to 2¹⁰⁰, zero, and subnormals (flushed to signed
        // zero, in the vector part as in the tail); lengths around the 16-lane width.
        let base = [1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8), 1.0 + 2f32.powi(-8) + 2f32.powi(-20), 0.0, 0.3];
        let mut values: Vec<f32> = (0..40)
            .map(|i| base[i % base.len()] * 2f32.powi(i as i32 * 5 - 100) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        for i in [3, 16, 34] {
            values[i] = if i % 2 == 0 { 1e-39 } else { -1e-39 };
        }
        for n in [0, 1, 15, 16, 17, 33, 40] {
            let mut got = vec![0xdeadu16; n];
            round_to_bf16(&values[..n], &mut got);
            let want: Vec<u16> = values[..n]
                .iter()
                .map(|&x| match x.is_subnormal() {
                    true => bf16::from_f32(0f32.copysign(x)).to_bits(),
                    false => bf16::from_f32(x).to_bits(),
                })
                .collect();
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn generic_is_exact_on_small_integers() {
        check::<Generic, f32>(false);
        check::<Generic, bf16>(false);
        check::<Generic, half::f16>(false);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx2_is_exact_on_small_integers() {
        if crate::cpu::detected() >= crate::cpu::Level::Avx2 {
            check::<Avx2, f32>(true);
            check::<Avx2, bf16>(true);
            check::<Avx2, half::f16>(true);
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_is_exact_on_small_integers() {
        if crate::cpu::detected() >= crate::cpu::Level::Avx512 {
            check::<Avx512, f32>(true);
            check::<Avx512, bf16>(true);
            check::<Avx512, half::f16>(true);
        }
    }
}
