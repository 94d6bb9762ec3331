//! Host attention: one online-softmax algorithm behind prefill, chunked prefill and paged decode.
//!
//! Work is split into items of (sequence, KV head, block of query positions[, slice of keys]). The
//! query heads that share a KV head are packed together as the rows of one item (GQA), so each key
//! and value row is read once for all of them. Items with enough rows run tiled: the scores of a
//! key tile are one small GEMM (the matmul microkernels; bf16 ones for bf16 inputs where the CPU has
//! AVX-512 BF16), the online-softmax update, then `O += P·V` as a second GEMM. With bf16 inputs on
//! a CPU with AMX, tiled items take their own path instead (see `amx`): the tile unit reads queries
//! and probabilities in place and the softmax runs along rows. Items with few rows (decode) take every KV head of a sequence and stream its
//! cache in tiles, in memory order where the level allows (see `streaming`); when there are fewer
//! such items than threads, the keys of a sequence are split over several items (flash-decoding)
//! and the partial results merged at the end; a sequence too short for that has its KV heads
//! split instead (nothing to merge).

mod amx;

use super::softmax::{exp, exp_with, RowState};
use crate::cpu::Level;
use crate::gemm::{gemm_rows, gemm_rows_bf16, Scratch};
use crate::matmul::Element;
use crate::simd::{Generic, Simd};

/// Rows (query positions × heads of a group) from which an item is tiled.
const TILED_MIN_ROWS: usize = 12;
/// Target rows of a tiled item: a multiple of every microkernel's row count.
const TILED_ROWS: usize = 384;
/// Keys per tile on the tiled path.
const TILED_KEYS: usize = 512;
/// Keys per tile on the streaming path.
const STREAM_KEYS: usize = 32;
/// Fewest keys worth a split of their own.
const MIN_SPLIT_KEYS: usize = 256;

/// The heads and masking of an attention call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub causal: bool,
    pub window: Option<usize>,
}

impl Geometry {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One sequence: its query rows in `q`/`out` and how many keys it sees. Query `i` sits at position
/// `kv_len − q_len + i` (the chunk is the end of the sequence).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seq {
    pub q_start: usize,
    pub q_len: usize,
    pub kv_len: usize,
}

