//! Benchmark implementations, one per figure, shared by the criterion benches (`benches/`) and by
//! `ascend bench`: each returns the time taken for a given number of iterations, so criterion's
//! `iter_custom` and the command-line sweep measure exactly the same thing.

pub mod all;
pub mod attention;
pub mod collectives;
pub mod limits;
pub mod matmul;
pub mod runtime;

use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// Element types the kernel benchmarks accept.
pub const DTYPES: [&str; 3] = ["f32", "f16", "bf16"];

/// Bytes of a buffer of `elem`-byte elements with sizes `dims`; None when the product overflows.
pub(crate) fn bytes_of(elem: usize, dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(elem, |a, &d| a.checked_mul(d))
}

/// Refuses a case that needs `needed` bytes of memory (None: its sizes overflow) when they exceed
/// what is available: the free memory of the stream's device, and on the simulator (device memory is host memory)
/// the host's available memory too.
pub(crate) fn ensure_bytes(stream: &ascend_rt::Stream, needed: Option<usize>) -> ascend_rt::Result<()> {
    let (free, _) = stream.context().memory_info()?;
    let limit = match stream.context().runtime().host_addressable() {
        true => host_available().map_or(free, |h| h.min(free)),
        false => free,
    };
    within(needed, limit)
}

/// Refuses `needed` bytes of host memory (None: sizes that overflow) beyond what the host has
/// available (unknown: allowed).
pub(crate) fn ensure_host_bytes(needed: Option<usize>) -> ascend_rt::Result<()> {
    within(needed, host_available().unwrap_or(usize::MAX))
}

fn within(needed: Option<usize>, limit: usize) -> ascend_rt::Result<()> {
    match needed {
        Some(n) if n <= limit => Ok(()),
        // Exact bytes too: rounded, a case just over the limit would read as needing what is there.
        Some(n) => Err(ascend_rt::Error::InvalidArgument(format!(
            "this case needs {:.2} GiB ({n} bytes) of memory, {:.2} GiB ({limit} bytes) is available",
            n as f64 / (1u64 << 30) as f64,
            limit as f64 / (1u64 << 30) as f64
        ))),
        None => Err(ascend_rt::Error::InvalidArgument("this case's sizes overflow".into())),
    }
}

/// The host's available memory (`MemAvailable`), where the system says.
fn host_available() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize =
        info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Bytes of streamed data a case rotates through: more than any last-level cache, so that each run
/// reads its data from memory, as a model's layers do, instead of finding the previous run's in cache.
pub const ROTATION_BYTES: usize = 256 << 20;

/// The most copies [`rotation`] makes: data smaller than `ROTATION_BYTES / MAX_COPIES` (64 KiB)
/// cannot be made to stream from memory; it is not rotated, and its figures are not compared with
/// the memory read limit (see [`streams_from_memory`]).
pub const MAX_COPIES: usize = 4096;

/// Whether `bytes` of streamed data, rotated through at most [`MAX_COPIES`] copies, take at least
/// [`ROTATION_BYTES`], so that a figure over it is bound by memory bandwidth (and may be quoted as a
/// fraction of the read limit), not by a cache.
pub fn streams_from_memory(bytes: usize) -> bool {
    bytes.saturating_mul(MAX_COPIES) >= ROTATION_BYTES
}

/// How many copies of `bytes` of streamed data (decode weights, KV caches) a case rotates through so
/// that together they take at least [`ROTATION_BYTES`]; the copies beyond the first add less than
/// that. One copy for data that cannot stream from memory (its figure is a cache figure however
/// many copies there are: 4096 copies of 16 KiB would only cost 64 MiB for nothing).
pub fn rotation(bytes: usize) -> usize {
    match streams_from_memory(bytes) {
        true => ROTATION_BYTES.div_ceil(bytes),
        false => 1,
    }
}

/// One reported figure: a benchmark name, its parameters, and a value with its unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// e.g. `runtime.copy`.
    pub name: String,
    /// Parameters, in display order.
    pub params: Vec<(String, Value)>,
    /// The figure.
    pub value: f64,
    /// Its unit, used as the JSON key (`us`, `gbps`, `mops`, ...).
    pub unit: &'static str,
}

impl Figure {
    /// A numeric parameter by name.
    pub fn param(&self, key: &str) -> Option<f64> {
        self.params.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.as_f64())
    }

    /// The figure as one flat JSON object: `{"name": ..., <params>..., <unit>: value, "unit": <unit>,
    /// "value": value}`: keyed by its unit for people, and by `unit`/`value` for tools (some
    /// parameters are measures too, e.g. a decode step's `us`).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), Value::from(self.name.clone()));
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        m.insert(self.unit.into(), Value::from(self.value));
        m.insert("unit".into(), Value::from(self.unit));
        m.insert("value".into(), Value::from(self.value));
        Value::Object(m)
    }
}

/// [`per_iter`] for a measurement that can fail: the first error ends it and is returned.
pub fn try_per_iter(
    budget: Duration,
    mut f: impl FnMut(u64) -> ascend_rt::Result<Duration>,
) -> ascend_rt::Result<Duration> {
    let mut fail = None;
    let t = per_iter(budget, |n| match fail {
        // After a failure, report the whole budget so the loop ends at once.
        Some(_) => budget,
        None => f(n).unwrap_or_else(|e| {
            fail = Some(e);
            budget
        }),
    });
    fail.map_or(Ok(t), Err)
}

/// Runs `f(iters)` with growing iteration counts until one run takes at least `budget`, and returns
/// the best time per iteration over three such runs (machines here are shared and noisy).
pub fn per_iter(budget: Duration, mut f: impl FnMut(u64) -> Duration) -> Duration {
    let mut iters = 1u64;
    let start = Instant::now();
    loop {
        let t = f(iters);
        if t >= budget || start.elapsed() > budget * 20 {
            break;
        }
        iters = iters.saturating_mul(if t.is_zero() {
            10
        } else {
            ((budget.as_secs_f64() / t.as_secs_f64()) * 1.2).clamp(1.5, 10.0) as u64 + 1
        });
    }
    (0..3).map(|_| f(iters).div_f64(iters as f64)).min().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_always_exceeds_the_last_level_cache() {
        for b in [64 << 10, 172_032, (4 << 20) - 1, 4 << 20, (129 << 20) - 1, 129 << 20, 255 << 20, 300 << 20] {
            assert!(rotation(b) * b >= ROTATION_BYTES, "{b} bytes: {} copies", rotation(b));
            assert!((rotation(b) - 1) * b < ROTATION_BYTES, "{b} bytes: {} copies, one too many", rotation(b));
            assert!(streams_from_memory(b), "{b}");
        }
        assert_eq!(rotation(300 << 20), 1);
        assert_eq!(rotation(172_032), 1561);
        // Data under 64 KiB would need more than 4096 copies: it is not rotated, and its figures are
        // not memory-bound.
        assert_eq!((rotation(16), rotation((64 << 10) - 1), rotation(64 << 10)), (1, 1, MAX_COPIES));
        assert!(!streams_from_memory(16) && !streams_from_memory((64 << 10) - 1));
    }
}
