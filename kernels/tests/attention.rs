//! Attention against a naive f64 ndarray reference: prefill (variable lengths, causal and not,
//! sliding windows, GQA 1/4/8, head dims 64..256), paged decode (block sizes 16..128, split keys,
//! head dims 64..256, GQA 1..4),
//! chunked prefill over a cached prefix, reshape_and_cache, large score magnitudes, every dispatch
//! level, every dtype; and bad arguments refused with nothing enqueued.
//!
//! Error bound per output element (inputs compared after their own rounding to the input type):
//! each score is an f32 dot product of D terms, off by at most γ = 2·D·u₃₂ times Σ|q·k|·scale (the
//! standard γ_D bound, doubled for the pre-scaling of q); a score error δ moves the softmax output by
//! at most 2δ·max|v|; the weighted sum of L values adds L·u₃₂·max|v|, exp adds 2 ulp; then the
//! output is rounded to its type (u_out·|out|: 2⁻¹¹ f16, 2⁻⁸ bf16). With bf16 inputs at the AVX-512
//! BF16 level both paths also round the probabilities to bf16 before the value product (as
//! reduced-precision attention does), which moves an output by at most u_bf16·Σⱼ pⱼ·|vⱼ|. So
//! |got − ref| ≤ max|v|·(4·D·u₃₂·max Σ|q·k|·scale + 2·L·u₃₂ + 8·u₃₂) + u_out·|ref| (+ 2·u_bf16·Σⱼ pⱼ|vⱼ|
//! for bf16), with u₃₂ = 2⁻²⁴.

use ascend_kernels::cpu::{self, Level};
use ascend_kernels::{reshape_and_cache, BlockTables, Element, Heads, PagedAttention, Prefill};
use ascend_rt::{bf16, f16, Context, DeviceRepr, Error, Stream};
use ndarray::{s, Array3};
use std::sync::Arc;

const U32: f64 = 1.0 / (1u64 << 24) as f64;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) * 0.5 * n as f32) as usize % n
    }
}

fn stream() -> Arc<Stream> {
    Stream::new(&Context::new(0).unwrap()).unwrap()
}

fn unit_roundoff<T: Element>() -> f64 {
    match std::mem::size_of::<T>() {
        4 => 0.0,
        _ if T::ACL_DTYPE == <f16 as DeviceRepr>::ACL_DTYPE => 2f64.powi(-11),
        _ => 2f64.powi(-8),
    }
}

/// Unit roundoff of the probabilities in the value product: with bf16 inputs at the AVX-512 BF16
/// level both paths round them to bf16 first (as reduced-precision attention does, torch's
/// included); everywhere else they stay f32.
fn p_round<T: Element>(level: Level) -> f64 {
    if T::ACL_DTYPE == <bf16 as DeviceRepr>::ACL_DTYPE && level >= Level::Avx512Bf16 {
        2f64.powi(-8)
    } else {
        0.0
    }
}

fn random<T: Element>(rng: &mut Lcg, n: usize, magnitude: f32) -> Vec<T> {
    (0..n).map(|_| T::from_f32(rng.next() * magnitude)).collect()
}

fn to_f64<T: Element>(v: &[T], dims: (usize, usize, usize)) -> Array3<f64> {
    Array3::from_shape_vec(dims, v.iter().map(|x| x.to_f32() as f64).collect()).unwrap()
}

/// What one sequence sees: its queries `[q_len, Hq, D]` at positions `kv_len − q_len ..`, and its
/// keys and values `[kv_len, Hkv, D]`.
struct RefSeq {
    q: Array3<f64>,
    k: Array3<f64>,
    v: Array3<f64>,
}