/// Where the keys and values of every sequence are.
pub(crate) enum KvSource<'a, T> {
    /// `[tokens, Hkv, D]`, sequence `s` starting at token `starts[s]` (prefill).
    Contiguous { k: &'a [T], v: &'a [T], starts: &'a [usize] },
    /// `[blocks, block_size, Hkv, D]` with a block table row of `max_blocks` per sequence.
    Paged { k: &'a [T], v: &'a [T], tables: &'a [i32], max_blocks: usize, block_size: usize },
}

impl<'a, T> KvSource<'a, T> {
    /// Element offsets of the key/value rows of sequence `s`, positions `j0..j1`, KV head `h`, into
    /// `out` (one table lookup and division per block, not per row).
    #[inline(always)]
    fn offsets(&self, s: usize, h: usize, (j0, j1): (usize, usize), g: &Geometry, out: &mut Vec<usize>) {
        let row = g.kv_heads * g.head_dim;
        out.clear();
        match self {
            KvSource::Contiguous { starts, .. } => {
                out.extend((j0..j1).map(|j| (starts[s] + j) * row + h * g.head_dim));
            }
            KvSource::Paged { tables, max_blocks, block_size, .. } => {
                let bs = *block_size;
                let mut j = j0;
                while j < j1 {
                    let b = j / bs;
                    let end = j1.min((b + 1) * bs);
                    let base = tables[s * max_blocks + b] as usize * bs * row + h * g.head_dim;
                    out.extend((j..end).map(|jj| base + (jj - b * bs) * row));
                    j = end;
                }
            }
        }
    }

    fn kv(&self) -> (&'a [T], &'a [T]) {
        match self {
            KvSource::Contiguous { k, v, .. } | KvSource::Paged { k, v, .. } => (k, v),
        }
    }
}

/// A unit of work: query positions `q0..q1` of `seq`, every query head of KV heads `h0..h1`, keys
/// `k0..k1` (all the keys it may see, unless split).
#[derive(Clone, Copy, Debug)]
struct Item {
    seq: usize,
    h0: usize,
    h1: usize,
    q0: usize,
    q1: usize,
    k0: usize,
    k1: usize,
    /// Index of its partial result when the keys are split, else None (writes `out` itself).
    partial: Option<usize>,
}

impl Item {
    /// Rows of the item: for each of its KV heads, for each query position, the heads of the group.
    fn rows(&self, group: usize) -> usize {
        (self.h1 - self.h0) * (self.q1 - self.q0) * group
    }

    /// Whether it streams its cache (few rows, or several KV heads) rather than running tiled.
    fn streams(&self, group: usize) -> bool {
        self.h1 - self.h0 > 1 || self.rows(group) < TILED_MIN_ROWS
    }

    /// (query index within the sequence, query head) of row `r`.
    #[inline(always)]
    fn row(&self, r: usize, group: usize) -> (usize, usize) {
        let per_head = (self.q1 - self.q0) * group;
        let (hh, rest) = (r / per_head, r % per_head);
        (self.q0 + rest / group, (self.h0 + hh) * group + rest % group)
    }
}

/// Result of an item over part of the keys: per row, the softmax state and the unnormalised output.
struct Partial {
    rows: Vec<RowState>,
    acc: Vec<f32>,
}

impl Partial {
    /// `rows` empty rows of `d` zeros (with `d` 0, no accumulators), in buffers from `reuse`.
    fn empty(rows: usize, d: usize, reuse: &mut Reuse) -> Partial {
        let (mut states, mut acc) = std::mem::take(&mut reuse.partial);
        states.clear();
        states.resize(rows, RowState::EMPTY);
        acc.clear();
        acc.resize(rows * d, 0.0);
        Partial { rows: states, acc }
    }

    /// Returns its buffers to this thread's [`Reuse`].
    fn give_back(self) {
        let mut reuse = REUSE.take();
        reuse.partial = (self.rows, self.acc);
        REUSE.set(reuse);
    }
}

/// Computes attention for every sequence into `out` (`[tokens, Hq, D]`, like `q`), on the pool.
pub(crate) fn attention<T: Element>(
    level: Level,
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    q: &[T],
    out: &mut [T],
) {
    // `run_item`'s SIMD code is sound only where the CPU has the level.
    assert!(level <= crate::cpu::detected());
    let threads = ascend_rt::host::pool().threads();
    let (items, partials) = plan(g, seqs, threads);
    let out_addr = out.as_mut_ptr() as usize;
    let slots: Vec<std::sync::Mutex<Option<Partial>>> = (0..partials).map(|_| Default::default()).collect();
    // A streaming item prefetches the first keys of the item its thread runs next.
    let streams = |i: usize| items[i].streams(g.group());
    claim_ahead(items.len(), threads, &streams, &|i, prev, then| {
        let it = items[i];
        // Its first keys were prefetched by the item before it, which read the same heads (see
        // `streaming`).
        let warm = prev.is_some_and(|p| (items[p].h0, items[p].h1) == (it.h0, it.h1));
        // Items without a split own their rows (positions × heads of one KV head) of `out`,
        // which outlives the parallel_for; no other item writes them.
        let own = it.partial.is_none().then_some(out_addr as *mut T);
        // SAFETY: as just said.
        let p = unsafe { run_item(level, g, seqs, kv, q, it, (warm, then.map(|j| items[j])), own) };
        match (it.partial, p) {
            (Some(slot), p) => *slots[slot].lock().unwrap() = p,
            (None, Some(p)) => {
                // SAFETY: as above.
                unsafe { write_rows(g, seqs, it, (&p.rows, &p.acc, g.head_dim), out_addr as *mut T) };
                p.give_back();
            }
            (None, None) => {} // written by the item itself
        }
    });
    if partials > 0 {
        merge_splits(g, seqs, &items, slots, out_addr as *mut T);
    }
}

/// Splits the work into items: tiled blocks of query positions, or (few rows) whole key ranges,
/// split further (by keys, else by KV heads) when there are fewer items than `threads`.
fn plan(g: &Geometry, seqs: &[Seq], threads: usize) -> (Vec<Item>, usize) {
    let group = g.group();
    let block = (TILED_ROWS / group).max(1);
    let mut items = Vec::new();
    // Streaming items take every KV head of a sequence: a token's keys for all heads are one
    // contiguous row, read front to back.
    let streaming: usize = seqs.iter().filter(|s| s.q_len > 0 && s.q_len * group < TILED_MIN_ROWS).count();
    let tiled: usize = seqs.iter().filter(|s| s.q_len * group >= TILED_MIN_ROWS).map(|s| s.q_len.div_ceil(block)).sum();
    let tiled = tiled * g.kv_heads;
    let want = 4 * threads;
    let mut partials = 0;
    for (si, s) in seqs.iter().enumerate() {
        if s.q_len == 0 {
            continue;
        }
        if s.q_len * group >= TILED_MIN_ROWS {
            for h in 0..g.kv_heads {
                for q0 in (0..s.q_len).step_by(block) {
                    let q1 = s.q_len.min(q0 + block);
                    let (k0, k1) = key_range(g, s, q0, q1);
                    let whole = Item { seq: si, h0: h, h1: h + 1, q0, q1, k0, k1, partial: None };
                    // Fewer items than threads (a long decode of many query heads per KV head, a
                    // short chunk over a long prefix): split the keys too. Not merely to balance
                    // (as streaming items are): the merge of tiled rows runs on one thread.
                    let splits = if tiled + streaming >= threads {
                        1
                    } else {
                        want.div_ceil(tiled + streaming).min((k1 - k0) / MIN_SPLIT_KEYS)
                    };
                    if splits <= 1 {
                        items.push(whole);
                        continue;
                    }
                    let per = (k1 - k0).div_ceil(splits);
                    for a in (k0..k1).step_by(per) {
                        items.push(Item { k0: a, k1: k1.min(a + per), partial: Some(partials), ..whole });
                        partials += 1;
                    }
                }
            }
            continue;
        }
        let (k0, k1) = key_range(g, s, 0, s.q_len);
        let whole = Item { seq: si, h0: 0, h1: g.kv_heads, q0: 0, q1: s.q_len, k0, k1, partial: None };
        let splits = if streaming >= want { 1 } else { want.div_ceil(streaming).min((k1 - k0) / MIN_SPLIT_KEYS) };
        if splits <= 1 {
            // Too few keys to split: with fewer sequences than threads, split the KV heads instead
            // (each item reads its heads' part of every token row; nothing to merge).
            let parts = (threads / streaming).clamp(1, g.kv_heads);
            let per = g.kv_heads.div_ceil(parts);
            for h0 in (0..g.kv_heads).step_by(per) {
                items.push(Item { h0, h1: g.kv_heads.min(h0 + per), ..whole });
            }
            continue;
        }
        let per = (k1 - k0).div_ceil(splits);
        for a in (k0..k1).step_by(per) {
            items.push(Item { k0: a, k1: k1.min(a + per), partial: Some(partials), ..whole });
            partials += 1;
        }
    }
    (items, partials)
}

/// Runs `run(i, prev, then)` for every item `i < n` on `threads` pool threads, each claiming items
/// from a shared counter as it goes. After claiming an item for which `ahead(i)` holds, a thread
/// claims its next one at once and passes it as `then`, so the first can prefetch for the second
/// (without that, a decode step of 64 short sequences started every eighth key tile cold); the
/// second then gets the first as `prev`, and need not prefetch its start again. Other items, and
/// the last `threads` ones, are run with `then` None: claiming early binds an item to a busy
/// thread, and long items (prefill) balance better without it.
fn claim_ahead(
    n: usize,
    threads: usize,
    ahead: &(dyn Fn(usize) -> bool + Sync),
    run: &(dyn Fn(usize, Option<usize>, Option<usize>) + Sync),
) {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let claim = || Some(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)).filter(|&i| i < n);
    ascend_rt::host::pool().parallel_for(threads.min(n), &|_| {
        let (mut current, mut prev) = (claim(), None);
        while let Some(i) = current {
            // The last items go to whichever thread is free first.
            let plenty = next.load(std::sync::atomic::Ordering::Relaxed) + threads < n;
            let then = if ahead(i) && plenty { claim() } else { None };
            run(i, prev, then);
            prev = then.map(|_| i);
            current = then.or_else(claim);
        }
    });
}

/// Keys that any of the queries `q0..q1` of `s` may see.
fn key_range(g: &Geometry, s: &Seq, q0: usize, q1: usize) -> (usize, usize) {
    let pos = |i: usize| s.kv_len - s.q_len + i;
    let hi = if g.causal { pos(q1 - 1) + 1 } else { s.kv_len };
    let lo = match g.window {
        Some(w) => (pos(q0) + 1).saturating_sub(w),
        None => 0,
    };
    (lo, hi.max(lo))
}

