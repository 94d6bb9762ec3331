//! The machine's limits, measured by the bench itself so that kernel figures can be quoted as a
//! fraction of them in the same run: multi-threaded streaming-read bandwidth (what a bandwidth-bound
//! kernel such as decode matmul or paged attention can reach at best).

use super::{per_iter, Figure};
use ascend_rt::host::pool;
use serde_json::Value;
use std::time::{Duration, Instant};

/// Buffer size for bandwidth probes: far larger than any last-level cache.
pub const PROBE_BYTES: usize = 256 << 20;
/// Bytes each pool item reads (large enough that scheduling costs nothing, small enough to balance).
const CHUNK: usize = 1 << 20;

/// A buffer that stays allocated (and faulted in) between measurements.
pub struct ReadProbe {
    words: Vec<u64>,
}

impl ReadProbe {
    /// Allocates and touches `bytes` (rounded down to whole 8-byte words, at least one chunk).
    pub fn new(bytes: usize) -> ReadProbe {
        let n = (bytes / 8).max(CHUNK / 8);
        ReadProbe { words: (0..n as u64).collect() }
    }

    /// Bytes read per pass.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Time for `iters` full passes, every core of the compute pool reading its share.
    pub fn time(&self, iters: u64) -> Duration {
        let words = &self.words;
        let per_chunk = CHUNK / 8;
        let t = Instant::now();
        for _ in 0..iters {
            pool().parallel_for(words.len().div_ceil(per_chunk), &|i| {
                let end = words.len().min((i + 1) * per_chunk);
                std::hint::black_box(sum(&words[i * per_chunk..end]));
            });
        }
        t.elapsed()
    }
}

/// Sums with 8 independent lanes so the loop is bound by loads, not by one addition chain.
fn sum(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(w);
        }
    }
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}

/// Measures streaming-read bandwidth (GB/s, bytes read) over [`PROBE_BYTES`] on every pool thread.
pub fn read_bandwidth(budget: Duration) -> Figure {
    let probe = ReadProbe::new(PROBE_BYTES);
    let t = per_iter(budget, |n| probe.time(n));
    Figure {
        name: "limits.read".into(),
        params: vec![
            ("bytes".to_string(), Value::from(probe.bytes())),
            ("threads".to_string(), Value::from(pool().threads())),
        ],
        value: probe.bytes() as f64 / t.as_secs_f64() / 1e9,
        unit: "gbps",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_counts_every_word_once() {
        for n in [0, 1, 7, 8, 9, 100] {
            let words: Vec<u64> = (1..=n).collect();
            assert_eq!(sum(&words), n * (n + 1) / 2, "n = {n}");
        }
    }
}
