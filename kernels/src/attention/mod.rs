//! Attention on device buffers and a stream: flash prefill over a variable-length batch, paged
//! attention over vLLM's KV cache (decode, and chunked prefill that attends to a cached prefix), and
//! `reshape_and_cache` to write new keys and values into that cache.
//!
//! Layouts are vLLM's: queries, keys, values and outputs `[tokens, heads, head_dim]`; caches
//! `[num_blocks, block_size, kv_heads, head_dim]`; block tables `[batch, max_blocks]` i32.
//! Sequence lengths, block tables and slot mappings are host slices (the scheduler's own data, as
//! the NPU operators take them): every index is checked before anything is enqueued, and a bad call
//! returns [`Error::InvalidArgument`] with nothing enqueued. Softmax and accumulation are f32 for
//! every input type; with bf16 inputs on a CPU with AVX-512 BF16, prefill and decode compute scores
//! from the raw bf16 values and round the probabilities to bf16 before the value product (as
//! reduced-precision attention, torch's included, does), which bounds its extra error by
//! 2⁻⁸·Σⱼ pⱼ·|vⱼ|. On a simulator stream the host kernels run ([`host`]); on an NPU stream the
//! same calls run aclnnFusedInferAttentionScoreV2 and aclnnScatterPaKvCache ([`npu`]).

mod host;
pub mod npu;
pub(crate) mod softmax;

use crate::args::expect_len;
use crate::cpu::{self, Level};
use crate::matmul::Element;
use ascend_rt::{DeviceBuffer, Error, Result, Stream};
use host::{Geometry, KvSource, Seq};
use std::sync::Arc;

/// Query heads, key/value heads (grouped-query attention: `heads % kv_heads == 0`) and head size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Elements per head.
    pub head_dim: usize,
}

impl Heads {
    /// `heads` query heads sharing `kv_heads` key/value heads of `head_dim` elements.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize) -> Heads {
        Heads { heads, kv_heads, head_dim }
    }

    /// Fails with `InvalidArgument` for a zero count or size, or query heads that are not a multiple
    /// of the key/value heads (what every attention call refuses first).
    pub fn check(&self) -> Result<()> {
        if self.heads == 0 || self.kv_heads == 0 || self.head_dim == 0 {
            return Err(Error::InvalidArgument(format!("empty heads {self:?}")));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::InvalidArgument(format!(
                "{} query heads are not a multiple of {} key/value heads",
                self.heads, self.kv_heads
            )));
        }
        Ok(())
    }
}

/// Masking and scaling shared by the attention calls.
#[derive(Clone, Copy, Debug)]
struct Options {
    scale: Option<f32>,
    window: Option<usize>,
    level: Option<Level>,
}

impl Options {
    fn geometry(&self, h: Heads, causal: bool) -> Result<(Geometry, Level)> {
        h.check()?;
        let scale = self.scale.unwrap_or(1.0 / (h.head_dim as f32).sqrt());
        if !scale.is_finite() {
            return Err(Error::InvalidArgument(format!("scale {scale} is not finite")));
        }
        if self.window == Some(0) {
            return Err(Error::InvalidArgument("a sliding window must hold at least one key".into()));
        }
        let level = self.level.unwrap_or_else(cpu::active);
        if level > cpu::detected() {
            return Err(Error::Unsupported(format!("this CPU cannot run the {} level", level.name())));
        }
        let g =
            Geometry { heads: h.heads, kv_heads: h.kv_heads, head_dim: h.head_dim, scale, causal, window: self.window };
        Ok((g, level))
    }
}

/// Prefill attention over a variable-length batch: `Prefill::new(heads).run(stream, q, k, v,
/// cu_seqlens, out)`. Causal by default, scale 1/√head_dim by default.
#[derive(Clone, Copy, Debug)]
pub struct Prefill {
    heads: Heads,
    causal: bool,
    opts: Options,
}

impl Prefill {
    /// Causal prefill with the default scale, no window, at the active SIMD level.
    pub fn new(heads: Heads) -> Prefill {
        Prefill { heads, causal: true, opts: Options { scale: None, window: None, level: None } }
    }

    /// Multiplies scores by `scale` (default 1/√head_dim).
    pub fn scale(mut self, scale: f32) -> Prefill {
        self.opts.scale = Some(scale);
        self
    }

    /// Whether query `i` sees only keys `≤ i` (default true).
    pub fn causal(mut self, causal: bool) -> Prefill {
        self.causal = causal;
        self
    }