/// Keys `[lo, hi)` that the query at position `p` sees.
#[inline(always)]
fn visible_keys(g: &Geometry, kv_len: usize, p: usize) -> (usize, usize) {
    let hi = if g.causal { p + 1 } else { kv_len };
    let lo = g.window.map_or(0, |w| (p + 1).saturating_sub(w));
    (lo, hi)
}

/// Runs one item; `then`, the item this thread runs next, is prefetched at the end, and `warm`
/// says the item run before did so for this one (streaming items only, see [`streaming`]). Returns its
/// partial result, or None when it wrote its rows into `own` itself (the AMX path does, when given
/// `own`).
///
/// # Safety
/// `own`, if given, is the output (`[tokens, Hq, D]`), whose rows of this item nobody else writes
/// meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_item<T: Element>(
    level: Level,
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    q: &[T],
    it: Item,
    (warm, then): (bool, Option<Item>),
    own: Option<*mut T>,
) -> Option<Partial> {
    // SAFETY (each arm): `attention`, the only caller, asserted the CPU has the level; `own` as
    // the contract says.
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 | Level::Avx512Bf16 | Level::Amx => item_avx512(level, g, seqs, kv, q, it, (warm, then), own),
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => item_avx2(level, g, seqs, kv, q, it, (warm, then), own),
            _ => item_body::<T, Generic>(level, g, seqs, kv, q, it, (warm, then), own),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn item_avx512<T: Element>(
    level: Level,
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    q: &[T],
    it: Item,
    (warm, then): (bool, Option<Item>),
    own: Option<*mut T>,
) -> Option<Partial> {
    // SAFETY: as `run_item`.
    unsafe { item_body::<T, crate::simd::Avx512>(level, g, seqs, kv, q, it, (warm, then), own) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn item_avx2<T: Element>(
    level: Level,
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    q: &[T],
    it: Item,
    (warm, then): (bool, Option<Item>),
    own: Option<*mut T>,
) -> Option<Partial> {
    // SAFETY: as `run_item`.
    unsafe { item_body::<T, crate::simd::Avx2>(level, g, seqs, kv, q, it, (warm, then), own) }
}

/// One item: rows are (query position, head of the group), position-major; queries pre-scaled.
///
/// # Safety
/// As [`run_item`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn item_body<T: Element, S: Simd>(
    level: Level,
    g: &Geometry,
    seqs: &[Seq],
    kv: &KvSource<'_, T>,
    q: &[T],
    it: Item,
    (warm, then): (bool, Option<Item>),
    own: Option<*mut T>,
) -> Option<Partial> {
    let (d, group) = (g.head_dim, g.group());
    let s = seqs[it.seq];
    let rows = it.rows(group);
    let mut reuse = REUSE.take();
    // Per row: the keys it sees (query position kv_len − q_len + i), and where its query starts.
    let (mut pos, mut starts) = std::mem::take(&mut reuse.rows);
    pos.clear();
    starts.clear();
    for r in 0..rows {
        let (i, head) = it.row(r, group);
        pos.push(visible_keys(g, s.kv_len, s.kv_len - s.q_len + i));
        starts.push(((s.q_start + i) * g.heads + head) * d);
    }
    // bf16 queries and keys with AVX-512 BF16: products straight from the raw bf16 values.
    let bits = (level >= Level::Avx512Bf16).then(|| bf16_bits(q)).flatten();
    let (kall, vall) = kv.kv();
    let part;
    if let (false, Level::Amx, true, Some(q), Some(k), Some(v)) =
        (it.streams(group), level, amx::usable(g), bits, bf16_bits(kall), bf16_bits(vall))
    {
        let mut amx_part = Partial { rows: vec![RowState::EMPTY; rows], acc: Vec::new() };
        // SAFETY: `attention` asserted the CPU has the level; `usable` holds; `own` as our
        // contract says.
        let written = unsafe { amx::tiled(g, seqs, kv, (k, v), it, (q, &starts), &pos, &mut amx_part, own) };
        part = (!written).then_some(amx_part);
    } else {
        let mut p = Partial::empty(rows, d, &mut reuse);
        let raw = bits.map(|bits| {
            let mut raw = std::mem::take(&mut reuse.raw);
            raw.clear();
            starts.iter().for_each(|&at| raw.extend_from_slice(&bits[at..at + d]));
            raw
        });
        if !it.streams(group) {
            let mut qs = sized(std::mem::take(&mut reuse.qs), rows * d);
            crate::simd::scaled_queries(q, &starts, d, g.scale, &mut qs[..rows * d]);
            tiled(level, S::FMA, g, kv, it, &qs[..rows * d], raw.as_deref(), &pos, &mut p, &mut reuse);
            reuse.qs = qs;
        } else {
            // At the AMX level (chosen for its tiles) the streaming products use `vdpbf16ps` only
            // where it outruns f32 FMAs on converted values (`bf16_products_pay`). Where it runs at
            // half their rate (Sapphire Rapids-class VMs that hide AMX), bf16 decode read 0.69 of
            // the memory's limit with it and 0.74 without (d 64; d 128: 0.78 and 0.82).
            let native = level == Level::Avx512Bf16 || crate::gemm::bf16_products_pay();
            let raw_q = raw.as_deref().filter(|_| native);
            streaming::<T, S>(g, kv, it, (warm, then), (q, &starts), raw_q, &pos, &mut p, &mut reuse.stream);
        }
        if let Some(raw) = raw {
            reuse.raw = raw;
        }
        part = Some(p);
    }
    reuse.rows = (pos, starts);
    REUSE.set(reuse);
    part
}

/// Scores by GEMM per key tile, then `acc += P·V` by GEMM. The scores come out transposed
/// (`Sᵀ = K-tile · Qᵀ`, keys × rows), so the online softmax runs across rows (vectorised, no
/// horizontal reductions) and `Pᵀ` is packed for the second GEMM by contiguous copies. With
/// `raw_q` (bf16 queries, AVX-512 BF16) both products run on bf16 values (see [`Operands`]).
/// `fma`: the exps may use fused multiply-adds (see [`super::softmax::exp_with`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tiled<T: Element>(
    level: Level,
    fma: bool,
    g: &Geometry,
    kv: &KvSource<'_, T>,
    it: Item,
    qs: &[f32],
    raw_q: Option<&[u16]>,
    pos: &[(usize, usize)],
    part: &mut Partial,
    reuse: &mut Reuse,
) {
    let d = g.head_dim;
    let rows = part.rows.len();
    let mut ops = Operands::new(g, kv, rows, qs, raw_q, reuse);
    let mut st = sized(std::mem::take(&mut reuse.st), TILED_KEYS * rows);
    let (mut max, mut shift, mut alpha, mut sums) =
        (vec![0f32; rows], vec![0f32; rows], vec![0f32; rows], vec![0f32; rows]);
    let (all_lo, all_hi) = (pos.iter().map(|p| p.0).max().unwrap_or(0), pos.iter().map(|p| p.1).min().unwrap_or(0));
    let ordered = pos.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1);
    let mut offs = Vec::with_capacity(TILED_KEYS);
    for j0 in (it.k0..it.k1).step_by(TILED_KEYS) {
        let j1 = it.k1.min(j0 + TILED_KEYS);
        let kt = j1 - j0;
        kv.offsets(it.seq, it.h0, (j0, j1), g, &mut offs);
        let st = &mut st[..kt * rows];
        ops.scores(level, g, kv, &offs, st);
        if j0 < all_lo || j1 > all_hi {
            mask_keys(pos, ordered, j0, st);
        }
        // Online softmax across rows: new maxima, rescale factors, probabilities, their sums.
        max.iter_mut().zip(&part.rows).for_each(|(m, r)| *m = r.max);
        for srow in st.chunks_exact(rows) {
            max.iter_mut().zip(srow).for_each(|(m, &x)| *m = m.max(x));
        }
        for (((sh, a), &m), r) in shift.iter_mut().zip(&mut alpha).zip(&max).zip(&part.rows) {
            // A row that has seen no key yet keeps a finite shift, so exp(−∞ − shift) = 0.
            *sh = if m == f32::NEG_INFINITY { 0.0 } else { m };
            *a = exp(r.max - *sh);
        }
        sums.fill(0.0);
        for srow in st.chunks_exact_mut(rows) {
            for ((x, &sh), s) in srow.iter_mut().zip(&shift).zip(&mut sums) {
                *x = exp_with(*x - sh, fma);
                *s += *x;
            }
        }
        for (r, ((state, &m), (&a, &s))) in part.rows.iter_mut().zip(&max).zip(alpha.iter().zip(&sums)).enumerate() {
            if state.max != m && state.sum != 0.0 {
                part.acc[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= a);
            }
            state.sum = state.sum * a + s;
            state.max = m;
        }
        ops.values(level, kt, st, &mut part.acc);
    }
    ops.give_back(reuse);
    reuse.st = st;
}

