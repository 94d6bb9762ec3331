//! Vector primitives per SIMD level, for kernels that are monomorphised per level: the compiler
//! vectorises plain loops over short rows poorly (dot products come out two lanes wide), and
//! converting bf16/f16 rows into f32 buffers first costs more cache traffic than the arithmetic.

use crate::attention::softmax::RowState;
use crate::gemm::ToF32;

/// Row operations on f32 vectors against rows of a source type (f32, f16 or bf16) at arbitrary
/// offsets of a slice (rows of a paged cache are not evenly spaced).
pub(crate) trait Simd {
    /// Whether `f32::mul_add` is a fused instruction at this level (a slow library call otherwise).
    const FMA: bool;

    /// The online-softmax step of one row ([`RowState::update`]), in vector registers where this
    /// level can.
    #[inline(always)]
    fn softmax_update(state: &mut RowState, scores: &mut [f32]) -> f32 {
        state.update(scores, Self::FMA)
    }

    /// `out[j] = q · src[offs[j] ..][.. q.len()]` for every j.
    fn dots<T: Lanes>(q: &[f32], src: &[T], offs: &[usize], out: &mut [f32]);
    /// `acc += Σⱼ p[j] · src[offs[j] ..][.. acc.len()]`, prefetching the rows of `ahead` as
    /// [`Simd::weighted_sum4`] does (returns whether it did).
    fn weighted_sum<T: Lanes>(p: &[f32], src: &[T], offs: &[usize], acc: &mut [f32], ahead: (&[T], &[usize])) -> bool;

