//! Attention throughput at any shape: causal prefill in GFLOPS (4·H·S²·D/2 for the causal half, as
//! peers count it) and paged decode in GB/s of keys and values read (the bound of a decode step),
//! with the fraction of the streaming-read bandwidth measured around each decode figure. The same
//! code serves `ascend bench attention` and `benches/attention.rs`.

use super::limits::{around_if, read_limit_if, with_read};
use super::{try_per_iter, Figure, DTYPES};
use ascend_kernels::{BlockTables, Element, Heads, PagedAttention, Prefill};
use ascend_rt::{bf16, f16, Context, Error, Result, Stream};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Causal prefill of one sequence of `seq` tokens.
    Prefill {
        /// Tokens.
        seq: usize,
    },
    /// One decode step of `batch` sequences of `context` tokens each, in blocks of `block_size`.
    Decode {
        /// Sequences.
        batch: usize,
        /// Tokens of each.
        context: usize,
        /// Tokens per cache block.
        block_size: usize,
    },
}

/// Inputs on a device, ready to be run repeatedly.
pub struct Case {
    run: Box<dyn FnMut(u64) -> Result<Duration>>,
    work: Workload,
    heads: Heads,
    elem: usize,
}

impl Case {
    /// Allocates the inputs of `work` with `heads` in `dtype` on device 0. Refused first, allocating
    /// nothing, when the case cannot run (see `check`).
    pub fn new(work: Workload, heads: Heads, dtype: &str) -> Result<Case> {
        let stream = Stream::new(&Context::new(0)?)?;
        check(&stream, work, heads, dtype)?;
        let (run, elem) = match dtype {
            "f32" => (runner::<f32>(&stream, work, heads)?, 4),
            "f16" => (runner::<f16>(&stream, work, heads)?, 2),
            "bf16" => (runner::<bf16>(&stream, work, heads)?, 2),
            other => return Err(Error::InvalidArgument(format!("dtype {other:?}: expected one of {DTYPES:?}"))),
        };
        Ok(Case { run, work, heads, elem })
    }

    /// Time for `iters` runs, waited for.
    pub fn time(&mut self, iters: u64) -> Result<Duration> {
        (self.run)(iters)
    }

    /// Floating-point operations of one run (score and value products; causal half for prefill).
    pub fn flops(&self) -> f64 {
        let h = self.heads;
        match self.work {
            Workload::Prefill { seq } => 4.0 * (h.heads * seq * seq * h.head_dim) as f64 / 2.0,
            Workload::Decode { batch, context, .. } => 4.0 * (batch * h.heads * context * h.head_dim) as f64,
        }
    }

    /// Bytes of keys and values one run must read at least.
    pub fn kv_bytes(&self) -> f64 {
        let h = self.heads;
        let tokens = match self.work {
            Workload::Prefill { seq } => seq,
            Workload::Decode { batch, context, .. } => batch * context,
        };
        (2 * tokens * h.kv_heads * h.head_dim * self.elem) as f64
    }
}

/// Refuses a case before anything is allocated: an unknown dtype, query heads that are not a
/// multiple of the key/value heads, a length beyond the kernels' i32 indices, or buffers that cannot
/// fit ([`case_bytes`]).
pub(crate) fn check(stream: &Stream, work: Workload, h: Heads, dtype: &str) -> Result<()> {
    let elem = elem_size(dtype)?;
    let empty = match work {
        Workload::Prefill { seq } => seq == 0,
        Workload::Decode { batch, context, block_size } => [batch, context, block_size].contains(&0),
    };
    if empty {
        return Err(Error::InvalidArgument(format!("empty case {work:?}")));
    }
    h.check()?;
    // Lengths and block ids the kernels take as i32.
    let indices = match work {
        Workload::Prefill { seq } => Some(seq),
        Workload::Decode { batch, context, block_size } => {
            context.div_ceil(block_size.max(1)).checked_mul(batch).map(|blocks| blocks.max(context))
        }
    };
    if indices.is_none_or(|n| i32::try_from(n).is_err()) {
        return Err(Error::InvalidArgument(format!("{work:?} is beyond the kernels' i32 lengths and block ids")));
    }
    super::ensure_bytes(stream, case_bytes(work, h, elem))
}

/// Bytes a case takes at its peak with `elem`-byte elements: queries and outputs, and the keys and
/// values (for decode, every rotated copy of the caches, see [`rotation`](super::rotation)); on the
/// host, the largest input while it is uploaded (for decode, the cache kept for every copy and the
/// queries). None when a size overflows.
pub(crate) fn case_bytes(work: Workload, h: Heads, elem: usize) -> Option<usize> {
    let (queries, [seqs, blocks, block]) = match work {
        Workload::Prefill { seq } => (seq, [seq, 1, 1]),
        Workload::Decode { batch, context, block_size } => {
            (batch, [batch, context.div_ceil(block_size.max(1)), block_size])
        }
    };
    let q = super::bytes_of(elem, &[queries, h.heads, h.head_dim])?;
    let kv = super::bytes_of(elem, &[seqs, blocks, block, h.kv_heads, h.head_dim])?;
    let (kv_copies, host) = match work {
        Workload::Prefill { .. } => (2, q.max(kv)),
        Workload::Decode { .. } => (super::rotation(kv_read(&work, h, elem)?).checked_mul(2)?, kv.checked_add(q)?),
    };
    q.checked_mul(2)?.checked_add(kv.checked_mul(kv_copies)?)?.checked_add(host)
}