/// The naive reference and the per-element error bound, `[q_len, Hq, D]` each.
fn reference(s: &RefSeq, scale: f64, causal: bool, window: Option<usize>, p_round: f64) -> (Array3<f64>, Array3<f64>) {
    let (ql, hq, d) = s.q.dim();
    let (kl, hkv, _) = s.k.dim();
    let group = hq / hkv;
    let mut out = Array3::zeros((ql, hq, d));
    let mut bound = Array3::zeros((ql, hq, d));
    for i in 0..ql {
        let p = kl - ql + i;
        for h in 0..hq {
            let kh = h / group;
            let visible: Vec<usize> =
                (0..kl).filter(|&j| (!causal || j <= p) && window.is_none_or(|w| j + w > p)).collect();
            let q = s.q.slice(s![i, h, ..]);
            let scores: Vec<f64> = visible.iter().map(|&j| q.dot(&s.k.slice(s![j, kh, ..])) * scale).collect();
            let abs: f64 = visible
                .iter()
                .map(|&j| q.iter().zip(s.k.slice(s![j, kh, ..])).map(|(a, b)| (a * b).abs()).sum::<f64>() * scale)
                .fold(0.0, f64::max);
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            let vmax = visible
                .iter()
                .map(|&j| s.v.slice(s![j, kh, ..]).fold(0.0f64, |a, x| a.max(x.abs())))
                .fold(0.0, f64::max);
            let tol = vmax * (4.0 * d as f64 * U32 * abs + 2.0 * visible.len() as f64 * U32 + 8.0 * U32);
            let mut weighted_abs = ndarray::Array1::<f64>::zeros(d);
            for (&j, wj) in visible.iter().zip(&w) {
                let mut o = out.slice_mut(s![i, h, ..]);
                o.scaled_add(wj / sum, &s.v.slice(s![j, kh, ..]));
                weighted_abs.scaled_add(wj / sum, &s.v.slice(s![j, kh, ..]).mapv(f64::abs));
            }
            // Probabilities rounded before the value product move each output by at most
            // p_round · Σⱼ pⱼ·|vⱼ| (twice, for the rounding of the bound's own terms).
            let mut b = bound.slice_mut(s![i, h, ..]);
            b.fill(tol);
            b.scaled_add(2.0 * p_round, &weighted_abs);
        }
    }
    (out, bound)
}

fn compare<T: Element>(what: &str, got: &[T], want: &Array3<f64>, bound: &Array3<f64>) {
    let u = unit_roundoff::<T>();
    for ((idx, w), b) in want.indexed_iter().zip(bound.iter()) {
        let (i, h, d) = idx;
        let g = got[(i * want.dim().1 + h) * want.dim().2 + d].to_f32() as f64;
        let tol = b + u * w.abs() + 1e-30;
        assert!((g - w).abs() <= tol, "{what}: out[{i}, {h}, {d}] = {g}, reference {w}, bound {tol}");
    }
}

struct PrefillCase {
    lens: Vec<usize>,
    heads: Heads,
    causal: bool,
    window: Option<usize>,
    magnitude: f32,
}

fn check_prefill<T: Element>(level: Level, c: &PrefillCase, seed: u64) {
    let st = stream();
    let mut rng = Lcg(seed);
    let h = c.heads;
    let tokens: usize = c.lens.iter().sum();
    let q: Vec<T> = random(&mut rng, tokens * h.heads * h.head_dim, c.magnitude);
    let k: Vec<T> = random(&mut rng, tokens * h.kv_heads * h.head_dim, c.magnitude);
    let v: Vec<T> = random(&mut rng, tokens * h.kv_heads * h.head_dim, 1.0);
    let mut cu = vec![0i32];
    for &l in &c.lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let (dq, dk, dv) = (st.clone_htod(&q).unwrap(), st.clone_htod(&k).unwrap(), st.clone_htod(&v).unwrap());
    let mut dout = st.alloc_zeros::<T>(q.len()).unwrap();
    let mut op = Prefill::new(h).causal(c.causal).level(level);
    if let Some(w) = c.window {
        op = op.window(w);
    }
    op.run(&st, &dq, &dk, &dv, &cu, &mut dout).unwrap();
    let out = st.clone_dtoh(&dout).unwrap();
    let (qa, ka, va) = (
        to_f64(&q, (tokens, h.heads, h.head_dim)),
        to_f64(&k, (tokens, h.kv_heads, h.head_dim)),
        to_f64(&v, (tokens, h.kv_heads, h.head_dim)),
    );
    let scale = 1.0 / (h.head_dim as f64).sqrt();
    for (b, w) in cu.windows(2).enumerate() {
        let (a, e) = (w[0] as usize, w[1] as usize);
        let seq = RefSeq {
            q: qa.slice(s![a..e, .., ..]).to_owned(),
            k: ka.slice(s![a..e, .., ..]).to_owned(),
            v: va.slice(s![a..e, .., ..]).to_owned(),
        };
        let (want, bound) = reference(&seq, scale as f32 as f64, c.causal, c.window, p_round::<T>(level));
        let got = &out[a * h.heads * h.head_dim..e * h.heads * h.head_dim];
        compare(&format!("prefill {} seq {b} ({:?}, {:?})", level.name(), h, c.window), got, &want, &bound);
    }
}

