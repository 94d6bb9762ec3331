//! The online-softmax step shared by every attention path, with an exp that vectorises.

/// Running softmax state of one query row: the largest score seen and the sum of exp(score − max).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowState {
    pub max: f32,
    pub sum: f32,
}

impl RowState {
    pub const EMPTY: RowState = RowState { max: f32::NEG_INFINITY, sum: 0.0 };

    /// Folds a tile of scores (masked ones are −∞) into the state: the scores become probabilities
    /// relative to the new max, and the returned factor rescales what was accumulated before
    /// (1 when nothing changes; the caller may skip the rescale then). `fma`: see [`exp_with`].
    /// A NaN score makes the row NaN (its probability and the sum are NaN), as in torch.
    #[inline(always)]
    pub fn update(&mut self, scores: &mut [f32], fma: bool) -> f32 {
        let max = self.max.max(lanes(scores, f32::NEG_INFINITY, f32::max));
        if max == f32::NEG_INFINITY {
            self.nothing_seen(scores);
            return 1.0;
        }
        let alpha = if self.max == max { 1.0 } else { exp(self.max - max) };
        scores.iter_mut().for_each(|s| *s = exp_with(*s - max, fma));
        self.sum = self.sum * alpha + lanes(scores, 0.0, |a, b| a + b);
        self.max = max;
        alpha
    }

    /// [`RowState::update_wide`] at AVX-512 for value sums on bf16 pairs: also writes row i's
    /// probabilities rounded to bf16 (nearest even) at `pb[i·stride..]`, zeros after them up to a
    /// multiple of 16. Returns false (doing nothing) without AVX-512 BF16, for more than 64
    /// scores, or where a row (its probabilities rounded up to 16) does not fit `scores`, `pb` or
    /// `alphas`.
    #[inline(always)]
    pub fn update_bf16(
        states: &mut [RowState],
        scores: &mut [f32],
        (stride, n): (usize, usize),
        pb: &mut [u16],
        alphas: &mut [f32],
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if fits(states.len(), (stride, n.next_multiple_of(16)), pb.len())
            && Self::fit(states, scores, (stride, n), alphas)
            && crate::cpu::detected() >= crate::cpu::Level::Avx512Bf16
        {
            // SAFETY: AVX-512 BF16 present; at most 64 scores; every row inside `scores` and,
            // rounded up to 16, inside `pb`.
            unsafe { x86::update_bf16(states, scores.as_mut_ptr(), (stride, n), pb.as_mut_ptr(), alphas) };
            return true;
        }
        let _ = (states, scores, stride, n, pb, alphas);
        false
    }

    /// [`RowState::update`] (with fused multiply-adds) of each row of `states`, in registers of
    /// width `W`: row i's `n` scores at `scores[i·stride..]`, its factor to `alphas[i]`. The same
    /// probabilities, bit for bit, and the same sums up to the order of their additions (a few
    /// ulps); the scalar code's horizontal folds cost as much as its exps. Returns false (doing
    /// nothing) for more than 64 scores, rows that do not fit `scores` or `alphas`, or on a CPU
    /// without the width's features.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub fn update_wide<W: crate::simd::width::Width>(
        states: &mut [RowState],
        scores: &mut [f32],
        (stride, n): (usize, usize),
        alphas: &mut [f32],
    ) -> bool {
        if !Self::fit(states, scores, (stride, n), alphas) || crate::cpu::detected() < W::LEVEL {
            return false;
        }
        // SAFETY: the width's features present; at most 64 scores; every row inside `scores`.
        unsafe { x86::update_each::<W, fn(W::F, *mut u16)>(states, scores.as_mut_ptr(), (stride, n), None, alphas) };
        true
    }

    /// Whether the rows of a vector update fit: at most 64 scores, every row inside `scores`, a
    /// factor per row.
    #[cfg(target_arch = "x86_64")]
    fn fit(states: &[RowState], scores: &[f32], (stride, n): (usize, usize), alphas: &[f32]) -> bool {
        n <= 64 && fits(states.len(), (stride, n), scores.len()) && alphas.len() >= states.len()
    }

    /// A tile in which no key is visible (every score −∞, or NaN): nothing to add, unless a score
    /// is NaN (the max ignores NaN), which makes the row NaN.
    #[cold]
    fn nothing_seen(&mut self, scores: &mut [f32]) {
        if scores.iter().any(|s| s.is_nan()) {
            self.sum = f32::NAN;
            scores.fill(f32::NAN);
        } else {
            scores.fill(0.0);
        }
    }

    /// Merges another state for the same row (split keys); returns the factors that rescale the
    /// accumulators of (self, other) before they are added.
    pub fn merge(&mut self, other: RowState) -> (f32, f32) {
        let max = self.max.max(other.max);
        if max == f32::NEG_INFINITY {
            return (0.0, 0.0);
        }
        let (a, b) = (exp(self.max - max), exp(other.max - max));
        self.sum = self.sum * a + other.sum * b;
        self.max = max;
        (a, b)
    }
}