/// Buffers kept per thread between items. Every use writes what it reads, so their old contents
/// never matter. Fresh ones cost about 5 % of a prefill (the tiled path's, about 2 MB, zeroed); a
/// decode step of many short sequences allocated a dozen per sequence (64 × 16, bf16, hot cache,
/// one core: 479 µs with them, 457 without, 395 with the queries also converted straight into the
/// order its kernel reads).
#[derive(Default)]
struct Reuse {
    st: Vec<f32>,
    f32_rows: (Vec<f32>, Vec<f32>),
    bf16_rows: (Vec<u16>, Vec<u16>, Vec<u16>),
    f32_scratch: Scratch,
    bf16_scratch: Scratch<u16>,
    /// Every item's: scaled f32 queries, raw bf16 ones, per row the keys it sees and where its
    /// query starts, its [`Partial`].
    qs: Vec<f32>,
    raw: Vec<u16>,
    rows: (Vec<(usize, usize)>, Vec<usize>),
    partial: (Vec<RowState>, Vec<f32>),
    stream: StreamBuffers,
}

/// The buffers of [`streaming`].
#[derive(Default)]
struct StreamBuffers {
    scores: Vec<f32>,
    /// The queries, as the token-by-token kernel reads them, and in order where that differs.
    queries: crate::lines::Lines,
    natural: Vec<f32>,
    probs: Vec<u16>,
    alphas: Vec<f32>,
    /// This tile's and the next tile's key offsets, for all heads and for one.
    offs: [Vec<usize>; 4],
}

thread_local! {
    static REUSE: std::cell::Cell<Reuse> = std::cell::Cell::default();
}

/// `v` with at least `n` elements (new ones zero, old ones as they were).
fn sized<X: Copy + Default>(mut v: Vec<X>, n: usize) -> Vec<X> {
    if v.len() < n {
        v.resize(n, X::default());
    }
    v
}

/// The operands of the tiled products, per key tile: f32 copies of the key and value rows for the
/// f32 microkernels, or (bf16 inputs with AVX-512 BF16) their raw bits for the bf16 microkernel,
/// which takes twice the products per instruction. On that path the probabilities are rounded to
/// bf16 for `P·V` (their sums stay in f32), as the streaming path does, and the scale is applied to
/// the scores rather than to the queries (rounding scaled queries to bf16 would add an error).
struct Operands<'a> {
    d: usize,
    rows: usize,
    tile: TileBuffers<'a>,
}

/// The per-tile buffers of [`Operands`]: queries transposed (`d × rows`), key and value rows.
enum TileBuffers<'a> {
    /// With f32 inputs (`src`), key tiles whose rows are evenly spaced (a contiguous source) are
    /// read in place: `at` is the first row's offset and the spacing.
    F32 {
        qt: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        scratch: Scratch,
        src: Option<(&'a [f32], &'a [f32])>,
        at: Option<(usize, usize)>,
    },
    Bf16 {
        qt: Vec<u16>,
        k: Vec<u16>,
        v: Vec<u16>,
        p: Vec<u16>,
        src: (&'a [u16], &'a [u16]),
        scratch: Scratch<u16>,
    },
}

impl<'a> Operands<'a> {
    /// Buffers for tiles of up to `TILED_KEYS` keys, taken from `reuse`.
    fn new<T: Element>(
        g: &Geometry,
        kv: &KvSource<'a, T>,
        rows: usize,
        qs: &[f32],
        raw_q: Option<&[u16]>,
        reuse: &mut Reuse,
    ) -> Self {
        let d = g.head_dim;
        let (kall, vall) = kv.kv();
        let n = TILED_KEYS * d;
        let tile = match raw_q.zip(bf16_bits(kall)).zip(bf16_bits(vall)) {
            Some(((q, k), v)) => {
                let (kb, vb, pb) = std::mem::take(&mut reuse.bf16_rows);
                TileBuffers::Bf16 {
                    qt: transpose(q, d, rows),
                    k: sized(kb, n),
                    v: sized(vb, n),
                    p: sized(pb, TILED_KEYS * rows),
                    src: (k, v),
                    scratch: std::mem::take(&mut reuse.bf16_scratch),
                }
            }
            None => {
                let (kb, vb) = std::mem::take(&mut reuse.f32_rows);
                TileBuffers::F32 {
                    qt: transpose(qs, d, rows),
                    k: sized(kb, n),
                    v: sized(vb, n),
                    scratch: std::mem::take(&mut reuse.f32_scratch),
                    src: T::as_f32_slice(kall).zip(T::as_f32_slice(vall)),
                    at: None,
                }
            }
        };
        Operands { d, rows, tile }
    }