#[test]
fn prefill_every_level_dtype_gqa_and_window() {
    let cases = [
        PrefillCase { lens: vec![1, 37, 130], heads: Heads::new(4, 4, 64), causal: true, window: None, magnitude: 1.0 },
        PrefillCase {
            lens: vec![100, 1, 13],
            heads: Heads::new(8, 2, 80),
            causal: true,
            window: Some(17),
            magnitude: 1.0,
        },
        PrefillCase { lens: vec![61], heads: Heads::new(8, 1, 96), causal: false, window: None, magnitude: 1.0 },
        // A head size the AMX path does not take (not whole 16-column tile halves).
        PrefillCase { lens: vec![45, 3], heads: Heads::new(8, 2, 40), causal: true, window: None, magnitude: 1.0 },
    ];
    for level in cpu::available() {
        for (i, c) in cases.iter().enumerate() {
            check_prefill::<f32>(level, c, 10 + i as u64);
            check_prefill::<bf16>(level, c, 20 + i as u64);
            check_prefill::<f16>(level, c, 30 + i as u64);
        }
    }
}

#[test]
fn prefill_head_dims_and_long_sequences() {
    for (d, lens) in [(128, vec![300, 257]), (256, vec![97, 5]), (64, vec![600])] {
        let c = PrefillCase { lens, heads: Heads::new(8, 2, d), causal: true, window: None, magnitude: 1.0 };
        check_prefill::<f32>(cpu::active(), &c, d as u64);
        check_prefill::<bf16>(cpu::active(), &c, d as u64 + 1);
    }
    let c = PrefillCase {
        lens: vec![200, 31],
        heads: Heads::new(16, 4, 64),
        causal: true,
        window: Some(64),
        magnitude: 1.0,
    };
    check_prefill::<f32>(cpu::active(), &c, 7);
}

#[test]
fn prefill_large_scores_stay_finite_and_exact() {
    // Scores of several hundred: a softmax without max-subtraction overflows.
    let c = PrefillCase { lens: vec![70, 9], heads: Heads::new(4, 1, 64), causal: true, window: None, magnitude: 6.0 };
    for level in cpu::available() {
        check_prefill::<f32>(level, &c, 99);
        check_prefill::<bf16>(level, &c, 98);
    }
}

/// A paged cache holding `kv_lens[b]` tokens per sequence in shuffled blocks, plus queries for the
/// last `q_lens[b]` positions.
#[derive(Clone)]
struct PagedCase {
    q_lens: Vec<usize>,
    kv_lens: Vec<usize>,
    heads: Heads,
    block_size: usize,
    window: Option<usize>,
    magnitude: f32,
}