/// Whether `rows` rows of `n` values, `stride` apart (rows may not overlap), fit in `len` values.
#[cfg(target_arch = "x86_64")]
fn fits(rows: usize, (stride, n): (usize, usize), len: usize) -> bool {
    rows == 0 || (rows == 1 || stride >= n) && (rows - 1) * stride + n <= len
}

/// Folds `xs` with `op` over 16 independent lanes (so the loop vectorises; a single running value
/// is a dependency chain the compiler may not reorder), then folds the lanes by halves.
#[inline(always)]
fn lanes(xs: &[f32], init: f32, op: impl Fn(f32, f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [init; L];
    let chunks = xs.chunks_exact(L);
    let tail = chunks.remainder().iter().fold(init, |a, &x| op(a, x));
    for c in chunks {
        let c: &[f32; L] = c.try_into().unwrap();
        for l in 0..L {
            acc[l] = op(acc[l], c[l]);
        }
    }
    let mut width = L;
    while width > 1 {
        width /= 2;
        for l in 0..width {
            acc[l] = op(acc[l], acc[l + width]);
        }
    }
    op(acc[0], tail)
}

/// e^x to about 1 ulp for x in [−87, 88], exactly 0 below (−∞ included), written with plain
/// arithmetic and bit operations so loops over it vectorise. Range reduction x = n·ln2 + r with
/// |r| ≤ ln2/2, then a degree-7 Taylor polynomial (truncation error r⁸/8! < 6·10⁻⁹ relative).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_with(x, false)
}