    /// `out[i] = a[i·lda ..][..w.len()] · w` for each of the `out.len()` (≤ 16) rows of `a`: one row of
    /// weights against a few activation rows (decode-shaped matmul); each weight is loaded once.
    #[inline(always)]
    fn rows_dot<T: Lanes>(a: &[f32], lda: usize, w: &[T], out: &mut [f32]) {
        let k = w.len();
        if T::INLINE_CONVERT {
            for (i, o) in out.iter_mut().enumerate() {
                *o = Generic::dot::<T, 64>(w, &a[i * lda..i * lda + k]);
            }
            return;
        }
        let mut row = vec![0f32; k];
        T::slice_to_f32(w, &mut row);
        for (i, o) in out.iter_mut().enumerate() {
            *o = Generic::dot::<f32, 64>(&row, &a[i * lda..i * lda + k]);
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

    /// [`Simd::dots`] for two queries against the same rows (each row read once for both).
    #[inline(always)]
    fn dots2<T: Lanes>(q: [&[f32]; 2], src: &[T], offs: &[usize], out: [&mut [f32]; 2]) {
        let [o0, o1] = out;
        Self::dots(q[0], src, offs, o0);
        Self::dots(q[1], src, offs, o1);
    }

    /// [`Simd::weighted_sum`] for two weight vectors over the same rows (each row read once).
    #[inline(always)]
    fn weighted_sum2<T: Lanes>(p: [&[f32]; 2], src: &[T], offs: &[usize], acc: [&mut [f32]; 2]) {
        let [a0, a1] = acc;
        Self::weighted_sum(p[0], src, offs, a0, (src, &[]));
        Self::weighted_sum(p[1], src, offs, a1, (src, &[]));
    }

    /// Scores of every query row of an item against the keys at `offs`, token by token: see
    /// [`token_dots_bf16`], here with f32 queries (`heads · per_head` rows, already scaled) and rows
    /// of any source type. Returns false (doing nothing) where this level has no such kernel or the
    /// shapes do not fit it.
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

    /// [`Simd::weighted_sum`] for four weight vectors over the same rows. Where this level can,
    /// the rows of `ahead` (offsets into its slice, as long as the rows' `d`) are prefetched into L2
    /// meanwhile, one per row summed, and it returns true; else it returns false (nothing
    /// prefetched). Spread so, the prefetches of the next key tile keep memory busy without
    /// stalling the sums in a burst of them.
    #[inline(always)]
    fn weighted_sum4<T: Lanes>(
        p: [&[f32]; 4],
        src: &[T],
        offs: &[usize],
        acc: [&mut [f32]; 4],
        ahead: (&[T], &[usize]),
    ) -> bool {
        let _ = ahead;
        let [a0, a1, a2, a3] = acc;
        Self::weighted_sum2([p[0], p[1]], src, offs, [a0, a1]);
        Self::weighted_sum2([p[2], p[3]], src, offs, [a2, a3]);
        false
    }
}

/// Source element types of the row operations.
pub trait Lanes: ToF32 {
    /// 16 values at `p` as f32 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `p` must be valid for 16 reads.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
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
    }

    impl Lanes for bf16 {
        #[inline(always)]
        unsafe fn load16(p: *const bf16) -> __m512 {
            // SAFETY: forwarded contract.
            unsafe { load_bf16(p as *const u16) }
        }
    }

    impl Lanes for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            // SAFETY: forwarded contract.
            unsafe { load_f16(p as *const u16) }
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

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_f16(p: *const u16) -> __m512 {
        // SAFETY: 16 readable values (contract).
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
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

/// Plain loops (AVX2 and portable levels): rows converted to f32, then 8-lane partial sums.
pub(crate) struct Generic;

impl Generic {
    /// `x · y` with `L` (a power of two) independent partial sums, so the loop vectorises, `x`
    /// converted inline: 16 or 32 for head-sized rows ([`Generic::head_dot`]), 64 for weight rows.
    #[inline(always)]
    fn dot<X: ToF32, const L: usize>(x: &[X], y: &[f32]) -> f32 {
        let mut acc = [0f32; L];
        let (xc, yc) = (x.chunks_exact(L), y.chunks_exact(L));
        let tail: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(a, b)| a.to_f32() * b).sum();
        for (xs, ys) in xc.zip(yc) {
            // Fixed-size arrays: no bounds checks, so the lanes become vector operations.
            let (xs, ys): (&[X; L], &[f32; L]) = (xs.try_into().unwrap(), ys.try_into().unwrap());
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
            0 => Self::dot::<f32, 32>(x, y),
            _ => Self::dot::<f32, 16>(x, y),
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

    /// `acc[k] += Σⱼ p[k][j] · row j` for `K` weight vectors, each row converted once for all.
    /// Zero weights are not skipped: 0 · inf is NaN here as at every other level.
    #[inline(always)]
    fn weighted_sums<T: Lanes, const K: usize>(p: [&[f32]; K], src: &[T], offs: &[usize], mut acc: [&mut [f32]; K]) {
        let mut buf = vec![0f32; acc[0].len()];
        for (j, &at) in offs.iter().enumerate().take(p[0].len()) {
            let row = Self::row(src, at, &mut buf);
            for (a, w) in acc.iter_mut().zip(p.iter().map(|p| p[j])) {
                a.iter_mut().zip(row).for_each(|(a, r)| *a += w * r);
            }
        }
    }
}

impl Simd for Generic {
    const FMA: bool = false;

    #[inline(always)]
    fn dots<T: Lanes>(q: &[f32], src: &[T], offs: &[usize], out: &mut [f32]) {
        let mut buf = vec![0f32; q.len()];
        for (o, &at) in out.iter_mut().zip(offs) {
            *o = Self::head_dot(q, Self::row(src, at, &mut buf));
        }
    }

    #[inline(always)]
    fn dots2<T: Lanes>(q: [&[f32]; 2], src: &[T], offs: &[usize], out: [&mut [f32]; 2]) {
        let mut buf = vec![0f32; q[0].len()];
        let [o0, o1] = out;
        for ((o0, o1), &at) in o0.iter_mut().zip(o1.iter_mut()).zip(offs) {
            let row = Self::row(src, at, &mut buf);
            (*o0, *o1) = (Self::head_dot(q[0], row), Self::head_dot(q[1], row));
        }
    }

    #[inline(always)]
    fn weighted_sum<T: Lanes>(p: &[f32], src: &[T], offs: &[usize], acc: &mut [f32], ahead: (&[T], &[usize])) -> bool {
        let _ = ahead;
        Self::weighted_sums([p], src, offs, [acc]);
        false
    }

    #[inline(always)]
    fn weighted_sum2<T: Lanes>(p: [&[f32]; 2], src: &[T], offs: &[usize], acc: [&mut [f32]; 2]) {
        Self::weighted_sums(p, src, offs, acc);
    }

    #[inline(always)]
    fn weighted_sum4<T: Lanes>(
        p: [&[f32]; 4],
        src: &[T],
        offs: &[usize],
        acc: [&mut [f32]; 4],
        ahead: (&[T], &[usize]),
    ) -> bool {
        let _ = ahead;
        Self::weighted_sums(p, src, offs, acc);
        false
    }
}

/// AVX-512F. Only to be used inside functions compiled with `avx512f`, on a CPU that has it.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Simd for Avx512 {
    const FMA: bool = true;

    #[inline(always)]
    fn softmax_update(state: &mut RowState, scores: &mut [f32]) -> f32 {
        match state.update_wide(scores) {
            Some(alpha) => alpha,
            None => state.update(scores, true),
        }
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
        // SAFETY: this type is only used by code that checked the CPU for AVX-512F; the shapes were
        // checked by `token_shape`.
        unsafe {
            match d {
                64 => x86::token_dots_widened::<T, 4>(qp, heads, per_head, sp, pp, offs, op, stride),
                80 => x86::token_dots_widened::<T, 5>(qp, heads, per_head, sp, pp, offs, op, stride),
                96 => x86::token_dots_widened::<T, 6>(qp, heads, per_head, sp, pp, offs, op, stride),
                128 => x86::token_dots_widened::<T, 8>(qp, heads, per_head, sp, pp, offs, op, stride),
                256 => x86::token_dots_widened::<T, 16>(qp, heads, per_head, sp, pp, offs, op, stride),
                _ => return false,
            }
        }
        true
    }

    #[inline(always)]
    fn dots<T: Lanes>(q: &[f32], src: &[T], offs: &[usize], out: &mut [f32]) {
        let d = q.len();
        assert!(offs.len() >= out.len() && offs.iter().all(|&o| o + d <= src.len()));
        // SAFETY: this type is only used by code that checked the CPU for AVX-512F; every row lies
        // inside `src` (checked above) and holds d = 16·NV values.
        unsafe {
            match d {
                64 => x86::dots::<T, 4>(q.as_ptr(), src.as_ptr(), offs, out),
                80 => x86::dots::<T, 5>(q.as_ptr(), src.as_ptr(), offs, out),
                96 => x86::dots::<T, 6>(q.as_ptr(), src.as_ptr(), offs, out),
                128 => x86::dots::<T, 8>(q.as_ptr(), src.as_ptr(), offs, out),
                256 => x86::dots::<T, 16>(q.as_ptr(), src.as_ptr(), offs, out),
                _ => Generic::dots(q, src, offs, out),
            }
        }
    }

    #[inline(always)]
    fn weighted_sum<T: Lanes>(p: &[f32], src: &[T], offs: &[usize], acc: &mut [f32], ahead: (&[T], &[usize])) -> bool {
        let d = acc.len();
        assert!(offs.len() >= p.len() && offs.iter().all(|&o| o + d <= src.len()));
        let (pf, ahead) = ahead;
        // Rows to prefetch are all inside `pf`, or none is prefetched.
        let fits = ahead.iter().all(|&o| o + d <= pf.len());
        let (s, a, pf) = (src.as_ptr(), acc.as_mut_ptr(), (pf.as_ptr(), if fits { ahead } else { &[] }));
        // SAFETY: as above, and every row to prefetch lies inside `pf` (checked above).
        unsafe {
            match d {
                64 => x86::weighted_sum::<T, 4>(p, s, offs, a, pf),
                80 => x86::weighted_sum::<T, 5>(p, s, offs, a, pf),
                96 => x86::weighted_sum::<T, 6>(p, s, offs, a, pf),
                128 => x86::weighted_sum::<T, 8>(p, s, offs, a, pf),
                256 => x86::weighted_sum::<T, 16>(p, s, offs, a, pf),
                _ => return Generic::weighted_sum(p, src, offs, acc, (&[], &[])),
            }
        }
        // Rows past the summed ones (more rows ahead than summed) were not prefetched.
        fits && ahead.len() <= p.len()
    }

    #[inline(always)]
    fn rows_dot<T: Lanes>(a: &[f32], lda: usize, w: &[T], out: &mut [f32]) {
        let (m, k) = (out.len(), w.len());
        assert!(m <= 16 && (m == 0 || a.len() >= (m - 1) * lda + k));
        macro_rules! rows {
            ($($n:literal)*) => {
                match m {
                    // SAFETY: AVX-512F as above; `a` holds m rows of k at stride lda (checked), `w` k values.
                    $($n => unsafe { x86::rows_dot::<T, $n>(a.as_ptr(), lda, w, out) },)*
                    _ => {}
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
    }

    #[inline(always)]
    fn rows_dot2<T: Lanes>(a: &[f32], lda: usize, w: [&[T]; 2], out: [&mut [f32]; 2]) {
        let (m, k) = (out[0].len(), w[0].len());
        assert!(m <= 8 && out[1].len() == m && w[1].len() == k && (m == 0 || a.len() >= (m - 1) * lda + k));
        let [o0, o1] = out;
        let (wp, op) = ([w[0].as_ptr(), w[1].as_ptr()], [o0.as_mut_ptr(), o1.as_mut_ptr()]);
        macro_rules! rows {
            ($($n:literal)*) => {
                match m {
                    // SAFETY: AVX-512F as above; `a` holds m rows of k at stride lda, each `w` k values
                    // and each `out` m (checked).
                    $($n => unsafe { x86::rows_dot_j::<T, $n, 2>(a.as_ptr(), lda, wp, k, op) },)*
                    _ => {}
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8);
    }

    #[inline(always)]
    fn weighted_sum4<T: Lanes>(
        p: [&[f32]; 4],
        src: &[T],
        offs: &[usize],
        acc: [&mut [f32]; 4],
        (pf, ahead): (&[T], &[usize]),
    ) -> bool {
        let d = acc[0].len();
        let n = p[0].len();
        let fits = acc.iter().all(|a| a.len() == d)
            && p.iter().all(|x| x.len() == n)
            && offs.len() >= n
            && offs.iter().all(|&o| o + d <= src.len())
            && ahead.iter().all(|&o| o + d <= pf.len());
        if !fits || !matches!(d, 64 | 80 | 96 | 128 | 256) {
            let [a0, a1, a2, a3] = acc;
            Self::weighted_sum2([p[0], p[1]], src, offs, [a0, a1]);
            Self::weighted_sum2([p[2], p[3]], src, offs, [a2, a3]);
            return false;
        }
        let ap = acc.map(|a| a.as_mut_ptr());
        let pf = (pf.as_ptr(), ahead);
        // SAFETY: AVX-512F as above; every row and accumulator holds d values, and so does every
        // row to prefetch (checked by `fits`). At most 24 accumulators: d = 128 and 256 go in
        // pieces of 64.
        unsafe {
            match d {
                64 => x86::weighted_sum4::<T, 4>(p, src.as_ptr(), offs, ap, 0, pf),
                80 => x86::weighted_sum4::<T, 5>(p, src.as_ptr(), offs, ap, 0, pf),
                96 => x86::weighted_sum4::<T, 6>(p, src.as_ptr(), offs, ap, 0, pf),
                _ => {
                    for d0 in (0..d).step_by(64) {
                        x86::weighted_sum4::<T, 4>(p, src.as_ptr(), offs, ap, d0, pf);
                    }
                }
            }
        }
        // Rows past the summed ones (more rows ahead than summed) were not prefetched.
        ahead.len() <= n
    }

    #[inline(always)]
    fn dots2<T: Lanes>(q: [&[f32]; 2], src: &[T], offs: &[usize], out: [&mut [f32]; 2]) {
        let d = q[0].len();
        let n = out[0].len();
        let fits = q[1].len() == d && out[1].len() == n && offs.len() >= n && offs.iter().all(|&o| o + d <= src.len());
        let [o0, o1] = out;
        match d {
            64 | 80 | 96 | 128 if fits => {
                let qp = [q[0].as_ptr(), q[1].as_ptr()];
                // SAFETY: AVX-512F as above; every row lies inside `src` and both outputs hold n
                // values (checked by `fits`).
                unsafe {
                    match d {
                        64 => x86::dots2::<T, 4>(qp, src.as_ptr(), offs, [o0, o1]),
                        80 => x86::dots2::<T, 5>(qp, src.as_ptr(), offs, [o0, o1]),
                        96 => x86::dots2::<T, 6>(qp, src.as_ptr(), offs, [o0, o1]),
                        _ => x86::dots2::<T, 8>(qp, src.as_ptr(), offs, [o0, o1]),
                    }
                }
            }
            _ => {
                Self::dots(q[0], src, offs, o0);
                Self::dots(q[1], src, offs, o1);
            }
        }
    }

    #[inline(always)]
    fn weighted_sum2<T: Lanes>(p: [&[f32]; 2], src: &[T], offs: &[usize], acc: [&mut [f32]; 2]) {
        let d = acc[0].len();
        let n = p[0].len();
        let fits = acc[1].len() == d && p[1].len() == n && offs.len() >= n && offs.iter().all(|&o| o + d <= src.len());
        let [a0, a1] = acc;
        match d {
            64 | 80 | 96 | 128 if fits => {
                let ap = [a0.as_mut_ptr(), a1.as_mut_ptr()];
                // SAFETY: as above; both accumulators hold d values.
                unsafe {
                    match d {
                        64 => x86::weighted_sum2::<T, 4>(p, src.as_ptr(), offs, ap),
                        80 => x86::weighted_sum2::<T, 5>(p, src.as_ptr(), offs, ap),
                        96 => x86::weighted_sum2::<T, 6>(p, src.as_ptr(), offs, ap),
                        _ => x86::weighted_sum2::<T, 8>(p, src.as_ptr(), offs, ap),
                    }
                }
            }
            _ => {
                Self::weighted_sum(p[0], src, offs, a0, (src, &[]));
                Self::weighted_sum(p[1], src, offs, a1, (src, &[]));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
// The register arrays are indexed by the same i that addresses memory (offset 16·i).
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::Lanes;
    use std::arch::x86_64::*;

    /// Prefetches the `len` elements from `row` into L2, a cache line at a time.
    #[inline(always)]
    fn prefetch_row<T>(row: *const T, len: usize) {
        let row = row as *const i8;
        for off in (0..len * std::mem::size_of::<T>()).step_by(64) {
            // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(row.wrapping_add(off)) };
        }
    }

    /// Dot products of `q` (NV·16 values, kept in registers) with the rows at `src + offs[j]`.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `q` holds NV·16 values, each row NV·16 values.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn dots<T: Lanes, const NV: usize>(q: *const f32, src: *const T, offs: &[usize], out: &mut [f32]) {
        // SAFETY: every access is inside `q` or one of the rows (contract).
        unsafe {
            let mut qv = [_mm512_setzero_ps(); NV];
            for (i, v) in qv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(q.add(16 * i));
            }
            for (o, &at) in out.iter_mut().zip(offs) {
                let r = src.add(at);
                let (mut a, mut b) = (_mm512_mul_ps(qv[0], T::load16(r)), _mm512_setzero_ps());
                for i in 1..NV {
                    if i % 2 == 1 {
                        b = _mm512_fmadd_ps(qv[i], T::load16(r.add(16 * i)), b);
                    } else {
                        a = _mm512_fmadd_ps(qv[i], T::load16(r.add(16 * i)), a);
                    }
                }
                *o = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
            }
        }
    }

    /// `out[i] = a row i · w` for M rows: each 16 weights are loaded (and converted) once and used by
    /// all M accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` holds M rows of `w.len()` values at stride `lda`; `out` M.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn rows_dot<T: Lanes, const M: usize>(a: *const f32, lda: usize, w: &[T], out: &mut [f32]) {
        // SAFETY: forwarded contract (one row of weights).
        unsafe { rows_dot_j::<T, M, 1>(a, lda, [w.as_ptr()], w.len(), [out.as_mut_ptr()]) }
    }

    /// `out[r][i] = a row i · w[r]` for M activation rows and J weight rows: each 16 weights are
    /// loaded (and converted) once for all M rows, each 16 activations once for all J rows.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a` holds M rows of `k` values at stride `lda`; each `w[r]`
    /// holds k values and each `out[r]` M.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn rows_dot_j<T: Lanes, const M: usize, const J: usize>(
        a: *const f32,
        lda: usize,
        w: [*const T; J],
        k: usize,
        out: [*mut f32; J],
    ) {
        // SAFETY: every access is inside a row of `w`, one of the M rows of `a`, or `out` (contract).
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); M]; J];
            let mut p = 0;
            let step = |acc: &mut [[__m512; M]; J], p: usize| {
                let wv: [__m512; J] = std::array::from_fn(|r| T::load16(w[r].add(p)));
                for i in 0..M {
                    let av = _mm512_loadu_ps(a.add(i * lda + p));
                    for r in 0..J {
                        acc[r][i] = _mm512_fmadd_ps(av, wv[r], acc[r][i]);
                    }
                }
            };
            if M * J <= 4 {
                // Few dot products: four sets of accumulators over consecutive chunks, or the FMA
                // latency of one chain per product bounds the loop (m = 1 is one chain).
                let mut more = [[[_mm512_setzero_ps(); M]; J]; 3];
                while p + 64 <= k {
                    step(&mut acc, p);
                    for (u, set) in more.iter_mut().enumerate() {
                        step(set, p + 16 * (u + 1));
                    }
                    p += 64;
                }
                for set in &more {
                    for r in 0..J {
                        for i in 0..M {
                            acc[r][i] = _mm512_add_ps(acc[r][i], set[r][i]);
                        }
                    }
                }
            }
            while p + 16 <= k {
                step(&mut acc, p);
                p += 16;
            }
            for r in 0..J {
                for i in 0..M {
                    let mut s = _mm512_reduce_add_ps(acc[r][i]);
                    for q in p..k {
                        s += *a.add(i * lda + q) * (*w[r].add(q)).to_f32();
                    }
                    *out[r].add(i) = s;
                }
            }
        }
    }

    /// Stores `[r·a, r·b, (r+1)·a, (r+1)·b]` (two rows' scores for two keys) at `out` (row r, key a)
    /// and `out + stride`; only the `a` scores when `both` is false.
    ///
    /// # Safety
    /// The positions written exist.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store_pair(s: __m128, out: *mut f32, stride: usize, both: bool) {
        // SAFETY: as the contract says.
        unsafe {
            if both {
                _mm_storel_pd(out as *mut f64, _mm_castps_pd(s));
                _mm_storeh_pd(out.add(stride) as *mut f64, _mm_castps_pd(s));
            } else {
                _mm_store_ss(out, s);
                _mm_store_ss(out.add(stride), _mm_movehl_ps(s, s));
            }
        }
    }

    /// The sums of the 16 lanes of each of four vectors, as `[Σa, Σb, Σc, Σd]`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn reduce4([a, b, c, d]: [__m512; 4]) -> __m128 {
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

    /// What differs between the score kernels: how a chunk of a query row and of a key row is
    /// loaded, and how their products are accumulated.
    pub trait Chunks {
        /// Query and key element types.
        type Q;
        type K;
        /// A chunk in a register.
        type V: Copy;
        /// Elements per chunk.
        const LANES: usize;
        /// # Safety
        /// The CPU has what the kernel needs; `p` is valid for `LANES` reads.
        unsafe fn query(p: *const Self::Q) -> Self::V;
        /// # Safety
        /// As [`Chunks::query`].
        unsafe fn key(p: *const Self::K) -> Self::V;
        /// # Safety
        /// As [`Chunks::query`].
        unsafe fn madd(acc: __m512, q: Self::V, k: Self::V) -> __m512;
    }

    /// Raw bf16 queries and keys, 32 per chunk, by `vdpbf16ps` (needs AVX-512 BF16).
    pub struct Bf16Pairs;

    impl Chunks for Bf16Pairs {
        type Q = u16;
        type K = u16;
        type V = __m512bh;
        const LANES: usize = 32;
        #[inline(always)]
        unsafe fn query(p: *const u16) -> __m512bh {
            // SAFETY: 32 values at p (contract); __m512bh and __m512i are both 512-bit vectors.
            unsafe { std::mem::transmute(_mm512_loadu_si512(p as *const _)) }
        }
        #[inline(always)]
        unsafe fn key(p: *const u16) -> __m512bh {
            // SAFETY: as above.
            unsafe { Self::query(p) }
        }
        #[inline(always)]
        unsafe fn madd(acc: __m512, q: __m512bh, k: __m512bh) -> __m512 {
            // SAFETY: AVX-512 BF16 (contract).
            unsafe { _mm512_dpbf16_ps(acc, q, k) }
        }
    }

    /// f32 queries and keys of any source type converted in registers, 16 per chunk, by FMA.
    pub struct Widened<T>(std::marker::PhantomData<T>);

    impl<T: Lanes> Chunks for Widened<T> {
        type Q = f32;
        type K = T;
        type V = __m512;
        const LANES: usize = 16;
        #[inline(always)]
        unsafe fn query(p: *const f32) -> __m512 {
            // SAFETY: 16 values at p (contract).
            unsafe { _mm512_loadu_ps(p) }
        }
        #[inline(always)]
        unsafe fn key(p: *const T) -> __m512 {
            // SAFETY: as above.
            unsafe { T::load16(p) }
        }
        #[inline(always)]
        unsafe fn madd(acc: __m512, q: __m512, k: __m512) -> __m512 {
            // SAFETY: AVX-512F (contract).
            unsafe { _mm512_fmadd_ps(q, k, acc) }
        }
    }

    /// Scores of every query row against keys `offs` in token order: for each pair of tokens, every
    /// KV head in turn, so the cache is read front to back; the value rows at the same offsets of
    /// `pf` are prefetched into L2 as the keys are read, and the keys four tokens ahead once more.
    /// Rows are head-major, `per_head` per KV head (two at a time: each key chunk loaded once per
    /// pair), `LANES·NV` values each at `q`; key `j` of
    /// head `h` at `src + offs[j] + LANES·NV·h`; `scale` times the score goes to
    /// `out + r·stride + j`.
    ///
    /// # Safety
    /// Called from a function compiled for what `C` needs (AVX-512F, and BF16 for [`Bf16Pairs`]),
    /// on a CPU that has it; every row, query and output position named exists.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_dots<C: Chunks, const NV: usize>(
        q: *const C::Q,
        heads: usize,
        per_head: usize,
        src: *const C::K,
        pf: *const C::K,
        offs: &[usize],
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: every access is inside the queries, rows or outputs (contract).
        unsafe {
            let scale = _mm_set1_ps(scale);
            let d = C::LANES * NV;
            let prefetch = |p: *const C::K| prefetch_row(p, d);
            let n = offs.len();
            let mut j = 0;
            while j < n {
                // An odd last token is paired with itself (its second score is not stored).
                let (ja, jb) = (offs[j], offs[(j + 1).min(n - 1)]);
                for h in 0..heads {
                    prefetch(pf.add(ja + h * d));
                    prefetch(pf.add(jb + h * d));
                    // Keys of a tile should be in L2 already (prefetched during the previous value
                    // sums); a second prefetch four tokens ahead catches the ones that are not.
                    for &at in offs.get(j + 4..(j + 6).min(n)).unwrap_or_default() {
                        prefetch(src.add(at + h * d));
                    }
                    let (a, b) = (src.add(ja + h * d), src.add(jb + h * d));
                    let ka: [C::V; NV] = std::array::from_fn(|i| C::key(a.add(C::LANES * i)));
                    let kb: [C::V; NV] = std::array::from_fn(|i| C::key(b.add(C::LANES * i)));
                    let (mut r, end) = (h * per_head, (h + 1) * per_head);
                    while r + 1 < end {
                        let mut acc = [_mm512_setzero_ps(); 4];
                        for i in 0..NV {
                            let q0 = C::query(q.add(r * d + C::LANES * i));
                            let q1 = C::query(q.add((r + 1) * d + C::LANES * i));
                            acc[0] = C::madd(acc[0], q0, ka[i]);
                            acc[1] = C::madd(acc[1], q0, kb[i]);
                            acc[2] = C::madd(acc[2], q1, ka[i]);
                            acc[3] = C::madd(acc[3], q1, kb[i]);
                        }
                        store_pair(_mm_mul_ps(reduce4(acc), scale), out.add(r * stride + j), stride, j + 1 < n);
                        r += 2;
                    }
                    if r < end {
                        // An odd row out (one row per head: plain multi-head attention), alone:
                        // two chains per key, so that the FMA latency does not bound it.
                        let mut acc = [_mm512_setzero_ps(); 4];
                        for i in 0..NV {
                            let q0 = C::query(q.add(r * d + C::LANES * i));
                            acc[i % 2] = C::madd(acc[i % 2], q0, ka[i]);
                            acc[2 + i % 2] = C::madd(acc[2 + i % 2], q0, kb[i]);
                        }
                        // [a0, a1, b0, b1] (two half sums per key) → [a, b].
                        let s = reduce4(acc);
                        let s = _mm_add_ps(s, _mm_shuffle_ps::<0b11_11_11_01>(s, s));
                        let s = _mm_mul_ps(_mm_shuffle_ps::<0b00_00_10_00>(s, s), scale);
                        match j + 1 < n {
                            true => _mm_storel_pd(out.add(r * stride + j) as *mut f64, _mm_castps_pd(s)),
                            false => _mm_store_ss(out.add(r * stride + j), s),
                        }
                    }
                }
                j += 2;
            }
        }
    }

    /// [`token_dots`] on raw bf16 values.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; as [`token_dots`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_dots_bf16<const NV: usize>(
        q: *const u16,
        heads: usize,
        per_head: usize,
        src: *const u16,
        pf: *const u16,
        offs: &[usize],
        scale: f32,
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: compiled with what Bf16Pairs needs; the rest is the caller's contract.
        unsafe { token_dots::<Bf16Pairs, NV>(q, heads, per_head, src, pf, offs, scale, out, stride) }
    }