fn check_paged<T: Element>(level: Level, c: &PagedCase, seed: u64) {
    let st = stream();
    let mut rng = Lcg(seed);
    let h = c.heads;
    let (bs, row) = (c.block_size, h.kv_heads * h.head_dim);
    let per_seq: Vec<usize> = c.kv_lens.iter().map(|l| l.div_ceil(bs)).collect();
    let max_blocks = per_seq.iter().copied().max().unwrap() + 1;
    let blocks = per_seq.iter().sum::<usize>() + 3;
    // A shuffled assignment of blocks; unused table entries are -1 (vLLM pads them).
    let mut ids: Vec<i32> = (0..blocks as i32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rng.below(i + 1));
    }
    let mut table = vec![-1i32; c.kv_lens.len() * max_blocks];
    let mut next = 0;
    for (b, &n) in per_seq.iter().enumerate() {
        for j in 0..n {
            table[b * max_blocks + j] = ids[next];
            next += 1;
        }
    }
    let kc: Vec<T> = random(&mut rng, blocks * bs * row, c.magnitude);
    let vc: Vec<T> = random(&mut rng, blocks * bs * row, 1.0);
    let tokens: usize = c.q_lens.iter().sum();
    let q: Vec<T> = random(&mut rng, tokens * h.heads * h.head_dim, c.magnitude);
    let mut cu = vec![0i32];
    for &l in &c.q_lens {
        cu.push(cu.last().unwrap() + l as i32);
    }
    let ctx: Vec<i32> = c.kv_lens.iter().map(|&l| l as i32).collect();
    let (dq, dk, dv) = (st.clone_htod(&q).unwrap(), st.clone_htod(&kc).unwrap(), st.clone_htod(&vc).unwrap());
    let mut dout = st.alloc_zeros::<T>(q.len()).unwrap();
    let mut op = PagedAttention::new(h, bs).level(level);
    if let Some(w) = c.window {
        op = op.window(w);
    }
    let tables = BlockTables { table: &table, max_blocks };
    if c.q_lens.iter().all(|&l| l == 1) {
        op.decode(&st, &dq, &dk, &dv, tables, &ctx, &mut dout).unwrap();
    } else {
        op.chunked_prefill(&st, &dq, &dk, &dv, tables, &cu, &ctx, &mut dout).unwrap();
    }
    let out = st.clone_dtoh(&dout).unwrap();
    let qa = to_f64(&q, (tokens, h.heads, h.head_dim));
    let gather = |cache: &[T], b: usize| {
        let mut a = Array3::zeros((c.kv_lens[b], h.kv_heads, h.head_dim));
        for j in 0..c.kv_lens[b] {
            let slot = table[b * max_blocks + j / bs] as usize * bs + j % bs;
            for (x, y) in a.slice_mut(s![j, .., ..]).iter_mut().zip(&cache[slot * row..(slot + 1) * row]) {
                *x = y.to_f32() as f64;
            }
        }
        a
    };
    let scale = (1.0 / (h.head_dim as f64).sqrt()) as f32 as f64;
    for b in 0..c.kv_lens.len() {
        let (a, e) = (cu[b] as usize, cu[b + 1] as usize);
        let seq = RefSeq { q: qa.slice(s![a..e, .., ..]).to_owned(), k: gather(&kc, b), v: gather(&vc, b) };
        let (want, bound) = reference(&seq, scale, true, c.window, p_round::<T>(level));
        let got = &out[a * h.heads * h.head_dim..e * h.heads * h.head_dim];
        compare(&format!("paged {} bs {bs} seq {b}", level.name()), got, &want, &bound);
    }
}

#[test]
fn paged_decode_block_sizes_gqa_and_levels() {
    for level in cpu::available() {
        for (bs, gqa) in [(16, 1), (32, 4), (128, 8)] {
            let c = PagedCase {
                q_lens: vec![1; 4],
                kv_lens: vec![1, bs, 3 * bs + 5, 77],
                heads: Heads::new(8, 8 / gqa, 64),
                block_size: bs,
                window: None,
                magnitude: 1.0,
            };
            check_paged::<f32>(level, &c, bs as u64);
            check_paged::<bf16>(level, &c, bs as u64 + 1);
            check_paged::<f16>(level, &c, bs as u64 + 2);
        }
    }
}