    /// Returns the buffers to `reuse`.
    fn give_back(self, reuse: &mut Reuse) {
        match self.tile {
            TileBuffers::F32 { k, v, scratch, .. } => (reuse.f32_rows, reuse.f32_scratch) = ((k, v), scratch),
            TileBuffers::Bf16 { k, v, p, scratch, .. } => (reuse.bf16_rows, reuse.bf16_scratch) = ((k, v, p), scratch),
        }
    }

    /// Gathers the key and value rows at `offs` (unless read in place) and writes the scores `Sᵀ`
    /// (keys × rows), scaled. Inlined (as is [`Operands::values`]) so that the packing loops are
    /// compiled for the level of the item's code, not for the baseline.
    #[inline(always)]
    fn scores<T: Element>(&mut self, level: Level, g: &Geometry, kv: &KvSource<'_, T>, offs: &[usize], st: &mut [f32]) {
        let (d, rows, kt) = (self.d, self.rows, offs.len());
        match &mut self.tile {
            TileBuffers::F32 { qt, k, v, scratch, src, at } => {
                let stride = match offs {
                    [a, b, ..] => b.checked_sub(*a).filter(|&s| s >= d),
                    _ => Some(d),
                };
                let even = stride.filter(|&s| offs.windows(2).all(|w| w[1].checked_sub(w[0]) == Some(s)));
                *at = src.zip(even).map(|(_, s)| (offs[0], s));
                match (*at, *src) {
                    (Some((first, s)), Some((kf, _))) => gemm_rows(
                        level,
                        (kt, rows, d),
                        (&kf[first..], s, false),
                        (qt, rows),
                        (st, rows),
                        false,
                        scratch,
                    ),
                    _ => {
                        gather(offs, d, kv.kv(), |i, kr, vr| {
                            T::slice_to_f32(kr, &mut k[i * d..(i + 1) * d]);
                            T::slice_to_f32(vr, &mut v[i * d..(i + 1) * d]);
                        });
                        gemm_rows(level, (kt, rows, d), (k, d, false), (qt, rows), (st, rows), false, scratch);
                    }
                }
            }
            TileBuffers::Bf16 { qt, k, v, src, scratch, .. } => {
                gather(offs, d, *src, |i, kr, vr| {
                    k[i * d..(i + 1) * d].copy_from_slice(kr);
                    v[i * d..(i + 1) * d].copy_from_slice(vr);
                });
                gemm_rows_bf16(level, (kt, rows, d), (k, d, false), (qt, rows), (&mut *st, rows), false, scratch);
                st.iter_mut().for_each(|x| *x *= g.scale);
            }
        }
    }

    /// `acc += P·V` for the probabilities `Pᵀ` in `st` (`kt` keys) and the value rows gathered by
    /// [`Operands::scores`].
    #[inline(always)]
    fn values(&mut self, level: Level, kt: usize, st: &[f32], acc: &mut [f32]) {
        let (d, rows) = (self.d, self.rows);
        match &mut self.tile {
            TileBuffers::F32 { v, scratch, src, at, .. } => {
                let (v, ldv) = match (*at, *src) {
                    (Some((first, s)), Some((_, vf))) => (&vf[first..], s),
                    _ => (&v[..], d),
                };
                gemm_rows(level, (rows, d, kt), (st, rows, true), (v, ldv), (acc, d), true, scratch);
            }
            TileBuffers::Bf16 { v, p, scratch, .. } => {
                let p = &mut p[..st.len()];
                crate::simd::round_to_bf16(st, p);
                gemm_rows_bf16(level, (rows, d, kt), (p, rows, true), (v, d), (acc, d), true, scratch);
            }
        }
    }
}

/// `m` (`rows × d`, row-major) transposed to `d × rows`, 16 rows at a time: each output row gets
/// 16 consecutive values while the 16 input rows stay in L1 (element by element, every write
/// touched another cache line: 7 % of an f32 prefill).
fn transpose<X: Copy + Default>(m: &[X], d: usize, rows: usize) -> Vec<X> {
    const BLOCK: usize = 16;
    let mut t = vec![X::default(); d * rows];
    for r0 in (0..rows).step_by(BLOCK) {
        let r1 = rows.min(r0 + BLOCK);
        for p in 0..d {
            for (r, x) in (r0..r1).zip(&mut t[p * rows + r0..p * rows + r1]) {
                *x = m[r * d + p];
            }
        }
    }
    t
}

/// The raw bits of a bf16 slice (None for other element types).
fn bf16_bits<T: Element>(v: &[T]) -> Option<&[u16]> {
    (T::ACL_DTYPE == <ascend_rt::bf16 as ascend_rt::DeviceRepr>::ACL_DTYPE).then(|| {
        // SAFETY: T is bf16 (same dtype tag; the Element types are sealed), a 16-bit plain value.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u16, v.len()) }
    })
}

/// Keys ahead of the one being read whose rows are prefetched: rows of one head are strided (and
/// paged), which the hardware prefetchers do not follow.
const PREFETCH_AHEAD: usize = 8;

/// Hands `copy` the key and value rows (`d` values) at `offs` of `kall` and `vall`, in order, with
/// their index, prefetching the rows `PREFETCH_AHEAD` keys ahead.
#[inline(always)]
fn gather<X>(offs: &[usize], d: usize, (kall, vall): (&[X], &[X]), mut copy: impl FnMut(usize, &[X], &[X])) {
    for (i, &o) in offs.iter().enumerate() {
        if let Some(&ahead) = offs.get(i + PREFETCH_AHEAD) {
            prefetch(&kall[ahead..ahead + d]);
            prefetch(&vall[ahead..ahead + d]);
        }
        copy(i, &kall[o..o + d], &vall[o..o + d]);
    }
}

/// Asks the CPU to bring `s` into L2 (a hint; nothing on other architectures).
#[inline(always)]
fn prefetch_l2<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T1 }, T>(s);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

/// Asks the CPU to bring `s` into L1 (a hint; nothing on other architectures).
#[inline(always)]
fn prefetch<T>(s: &[T]) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T0 }, T>(s);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = s;
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hint<const HINT: i32, T>(s: &[T]) {
    crate::simd::prefetch_row_to::<HINT, T>(s.as_ptr(), s.len());
}