    /// Sliding window: query at position p sees keys in `(p − window, p]`. It bounds only how far
    /// back a query looks: with `causal(false)` the query sees keys in `(p − window, end)`.
    pub fn window(mut self, window: usize) -> Prefill {
        self.opts.window = Some(window);
        self
    }

    /// Forces a SIMD level (tests and benchmarks; one the CPU lacks is refused at `run`).
    pub fn level(mut self, level: Level) -> Prefill {
        self.opts.level = Some(level);
        self
    }

    /// Enqueues attention of `q` (`[T, heads, D]`) over `k`, `v` (`[T, kv_heads, D]`) into `out`
    /// (`[T, heads, D]`). `cu_seqlens` (`[batch + 1]`, from 0 to T, non-decreasing) delimits the
    /// sequences. Errors, with nothing enqueued, for lengths or buffers that do not match.
    pub fn run<T: Element>(
        &self,
        stream: &Arc<Stream>,
        q: &DeviceBuffer<T>,
        k: &DeviceBuffer<T>,
        v: &DeviceBuffer<T>,
        cu_seqlens: &[i32],
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let (g, level) = self.opts.geometry(self.heads, self.causal)?;
        let lens = lengths("cu_seqlens", cu_seqlens)?;
        let tokens = lens.iter().sum::<usize>();
        let h = self.heads;
        expect_len("q", q.len(), &[tokens, h.heads, h.head_dim])?;
        expect_len("out", out.len(), &[tokens, h.heads, h.head_dim])?;
        expect_len("k", k.len(), &[tokens, h.kv_heads, h.head_dim])?;
        expect_len("v", v.len(), &[tokens, h.kv_heads, h.head_dim])?;
        let mut seqs = Vec::with_capacity(lens.len());
        let mut starts = Vec::with_capacity(lens.len());
        for &len in &lens {
            let start = starts.last().map_or(0, |&s: &usize| s) + seqs.last().map_or(0, |s: &Seq| s.q_len);
            starts.push(start);
            seqs.push(Seq { q_start: start, q_len: len, kv_len: len });
        }
        if !stream.context().runtime().host_addressable() {
            return npu::prefill(stream, &g, q, k, v, cu_seqlens, out);
        }
        let mut l = stream.host_launch()?;
        let (qh, kh, vh, mut oh) = (l.read(q)?, l.read(k)?, l.read(v)?, l.write(out)?);
        l.launch(move || {
            // SAFETY: inside the kernel the views are live and ordered after their writes.
            let (q, k, v, o) = unsafe { (qh.as_slice(), kh.as_slice(), vh.as_slice(), oh.as_mut_slice()) };
            host::attention(level, &g, &seqs, &KvSource::Contiguous { k, v, starts: &starts }, q, o);
        })
    }
}

/// A block table: row `b` (`max_blocks` entries) lists the cache blocks of sequence `b` in order.
/// Entries past a sequence's length are not read (vLLM pads them).
#[derive(Clone, Copy, Debug)]
pub struct BlockTables<'a> {
    /// `[batch, max_blocks]`, row-major.
    pub table: &'a [i32],
    /// Entries per row.
    pub max_blocks: usize,
}

/// Attention over vLLM's paged KV cache: decode (one query per sequence) and chunked prefill (a chunk
/// of queries per sequence attending causally to its cached prefix and to itself; the chunk's keys
/// and values must already be in the cache, written by [`reshape_and_cache`]).
#[derive(Clone, Copy, Debug)]
pub struct PagedAttention {
    heads: Heads,
    block_size: usize,
    opts: Options,
}

impl PagedAttention {
    /// Over a cache of `block_size` tokens per block, default scale, no window, active SIMD level.
    pub fn new(heads: Heads, block_size: usize) -> PagedAttention {
        PagedAttention { heads, block_size, opts: Options { scale: None, window: None, level: None } }
    }

    /// Multiplies scores by `scale` (default 1/√head_dim).
    pub fn scale(mut self, scale: f32) -> PagedAttention {
        self.opts.scale = Some(scale);
        self
    }

    /// Sliding window: the query at position p sees keys in `(p − window, p]`.
    pub fn window(mut self, window: usize) -> PagedAttention {
        self.opts.window = Some(window);
        self
    }

    /// Forces a SIMD level (tests and benchmarks; one the CPU lacks is refused at run).
    pub fn level(mut self, level: Level) -> PagedAttention {
        self.opts.level = Some(level);
        self
    }