#[test]
fn paged_decode_head_dims_and_odd_groups() {
    // Every head size the decode kernels specialise (and 256, the largest), with one, two, three
    // and four query heads per KV head: rows taken in pairs, alone, and both. And 32, which they
    // do not take although its rows split into pairs (queries put in their order must not reach
    // the generic code).
    for level in cpu::available() {
        for (d, heads) in [
            (32, Heads::new(4, 2, 32)),
            (80, Heads::new(6, 2, 80)),
            (96, Heads::new(4, 4, 96)),
            (256, Heads::new(6, 2, 256)),
        ] {
            for heads in [heads, Heads::new(8, 2, d), Heads::new(4, 2, d), Heads::new(2, 2, d)] {
                let c = PagedCase {
                    q_lens: vec![1; 3],
                    kv_lens: vec![1, 70, 200],
                    heads,
                    block_size: 16,
                    window: None,
                    magnitude: 1.0,
                };
                check_paged::<f32>(level, &c, d as u64);
                check_paged::<bf16>(level, &c, d as u64 + 1);
                check_paged::<f16>(level, &c, d as u64 + 2);
            }
        }
    }
}

#[test]
fn paged_decode_long_context_splits_keys() {
    // One sequence, two KV heads: fewer items than threads, so the keys are split and merged, at
    // every level.
    let c = PagedCase {
        q_lens: vec![1],
        kv_lens: vec![3001],
        heads: Heads::new(8, 2, 128),
        block_size: 16,
        window: None,
        magnitude: 1.0,
    };
    for level in cpu::available() {
        check_paged::<f32>(level, &c, 5);
        check_paged::<bf16>(level, &c, 6);
        // A window long enough that its keys are still split.
        let windowed = PagedCase { window: Some(1000), ..c.clone() };
        check_paged::<f32>(level, &windowed, 7);
        let large = PagedCase { kv_lens: vec![1500], magnitude: 6.0, ..windowed };
        check_paged::<f32>(level, &large, 8);
        // Two streaming rows per head with different visible ranges, keys split.
        let chunk = PagedCase { q_lens: vec![2], window: Some(700), heads: Heads::new(8, 2, 64), ..c.clone() };
        check_paged::<bf16>(level, &chunk, 14);
        // Sixteen query heads per KV head: a tiled decode item, keys split over the threads.
        let mqa = PagedCase { heads: Heads::new(16, 1, 128), ..c.clone() };
        check_paged::<f32>(level, &mqa, 15);
        check_paged::<bf16>(level, &mqa, 16);
    }
}

