//! The x86 row kernels: written once against a register [`Width`] and compiled per width through
//! [`Entry`], plus the AVX-512-only ones (BF16 dot products, weight-row products).

// The register arrays are indexed by the same i that addresses memory (offset LANES·i).
#![allow(clippy::needless_range_loop)]

use super::width::{Width, W256, W512};
use super::Lanes;
use crate::attention::softmax::RowState;
use crate::lines::Lines;
use std::arch::x86_64::*;

/// Prefetches the `len` elements from `row` into L2, a cache line at a time.
///
/// Such prefetches are dropped when the core's line fill buffers are full (measured on a
/// Sapphire Rapids-class VM: 1 MiB prefetched in one burst, then read 200 µs later, read in
/// 29 µs; prefetched with a short busy loop between lines, in 9 µs; not prefetched, in 67 µs),
/// so they must be spread over the work rather than issued in bursts. `_MM_HINT_T0` ones wait
/// instead of being dropped, but issued far ahead they evict the rows in use from L1 (every
/// decode prefetch as T0: 0.51 of the memory's limit, 0.56-0.58 with these); only rows read
/// next are fetched so (see [`token_dots`]).
#[inline(always)]
fn prefetch_row<T>(row: *const T, len: usize) {
    prefetch_row_to::<_MM_HINT_T1, T>(row, len);
}

/// Prefetches the `len` values at `row` with `HINT`, a cache line at a time (any address: a
/// prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch_row_to<const HINT: i32, T>(row: *const T, len: usize) {
    let row = row as *const i8;
    for off in (0..len * std::mem::size_of::<T>()).step_by(64) {
        // SAFETY: a prefetch is only a hint: it never faults, whatever the address.
        unsafe { _mm_prefetch::<HINT>(row.wrapping_add(off)) };
    }
}