    /// Decode: `q` and `out` are `[batch, heads, D]`, one new token per sequence, which sees the
    /// `context_lens[b]` tokens of its sequence (itself included, already in the cache). Errors as
    /// [`PagedAttention::chunked_prefill`].
    #[allow(clippy::too_many_arguments)]
    pub fn decode<T: Element>(
        &self,
        stream: &Arc<Stream>,
        q: &DeviceBuffer<T>,
        key_cache: &DeviceBuffer<T>,
        value_cache: &DeviceBuffer<T>,
        block_tables: BlockTables<'_>,
        context_lens: &[i32],
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let cu: Vec<i32> = (0..=context_lens.len() as i32).collect();
        self.chunked_prefill(stream, q, key_cache, value_cache, block_tables, &cu, context_lens, out)
    }

    /// Chunked prefill: sequence `b` has queries `cu_query_lens[b]..cu_query_lens[b + 1]` of `q`
    /// (`[T, heads, D]`), the last ones of its `context_lens[b]` tokens, causally masked.
    ///
    /// Fails with `InvalidArgument`, enqueuing nothing, when a length does not match the shapes,
    /// `cu_query_lens` is not a non-decreasing list from 0, a context is shorter than its queries or
    /// longer than its block-table row, or a block id is outside the caches; with `Unsupported` for
    /// a forced level this CPU lacks.
    #[allow(clippy::too_many_arguments)]
    pub fn chunked_prefill<T: Element>(
        &self,
        stream: &Arc<Stream>,
        q: &DeviceBuffer<T>,
        key_cache: &DeviceBuffer<T>,
        value_cache: &DeviceBuffer<T>,
        block_tables: BlockTables<'_>,
        cu_query_lens: &[i32],
        context_lens: &[i32],
        out: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        let (g, level) = self.opts.geometry(self.heads, true)?;
        let h = self.heads;
        let blocks = cache_blocks(h, self.block_size, key_cache.len(), value_cache.len())?;
        let q_lens = lengths("cu_query_lens", cu_query_lens)?;
        let batch = q_lens.len();
        if context_lens.len() != batch {
            return Err(Error::InvalidArgument(format!(
                "{} context lengths for {batch} sequences",
                context_lens.len()
            )));
        }
        let mb = block_tables.max_blocks;
        if batch.checked_mul(mb) != Some(block_tables.table.len()) {
            return Err(Error::InvalidArgument(format!(
                "block table holds {} entries, not {batch} sequences × {mb} blocks",
                block_tables.table.len(),
            )));
        }
        let mut seqs = Vec::with_capacity(batch);
        let mut q_start = 0;
        for (b, (&q_len, &ctx)) in q_lens.iter().zip(context_lens).enumerate() {
            let kv_len = usize::try_from(ctx)
                .map_err(|_| Error::InvalidArgument(format!("context length {ctx} of sequence {b} is negative")))?;
            if kv_len < q_len {
                return Err(Error::InvalidArgument(format!(
                    "sequence {b}: context length {kv_len} is shorter than its {q_len} queries"
                )));
            }
            if kv_len > mb.saturating_mul(self.block_size) {
                return Err(Error::InvalidArgument(format!(
                    "sequence {b}: context length {kv_len} is beyond its {mb} blocks of {}",
                    self.block_size
                )));
            }
            let row = &block_tables.table[b * mb..(b + 1) * mb];
            if let Some((i, &id)) = row[..kv_len.div_ceil(self.block_size)]
                .iter()
                .enumerate()
                .find(|(_, &id)| id < 0 || id as usize >= blocks)
            {
                return Err(Error::InvalidArgument(format!(
                    "sequence {b}: block table entry {i} is {id}, outside the cache's {blocks} blocks"
                )));
            }
            seqs.push(Seq { q_start, q_len, kv_len });
            q_start += q_len;
        }
        expect_len("q", q.len(), &[q_start, h.heads, h.head_dim])?;
        expect_len("out", out.len(), &[q_start, h.heads, h.head_dim])?;
        if !stream.context().runtime().host_addressable() {
            return npu::paged(
                stream,
                &g,
                self.block_size,
                q,
                key_cache,
                value_cache,
                block_tables,
                cu_query_lens,
                context_lens,
                out,
            );
        }
        let tables = block_tables.table.to_vec();
        let block_size = self.block_size;
        let mut l = stream.host_launch()?;
        let (qh, kh, vh, mut oh) = (l.read(q)?, l.read(key_cache)?, l.read(value_cache)?, l.write(out)?);
        l.launch(move || {
            // SAFETY: inside the kernel the views are live and ordered after their writes.
            let (q, k, v, o) = unsafe { (qh.as_slice(), kh.as_slice(), vh.as_slice(), oh.as_mut_slice()) };
            let kv = KvSource::Paged { k, v, tables: &tables, max_blocks: mb, block_size };
            host::attention(level, &g, &seqs, &kv, q, o);
        })
    }
}