/// One NaN in a query makes that head's output NaN (as in torch), on every path and level; the other
/// heads are untouched.
#[test]
fn a_nan_query_gives_a_nan_head() {
    let st = stream();
    for level in cpu::available() {
        for (heads, kv_len) in [
            (Heads::new(8, 2, 64), 40usize),
            (Heads::new(8, 2, 128), 3001),
            (Heads::new(16, 1, 64), 40),
            (Heads::new(16, 1, 64), 3001),
        ] {
            let (hd, row) = (heads.head_dim, heads.kv_heads * heads.head_dim);
            let mut q = vec![bf16::from_f32(0.5); heads.heads * hd];
            q[3 * hd + 7] = bf16::NAN;
            let cache = st.clone_htod(&vec![bf16::from_f32(0.25); kv_len.div_ceil(16) * 16 * row]).unwrap();
            let table: Vec<i32> = (0..kv_len.div_ceil(16) as i32).collect();
            let tables = BlockTables { table: &table, max_blocks: table.len() };
            let mut out = st.alloc_zeros::<bf16>(q.len()).unwrap();
            let op = PagedAttention::new(heads, 16).level(level);
            op.decode(&st, &st.clone_htod(&q).unwrap(), &cache, &cache, tables, &[kv_len as i32], &mut out).unwrap();
            let got = st.clone_dtoh(&out).unwrap();
            for (h, o) in got.chunks_exact(hd).enumerate() {
                let what = format!("decode {} {heads:?} head {h}", level.name());
                assert!(o.iter().all(|x| x.is_nan() == (h == 3)), "{what}: {o:?}");
            }
        }
        // Prefill: the NaN query row (token 1, head 3) only.
        let heads = Heads::new(8, 2, 64);
        let (tokens, hd) = (5, 64);
        let mut q = vec![0.5f32; tokens * heads.heads * hd];
        q[(heads.heads + 3) * hd] = f32::NAN;
        let kv = st.clone_htod(&vec![0.25f32; tokens * heads.kv_heads * hd]).unwrap();
        let mut out = st.alloc_zeros::<f32>(q.len()).unwrap();
        let cu = [0, tokens as i32];
        Prefill::new(heads).level(level).run(&st, &st.clone_htod(&q).unwrap(), &kv, &kv, &cu, &mut out).unwrap();
        for (r, o) in st.clone_dtoh(&out).unwrap().chunks_exact(hd).enumerate() {
            assert!(o.iter().all(|x| x.is_nan() == (r == heads.heads + 3)), "prefill {} row {r}", level.name());
        }
    }
}

/// An infinite value whose probability is exactly 0 (a score far below the others) still makes the
/// output NaN (0 · inf, as in torch), at every level: no path skips zero weights.
#[test]
fn a_zero_weight_times_an_infinite_value_is_nan_at_every_level() {
    fn case<T: Element>(st: &Arc<Stream>, level: cpu::Level, heads: Heads) {
        let (hd, row, kv_len) = (heads.head_dim, heads.kv_heads * heads.head_dim, 40usize);
        let q = vec![T::from_f32(1.0); heads.heads * hd];
        let (mut k, mut v) = (vec![T::from_f32(0.25); 48 * row], vec![T::from_f32(0.5); 48 * row]);
        // Key 0 scores about −800 · 8 below the rest (its weight underflows to 0); its value is inf.
        k[..row].fill(T::from_f32(-100.0));
        v[..row].fill(T::from_f32(f32::INFINITY));
        let (k, v) = (st.clone_htod(&k).unwrap(), st.clone_htod(&v).unwrap());
        let table = [0i32, 1, 2];
        let tables = BlockTables { table: &table, max_blocks: 3 };
        let mut out = st.alloc_zeros::<T>(q.len()).unwrap();
        let op = PagedAttention::new(heads, 16).level(level);
        op.decode(st, &st.clone_htod(&q).unwrap(), &k, &v, tables, &[kv_len as i32], &mut out).unwrap();
        let got: Vec<f32> = st.clone_dtoh(&out).unwrap().iter().map(|x| x.to_f32()).collect();
        assert!(got.iter().all(|x| x.is_nan()), "{} {heads:?}: {:?}", level.name(), &got[..4]);
    }
    let st = stream();
    for level in cpu::available() {
        // One query head per KV head (single-row value sums), and four.
        for heads in [Heads::new(4, 4, 64), Heads::new(8, 2, 64)] {
            case::<f32>(&st, level, heads);
            case::<bf16>(&st, level, heads);
        }
    }
}

#[test]
fn paged_decode_short_single_sequence_splits_heads() {
    // One short sequence: too few keys to split, so (with two or more pool threads) its KV heads are
    // split over items, evenly (8 heads) and unevenly (3 heads), each writing its own output rows.
    for level in cpu::available() {
        for heads in [Heads::new(16, 8, 128), Heads::new(12, 3, 64)] {
            let c =
                PagedCase { q_lens: vec![1], kv_lens: vec![100], heads, block_size: 16, window: None, magnitude: 1.0 };
            check_paged::<f32>(level, &c, 9);
            check_paged::<bf16>(level, &c, 10);
        }
    }
}