/// Sets the scores `Sᵀ` (`st`: keys from `j0` × rows) of keys outside their row's visible range
/// (`pos`) to −∞. Where the ranges are `ordered` (both ends never decreasing from row to row, as
/// a tiled item's rows are: positions in order), a key's hidden rows are a prefix (rows that end
/// before it) and a suffix (rows whose window starts after it): two fills per key instead of two
/// tests per score (those took 18 % of `item_avx2`'s samples in a one-core AVX2 prefill profile).
fn mask_keys(pos: &[(usize, usize)], ordered: bool, j0: usize, st: &mut [f32]) {
    for (j, srow) in (j0..).zip(st.chunks_exact_mut(pos.len())) {
        if ordered {
            let a = pos.partition_point(|p| p.1 <= j);
            let b = pos.partition_point(|p| p.0 <= j).max(a);
            srow[..a].fill(f32::NEG_INFINITY);
            srow[b..].fill(f32::NEG_INFINITY);
        } else {
            for (x, &(lo, hi)) in srow.iter_mut().zip(pos) {
                if j < lo || j >= hi {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// Sets the scores of keys `j0..` outside the visible range `[lo, hi)` to −∞.
#[inline(always)]
fn mask((lo, hi): (usize, usize), j0: usize, row: &mut [f32]) {
    let n = row.len();
    let (a, b) = (lo.saturating_sub(j0).min(n), hi.saturating_sub(j0).min(n));
    row[..a].fill(f32::NEG_INFINITY);
    row[b.max(a)..].fill(f32::NEG_INFINITY);
}

/// Few rows (decode): scores of the item's rows against a tile of keys, the online-softmax update,
/// then the value sums, straight from the cache (converted in registers).
///
/// At the x86 levels (head sizes 64, 80, 96, 128 and 256) the cache is read in order: the
/// scores of every head token by token (a token's heads are adjacent), prefetching the tile's
/// values meanwhile; then the softmax step of every head at once (one head at a time, its chains
/// of latencies showed: bf16, hot cache, one core, 1 × 2048 took 524 µs, now 501); then per head
/// the value sums, which prefetch the next tile's keys (after the last tile, those of `then`, the
/// item this thread runs next) one row per value row summed, so memory is busy while the products
/// run (issued in a burst after the sums
/// instead, they stalled f32 decode: 0.82 → 0.93 of the read limit at 16 × 512; and multi-head
/// decode, one row per head, which had neither, ran at 0.46: now 1.05, medians of 5). Given raw
/// bf16 queries (`raw_q`: where `vdpbf16ps` pays, see `item_body`) it works on the raw bf16
/// values throughout. Otherwise each head takes its scores and value sums in turn and the next
/// tile is prefetched head by head. Prefetches go to L2: into L1 they would evict the rows in use.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn streaming<T: Element, S: Simd>(
    g: &Geometry,
    kv: &KvSource<'_, T>,
    it: Item,
    (warm, then): (bool, Option<Item>),
    (q, starts): (&[T], &[usize]),
    raw_q: Option<&[u16]>,
    pos: &[(usize, usize)],
    part: &mut Partial,
    bufs: &mut StreamBuffers,
) {
    let (kall, vall) = kv.kv();
    let raw = raw_q.zip(bf16_bits(kall)).zip(bf16_bits(vall)).map(|((q, k), v)| (q, k, v));
    let d = g.head_dim;
    let rows = part.rows.len();
    let heads = it.h1 - it.h0;
    let per_head = rows / heads;
    let mut scores = sized(std::mem::take(&mut bufs.scores), rows * STREAM_KEYS);
    // Made below when first needed (rarely: see `qs`).
    bufs.natural.clear();
    // The scaled f32 queries (not needed on the raw bf16 path): `bufs.queries` as the
    // token-by-token kernel reads them, made when first needed, with whether that is out of order.
    let mut ordered = None;
    // The probabilities in bf16 (the value kernel's input on the bf16 path), the softmax factors.
    let mut probs = sized(std::mem::take(&mut bufs.probs), rows * STREAM_KEYS);
    let mut alphas = sized(std::mem::take(&mut bufs.alphas), rows);
    let [mut offs, mut next, mut head_offs, mut head_next] = std::mem::take(&mut bufs.offs);
    kv.offsets(it.seq, it.h0, (it.k0, it.k1.min(it.k0 + STREAM_KEYS)), g, &mut next);
    // Nothing fetched the first tile's keys ahead unless the item before it on this thread did
    // (`warm`): start them now (the item's heads of a token are adjacent).
    if !warm {
        for &o in &next {
            prefetch_l2(&kall[o..o + heads * d]);
        }
    }
    for j0 in (it.k0..it.k1).step_by(STREAM_KEYS) {
        let j1 = it.k1.min(j0 + STREAM_KEYS);
        let kt = j1 - j0;
        std::mem::swap(&mut offs, &mut next);
        // The tile after this one: ours, or the first of the item this thread runs next (same heads).
        let (seq, keys) = match then.filter(|n| (n.h0, n.h1) == (it.h0, it.h1)) {
            Some(n) if j1 >= it.k1 => (n.seq, (n.k0, n.k1.min(n.k0 + STREAM_KEYS))),
            _ => (it.seq, (j1, it.k1.min(j1 + STREAM_KEYS))),
        };
        kv.offsets(seq, it.h0, keys, g, &mut next);
        let token_major = raw.is_some_and(|(q, k, v)| {
            crate::simd::token_dots_bf16(q, heads, per_head, k, v, &offs, g.scale, &mut scores, STREAM_KEYS)
        }) || {
            ordered.get_or_insert_with(|| S::token_queries::<T>(q, starts, d, g.scale, &mut bufs.queries));
            S::token_dots(&bufs.queries, heads, per_head, kall, vall, &offs, &mut scores, STREAM_KEYS)
        };
        // In order, for the scores head by head (where the kernel above did not run).
        let qs = match (token_major, ordered) {
            (true, _) => &[][..],
            (false, Some(false)) => &bufs.queries[..],
            (false, _) => {
                if bufs.natural.len() != rows * d {
                    bufs.natural.resize(rows * d, 0.0);
                    crate::simd::scaled_queries(q, starts, d, g.scale, &mut bufs.natural);
                }
                &bufs.natural[..]
            }
        };
        // bf16 values: probabilities also rounded to bf16 for the value kernel, in one pass.
        let bf16_values = raw.is_some() && crate::simd::bf16_pairs_fit(d, kt);
        if token_major {
            // Every head's step at once: their chains of latencies overlap.
            softmax_step::<S>(0..rows, (j0, kt), pos, (&mut scores, &mut probs, &mut alphas), bf16_values, part);
        }
        for hh in 0..heads {
            let r0 = hh * per_head;
            head_offs.clear();
            head_offs.extend(offs.iter().map(|o| o + hh * d));
            head_next.clear();
            head_next.extend(next.iter().map(|o| o + hh * d));
            if !token_major {
                head_scores::<T, S>(qs, kall, &head_offs, d, r0..r0 + per_head, &mut scores);
                softmax_step::<S>(
                    r0..r0 + per_head,
                    (j0, kt),
                    pos,
                    (&mut scores, &mut probs, &mut alphas),
                    bf16_values,
                    part,
                );
            }
            // Value rows, four query rows at a time (each value row is loaded once per four).
            let mut prefetched = false;
            let mut i = 0;
            while i < per_head {
                let n = match per_head - i {
                    4.. => 4,
                    2 | 3 => 2,
                    _ => 1,
                };
                let r = r0 + i;
                let p = |k: usize| &scores[(r + k) * STREAM_KEYS..(r + k) * STREAM_KEYS + kt];
                let mut acc = part.acc[r * d..(r + n) * d].chunks_exact_mut(d);
                let mut row = || acc.next().expect("n rows");
                // The next tile's keys, until one of the value sums has prefetched them.
                let ahead = if prefetched { &[][..] } else { &head_next[..] };
                match (n, raw) {
                    (4, Some((_, k, v))) if bf16_values => {
                        let acc = [row(), row(), row(), row()];
                        let pb = |k: usize| &probs[(r + k) * STREAM_KEYS..(r + k + 1) * STREAM_KEYS];
                        crate::simd::weighted_sum4_bf16([pb(0), pb(1), pb(2), pb(3)], v, &head_offs, acc, (k, ahead));
                        prefetched = true;
                    }
                    (4, _) => {
                        let acc = [row(), row(), row(), row()];
                        prefetched |= S::weighted_sums([p(0), p(1), p(2), p(3)], vall, &head_offs, acc, (kall, ahead));
                    }
                    (2, _) => {
                        S::weighted_sums([p(0), p(1)], vall, &head_offs, [row(), row()], (kall, &[]));
                    }
                    _ => prefetched |= S::weighted_sums([p(0)], vall, &head_offs, [row()], (kall, ahead)),
                }
                i += n;
            }
            for &o in &head_next {
                if !prefetched {
                    prefetch_l2(&kall[o..o + d]);
                }
                if !token_major {
                    prefetch_l2(&vall[o..o + d]);
                }
            }
        }
    }
    (bufs.scores, bufs.probs, bufs.alphas) = (scores, probs, alphas);
    bufs.offs = [offs, next, head_offs, head_next];
}

/// The step of rows `rows` of the streaming path over keys `j0 .. j0 + kt`: masks their scores
/// (`STREAM_KEYS` per row), turns them into probabilities (also rounded into `probs` when
/// `bf16_values`), and updates their states and rescales their accumulators in `part`.
#[inline(always)]
fn softmax_step<S: Simd>(
    rows: std::ops::Range<usize>,
    (j0, kt): (usize, usize),
    pos: &[(usize, usize)],
    (scores, probs, alphas): (&mut [f32], &mut [u16], &mut [f32]),
    bf16_values: bool,
    part: &mut Partial,
) {
    let d = part.acc.len() / part.rows.len();
    for r in rows.clone() {
        mask(pos[r], j0, &mut scores[r * STREAM_KEYS..r * STREAM_KEYS + kt]);
    }
    let alphas = &mut alphas[rows.clone()];
    let states = &mut part.rows[rows.clone()];
    let sc = &mut scores[rows.start * STREAM_KEYS..];
    match bf16_values {
        true => assert!(
            RowState::update_bf16(states, sc, (STREAM_KEYS, kt), &mut probs[rows.start * STREAM_KEYS..], alphas),
            "AVX-512 BF16, at most 64 keys"
        ),
        false => S::softmax_rows(states, sc, (STREAM_KEYS, kt), alphas),
    }
    for (r, &alpha) in rows.zip(alphas.iter()) {
        if alpha != 1.0 {
            part.acc[r * d..(r + 1) * d].iter_mut().for_each(|x| *x *= alpha);
        }
    }
}

/// Scores of rows `rows` (f32 queries in `qs`) against one head's keys at `offs`, two rows at a time
/// (each key row loaded once per pair), into `scores` (`STREAM_KEYS` per row).
#[inline(always)]
fn head_scores<T: Element, S: Simd>(
    qs: &[f32],
    kall: &[T],
    offs: &[usize],
    d: usize,
    rows: std::ops::Range<usize>,
    scores: &mut [f32],
) {
    let kt = offs.len();
    let mut r = rows.start;
    while r < rows.end {
        let (sc0, rest) = scores[r * STREAM_KEYS..].split_at_mut(STREAM_KEYS);
        let q0 = &qs[r * d..(r + 1) * d];
        if r + 1 == rows.end {
            S::dots([q0], kall, offs, [&mut sc0[..kt]]);
            r += 1;
        } else {
            S::dots([q0, &qs[(r + 1) * d..(r + 2) * d]], kall, offs, [&mut sc0[..kt], &mut rest[..kt]]);
            r += 2;
        }
    }
}

/// Writes an item's normalised rows into `out`: per row its softmax state and its unnormalised
/// output (the first `head_dim` of each `stride` values of `acc`). A row that saw no key (possible
/// only with a window of size 0, which validation refuses) would be written as zeros.
///
/// # Safety
/// `out` holds `[tokens, Hq, D]` elements and the item's rows are written by nobody else meanwhile.
unsafe fn write_rows<T: Element>(
    g: &Geometry,
    seqs: &[Seq],
    it: Item,
    (states, acc, stride): (&[RowState], &[f32], usize),
    out: *mut T,
) {
    let (d, group) = (g.head_dim, g.group());
    let s = seqs[it.seq];
    for (r, (st, acc)) in states.iter().zip(acc.chunks(stride)).enumerate() {
        let (i, head) = it.row(r, group);
        let inv = if st.sum == 0.0 { 0.0 } else { 1.0 / st.sum };
        let o = ((s.q_start + i) * g.heads + head) * d;
        // SAFETY: the row lies inside `out` and is ours (contract).
        let dst = unsafe { std::slice::from_raw_parts_mut(out.add(o), d) };
        T::scaled_from_f32(&acc[..d], inv, dst);
    }
}

/// Merges the partial results of split items (consecutive in `items`, same rows) and writes them.
fn merge_splits<T: Element>(
    g: &Geometry,
    seqs: &[Seq],
    items: &[Item],
    slots: Vec<std::sync::Mutex<Option<Partial>>>,
    out: *mut T,
) {
    let mut parts: Vec<Partial> =
        slots.into_iter().map(|m| m.into_inner().unwrap().expect("every split ran")).collect();
    let split: Vec<Item> = items.iter().copied().filter(|it| it.partial.is_some()).collect();
    let mut i = 0;
    while i < split.len() {
        let first = split[i];
        let mut j = i + 1;
        while j < split.len() && (split[j].seq, split[j].h0, split[j].q0) == (first.seq, first.h0, first.q0) {
            j += 1;
        }
        let (head, tail) = parts.split_at_mut(i + 1);
        let base = &mut head[i];
        for other in &tail[..j - i - 1] {
            for (r, (st, o)) in base.rows.iter_mut().zip(&other.rows).enumerate() {
                let (a, b) = st.merge(*o);
                let d = g.head_dim;
                for (x, y) in base.acc[r * d..(r + 1) * d].iter_mut().zip(&other.acc[r * d..(r + 1) * d]) {
                    *x = *x * a + *y * b;
                }
            }
        }
        // SAFETY: merging is sequential, each group of rows written once; `out` as in `attention`.
        unsafe { write_rows(g, seqs, first, (&base.rows, &base.acc, g.head_dim), out) };
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_geometry(kv_heads: usize) -> Geometry {
        Geometry { heads: 4 * kv_heads, kv_heads, head_dim: 64, scale: 1.0, causal: true, window: None }
    }

    fn decode(kv_len: usize) -> Seq {
        Seq { q_start: 0, q_len: 1, kv_len }
    }

    /// (KV heads, keys, partial) of an item.
    type Shape = ((usize, usize), (usize, usize), Option<usize>);

    fn shape(items: &[Item]) -> Vec<Shape> {
        items.iter().map(|it| ((it.h0, it.h1), (it.k0, it.k1), it.partial)).collect()
    }

    #[test]
    fn short_sequences_split_heads_long_ones_split_keys() {
        let g = decode_geometry(8);
        // One short sequence on two threads: two halves of the heads, nothing to merge.
        let (items, partials) = plan(&g, &[decode(128)], 2);
        assert_eq!(shape(&items), [((0, 4), (0, 128), None), ((4, 8), (0, 128), None)]);
        assert_eq!(partials, 0);
        // Uneven: three heads over two threads.
        let (items, _) = plan(&decode_geometry(3), &[decode(100)], 2);
        assert_eq!(shape(&items), [((0, 2), (0, 100), None), ((2, 3), (0, 100), None)]);
        // As many sequences as threads: whole items.
        let (items, _) = plan(&g, &[decode(128), decode(64)], 2);
        assert_eq!(shape(&items), [((0, 8), (0, 128), None), ((0, 8), (0, 64), None)]);
        // One thread: never split.
        assert_eq!(plan(&g, &[decode(128)], 1).0.len(), 1);
        // A long sequence: key splits (eight for two threads), merged afterwards.
        let (items, partials) = plan(&g, &[decode(4096)], 2);
        assert_eq!(partials, 8);
        assert!(items.iter().all(|it| (it.h0, it.h1) == (0, 8)));
        assert_eq!(items.first().map(|it| it.k0), Some(0));
        assert_eq!(items.last().map(|it| it.k1), Some(4096));
    }

    #[test]
    fn long_tiled_decodes_and_chunks_split_keys_too() {
        // Sixteen query heads per KV head (MQA): a decode row block is tiled, and a long one must
        // still use every thread.
        let mqa = Geometry { heads: 16, kv_heads: 1, ..decode_geometry(1) };
        let (items, partials) = plan(&mqa, &[decode(32768)], 8);
        assert_eq!(partials, 32);
        assert!(items.iter().all(|it| !it.streams(16) && it.partial.is_some()));
        assert!(items.windows(2).all(|w| w[0].k1 == w[1].k0));
        assert_eq!((items[0].k0, items[31].k1), (0, 32768));
        // A short chunk over a long prefix: its row blocks are split the same way (two items, eight
        // threads: 32 / 2 = 16 splits each).
        let chunk = Seq { q_start: 0, q_len: 8, kv_len: 4096 };
        let (items, partials) = plan(&decode_geometry(2), &[chunk], 8);
        assert_eq!(partials, 32);
        assert_eq!(items.iter().filter(|it| it.h0 == 1).count(), 16);
        // As many items as threads already: nothing split (their merge would run on one thread).
        assert_eq!(plan(&decode_geometry(2), &[chunk], 2).1, 0);
        let prefill = Seq { q_start: 0, q_len: 2048, kv_len: 2048 };
        assert_eq!(plan(&decode_geometry(8), &[prefill], 64).1, 0);
    }

    #[test]
    fn claimed_items_run_once_each_and_then_is_what_runs_next_and_prev_what_ran_before() {
        let threads = ascend_rt::host::pool().threads().max(2);
        for n in [0, 1, 2, 3, 17, 200] {
            // Items divisible by 3 run without a successor.
            let ahead = |i: usize| !i.is_multiple_of(3);
            let runs = std::sync::Mutex::new(Vec::new());
            claim_ahead(n, threads, &ahead, &|i, prev, then| {
                std::thread::sleep(std::time::Duration::from_micros(50));
                runs.lock().unwrap().push((std::thread::current().id(), i, prev, then));
            });
            let runs = runs.into_inner().unwrap();
            if n == 200 {
                assert!(runs.iter().any(|r| r.3.is_some()), "no item ran with a successor");
            }
            let mut seen: Vec<usize> = runs.iter().map(|r| r.1).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{n} items");
            for (k, &(thread, i, prev, then)) in runs.iter().enumerate() {
                let after = runs[k + 1..].iter().find(|r| r.0 == thread).map(|r| r.1);
                if let Some(j) = then {
                    assert!(ahead(i) && after == Some(j), "{i} then {j}, ran {after:?}");
                }
                // `prev` is exactly the item this thread ran before, when that one named i as `then`.
                let before = runs[..k].iter().rev().find(|r| r.0 == thread);
                let expected = before.filter(|r| r.3 == Some(i)).map(|r| r.1);
                assert_eq!(prev, expected, "item {i} after {before:?}");
            }
        }
    }
}