/// Whether a figure of `work` in `dtype` is compared with the memory read limit: a decode step
/// whose keys and values, rotated, do not fit in a cache (see
/// [`streams_from_memory`](super::streams_from_memory)).
fn memory_bound(work: &Workload, h: Heads, dtype: &str) -> bool {
    elem_size(dtype).ok().and_then(|e| kv_read(work, h, e)).is_some_and(super::streams_from_memory)
}

/// Bytes of keys and values a decode step reads (its contexts, not the blocks' padding): what the
/// caches' copies are rotated by. None for prefill, or when a size overflows.
fn kv_read(work: &Workload, h: Heads, elem: usize) -> Option<usize> {
    match *work {
        Workload::Prefill { .. } => None,
        Workload::Decode { batch, context, .. } => super::bytes_of(elem, &[2, batch, context, h.kv_heads, h.head_dim]),
    }
}

/// Bytes per element of a [`DTYPES`] entry.
fn elem_size(dtype: &str) -> Result<usize> {
    match dtype {
        "f32" => Ok(4),
        "f16" | "bf16" => Ok(2),
        other => Err(Error::InvalidArgument(format!("dtype {other:?}: expected one of {DTYPES:?}"))),
    }
}

fn runner<T: Element>(
    stream: &Arc<Stream>,
    work: Workload,
    h: Heads,
) -> Result<Box<dyn FnMut(u64) -> Result<Duration>>> {
    let fill = |n: usize| (0..n).map(|i| T::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5)).collect::<Vec<_>>();
    let stream = stream.clone();
    match work {
        Workload::Prefill { seq } => {
            let q = stream.clone_htod(&fill(seq * h.heads * h.head_dim))?;
            let k = stream.clone_htod(&fill(seq * h.kv_heads * h.head_dim))?;
            let v = stream.clone_htod(&fill(seq * h.kv_heads * h.head_dim))?;
            let mut out = stream.alloc_zeros::<T>(seq * h.heads * h.head_dim)?;
            let cu = [0, seq as i32];
            let op = Prefill::new(h);
            Ok(Box::new(move |iters| {
                stream.synchronize()?;
                let t = Instant::now();
                for _ in 0..iters {
                    op.run(&stream, &q, &k, &v, &cu, &mut out)?;
                }
                stream.synchronize()?;
                Ok(t.elapsed())
            }))
        }
        Workload::Decode { batch, context, block_size } => {
            let per_seq = context.div_ceil(block_size);
            let blocks = batch * per_seq;
            let row = h.kv_heads * h.head_dim;
            // Each decode step reads another layer's caches: rotate through copies (see `rotation`), as
            // many as the bytes it reads need (`case_bytes` counted them).
            let cache = fill(blocks * block_size * row);
            let read = kv_read(&work, h, std::mem::size_of::<T>()).expect("checked by case_bytes");
            let copies = super::rotation(read);
            let caches = (0..copies)
                .map(|_| Ok((stream.clone_htod(&cache)?, stream.clone_htod(&cache)?)))
                .collect::<Result<Vec<_>>>()?;
            let q = stream.clone_htod(&fill(batch * h.heads * h.head_dim))?;
            let mut out = stream.alloc_zeros::<T>(batch * h.heads * h.head_dim)?;
            // Blocks interleaved across sequences, as a long-running cache ends up.
            let table: Vec<i32> = (0..batch * per_seq).map(|i| ((i % per_seq) * batch + i / per_seq) as i32).collect();
            let ctx = vec![context as i32; batch];
            let op = PagedAttention::new(h, block_size);
            let mut next = 0; // as in the matmul runner: the rotation goes on across calls
            Ok(Box::new(move |iters| {
                stream.synchronize()?;
                let t = Instant::now();
                for _ in 0..iters {
                    let tables = BlockTables { table: &table, max_blocks: per_seq };
                    let (kc, vc) = &caches[next];
                    op.decode(&stream, &q, kc, vc, tables, &ctx, &mut out)?;
                    next = (next + 1) % copies;
                }
                stream.synchronize()?;
                Ok(t.elapsed())
            }))
        }
    }
}