#[test]
fn paged_decode_many_short_sequences_run_in_chained_lanes() {
    // More sequences than lanes: a thread runs several in turn, each prefetching the next one's
    // first keys. Lengths from 1 up, not multiples of a tile or block.
    let mut rng = Lcg(11);
    let kv_lens: Vec<usize> = (0..21).map(|i| if i % 7 == 0 { 1 } else { 1 + rng.below(150) }).collect();
    for level in cpu::available() {
        let c = PagedCase {
            q_lens: vec![1; kv_lens.len()],
            kv_lens: kv_lens.clone(),
            heads: Heads::new(16, 4, 64),
            block_size: 16,
            window: None,
            magnitude: 1.0,
        };
        check_paged::<f32>(level, &c, 12);
        check_paged::<bf16>(level, &c, 13);
    }
}

#[test]
fn chunked_prefill_attends_to_prefix_and_chunk() {
    for level in cpu::available() {
        let c = PagedCase {
            q_lens: vec![5, 1, 40, 2],
            kv_lens: vec![5, 50, 100, 33],
            heads: Heads::new(8, 2, 64),
            block_size: 16,
            window: None,
            magnitude: 1.0,
        };
        check_paged::<f32>(level, &c, 11);
        check_paged::<bf16>(level, &c, 12);
        let w = PagedCase { window: Some(21), block_size: 32, ..c };
        check_paged::<f16>(level, &w, 13);
    }
}

#[test]
fn reshape_and_cache_writes_slots_and_skips_padding() {
    let st = stream();
    let h = Heads::new(4, 2, 8);
    let (bs, blocks, tokens) = (16, 5, 7);
    let row = h.kv_heads * h.head_dim;
    let mut rng = Lcg(3);
    let k: Vec<bf16> = random(&mut rng, tokens * row, 1.0);
    let v: Vec<bf16> = random(&mut rng, tokens * row, 1.0);
    let slots: Vec<i64> = vec![0, 17, -1, 79, 31, -5, 42];
    let (dk, dv) = (st.clone_htod(&k).unwrap(), st.clone_htod(&v).unwrap());
    let fill = vec![bf16::from_f32(9.0); blocks * bs * row];
    let (mut kc, mut vc) = (st.clone_htod(&fill).unwrap(), st.clone_htod(&fill).unwrap());
    reshape_and_cache(&st, h, bs, &dk, &dv, &mut kc, &mut vc, &slots).unwrap();
    let (kc_h, vc_h) = (st.clone_dtoh(&kc).unwrap(), st.clone_dtoh(&vc).unwrap());
    let mut want_k = fill.clone();
    let mut want_v = fill.clone();
    for (t, &s) in slots.iter().enumerate() {
        if s >= 0 {
            let (block, off) = (s as usize / bs, s as usize % bs);
            let at = (block * bs + off) * row;
            want_k[at..at + row].copy_from_slice(&k[t * row..(t + 1) * row]);
            want_v[at..at + row].copy_from_slice(&v[t * row..(t + 1) * row]);
        }
    }
    assert_eq!(kc_h, want_k);
    assert_eq!(vc_h, want_v);
    // A slot beyond the cache: refused, nothing written.
    let bad = vec![0, 1, 2, 3, 4, 5, (blocks * bs) as i64];
    let err = reshape_and_cache(&st, h, bs, &dk, &dv, &mut kc, &mut vc, &bad).unwrap_err();
    assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("beyond")), "{err}");
    assert_eq!(st.clone_dtoh(&kc).unwrap(), want_k);
}