/// [`exp`], its polynomial evaluated with fused multiply-adds when `fma` (pass true only in code
/// compiled for a CPU that has them: `mul_add` is a library call otherwise). Within an ulp of it.
#[inline(always)]
pub(crate) fn exp_with(x: f32, fma: bool) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2²³ rounds to an integer and leaves it in the low mantissa bits.
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p: f32 = 1.0 / 5040.0;
    for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = if fma { p.mul_add(r, c) } else { p * r + c };
    }
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127).wrapping_shl(23));
    if x < -87.0 {
        0.0
    } else {
        p * two_n
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::RowState;
    use crate::simd::width::{Width, W512};
    use std::arch::x86_64::*;

    /// [`super::exp_with`]`(x, true)` on a register of any width, the same operations in the same
    /// order (so the same bits).
    ///
    /// # Safety
    /// As [`Width`].
    #[inline(always)]
    unsafe fn exp<W: Width>(x: W::F) -> W::F {
        // SAFETY: the width's features (contract).
        unsafe {
            let magic = W::splat(12_582_912.0);
            // The constants first: min/max return their second operand when one is NaN, so NaN stays.
            let xc = W::min(W::splat(88.0), W::max(W::splat(-87.0), x));
            let t = W::add(W::mul(xc, W::splat(std::f32::consts::LOG2_E)), magic);
            let n = W::sub(t, magic);
            let r = W::sub(W::sub(xc, W::mul(n, W::splat(0.693_145_75))), W::mul(n, W::splat(1.428_606_8e-6)));
            let mut p = W::splat(1.0 / 5040.0);
            for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                p = W::fmadd(p, r, W::splat(c));
            }
            W::mul_unless_below(x, -87.0, p, W::pow2(t, magic))
        }
    }

    /// See [`RowState::update_wide`]: row i's `n` scores at `scores + i·stride`, its factor to
    /// `alphas[i]`; with `round`, its probabilities also go to its pointer plus `i·stride` (see
    /// [`update_rows`]). Four rows at a time, interleaved.
    ///
    /// # Safety
    /// The width's features ([`Width`]); `n` at most 64; `scores` holds every row named, `round`'s
    /// pointer every row rounded up to `LANES`, and `alphas` one factor per row.
    #[inline(always)]
    pub unsafe fn update_each<W: Width, R: Fn(W::F, *mut u16) + Copy>(
        states: &mut [RowState],
        scores: *mut f32,
        (stride, n): (usize, usize),
        round: Option<(*mut u16, R)>,
        alphas: &mut [f32],
    ) {
        let mut quads = states.chunks_exact_mut(4);
        let mut at = 0;
        // SAFETY: rows at..at + 4 (or at) exist (contract).
        unsafe {
            let rounded = |rows: [usize; 4]| round.map(|(p, f)| (rows.map(|r| p.add(r * stride)), f));
            for quad in &mut quads {
                let quad: &mut [RowState; 4] = quad.try_into().expect("chunks of 4");
                let [a, b, c, d] = quad.each_mut();
                let round = rounded([at, at + 1, at + 2, at + 3]);
                let f = update_rows::<W, R, 4>([a, b, c, d], scores.add(at * stride), stride, n, round);
                alphas[at..at + 4].copy_from_slice(&f);
                at += 4;
            }
            for st in quads.into_remainder() {
                let round = rounded([at; 4]).map(|(p, f)| ([p[0]], f));
                alphas[at] = update_rows::<W, R, 1>([st], scores.add(at * stride), 0, n, round)[0];
                at += 1;
            }
        }
    }

    /// See [`RowState::update_bf16`].
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; as [`update_each`], with `pb` as `round`'s pointer (16 lanes).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn update_bf16(
        states: &mut [RowState],
        scores: *mut f32,
        rows: (usize, usize),
        pb: *mut u16,
        alphas: &mut [f32],
    ) {
        // SAFETY: 16 values to write at `at` (update_rows' contract); __m256bh and __m256i are
        // both 256-bit vectors.
        let round = |p: __m512, at: *mut u16| unsafe {
            _mm256_storeu_si256(at as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(p)))
        };
        // SAFETY: forwarded contract.
        unsafe { update_each::<W512, _>(states, scores, rows, Some((pb, round)), alphas) }
    }

    /// The body of [`update_each`]: the step for R rows (row i's
    /// `n` scores at `scores + i·stride`), each stage run for every row before the next, so that
    /// the rows' chains of latencies (horizontal max, exp, horizontal sum) overlap: one row per
    /// call took about 100 cycles for 32 scores. With `round`, row i's probabilities also go to
    /// its pointer, a chunk of `LANES` at a time, written by its function. Returns the rows'
    /// factors.
    ///
    /// # Safety
    /// The width's features ([`Width`]); `n` at most 64; the R rows exist; each of `round`'s
    /// pointers holds `n` rounded up to `LANES` values.
    #[inline(always)]
    unsafe fn update_rows<W: Width, R: Fn(W::F, *mut u16), const N: usize>(
        states: [&mut RowState; N],
        scores: *mut f32,
        stride: usize,
        n: usize,
        round: Option<([*mut u16; N], R)>,
    ) -> [f32; N] {
        let chunks = n.div_ceil(W::LANES);
        // SAFETY: partial loads and stores stay inside each row's n scores; the rounded rows hold
        // LANES per chunk (contract).
        unsafe {
            let row = |i: usize| scores.add(i * stride);
            let ninf = f32::NEG_INFINITY;
            let mut x = [[W::splat(ninf); 8]; N];
            let mut top = [W::splat(ninf); N];
            // Loops of a constant count (4 or 8), so that they unroll and `x` stays in registers.
            for c in (0..64 / W::LANES).take_while(|&c| c < chunks) {
                for i in 0..N {
                    x[i][c] = W::load_first(row(i).add(W::LANES * c), n - W::LANES * c, ninf);
                    // NaN second: the max ignores NaN, as the scalar one does (exp makes it NaN later).
                    top[i] = W::max(x[i][c], top[i]);
                }
            }
            let mut alphas = [1.0; N];
            let mut seen = [true; N];
            let (mut maxes, mut shift) = ([ninf; N], [W::zero(); N]);
            for (i, state) in states.iter().enumerate() {
                let max = state.max.max(W::max_lane(top[i]));
                (maxes[i], shift[i]) = (max, W::splat(max));
                seen[i] = max != ninf;
                if seen[i] && state.max != max {
                    alphas[i] = super::exp_with(state.max - max, true);
                }
            }
            let mut sum = [W::zero(); N];
            for c in (0..64 / W::LANES).take_while(|&c| c < chunks) {
                for i in (0..N).filter(|&i| seen[i]) {
                    let p = exp::<W>(W::sub(x[i][c], shift[i]));
                    sum[i] = W::add(sum[i], p);
                    W::store_first(row(i).add(W::LANES * c), p, n - W::LANES * c);
                    if let Some((pb, round)) = &round {
                        round(p, pb[i].add(W::LANES * c));
                    }
                }
            }
            for (i, state) in states.into_iter().enumerate() {
                if !seen[i] {
                    state.nothing_seen(std::slice::from_raw_parts_mut(row(i), n));
                    if let Some((pb, _)) = &round {
                        let pb = std::slice::from_raw_parts_mut(pb[i], W::LANES * chunks);
                        let p = if state.sum.is_nan() { half::bf16::NAN.to_bits() } else { 0 };
                        pb.fill(0);
                        pb[..n].fill(p);
                    }
                    continue;
                }
                state.sum = state.sum * alphas[i] + W::sum(sum[i]);
                state.max = maxes[i];
            }
            alphas
        }
    }

    /// e^x for `y = x · log₂e` on 16 lanes, for probabilities that are rounded to bf16 next:
    /// `2^y = 2ⁿ · 2^f` with `n` the nearest integer and `|f| ≤ ½`, `2^f` by a degree-4 polynomial
    /// fitted for relative error (at most 2.8·10⁻⁶, measured in f32 over the interval: a thousandth
    /// of a bf16 rounding step), `2ⁿ` applied by `vscalefps`, which also underflows to zero. `y` is
    /// first clamped to −127 so that −∞ cannot make `f` NaN; NaN stays NaN. Eight instructions
    /// against the twenty of [`exp16`], which must match the scalar [`super::exp_with`] bit for bit.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp2_16(y: __m512) -> __m512 {
        // The constant first: max returns its second operand when one is NaN, so NaN stays.
        let y = _mm512_max_ps(_mm512_set1_ps(-127.0), y);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let f = _mm512_sub_ps(y, n);
        let mut p = _mm512_set1_ps(0.009_570_093);
        for c in [0.055_917_86, 0.240_247_44, 0.693_121_8, 0.999_999_3] {
            p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// The online-softmax step of one row on the AMX path: `s` holds the row's unscaled scores
    /// of a key tile (a multiple of 16), of which only `[a, b)` are visible. Folds `scale · s` into
    /// the state, writes the probabilities rounded to bf16 into `p` (zero where not visible) and
    /// returns the factor that rescales the row's earlier output (1: nothing to do). A NaN score
    /// makes the row NaN, as in [`RowState::update`].
    ///
    /// # Safety
    /// AVX-512F and AVX-512 BF16; `s.len()` a multiple of 16 and `p` at least as long.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn update_row_bf16(
        state: &mut RowState,
        s: &[f32],
        (a, b): (usize, usize),
        scale: f32,
        p: &mut [u16],
    ) -> f32 {
        let n = s.len();
        debug_assert!(n.is_multiple_of(16) && p.len() >= n);
        let (a, b) = (a.min(b).min(n), b.min(n));
        if a == b {
            return nothing_visible(state, s, (a, b), p);
        }
        // Chunks of 16 scores first..last hold the visible ones; only the first and last are partly
        // visible.
        let (first, last) = (a / 16, b.div_ceil(16));
        let visible = |ci: usize| -> __mmask16 {
            if ci != first && ci + 1 != last {
                return 0xffff;
            }
            let c = 16 * ci;
            let (lo, hi) = (a.clamp(c, c + 16) - c, b.clamp(c, c + 16) - c);
            (((1u32 << hi) - 1) & !((1u32 << lo) - 1)) as __mmask16
        };
        // SAFETY: loads and stores of 16 lanes at multiples of 16 below `n`, inside `s` and `p`.
        unsafe {
            // A positive scale keeps the order (rounding too): the largest scaled score is the
            // largest score, scaled.
            let positive = scale > 0.0;
            // Four running maxima: one would chain every chunk on the latency of the last max.
            let mut tops = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
            let fold = |top: __m512, ci: usize| {
                let x = _mm512_loadu_ps(s.as_ptr().add(16 * ci));
                let x = if positive { x } else { _mm512_mul_ps(x, _mm512_set1_ps(scale)) };
                // NaN second: the max ignores NaN (exp2_16 makes it NaN below).
                _mm512_mask_max_ps(top, visible(ci), x, top)
            };
            let mut ci = first;
            while ci + 4 <= last {
                for (u, top) in tops.iter_mut().enumerate() {
                    *top = fold(*top, ci + u);
                }
                ci += 4;
            }
            for ci in ci..last {
                tops[0] = fold(tops[0], ci);
            }
            let top = _mm512_max_ps(_mm512_max_ps(tops[0], tops[1]), _mm512_max_ps(tops[2], tops[3]));
            let top = _mm512_reduce_max_ps(top);
            let max = state.max.max(if positive { top * scale } else { top });
            if max == f32::NEG_INFINITY {
                return nothing_visible(state, s, (a, b), p);
            }
            let alpha = if state.max == max { 1.0 } else { super::exp_with(state.max - max, true) };
            // exp(scale · s − max) = 2^(s · scale·log₂e − max·log₂e): one fused multiply-add.
            const LOG2E: f32 = std::f32::consts::LOG2_E;
            let (k, shift) = (_mm512_set1_ps(scale * LOG2E), _mm512_set1_ps(-max * LOG2E));
            // Chunks outside [first, last) are zeros; the rest summed in two running sums.
            p[..16 * first].fill(0);
            p[16 * last..n].fill(0);
            let pp = p.as_mut_ptr();
            let exp = |ci: usize| {
                let y = _mm512_fmadd_ps(_mm512_loadu_ps(s.as_ptr().add(16 * ci)), k, shift);
                let e = _mm512_maskz_mov_ps(visible(ci), exp2_16(y));
                let at = pp.add(16 * ci) as *mut __m256i;
                _mm256_storeu_si256(at, std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(e)));
                e
            };
            let mut sums = [_mm512_setzero_ps(); 2];
            let mut ci = first;
            while ci + 2 <= last {
                sums[0] = _mm512_add_ps(sums[0], exp(ci));
                sums[1] = _mm512_add_ps(sums[1], exp(ci + 1));
                ci += 2;
            }
            if ci < last {
                sums[0] = _mm512_add_ps(sums[0], exp(ci));
            }
            state.sum = state.sum * alpha + _mm512_reduce_add_ps(_mm512_add_ps(sums[0], sums[1]));
            state.max = max;
            alpha
        }
    }

    /// [`update_row_bf16`] when no visible score is above −∞: zero probabilities, or NaN ones (and a
    /// NaN row) when a visible score is NaN.
    #[cold]
    fn nothing_visible(state: &mut RowState, s: &[f32], (a, b): (usize, usize), p: &mut [u16]) -> f32 {
        p[..s.len()].fill(0);
        if s[a.min(b)..b].iter().any(|x| x.is_nan()) {
            state.sum = f32::NAN;
            p[a.min(b)..b].fill(half::bf16::NAN.to_bits());
        }
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_two_ulps() {
        let mut x = -87.0f32;
        while x < 88.0 {
            for got in [exp(x), exp_with(x, true)] {
                let want = x.exp();
                assert!((got - want).abs() <= 2.0 * f32::EPSILON * want, "exp({x}) = {got}, std {want}");
            }
            x += 0.0137;
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn update_then_merge_equals_one_pass() {
        let scores: Vec<f32> = (0..50).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        let mut whole = RowState::EMPTY;
        whole.update(&mut scores.clone(), false);
        let (mut a, mut b) = (RowState::EMPTY, RowState::EMPTY);
        a.update(&mut scores[..20].to_vec(), false);
        b.update(&mut scores[20..].to_vec(), true);
        a.merge(b);
        assert_eq!(a.max, whole.max);
        assert!((a.sum - whole.sum).abs() <= 1e-5 * whole.sum);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn wide_update_matches_the_plain_update() {
        use crate::simd::width::{W256, W512};
        wide_update_matches::<W512>();
        wide_update_matches::<W256>();
    }

    #[cfg(target_arch = "x86_64")]
    fn wide_update_matches<W: crate::simd::width::Width>() {
        let ninf = f32::NEG_INFINITY;
        // Rows that have seen keys (the max moves or not) and one that has not, in every position
        // of a group of four rows and of the rows left after them.
        let starts = [RowState { max: 2.5, sum: 3.0 }, RowState { max: 40.0, sum: 1.5 }, RowState::EMPTY];
        let stride = 70;
        for n in [1, 2, 15, 16, 17, 32, 33, 64] {
            for rows in [1, 3, 4, 7] {
                let score = |r: usize, i: usize| match (i + r) % 7 {
                    3 => ninf,
                    _ => ((i * 37 + r * 11) % 23) as f32 * 0.77 - 9.0,
                };
                let mut got: Vec<f32> = (0..rows * stride).map(|k| score(k / stride, k % stride)).collect();
                let mut want = got.clone();
                let mut plain: Vec<RowState> = (0..rows).map(|r| starts[r % 3]).collect();
                let mut wide = plain.clone();
                let mut alphas = vec![0.0; rows];
                if !RowState::update_wide::<W>(&mut wide, &mut got, (stride, n), &mut alphas) {
                    return; // not on this CPU
                }
                for r in 0..rows {
                    let alpha = plain[r].update(&mut want[r * stride..r * stride + n], true);
                    assert_eq!((alpha.to_bits(), plain[r].max), (alphas[r].to_bits(), wide[r].max), "n {n}, row {r}");
                    let sum = plain[r].sum;
                    assert!((sum - wide[r].sum).abs() <= 4.0 * f32::EPSILON * sum, "n {n}, row {r}");
                }
                // Every probability, bit for bit, and nothing past a row's n scores touched.
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n = {n}, {rows} rows");
            }
        }
        // Nothing visible: zeros, or NaN when a score is NaN; more than 64 scores or rows beyond
        // the scores: not taken.
        let mut st = [RowState::EMPTY; 2];
        let mut s = [ninf; 40];
        let mut alphas = [0.0; 2];
        assert!(RowState::update_wide::<W>(&mut st, &mut s, (20, 20), &mut alphas));
        assert!(s.iter().all(|&p| p == 0.0) && st.iter().all(|st| st.sum == 0.0));
        let mut s = [ninf, f32::NAN, ninf, 1.0];
        assert!(RowState::update_wide::<W>(&mut st, &mut s, (2, 2), &mut alphas));
        assert!(s[..2].iter().all(|p| p.is_nan()) && st[0].sum.is_nan(), "{s:?}");
        assert_eq!((s[3], st[1].max, st[1].sum), (1.0, 1.0, 1.0));
        let mut st = [RowState::EMPTY; 2];
        assert!(!RowState::update_wide::<W>(&mut st[..1], &mut [0.0; 65], (65, 65), &mut alphas));
        assert!(!RowState::update_wide::<W>(&mut st, &mut [0.0; 39], (20, 20), &mut alphas));
        assert!(!RowState::update_wide::<W>(&mut st, &mut [0.0; 40], (20, 20), &mut alphas[..1]));
    }

    #[test]
    fn bf16_update_matches_the_plain_update() {
        let starts = [RowState { max: 2.5, sum: 3.0 }, RowState { max: 40.0, sum: 1.5 }, RowState::EMPTY];
        let stride = 64;
        for n in [1, 2, 15, 16, 17, 32, 33, 64] {
            for rows in [1, 3, 4, 6] {
                let score = |r: usize, i: usize| match (i + r) % 7 {
                    3 => f32::NEG_INFINITY,
                    _ => ((i * 37 + r * 11) % 23) as f32 * 0.77 - 9.0,
                };
                let mut got: Vec<f32> = (0..rows * stride).map(|k| score(k / stride, k % stride)).collect();
                let mut want = got.clone();
                let mut plain: Vec<RowState> = (0..rows).map(|r| starts[r % 3]).collect();
                let mut fast = plain.clone();
                let (mut pb, mut alphas) = (vec![7u16; rows * stride], vec![0.0; rows]);
                if !RowState::update_bf16(&mut fast, &mut got, (stride, n), &mut pb, &mut alphas) {
                    return; // no AVX-512 BF16 here
                }
                for r in 0..rows {
                    let want = &mut want[r * stride..r * stride + n];
                    let alpha = plain[r].update(want, true);
                    assert_eq!((alpha.to_bits(), plain[r].max), (alphas[r].to_bits(), fast[r].max), "n {n}, row {r}");
                    // The sums are added in another order: equal to a few ulps.
                    let sum = plain[r].sum;
                    assert!((sum - fast[r].sum).abs() <= 4.0 * f32::EPSILON * sum, "n {n}, row {r}");
                    let pb = &pb[r * stride..(r + 1) * stride];
                    let rounded: Vec<u16> = want.iter().map(|&p| half::bf16::from_f32(p).to_bits()).collect();
                    assert_eq!(&pb[..n], &rounded[..], "n {n}, row {r}");
                    let padding = n.next_multiple_of(16);
                    assert!(pb[n..padding].iter().all(|&b| b == 0), "padding, n {n}, row {r}");
                    assert!(pb[padding..].iter().all(|&b| b == 7), "past the padding, n {n}, row {r}");
                }
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "n = {n}, {rows} rows");
            }
        }
        // Rows whose rounded probabilities would overlap or pass the end: not taken.
        let mut st = [RowState::EMPTY; 2];
        let mut alphas = [0.0; 2];
        assert!(!RowState::update_bf16(&mut st, &mut [0.0; 40], (20, 20), &mut [0; 64], &mut alphas));
        assert!(!RowState::update_bf16(&mut st, &mut [0.0; 64], (32, 32), &mut [0; 63], &mut alphas));
        assert!(!RowState::update_bf16(&mut st[..1], &mut [0.0; 65], (65, 65), &mut [0; 80], &mut alphas));
    }

    #[test]
    fn row_update_on_the_amx_path_matches_the_plain_update() {
        if crate::cpu::detected() < crate::cpu::Level::Avx512Bf16 {
            return; // no AVX-512 BF16 here
        }
        let base: Vec<f32> = (0..96).map(|i| ((i * 37) % 23) as f32 * 0.77 - 9.0).collect();
        // Also the largest score alone in each chunk in turn (the chunks' maxima are kept apart).
        let spiked = (0..6).map(|c| {
            let mut s = base.clone();
            s[16 * c + 3] = 40.0;
            (s, (0, 96), 0.3)
        });
        let cases = [((0, 96), 0.3), ((5, 70), 0.3), ((17, 18), 1.0), ((0, 96), -0.5), ((40, 40), 0.3)];
        for (scores, visible, scale) in cases.into_iter().map(|(v, sc)| (base.clone(), v, sc)).chain(spiked) {
            let start = RowState { max: 2.5, sum: 3.0 };
            let (mut plain, mut fast) = (start, start);
            // The plain update of the visible scores, scaled.
            let mut want: Vec<f32> = scores[visible.0..visible.1].iter().map(|x| x * scale).collect();
            let alpha = plain.update(&mut want, true);
            let mut p = [7u16; 96];
            // SAFETY: AVX-512 BF16 checked above; 96 scores and probabilities.
            let beta = unsafe { x86::update_row_bf16(&mut fast, &scores, visible, scale, &mut p) };
            assert_eq!((alpha, plain.max), (beta, fast.max), "{visible:?}");
            // Another exp (within 3·10⁻⁶) and order of summation.
            assert!((plain.sum - fast.sum).abs() <= 4e-6 * plain.sum, "{visible:?}: {} vs {}", plain.sum, fast.sum);
            for (j, &b) in p.iter().enumerate() {
                let got = half::bf16::from_bits(b).to_f32();
                match j.checked_sub(visible.0).and_then(|i| want.get(i)) {
                    // One bf16 rounding step at most (the exps differ before rounding).
                    Some(&w) => assert!((got - w).abs() <= w / 128.0, "{visible:?}, key {j}: {got} vs {w}"),
                    None => assert_eq!(b, 0, "{visible:?}: key {j} is not visible"),
                }
            }
        }
    }

    #[test]
    fn fully_masked_tile_changes_nothing() {
        let mut st = RowState::EMPTY;
        let mut s = [f32::NEG_INFINITY; 4];
        assert_eq!(st.update(&mut s, false), 1.0);
        assert_eq!(s, [0.0; 4]);
        assert_eq!(st.sum, 0.0);
    }
}