/// Writes `key` and `value` (`[T, kv_heads, D]`) into the caches (`[num_blocks, block_size, kv_heads,
/// D]`) at `slot_mapping` (`[T]`): token t goes to block `slot / block_size`, offset `slot %
/// block_size`; a negative slot is padding and skipped. A slot given twice takes the later token on
/// the host; on an NPU (whose operator needs distinct slots) it is refused, and so is padding that
/// does not end the mapping (vLLM pads at the end). Errors, with nothing enqueued, for a slot beyond
/// the cache or lengths that do not match.
#[allow(clippy::too_many_arguments)]
pub fn reshape_and_cache<T: Element>(
    stream: &Arc<Stream>,
    heads: Heads,
    block_size: usize,
    key: &DeviceBuffer<T>,
    value: &DeviceBuffer<T>,
    key_cache: &mut DeviceBuffer<T>,
    value_cache: &mut DeviceBuffer<T>,
    slot_mapping: &[i64],
) -> Result<()> {
    let h = heads;
    if h.kv_heads == 0 || h.head_dim == 0 {
        return Err(Error::InvalidArgument(format!("empty heads {h:?}")));
    }
    let blocks = cache_blocks(h, block_size, key_cache.len(), value_cache.len())?;
    let tokens = slot_mapping.len();
    expect_len("key", key.len(), &[tokens, h.kv_heads, h.head_dim])?;
    expect_len("value", value.len(), &[tokens, h.kv_heads, h.head_dim])?;
    let slots = blocks * block_size;
    if let Some((t, &s)) = slot_mapping.iter().enumerate().find(|(_, &s)| s >= slots as i64) {
        return Err(Error::InvalidArgument(format!("slot {s} of token {t} is beyond the cache's {slots} slots")));
    }
    if !stream.context().runtime().host_addressable() {
        return npu::reshape_and_cache(
            stream,
            block_size,
            key,
            value,
            key_cache,
            value_cache,
            slot_mapping,
            (h.kv_heads, h.head_dim),
        );
    }
    let slot_mapping = slot_mapping.to_vec();
    let row = h.kv_heads * h.head_dim;
    let mut l = stream.host_launch()?;
    let (kh, vh, mut kch, mut vch) = (l.read(key)?, l.read(value)?, l.write(key_cache)?, l.write(value_cache)?);
    l.launch(move || {
        // SAFETY: inside the kernel the views are live and ordered after their writes.
        let (k, v, kc, vc) = unsafe { (kh.as_slice(), vh.as_slice(), kch.as_mut_slice(), vch.as_mut_slice()) };
        for (t, &s) in slot_mapping.iter().enumerate() {
            if let Ok(s) = usize::try_from(s) {
                kc[s * row..(s + 1) * row].copy_from_slice(&k[t * row..(t + 1) * row]);
                vc[s * row..(s + 1) * row].copy_from_slice(&v[t * row..(t + 1) * row]);
            }
        }
    })
}

/// Per-sequence lengths from cumulative ones (`[batch + 1]`, starting at 0, non-decreasing).
fn lengths(what: &str, cu: &[i32]) -> Result<Vec<usize>> {
    if cu.len() < 2 || cu[0] != 0 {
        return Err(Error::InvalidArgument(format!(
            "{what} must start at 0 and hold batch + 1 ≥ 2 entries, got {cu:?}"
        )));
    }
    cu.windows(2)
        .enumerate()
        .map(|(b, w)| {
            usize::try_from(i64::from(w[1]) - i64::from(w[0])).map_err(|_| {
                Error::InvalidArgument(format!("{what} decreases at sequence {b}: {} then {}", w[0], w[1]))
            })
        })
        .collect()
}

/// Blocks in a cache of `len` elements, which must be whole `[block_size, kv_heads, D]` blocks.
fn cache_blocks(h: Heads, block_size: usize, len: usize, other: usize) -> Result<usize> {
    let block = block_size.checked_mul(h.kv_heads).and_then(|b| b.checked_mul(h.head_dim)).unwrap_or(0);
    if block == 0 || len != other || !len.is_multiple_of(block) || len == 0 {
        return Err(Error::InvalidArgument(format!(
            "caches of {len} and {other} elements are not the same whole number of [{block_size}, {}, {}] blocks",
            h.kv_heads, h.head_dim
        )));
    }
    Ok(len / block)
}