#[test]
fn bad_arguments_are_refused_and_nothing_runs() {
    let st = stream();
    let h = Heads::new(8, 2, 16);
    let (t, bs, blocks) = (6, 16, 4);
    let q = st.alloc_zeros::<f32>(t * 8 * 16).unwrap();
    let kv = st.alloc_zeros::<f32>(t * 2 * 16).unwrap();
    let cache = st.alloc_zeros::<f32>(blocks * bs * 2 * 16).unwrap();
    let sentinel = vec![7.0f32; t * 8 * 16];
    let mut out = st.clone_htod(&sentinel).unwrap();
    let invalid = |r: ascend_rt::Result<()>, what: &str| match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(what), "expected {what:?} in {m:?}"),
        other => panic!("expected InvalidArgument({what}), got {other:?}"),
    };
    invalid(Prefill::new(Heads::new(6, 4, 16)).run(&st, &q, &kv, &kv, &[0, 6], &mut out), "not a multiple");
    invalid(Prefill::new(h).run(&st, &q, &kv, &kv, &[0, 4, 3, 6], &mut out), "decreases");
    // Differences beyond i32 (an overflow, not a panic).
    invalid(Prefill::new(h).run(&st, &q, &kv, &kv, &[0, i32::MAX, i32::MIN], &mut out), "decreases");
    invalid(Prefill::new(h).run(&st, &q, &kv, &kv, &[0, 5], &mut out), "holds");
    invalid(Prefill::new(h).window(0).run(&st, &q, &kv, &kv, &[0, 6], &mut out), "window");
    let pa = PagedAttention::new(h, bs);
    let table = [0, 1, 2, 3, 9, -1];
    let ok_tables = BlockTables { table: &table[..4], max_blocks: 2 };
    // Block id 9 of a 4-block cache.
    invalid(
        pa.chunked_prefill(
            &st,
            &q,
            &cache,
            &cache,
            BlockTables { table: &table[2..6], max_blocks: 2 },
            &[0, 3, 6],
            &[20, 20],
            &mut out,
        ),
        "outside",
    );
    // A context longer than its blocks.
    invalid(pa.chunked_prefill(&st, &q, &cache, &cache, ok_tables, &[0, 3, 6], &[33, 20], &mut out), "beyond");
    // Fewer context tokens than queries.
    invalid(pa.chunked_prefill(&st, &q, &cache, &cache, ok_tables, &[0, 3, 6], &[2, 20], &mut out), "shorter");
    invalid(pa.chunked_prefill(&st, &q, &cache, &cache, ok_tables, &[0, 3, 6], &[-1, 20], &mut out), "negative");
    let short_cache = st.alloc_zeros::<f32>(blocks * bs * 2 * 16 - 1).unwrap();
    invalid(
        pa.chunked_prefill(&st, &q, &short_cache, &short_cache, ok_tables, &[0, 3, 6], &[3, 3], &mut out),
        "blocks",
    );
    invalid(pa.chunked_prefill(&st, &q, &cache, &cache, ok_tables, &[0, 3, 6], &[3], &mut out), "context lengths");
    // Sizes whose products overflow are refused, not wrapped: a block table of usize::MAX columns,
    // and blocks of 2^62 + 1 tokens (× 2 heads × 16 wraps around to a small block).
    let huge = BlockTables { table: &table[..4], max_blocks: usize::MAX };
    invalid(pa.chunked_prefill(&st, &q, &cache, &cache, huge, &[0, 3, 6], &[3, 3], &mut out), "block table");
    let wrapping = PagedAttention::new(h, (1 << 62) + 1);
    invalid(wrapping.decode(&st, &q, &cache, &cache, ok_tables, &[1, 1], &mut out), "blocks");
    let mut kc = st.alloc_zeros::<f32>(cache.len()).unwrap();
    let mut vc = st.alloc_zeros::<f32>(cache.len()).unwrap();
    let kv1 = st.alloc_zeros::<f32>(2 * 16).unwrap();
    invalid(reshape_and_cache(&st, h, (1 << 62) + 1, &kv1, &kv1, &mut kc, &mut vc, &[1]), "blocks");
    assert_eq!(st.clone_dtoh(&out).unwrap(), sentinel, "a refused call wrote its output");
}
