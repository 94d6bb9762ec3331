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
    #[inline(always)]
    pub fn update(&mut self, scores: &mut [f32], fma: bool) -> f32 {
        let max = self.max.max(lanes(scores, f32::NEG_INFINITY, f32::max));
        if max == f32::NEG_INFINITY {
            // Every key so far is masked for this row: nothing to add.
            scores.fill(0.0);
            return 1.0;
        }
        let alpha = if self.max == max { 1.0 } else { exp(self.max - max) };
        scores.iter_mut().for_each(|s| *s = exp_with(*s - max, fma));
        self.sum = self.sum * alpha + lanes(scores, 0.0, |a, b| a + b);
        self.max = max;
        alpha
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
    fn fully_masked_tile_changes_nothing() {
        let mut st = RowState::EMPTY;
        let mut s = [f32::NEG_INFINITY; 4];
        assert_eq!(st.update(&mut s, false), 1.0);
        assert_eq!(s, [0.0; 4]);
        assert_eq!(st.sum, 0.0);
    }
}