/// Measures one workload.
pub fn measure(work: Workload, heads: Heads, dtype: &str, budget: Duration) -> Result<Figure> {
    let mut case = Case::new(work, heads, dtype)?;
    let t = try_per_iter(budget, |n| case.time(n))?;
    let secs = t.as_secs_f64();
    let mut params: Vec<(String, Value)> = match work {
        Workload::Prefill { seq } => vec![("seq".into(), Value::from(seq))],
        Workload::Decode { batch, context, block_size } => vec![
            ("batch".into(), Value::from(batch)),
            ("context".into(), Value::from(context)),
            ("block_size".into(), Value::from(block_size)),
        ],
    };
    params.extend([
        ("heads".to_string(), Value::from(heads.heads)),
        ("kv_heads".to_string(), Value::from(heads.kv_heads)),
        ("head_dim".to_string(), Value::from(heads.head_dim)),
        ("dtype".to_string(), Value::from(dtype)),
    ]);
    Ok(match work {
        Workload::Prefill { .. } => Figure {
            name: "kernels.attention.prefill".into(),
            params,
            value: case.flops() / secs / 1e9,
            unit: "gflops",
        },
        Workload::Decode { .. } => {
            let gbps = case.kv_bytes() / secs / 1e9;
            params.push(("us".to_string(), Value::from(secs * 1e6)));
            Figure { name: "kernels.attention.decode".into(), params, value: gbps, unit: "gbps" }
        }
    })
}

/// The default sweep's heads: Llama-3-8B-like (32 query heads, 8 KV heads, 128 dims).
pub const DEFAULT_HEADS: Heads = Heads { heads: 32, kv_heads: 8, head_dim: 128 };

/// The default workloads: causal prefill of 512..4096 tokens, and decode over batch 1..64 ×
/// context 128..8192 with blocks of 16 and 128.
pub fn default_workloads() -> Vec<Workload> {
    let prefill = [512, 1024, 2048, 4096].map(|seq| Workload::Prefill { seq });
    let decode = [(1, 8192), (8, 2048), (64, 128), (64, 1024)]
        .into_iter()
        .flat_map(|(batch, context)| [16, 128].map(move |block_size| Workload::Decode { batch, context, block_size }));
    prefill.into_iter().chain(decode).collect()
}

/// Checks every case (nothing is allocated for a sweep that would be refused), then measures the
/// streaming-read limit (when there are memory-bound decode figures), then every workload in every
/// dtype; decode figures whose caches stream from memory get `read_gbps` (the limit measured around
/// them, see [`ReadLimit`](super::limits::ReadLimit)) and `read_fraction`.
pub fn sweep(
    work: &[Workload],
    heads: Heads,
    dtypes: &[&str],
    budget: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Figure>> {
    {
        let stream = Stream::new(&Context::new(0)?)?;
        for &w in work {
            for &dtype in dtypes {
                check(&stream, w, heads, dtype)?;
            }
        }
    }
    let bound = work.iter().any(|w| dtypes.iter().any(|d| memory_bound(w, heads, d)));
    let mut out = Vec::new();
    let mut limit = read_limit_if(bound, budget, &mut progress, &mut out)?;
    for &w in work {
        for &dtype in dtypes {
            progress(&format!("kernels.attention {w:?} {dtype}"));
            let decode_limit = limit.as_mut().filter(|_| memory_bound(&w, heads, dtype));
            let (f, read_gbps) = around_if(decode_limit, || measure(w, heads, dtype, budget))?;
            out.push(match read_gbps {
                Some(r) => {
                    let gbps = f.value;
                    with_read(f, gbps, r)
                }
                None => f,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_bytes_counts_the_rotated_caches() {
        let h = Heads::new(8, 2, 64);
        // q and out [40, 8, 64], k and v [40, 2, 64] in f32; the upload of q.
        let (q, kv) = (40 * 8 * 64 * 4, 40 * 2 * 64 * 4);
        assert_eq!(case_bytes(Workload::Prefill { seq: 40 }, h, 4), Some(2 * q + 2 * kv + q));
        // 3 sequences of 100 tokens in 7 blocks of 16: 86016 bytes per bf16 cache; a step reads
        // 76800 bytes of each, so 1748 copies of both (256 MiB of what is read).
        let (q, kv) = (3 * 8 * 64 * 2, 3 * 7 * 16 * 2 * 64 * 2);
        let d = Workload::Decode { batch: 3, context: 100, block_size: 16 };
        assert_eq!(case_bytes(d, h, 2), Some(2 * q + 2 * 1748 * kv + kv + q));
        assert!(memory_bound(&d, h, "bf16"));
        // Blocks far larger than the context: a step reads 4 KiB of them, which no rotation takes
        // out of the cache (the old check counted the padding and compared it with memory).
        let sparse = Workload::Decode { batch: 1, context: 16, block_size: 100_000 };
        assert!(!memory_bound(&sparse, Heads::new(4, 2, 16), "f32"));
        assert!(!memory_bound(&Workload::Decode { batch: 1, context: 1, block_size: 1 }, h, "bf16"));
        assert!(!memory_bound(&Workload::Prefill { seq: 4096 }, h, "bf16"));
    }
}