    /// [`token_dots`] on f32 queries (already scaled) and keys of any source type.
    ///
    /// # Safety
    /// AVX-512F; as [`token_dots`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn token_dots_widened<T: Lanes, const NV: usize>(
        q: *const f32,
        heads: usize,
        per_head: usize,
        src: *const T,
        pf: *const T,
        offs: &[usize],
        out: *mut f32,
        stride: usize,
    ) {
        // SAFETY: compiled with AVX-512F; the rest is the caller's contract.
        unsafe { token_dots::<Widened<T>, NV>(q, heads, per_head, src, pf, offs, 1.0, out, stride) }
    }

    /// [`super::round_to_bf16`].
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; `dst` at least as long as `src`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn round_to_bf16(src: &[f32], dst: &mut [u16]) {
        let whole = src.len() / 16 * 16;
        for i in (0..whole).step_by(16) {
            // SAFETY: 16 values at i in both slices (contract); __m256bh and __m256i are 256-bit.
            unsafe {
                let b: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.as_ptr().add(i))));
                _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, b);
            }
        }
        for (d, &x) in dst[whole..].iter_mut().zip(&src[whole..]) {
            *d = super::bf16_bits(x);
        }
    }

    /// `acc[k] += Σⱼ p[k][j] · row j` for four weight vectors given as bf16 (`pb[k]`, kt values,
    /// padded to an even count) over bf16 rows, by `vdpbf16ps` on pairs of keys: two value rows are
    /// interleaved (`unpacklo/hi_epi16`) so each lane holds the same element of both, and the pair of
    /// weights is broadcast. The sums come out in the interleaved lane order and are put back in
    /// element order once at the end. Elements `d0 .. d0 + 32·NC` of each row.
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; rows hold `d0 + 32·NC` values at `src + offs[j]`; `pb[k]` holds
    /// `offs.len()` rounded up to even values; the accumulators `d0 + 32·NC`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn weighted_sum4_bf16<const NC: usize>(
        pb: [*const u16; 4],
        src: *const u16,
        offs: &[usize],
        acc: [*mut f32; 4],
        d0: usize,
        (pf, ahead): (*const u16, &[usize]),
    ) {
        // SAFETY: every access is inside the rows, the weights or the accumulators (contract);
        // __m512bh and __m512i are both 512-bit vectors.
        unsafe {
            let bh = |v: __m512i| -> __m512bh { std::mem::transmute(v) };
            let mut lo = [[_mm512_setzero_ps(); NC]; 4];
            let mut hi = [[_mm512_setzero_ps(); NC]; 4];
            let n = offs.len();
            let mut j = 0;
            while j < n {
                let ra = src.add(offs[j] + d0);
                let rb = if j + 1 < n { Some(src.add(offs[j + 1] + d0)) } else { None };
                let w = [0, 1, 2, 3].map(|k| bh(_mm512_set1_epi32((pb[k].add(j) as *const i32).read_unaligned())));
                for &at in ahead.get(j..(j + 2).min(ahead.len())).unwrap_or_default() {
                    for c in 0..NC {
                        _mm_prefetch::<_MM_HINT_T1>(pf.add(at + d0 + 32 * c) as *const i8);
                    }
                }
                for c in 0..NC {
                    let a = _mm512_loadu_si512(ra.add(32 * c) as *const _);
                    let b = match rb {
                        Some(rb) => _mm512_loadu_si512(rb.add(32 * c) as *const _),
                        None => _mm512_setzero_si512(),
                    };
                    let (pl, ph) = (bh(_mm512_unpacklo_epi16(a, b)), bh(_mm512_unpackhi_epi16(a, b)));
                    for k in 0..4 {
                        lo[k][c] = _mm512_dpbf16_ps(lo[k][c], w[k], pl);
                        hi[k][c] = _mm512_dpbf16_ps(hi[k][c], w[k], ph);
                    }
                }
                j += 2;
            }
            // Lane 4L + i of `lo` is element 8L + i of the chunk, of `hi` element 8L + 4 + i.
            let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
            let second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
            for k in 0..4 {
                for c in 0..NC {
                    let at = acc[k].add(d0 + 32 * c);
                    let e0 = _mm512_permutex2var_ps(lo[k][c], first, hi[k][c]);
                    let e1 = _mm512_permutex2var_ps(lo[k][c], second, hi[k][c]);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), e0));
                    _mm512_storeu_ps(at.add(16), _mm512_add_ps(_mm512_loadu_ps(at.add(16)), e1));
                }
            }
        }
    }

    /// [`dots`] for two queries: each row is loaded (and converted) once for both.
    ///
    /// # Safety
    /// As [`dots`], for both queries and outputs.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn dots2<T: Lanes, const NV: usize>(
        q: [*const f32; 2],
        src: *const T,
        offs: &[usize],
        out: [&mut [f32]; 2],
    ) {
        // SAFETY: every access is inside the queries or one of the rows (contract).
        unsafe {
            let mut qv = [[_mm512_setzero_ps(); NV]; 2];
            for (k, qk) in qv.iter_mut().enumerate() {
                for (i, v) in qk.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(q[k].add(16 * i));
                }
            }
            let [o0, o1] = out;
            for ((x0, x1), &at) in o0.iter_mut().zip(o1.iter_mut()).zip(offs) {
                let r = src.add(at);
                // Two chains per query, so each is half as long (FMA latency, not throughput,
                // would bound a single chain).
                let mut acc = [_mm512_setzero_ps(); 4];
                for i in 0..NV {
                    let row = T::load16(r.add(16 * i));
                    acc[i % 2] = _mm512_fmadd_ps(qv[0][i], row, acc[i % 2]);
                    acc[2 + i % 2] = _mm512_fmadd_ps(qv[1][i], row, acc[2 + i % 2]);
                }
                *x0 = _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]));
                *x1 = _mm512_reduce_add_ps(_mm512_add_ps(acc[2], acc[3]));
            }
        }
    }

    /// [`weighted_sum`] for two weight vectors: each row is loaded (and converted) once for both.
    ///
    /// # Safety
    /// As [`weighted_sum`], for both weight vectors and accumulators.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn weighted_sum2<T: Lanes, const NV: usize>(
        p: [&[f32]; 2],
        src: *const T,
        offs: &[usize],
        acc: [*mut f32; 2],
    ) {
        // SAFETY: every access is inside the accumulators or one of the rows (contract).
        unsafe {
            let mut av = [[_mm512_setzero_ps(); NV]; 2];
            for (k, ak) in av.iter_mut().enumerate() {
                for (i, v) in ak.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(acc[k].add(16 * i));
                }
            }
            for ((&w0, &w1), &at) in p[0].iter().zip(p[1]).zip(offs) {
                let (r, w0, w1) = (src.add(at), _mm512_set1_ps(w0), _mm512_set1_ps(w1));
                for i in 0..NV {
                    let row = T::load16(r.add(16 * i));
                    av[0][i] = _mm512_fmadd_ps(w0, row, av[0][i]);
                    av[1][i] = _mm512_fmadd_ps(w1, row, av[1][i]);
                }
            }
            for (k, ak) in av.iter().enumerate() {
                for (i, v) in ak.iter().enumerate() {
                    _mm512_storeu_ps(acc[k].add(16 * i), *v);
                }
            }
        }
    }

    /// Four weight vectors over the same rows, elements `d0 .. d0 + 16·NH` of each row: each row
    /// chunk is loaded (and converted) once for all four accumulators. The same elements of row
    /// `ahead[j]` of `pf` are prefetched into L2 with row j.
    ///
    /// # Safety
    /// As [`weighted_sum`], for four weight vectors and accumulators holding `d0 + 16·NH` values;
    /// the rows at `ahead` hold `d0 + 16·NH` values too.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn weighted_sum4<T: Lanes, const NH: usize>(
        p: [&[f32]; 4],
        src: *const T,
        offs: &[usize],
        acc: [*mut f32; 4],
        d0: usize,
        (pf, ahead): (*const T, &[usize]),
    ) {
        // SAFETY: every access is inside the accumulators or one of the rows (contract); the
        // prefetches only hint, at rows the contract names.
        unsafe {
            let mut av = [[_mm512_setzero_ps(); NH]; 4];
            for (k, ak) in av.iter_mut().enumerate() {
                for (i, v) in ak.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(acc[k].add(d0 + 16 * i));
                }
            }
            for (j, &at) in offs.iter().enumerate().take(p[0].len()) {
                if let Some(&next) = ahead.get(j) {
                    prefetch_row(pf.add(next + d0), 16 * NH);
                }
                let r = src.add(at + d0);
                let w = [0, 1, 2, 3].map(|k| _mm512_set1_ps(*p[k].get_unchecked(j)));
                for i in 0..NH {
                    let row = T::load16(r.add(16 * i));
                    for k in 0..4 {
                        av[k][i] = _mm512_fmadd_ps(w[k], row, av[k][i]);
                    }
                }
            }
            for (k, ak) in av.iter().enumerate() {
                for (i, v) in ak.iter().enumerate() {
                    _mm512_storeu_ps(acc[k].add(d0 + 16 * i), *v);
                }
            }
        }
    }

    /// `acc (NV·16 values, kept in registers) += Σⱼ p[j]·row j`, prefetching row `ahead[j]` of
    /// `pf` into L2 with row j.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `acc` holds NV·16 values, each row NV·16 values, and so does
    /// each row to prefetch.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub unsafe fn weighted_sum<T: Lanes, const NV: usize>(
        p: &[f32],
        src: *const T,
        offs: &[usize],
        acc: *mut f32,
        (pf, ahead): (*const T, &[usize]),
    ) {
        // SAFETY: every access is inside `acc` or one of the rows (contract); the prefetches only
        // hint, at rows the contract names.
        unsafe {
            let mut av = [_mm512_setzero_ps(); NV];
            for (i, v) in av.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(acc.add(16 * i));
            }
            for (j, (&w, &at)) in p.iter().zip(offs).enumerate() {
                if let Some(&next) = ahead.get(j) {
                    prefetch_row(pf.add(next), 16 * NV);
                }
                let (r, wv) = (src.add(at), _mm512_set1_ps(w));
                for (i, v) in av.iter_mut().enumerate() {
                    *v = _mm512_fmadd_ps(wv, T::load16(r.add(16 * i)), *v);
                }
            }
            for (i, v) in av.iter().enumerate() {
                _mm512_storeu_ps(acc.add(16 * i), *v);
            }
        }
    }
}

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
            S::dots(&q, &src, &offs, &mut got);
            let want: Vec<f32> = (0..keys).map(|j| (0..d).map(|i| q[i] * row(j, i)).sum()).collect();
            assert_eq!(got, want, "dots d = {d}");
            let p: Vec<f32> = (0..keys).map(|j| j as f32 - 2.0).collect();
            let mut acc: Vec<f32> = (0..d).map(|i| i as f32).collect();
            S::weighted_sum(&p, &src, &offs, &mut acc, (&src, &offs));
            let want: Vec<f32> = (0..d).map(|i| i as f32 + (0..keys).map(|j| p[j] * row(j, i)).sum::<f32>()).collect();
            assert_eq!(acc, want, "weighted_sum d = {d}");
            let q1: Vec<f32> = q.iter().map(|x| 2.0 - x).collect();
            let (mut g0, mut g1) = (vec![0.0; keys], vec![0.0; keys]);
            S::dots2([&q, &q1], &src, &offs, [&mut g0, &mut g1]);
            let mut w1 = vec![0.0; keys];
            S::dots(&q1, &src, &offs, &mut w1);
            assert_eq!((&g0, &g1), (&got, &w1), "dots2 d = {d}");
            let p1: Vec<f32> = p.iter().map(|x| x * 3.0).collect();
            let (mut a0, mut a1) = (vec![1.0; d], vec![2.0; d]);
            S::weighted_sum2([&p, &p1], &src, &offs, [&mut a0, &mut a1]);
            let (mut b0, mut b1) = (vec![1.0; d], vec![2.0; d]);
            S::weighted_sum(&p, &src, &offs, &mut b0, (&src, &[]));
            S::weighted_sum(&p1, &src, &offs, &mut b1, (&src, &[]));
            assert_eq!((a0, a1), (b0, b1), "weighted_sum2 d = {d}");
            let p2: Vec<f32> = p.iter().map(|x| 1.0 - x).collect();
            let p3: Vec<f32> = p.iter().map(|x| x * -2.0).collect();
            let mut a4: [Vec<f32>; 4] = [0, 1, 2, 3].map(|k| vec![k as f32; d]);
            let mut b4 = a4.clone();
            {
                let [x0, x1, x2, x3] = &mut a4;
                S::weighted_sum4([&p, &p1, &p2, &p3], &src, &offs, [x0, x1, x2, x3], (&src, &offs));
            }
            for (b, w) in b4.iter_mut().zip([&p, &p1, &p2, &p3]) {
                S::weighted_sum(w, &src, &offs, b, (&src, &[]));
            }
            assert_eq!(a4, b4, "weighted_sum4 d = {d}");
            // Token by token (rows per head paired, alone, and both): the same sums where the
            // level has the kernel.
            for (heads, per_head) in [(2, 2), (4, 1), (1, 3)] {
                let (rows, stride) = (heads * per_head, 8);
                let width = heads * d + 3;
                let toks: Vec<usize> = (0..keys).map(|j| (keys - 1 - j) * width).collect();
                let q: Vec<f32> = (0..rows * d).map(|i| (i % 5) as f32 - 2.0).collect();
                let tsrc: Vec<T> = (0..keys * width).map(|i| T::from_f32((i % 11) as f32 - 5.0)).collect();
                let mut got = vec![f32::NAN; rows * stride];
                if S::token_dots(&q, heads, per_head, &tsrc, &tsrc, &toks, &mut got, stride) {
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
    fn avx512_is_exact_on_small_integers() {
        if crate::cpu::detected() >= crate::cpu::Level::Avx512 {
            check::<Avx512, f32>(true);
            check::<Avx512, bf16>(true);
            check::<Avx512, half::f16>(true);
        }
    }
}