/// `out[r][i] = a row i · w[r]` for M activation rows and J weight rows: each chunk of weights is
/// loaded (and converted) once for all M rows, each chunk of activations once for all J rows, and
/// the weights are prefetched [`super::WEIGHTS_AHEAD`] bytes ahead.
///
/// # Safety
/// The width's features (see [`Width`]); `a` holds M rows of `k` values at stride `lda`; each
/// `w[r]` holds k values and each `out[r]` M.
#[inline(always)]
unsafe fn rows_dot_j<W: Width, T: Lanes, const M: usize, const J: usize>(
    a: *const f32,
    lda: usize,
    w: [*const T; J],
    k: usize,
    out: [*mut f32; J],
) {
    let lanes = W::LANES;
    // SAFETY: every access is inside a row of `w`, one of the M rows of `a`, or `out` (contract).
    unsafe {
        let mut acc = [[W::zero(); M]; J];
        let mut p = 0;
        let step = |acc: &mut [[W::F; M]; J], p: usize| {
            // Each weight line once (a chunk may be a line, half or a quarter of one).
            if (p * std::mem::size_of::<T>()).is_multiple_of(64) {
                for &row in &w {
                    super::prefetch_line((row.add(p) as *const u8).wrapping_add(super::WEIGHTS_AHEAD));
                }
            }
            let wv: [W::F; J] = std::array::from_fn(|r| W::row(w[r].add(p)));
            for i in 0..M {
                let av = W::load(a.add(i * lda + p));
                for r in 0..J {
                    acc[r][i] = W::fmadd(av, wv[r], acc[r][i]);
                }
            }
        };
        if M * J <= 4 && 4 * M * J + J < W::REGS {
            // Few dot products: four sets of accumulators over consecutive chunks (where they, the
            // weights and an activation chunk fit the registers), or the FMA latency of one chain
            // per product bounds the loop (m = 1 is one chain).
            let mut more = [[[W::zero(); M]; J]; 3];
            while p + 4 * lanes <= k {
                step(&mut acc, p);
                for (u, set) in more.iter_mut().enumerate() {
                    step(set, p + lanes * (u + 1));
                }
                p += 4 * lanes;
            }
            for set in &more {
                for r in 0..J {
                    for i in 0..M {
                        acc[r][i] = W::add(acc[r][i], set[r][i]);
                    }
                }
            }
        }
        while p + lanes <= k {
            step(&mut acc, p);
            p += lanes;
        }
        for r in 0..J {
            for i in 0..M {
                let mut s = W::sum(acc[r][i]);
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
#[inline(always)]
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

/// What differs between the score kernels: how a chunk of a query row and of a key row is
/// loaded, and how their products are accumulated.
pub trait Chunks {
    /// The width of the accumulators.
    type W: Width;
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
    unsafe fn madd(acc: Acc<Self>, q: Self::V, k: Self::V) -> Acc<Self>;
}

/// An accumulator register of a [`Chunks`].
type Acc<C> = <<C as Chunks>::W as Width>::F;

/// Raw bf16 queries and keys, 32 per chunk, by `vdpbf16ps` (needs AVX-512 BF16).
pub struct Bf16Pairs;

impl Chunks for Bf16Pairs {
    type W = W512;
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

/// f32 queries and rows of any source type two registers at a time in [`Width::row2`]'s order
/// (bf16 at AVX-512: even- and odd-indexed values, half the conversions of [`Widened`]), by FMA.
/// The queries must be in that order ([`token_ordered`]).
pub struct Pairs<W, T>(std::marker::PhantomData<(W, T)>);

impl<W: Width, T: Lanes> Chunks for Pairs<W, T> {
    type W = W;
    type Q = f32;
    type K = T;
    type V = [W::F; 2];
    const LANES: usize = 2 * W::LANES;
    #[inline(always)]
    unsafe fn query(p: *const f32) -> [W::F; 2] {
        // SAFETY: LANES values at p, the width's features (contract).
        unsafe { [W::load(p), W::load(p.add(W::LANES))] }
    }
    #[inline(always)]
    unsafe fn key(p: *const T) -> [W::F; 2] {
        // SAFETY: as above.
        unsafe { W::row2(p) }
    }
    #[inline(always)]
    unsafe fn madd(acc: W::F, q: [W::F; 2], k: [W::F; 2]) -> W::F {
        // SAFETY: as above.
        unsafe { W::fmadd(q[1], k[1], W::fmadd(q[0], k[0], acc)) }
    }
}

/// Whether [`Entry::token_dots`] reads rows of `T` with head size `d` as [`Pairs`] (else as
/// [`Widened`]): where the width splits them and `d` is a whole number of pairs.
fn pairs<W: Width, T: Lanes>(d: usize) -> bool {
    W::split::<T>() && d.is_multiple_of(2 * W::LANES)
}

/// [`super::Simd::token_queries`]: for [`Pairs`] that split, each `2·LANES` values of a row as
/// the even-indexed ones, then the odd (converted as the keys are, by [`Width::row2`]).
///
/// # Safety
/// Called from a function compiled for the width's features, on a CPU that has them.
#[inline(always)]
pub unsafe fn token_queries<W: Width, T: Lanes>(
    q: &[T],
    starts: &[usize],
    d: usize,
    scale: f32,
    out: &mut Lines,
) -> bool {
    out.resize(starts.len() * d);
    let paired = pairs::<W, T>(d);
    if !paired && !d.is_multiple_of(W::LANES) {
        super::scaled_queries(q, starts, d, scale, out);
        return false;
    }
    // Converted in registers, as the keys are: the library's slice conversions (f16) check the
    // CPU on every call, and a plain loop stays scalar where it is not compiled for the width.
    for (dst, &at) in out.chunks_exact_mut(d).zip(starts) {
        let src = &q[at..at + d];
        // SAFETY: `d` is a whole number of registers (of pairs, where `paired`), so whole ones
        // at c in `src` and `dst`; the width's features (contract).
        unsafe {
            let scale = W::splat(scale);
            let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
            if paired {
                for c in (0..d).step_by(2 * W::LANES) {
                    let [even, odd] = W::row2(s.add(c));
                    W::store(o.add(c), W::mul(even, scale));
                    W::store(o.add(c + W::LANES), W::mul(odd, scale));
                }
            } else {
                for c in (0..d).step_by(W::LANES) {
                    W::store(o.add(c), W::mul(W::row(s.add(c)), scale));
                }
            }
        }
    }
    paired
}

/// f32 queries and keys of any source type converted in registers of width `W`, by FMA.
pub struct Widened<W, T>(std::marker::PhantomData<(W, T)>);

impl<W: Width, T: Lanes> Chunks for Widened<W, T> {
    type W = W;
    type Q = f32;
    type K = T;
    type V = W::F;
    const LANES: usize = W::LANES;
    #[inline(always)]
    unsafe fn query(p: *const f32) -> W::F {
        // SAFETY: LANES values at p, the width's features (contract).
        unsafe { W::load(p) }
    }
    #[inline(always)]
    unsafe fn key(p: *const T) -> W::F {
        // SAFETY: as above.
        unsafe { W::row(p) }
    }
    #[inline(always)]
    unsafe fn madd(acc: W::F, q: W::F, k: W::F) -> W::F {
        // SAFETY: as above.
        unsafe { W::fmadd(q, k, acc) }
    }
}

/// Scores of every query row against keys `offs` in token order: for each pair of tokens, every
/// KV head in turn, so the cache is read front to back; the value rows at the same offsets of
/// `pf` are prefetched into L2 meanwhile, two per key row read, head by head (the order the
/// value sums read them), and the keys two tokens ahead once more, into L1.
/// Rows are head-major, `per_head` per KV head, `LANES·NV` values each at `q`; key `j` of head
/// `h` at `src + offs[j] + LANES·NV·h`; `scale` times the score goes to `out + r·stride + j`.
///
/// # Safety
/// Called from a function compiled for what `C` needs (its width's features, and AVX-512 BF16
/// for [`Bf16Pairs`]), on a CPU that has it; every row, query and output position named exists.
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
        // Rows per group: as many as leave room in the registers for their two accumulators
        // each, the two key chunks and a query chunk (AVX-512: 8; AVX2: 4).
        let big = if 2 * 8 + 3 <= C::W::REGS { 8 } else { 4 };
        let mut j = 0;
        while j < n {
            // An odd last token is paired with itself (its second score is not stored).
            let (ja, jb) = (offs[j], offs[(j + 1).min(n - 1)]);
            let both = j + 1 < n;
            for h in 0..heads {
                // Value row v of the tile in head-major order (the value sums' order): token by
                // token, the first heads of the last tokens arrived after their sums began
                // (bf16 decode 3-11 % slower).
                let i = 2 * ((j / 2) * heads + h);
                for v in i..(i + 2).min(n * heads) {
                    prefetch(pf.add(offs[v % n] + (v / n) * d));
                }
                // Keys of a tile should be in L2 already (prefetched during the previous value
                // sums). A second prefetch, two tokens ahead and into L1, catches the ones that are
                // not (a T0 prefetch waits for a fill buffer where a T1 one is dropped) and spares
                // the rest the L2 latency: the bf16 decode sweep read 0.59-0.67 of the
                // memory's limit with a T1 prefetch four ahead, 0.63-0.75 with this one (medians
                // of 5); two to four ahead are equal within noise, six and eight worse.
                for &at in offs.get(j + 2..(j + 4).min(n)).unwrap_or_default() {
                    prefetch_row_to::<_MM_HINT_T0, _>(src.add(at + h * d), d);
                }
                let keys = (src.add(ja + h * d), src.add(jb + h * d));
                let (mut r, end) = (h * per_head, (h + 1) * per_head);
                while r < end {
                    let at = (q.add(r * d), out.add(r * stride + j));
                    r += match end - r {
                        g if g >= 8 && big == 8 => group::<C, NV, 8>(at, keys, scale, stride, both),
                        4.. => group::<C, NV, 4>(at, keys, scale, stride, both),
                        2 | 3 => group::<C, NV, 2>(at, keys, scale, stride, both),
                        _ => group::<C, NV, 1>(at, keys, scale, stride, both),
                    };
                }
            }
            j += 2;
        }
    }
}

/// The scores of G consecutive query rows (at `q`, `LANES·NV` values each) against keys `a` and
/// `b`, chunk by chunk: each key chunk is loaded (and converted) once for the G rows, and the 2·G
/// sums stay in registers. Writes `scale` times them at `out` (row 0, key a; the next key after
/// it, rows `stride` apart; key b only when `both`). Returns G.
///
/// # Safety
/// As [`token_dots`].
#[inline(always)]
unsafe fn group<C: Chunks, const NV: usize, const G: usize>(
    (q, out): (*const C::Q, *mut f32),
    (a, b): (*const C::K, *const C::K),
    scale: __m128,
    stride: usize,
    both: bool,
) -> usize {
    let d = C::LANES * NV;
    // SAFETY: every access is inside the G query rows, the two keys or the outputs (contract).
    unsafe {
        if G == 1 {
            // One row (plain multi-head attention): two chains per key, so that the FMA latency
            // does not bound it.
            let mut acc = [C::W::zero(); 4];
            for i in 0..NV {
                let q0 = C::query(q.add(C::LANES * i));
                acc[i % 2] = C::madd(acc[i % 2], q0, C::key(a.add(C::LANES * i)));
                acc[2 + i % 2] = C::madd(acc[2 + i % 2], q0, C::key(b.add(C::LANES * i)));
            }
            // [a0, a1, b0, b1] (two half sums per key) → [a, b].
            let s = C::W::sum4(acc);
            let s = _mm_add_ps(s, _mm_shuffle_ps::<0b11_11_11_01>(s, s));
            let s = _mm_mul_ps(_mm_shuffle_ps::<0b00_00_10_00>(s, s), scale);
            match both {
                true => _mm_storel_pd(out as *mut f64, _mm_castps_pd(s)),
                false => _mm_store_ss(out, s),
            }
            return 1;
        }
        let mut acc = [[C::W::zero(); 2]; G];
        for i in 0..NV {
            let (ka, kb) = (C::key(a.add(C::LANES * i)), C::key(b.add(C::LANES * i)));
            for t in 0..G {
                let qt = C::query(q.add(t * d + C::LANES * i));
                acc[t][0] = C::madd(acc[t][0], qt, ka);
                acc[t][1] = C::madd(acc[t][1], qt, kb);
            }
        }
        for t in (0..G).step_by(2) {
            let s = C::W::sum4([acc[t][0], acc[t][1], acc[t + 1][0], acc[t + 1][1]]);
            store_pair(_mm_mul_ps(s, scale), out.add(t * stride), stride, both);
        }
        G
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

/// Dot products of K queries (`LANES·NV` values each, kept in registers) with the rows at `src +
/// offs[j]`: each row is loaded (and converted) once for all K, and each product is summed in two
/// chains, each half as long (FMA latency, not throughput, would bound one).
///
/// # Safety
/// The width's features (see [`Width`]); each query holds `LANES·NV` values, and so does each row.
#[inline(always)]
unsafe fn dots<W: Width, T: Lanes, const K: usize, const NV: usize>(
    q: [*const f32; K],
    src: *const T,
    offs: &[usize],
    out: [&mut [f32]; K],
) {
    // SAFETY: every access is inside the queries or one of the rows (contract).
    unsafe {
        let mut qv = [[W::zero(); NV]; K];
        for k in 0..K {
            for i in 0..NV {
                qv[k][i] = W::load(q[k].add(W::LANES * i));
            }
        }
        let n = out.iter().map(|o| o.len()).min().unwrap_or(0);
        for (j, &at) in offs.iter().enumerate().take(n) {
            let r = src.add(at);
            let mut acc = [[W::zero(); 2]; K];
            for i in 0..NV {
                let row = W::row(r.add(W::LANES * i));
                for k in 0..K {
                    acc[k][i % 2] = W::fmadd(qv[k][i], row, acc[k][i % 2]);
                }
            }
            for k in 0..K {
                out[k][j] = W::sum(W::add(acc[k][0], acc[k][1]));
            }
        }
    }
}

/// The K weight vectors of [`weighted_sums`], as given (K pointers) or row by row (one pointer:
/// AVX2 has too few registers for K pointers beside the sums, and reloaded them for each row).
trait Weights<const K: usize>: Copy {
    /// Rows of weights.
    fn rows(&self) -> usize;
    /// Weight k of row j.
    ///
    /// # Safety
    /// `j < self.rows()`, `k < K`.
    unsafe fn at(&self, j: usize, k: usize) -> f32;
}

impl<const K: usize> Weights<K> for [&[f32]; K] {
    #[inline(always)]
    fn rows(&self) -> usize {
        self.iter().map(|p| p.len()).min().unwrap_or(0)
    }
    #[inline(always)]
    unsafe fn at(&self, j: usize, k: usize) -> f32 {
        // SAFETY: j below every vector's length (contract).
        unsafe { *self[k].get_unchecked(j) }
    }
}

impl<const K: usize> Weights<K> for &[[f32; K]] {
    #[inline(always)]
    fn rows(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    unsafe fn at(&self, j: usize, k: usize) -> f32 {
        // SAFETY: j below the length (contract).
        unsafe { self.get_unchecked(j)[k] }
    }
}

/// `acc[k] += Σⱼ w(j, k) · row j` for K weight vectors over the same rows, elements `d0 .. d0 +
/// LANES·NH` of each: the K·NH sums stay in registers and each row chunk is loaded (and
/// converted) once for all K. The same elements of row `ahead[j]` of `pf` are prefetched into L2
/// with row j.
///
/// # Safety
/// The width's features (see [`Width`]); the rows at `src + offs[j]` (j < `w.rows()`), the
/// accumulators and the rows at `ahead` hold `d0 + LANES·NH` values.
#[inline(always)]
unsafe fn weighted_sums<W: Width, T: Lanes, const K: usize, const NH: usize>(
    w: impl Weights<K>,
    src: *const T,
    offs: &[usize],
    acc: [*mut f32; K],
    d0: usize,
    (pf, ahead): (*const T, &[usize]),
) {
    // SAFETY: every access is inside the accumulators or one of the rows (contract); the
    // prefetches only hint, at rows the contract names.
    unsafe {
        // Registers 2i and 2i + 1 hold their values in `Width::row2`'s order (for bf16 at AVX-512,
        // even- and odd-indexed: half the conversions; four rows' sums over a tile, cache-hot,
        // 12 % faster); an odd last one holds its values in order.
        let paired = NH - NH % 2;
        let mut av = [[W::zero(); NH]; K];
        for k in 0..K {
            for i in (0..paired).step_by(2) {
                [av[k][i], av[k][i + 1]] = W::load2::<T>(acc[k].add(d0 + W::LANES * i));
            }
            for i in paired..NH {
                av[k][i] = W::load(acc[k].add(d0 + W::LANES * i));
            }
        }
        // A piece shorter than a cache line prefetches the line it starts, if it starts one
        // (else the line would be prefetched again by each of its pieces).
        let bytes = W::LANES * NH * std::mem::size_of::<T>();
        let start = d0 * std::mem::size_of::<T>();
        let prefetch =
            if bytes >= 64 || start.is_multiple_of(64) { bytes.max(64) / std::mem::size_of::<T>() } else { 0 };
        for (j, &at) in offs.iter().enumerate().take(w.rows()) {
            if let Some(&next) = ahead.get(j) {
                prefetch_row(pf.add(next + d0), prefetch);
            }
            let r = src.add(at + d0);
            let mut wv = [W::zero(); K];
            for k in 0..K {
                wv[k] = W::splat(w.at(j, k));
            }
            for i in (0..paired).step_by(2) {
                let [x, y] = W::row2(r.add(W::LANES * i));
                for k in 0..K {
                    av[k][i] = W::fmadd(wv[k], x, av[k][i]);
                    av[k][i + 1] = W::fmadd(wv[k], y, av[k][i + 1]);
                }
            }
            for i in paired..NH {
                let row = W::row(r.add(W::LANES * i));
                for k in 0..K {
                    av[k][i] = W::fmadd(wv[k], row, av[k][i]);
                }
            }
        }
        for (a, v) in acc.iter().zip(&av) {
            for i in (0..paired).step_by(2) {
                W::store2::<T>(a.add(d0 + W::LANES * i), [v[i], v[i + 1]]);
            }
            for i in paired..NH {
                W::store(a.add(d0 + W::LANES * i), v[i]);
            }
        }
    }
}

/// Registers per piece of a K-row weighted sum of `d` values at width `W`: the largest divisor
/// of `d / LANES` whose K·NH accumulators, K weights and the row fit in the registers (AVX-512
/// d 128, four rows: 4; AVX2: 2).
const fn piece<W: Width>(d: usize, k: usize) -> usize {
    let nv = d / W::LANES;
    let mut nh = nv;
    while nh > 1 && (!nv.is_multiple_of(nh) || k * (nh + 1) + 1 > W::REGS) {
        nh -= 1;
    }
    nh
}

/// The head sizes the kernels of [`Entry`] take (others go to the generic code).
pub const HEAD_SIZES: [usize; 5] = [64, 80, 96, 128, 256];

/// The kernels of a width, compiled for its features, for head sizes in [`HEAD_SIZES`]; each
/// returns false (doing nothing) for other sizes.
///
/// # Safety (every method)
/// The CPU has the width's features; every row, query, weight and output named exists, as the
/// kernel each calls requires.
pub trait Entry: Width {
    /// The online-softmax step of several rows in registers ([`RowState::update_wide`]).
    unsafe fn softmax_rows(
        states: &mut [RowState],
        scores: &mut [f32],
        rows: (usize, usize),
        alphas: &mut [f32],
    ) -> bool;
    /// [`token_dots`] on f32 queries (already scaled, in the order [`token_ordered`] gives),
    /// head size `d`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn token_dots<T: Lanes>(
        d: usize,
        q: *const f32,
        heads: usize,
        per_head: usize,
        src: *const T,
        pf: *const T,
        offs: &[usize],
        out: *mut f32,
        stride: usize,
    ) -> bool;
    /// [`dots`] for K queries of `d` values.
    unsafe fn dots<T: Lanes, const K: usize>(
        q: [*const f32; K],
        d: usize,
        src: *const T,
        offs: &[usize],
        out: [&mut [f32]; K],
    ) -> bool;
    /// [`weighted_sums`] over whole rows of `d` values, in pieces that fit the registers.
    unsafe fn weighted_sums<T: Lanes, const K: usize>(
        p: [&[f32]; K],
        d: usize,
        src: *const T,
        offs: &[usize],
        acc: [*mut f32; K],
        ahead: (*const T, &[usize]),
    ) -> bool;
    /// `out[i] = a row i · w` for the `out.len()` rows of `a` (`w.len()` values at stride `lda`),
    /// where this width has the kernel and takes that many rows.
    unsafe fn rows_dot<T: Lanes>(a: *const f32, lda: usize, w: &[T], out: &mut [f32]) -> bool;
    /// [`Entry::rows_dot`] for two rows of weights (as long as each other).
    unsafe fn rows_dot2<T: Lanes>(a: *const f32, lda: usize, w: [&[T]; 2], out: [&mut [f32]; 2]) -> bool;
}

/// Implements [`Entry`] for a width: its target features, the register counts its head sizes
/// need (`vectors`: d / LANES), the piece sizes [`piece`] picks for it (`pieces`), and the
/// activation rows its decode dot products take with one row of weights (`rows`) and with two
/// (`pairs`): as many as keep the sums, weights and an activation chunk in registers (AVX2 pairs of
/// 7 and 8 rows spill a few, and still ran m = 16 at 2.6 times the per-row fallback).
macro_rules! entry {
    (
        $w:ty,
        $features:literal,
        vectors: [$($nv:literal)*],
        vector_pairs: [$($np:literal)*],
        pieces: [$($nh:literal)*],
        rows: [$($m:literal)*],
        pairs: [$($m2:literal)*]
    ) => {
        impl Entry for $w {
            #[target_feature(enable = $features)]
            unsafe fn rows_dot<T: Lanes>(a: *const f32, lda: usize, w: &[T], out: &mut [f32]) -> bool {
                let (k, o) = (w.len(), out.as_mut_ptr());
                match out.len() {
                    // SAFETY: the trait's contract.
                    $($m => unsafe { rows_dot_j::<$w, T, $m, 1>(a, lda, [w.as_ptr()], k, [o]) },)*
                    _ => return false,
                }
                true
            }

            #[target_feature(enable = $features)]
            unsafe fn rows_dot2<T: Lanes>(
                a: *const f32,
                lda: usize,
                w: [&[T]; 2],
                out: [&mut [f32]; 2],
            ) -> bool {
                let k = w[0].len();
                let [o0, o1] = out;
                let (wp, op) = ([w[0].as_ptr(), w[1].as_ptr()], [o0.as_mut_ptr(), o1.as_mut_ptr()]);
                match o0.len() {
                    // SAFETY: the trait's contract.
                    $($m2 => unsafe { rows_dot_j::<$w, T, $m2, 2>(a, lda, wp, k, op) },)*
                    _ => return false,
                }
                true
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn softmax_rows(
                states: &mut [RowState],
                scores: &mut [f32],
                rows: (usize, usize),
                alphas: &mut [f32],
            ) -> bool {
                RowState::update_wide::<$w>(states, scores, rows, alphas)
            }

            #[target_feature(enable = $features)]
            // Called once per key tile; inlined into the item's code it made AVX-512 bf16 decode
            // 1.7 % slower (hot cache, d 64).
            #[inline(never)]
            unsafe fn token_dots<T: Lanes>(
                d: usize,
                q: *const f32,
                heads: usize,
                per_head: usize,
                src: *const T,
                pf: *const T,
                offs: &[usize],
                out: *mut f32,
                stride: usize,
            ) -> bool {
                if !HEAD_SIZES.contains(&d) {
                    return false;
                }
                if pairs::<$w, T>(d) {
                    return match d / (2 * <$w>::LANES) {
                        // SAFETY: the trait's contract (the queries in `token_ordered`).
                        $($np => {
                            unsafe { token_dots::<Pairs<$w, T>, $np>(q, heads, per_head, src, pf, offs, 1.0, out, stride) };
                            true
                        })*
                        _ => false,
                    };
                }
                match d / <$w>::LANES {
                    // SAFETY: the trait's contract.
                    $($nv => unsafe {
                        token_dots::<Widened<$w, T>, $nv>(q, heads, per_head, src, pf, offs, 1.0, out, stride)
                    },)*
                    _ => return false,
                }
                true
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn dots<T: Lanes, const K: usize>(
                q: [*const f32; K],
                d: usize,
                src: *const T,
                offs: &[usize],
                out: [&mut [f32]; K],
            ) -> bool {
                if !HEAD_SIZES.contains(&d) {
                    return false;
                }
                match d / <$w>::LANES {
                    // SAFETY: the trait's contract.
                    $($nv => unsafe { dots::<$w, T, K, $nv>(q, src, offs, out) },)*
                    _ => return false,
                }
                true
            }

            #[target_feature(enable = $features)]
            #[inline]
            unsafe fn weighted_sums<T: Lanes, const K: usize>(
                p: [&[f32]; K],
                d: usize,
                src: *const T,
                offs: &[usize],
                acc: [*mut f32; K],
                ahead: (*const T, &[usize]),
            ) -> bool {
                if !HEAD_SIZES.contains(&d) {
                    return false;
                }
                let nh = piece::<$w>(d, K);
                if ![$($nh),*].contains(&nh) {
                    return false;
                }
                /// The sums in pieces of LANES·NH values up to d.
                ///
                /// # Safety
                /// As the method's.
                #[inline(always)]
                unsafe fn pieces<T: Lanes, const K: usize>(
                    (nh, d): (usize, usize),
                    w: impl Weights<K>,
                    src: *const T,
                    offs: &[usize],
                    acc: [*mut f32; K],
                    ahead: (*const T, &[usize]),
                ) {
                    match nh {
                        $($nh => {
                            for d0 in (0..d).step_by(<$w>::LANES * $nh) {
                                // SAFETY: the method's contract; the pieces stay below d.
                                unsafe { weighted_sums::<$w, T, K, $nh>(w, src, offs, acc, d0, ahead) };
                            }
                        })*
                        _ => unreachable!("checked by the caller"),
                    }
                }
                if <$w>::REGS >= 32 {
                    // SAFETY: the trait's contract.
                    unsafe { pieces((nh, d), p, src, offs, acc, ahead) };
                    return true;
                }
                // Few registers: the weights row by row, a block of rows at a time.
                const BLOCK: usize = 64;
                let mut w = [[0f32; K]; BLOCK];
                let n = p.rows().min(offs.len());
                for j0 in (0..n).step_by(BLOCK) {
                    let j1 = n.min(j0 + BLOCK);
                    for (j, wj) in (j0..j1).zip(&mut w) {
                        for k in 0..K {
                            wj[k] = p[k][j];
                        }
                    }
                    let ahead = (ahead.0, ahead.1.get(j0..j1.min(ahead.1.len())).unwrap_or_default());
                    // SAFETY: the trait's contract, for rows j0 .. j1.
                    unsafe { pieces((nh, d), &w[..j1 - j0], src, &offs[j0..j1], acc, ahead) };
                }
                true
            }
        }
    };
}

entry!(
    W512,
    "avx512f",
    vectors: [4 5 6 8 16],
    vector_pairs: [2 3 4 8],
    pieces: [4 5 6 8 16],
    rows: [1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16],
    pairs: [1 2 3 4 5 6 7 8]
);
entry!(
    W256,
    "avx2,fma,f16c",
    vectors: [8 10 12 16 32],
    vector_pairs: [],
    pieces: [2 4 5 6 8 10 12],
    rows: [1 2 3 4 5 6 7 8 9 10 11 12],
    pairs: [1 2 3 4 5 6 7 8]
);
