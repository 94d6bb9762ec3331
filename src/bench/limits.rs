//! The machine's limits, measured by the bench itself so that kernel figures can be quoted as a
//! fraction of them in the same run: multi-threaded streaming-read bandwidth (what a bandwidth-bound
//! kernel such as decode matmul or paged attention can reach: sequential loads, prefetched in
//! software as those kernels' are), copy bandwidth (bytes copied
//! per second, what copies and collectives move), and an FMA peak estimate (f32 GFLOPS of
//! independent fused multiply-adds on every pool thread at the best SIMD level).

use super::{per_iter, try_per_iter, Figure};
use ascend_rt::host::pool;
use ascend_rt::{Context, DeviceBuffer, Result, Stream};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Buffer size for bandwidth probes: far larger than any last-level cache.
pub const PROBE_BYTES: usize = 256 << 20;
/// Bytes each pool item reads (large enough that scheduling costs nothing, small enough to balance).
const CHUNK: usize = 1 << 20;

/// A device buffer that stays allocated (and faulted in) between measurements. It is device memory,
/// read by a host kernel, like the caches and weights of the kernels whose figures it bounds (on the
/// simulator device memory is advised onto huge pages; a `Vec` would not be, and would read slower).
pub struct ReadProbe {
    stream: Arc<Stream>,
    words: DeviceBuffer<u64>,
}

impl ReadProbe {
    /// Allocates and fills `bytes` (rounded down to whole 8-byte words, at least one chunk) of
    /// device 0's memory. Fails when that memory is too small; on an NPU, where device memory is not
    /// host memory, [`ReadProbe::time`] fails instead (`Unsupported`).
    pub fn new(bytes: usize) -> Result<ReadProbe> {
        let n = (bytes / 8).max(CHUNK / 8);
        let stream = Stream::new(&Context::new(0)?)?;
        let words = stream.clone_htod(&(0..n as u64).collect::<Vec<_>>())?;
        Ok(ReadProbe { stream, words })
    }

    /// Bytes read per pass.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// Time for `iters` full passes, every core of the compute pool reading its share.
    pub fn time(&self, iters: u64) -> Result<Duration> {
        let per_chunk = CHUNK / 8;
        self.stream.synchronize()?;
        let t = Instant::now();
        for _ in 0..iters {
            let mut l = self.stream.host_launch()?;
            let words = l.read(&self.words)?;
            l.launch(move || {
                // SAFETY: inside the host kernel the view is live and nothing writes it.
                let words = unsafe { words.as_slice() };
                pool().parallel_for(words.len().div_ceil(per_chunk), &|i| {
                    let end = words.len().min((i + 1) * per_chunk);
                    std::hint::black_box(sum(&words[i * per_chunk..end]));
                });
            })?;
        }
        self.stream.synchronize()?;
        Ok(t.elapsed())
    }
}

/// How far ahead (bytes) the read probe prefetches. With plain loads only the hardware
/// prefetchers kept reads in flight: 25 GB/s on 2 cores of a Sapphire Rapids-class VM, where loads
/// prefetched 3-6 KiB ahead read 38-44 GB/s (and the decode kernels, which prefetch, read at up to
/// 1.4 times the plain figure: a limit they beat bounds nothing).
const PREFETCH_AHEAD: usize = 4096;

/// Sums with 8 independent lanes so the loop is bound by loads, not by one addition chain, each line
/// prefetched [`PREFETCH_AHEAD`] bytes ahead.
fn sum(words: &[u64]) -> u64 {
    let mut lanes = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for c in chunks {
        ascend_kernels::prefetch_line((c.as_ptr() as *const u8).wrapping_add(PREFETCH_AHEAD));
        for (l, &w) in lanes.iter_mut().zip(c) {
            *l = l.wrapping_add(w);
        }
    }
    lanes.iter().fold(tail, |a, &l| a.wrapping_add(l))
}

/// The streaming-read limit measured next to each bandwidth-bound figure. Memory bandwidth on a
/// shared host changes from minute to minute (here it flips between two levels, about 1.6× apart),
/// so a limit measured once at the start of a sweep can flatter or wrong a figure measured later.
/// Each figure is compared with the better of the probes just before and just after it.
pub struct ReadLimit {
    probe: ReadProbe,
    budget: Duration,
    /// The latest probe (GB/s) and when it ended.
    last: (f64, Instant),
}

/// How old the latest probe may be to serve as the one before the next figure (between two figures
/// of a sweep there is only the next case's setup).
const FRESH: Duration = Duration::from_secs(2);

impl ReadLimit {
    /// Allocates the probe and measures it once; returns the limit and that first `limits.read`
    /// figure. Fails as [`ReadProbe::new`] does.
    pub fn new(budget: Duration) -> Result<(ReadLimit, Figure)> {
        let probe = ReadProbe::new(PROBE_BYTES)?;
        let mut limit = ReadLimit { probe, budget, last: (0.0, Instant::now()) };
        limit.last = (limit.measure()?, Instant::now());
        let figure = Figure {
            name: "limits.read".into(),
            params: vec![
                ("bytes".to_string(), Value::from(limit.probe.bytes())),
                ("threads".to_string(), Value::from(pool().threads())),
            ],
            value: limit.last.0,
            unit: "gbps",
        };
        Ok((limit, figure))
    }

    fn measure(&self) -> Result<f64> {
        let t = try_per_iter(self.budget, |n| self.probe.time(n))?;
        Ok(self.probe.bytes() as f64 / t.as_secs_f64() / 1e9)
    }

    /// Runs `figure` and returns it with the read limit around it (GB/s): the better of a probe
    /// just before it (the previous figure's after-probe when that is fresh, else a new one) and one
    /// measured right after it.
    pub fn around<T>(&mut self, figure: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
        let before = if self.last.1.elapsed() < FRESH { self.last.0 } else { self.measure()? };
        let out = figure()?;
        self.last = (self.measure()?, Instant::now());
        Ok((out, before.max(self.last.0)))
    }
}

/// The read limit for a sweep, measured first (`limits.read`, pushed to `out`) only when `needed`:
/// sweeps without a bandwidth-bound figure skip the probe (256 MiB and a few seconds), and so do
/// backends whose device memory the host cannot read (an NPU: the probe would measure this CPU).
pub fn read_limit_if(
    needed: bool,
    budget: Duration,
    progress: &mut impl FnMut(&str),
    out: &mut Vec<Figure>,
) -> Result<Option<ReadLimit>> {
    if !needed || !ascend_rt::Runtime::get()?.host_addressable() {
        return Ok(None);
    }
    progress("limits.read");
    let (limit, figure) = ReadLimit::new(budget)?;
    out.push(figure);
    Ok(Some(limit))
}

/// Runs `figure` with the read limit around it when there is one (see [`ReadLimit::around`]).
pub fn around_if<T>(limit: Option<&mut ReadLimit>, figure: impl FnOnce() -> Result<T>) -> Result<(T, Option<f64>)> {
    match limit {
        Some(l) => l.around(figure).map(|(f, r)| (f, Some(r))),
        None => figure().map(|f| (f, None)),
    }
}

/// Adds the read limit measured around a bandwidth figure: `read_gbps` and `read_fraction` (`gbps`,
/// the bytes the figure had to read per second, over it).
pub fn with_read(mut f: Figure, gbps: f64, read_gbps: f64) -> Figure {
    f.params.push(("read_gbps".to_string(), Value::from(read_gbps)));
    f.params.push(("read_fraction".to_string(), Value::from(gbps / read_gbps)));
    f
}

/// Measures copy bandwidth (GB/s of bytes copied) over [`PROBE_BYTES`] of device 0's memory on
/// every pool thread, as a host kernel (like the read probe: the copies it bounds move device memory,
/// which the simulator keeps on huge pages): the better of 1 MiB pieces and one piece per thread
/// (large copies take the non-temporal path). Fails where device memory is not host memory.
pub fn copy_bandwidth(budget: Duration) -> Result<Figure> {
    let n = PROBE_BYTES / 8;
    let stream = Stream::new(&Context::new(0)?)?;
    let src = stream.clone_htod(&(0..n as u64).collect::<Vec<_>>())?;
    let mut dst = stream.alloc_zeros::<u64>(n)?;
    let mut best = Duration::MAX;
    for per_chunk in [CHUNK / 8, n.div_ceil(pool().threads())] {
        let t = try_per_iter(budget, |iters| {
            stream.synchronize()?;
            let t = Instant::now();
            for _ in 0..iters {
                let mut l = stream.host_launch()?;
                let (s, mut d) = (l.read(&src)?, l.write(&mut dst)?);
                l.launch(move || {
                    // SAFETY: inside the host kernel both views are live, and only it uses them.
                    let (s, d) = unsafe { (s.as_slice(), d.as_mut_slice()) };
                    let addr = d.as_mut_ptr() as usize;
                    pool().parallel_for(n.div_ceil(per_chunk), &|i| {
                        let (a, b) = (i * per_chunk, n.min((i + 1) * per_chunk));
                        // SAFETY: pieces are disjoint ranges of `d`, which outlives the parallel_for.
                        let d = unsafe { std::slice::from_raw_parts_mut((addr as *mut u64).add(a), b - a) };
                        d.copy_from_slice(&s[a..b]);
                    });
                })?;
            }
            stream.synchronize()?;
            Ok(t.elapsed())
        })?;
        best = best.min(t);
    }
    Ok(Figure {
        name: "limits.copy".into(),
        params: vec![
            ("bytes".to_string(), Value::from(PROBE_BYTES)),
            ("threads".to_string(), Value::from(pool().threads())),
        ],
        value: PROBE_BYTES as f64 / best.as_secs_f64() / 1e9,
        unit: "gbps",
    })
}

/// Independent multiply-add chains: 8 accumulators of 16 lanes, so the loop is bound by throughput.
/// `FUSED` only where the FMA feature is enabled: elsewhere `mul_add` is a library call per element,
/// and the portable kernels multiply and add separately, as the unfused chains do.
#[inline(always)]
fn fma_chains<const FUSED: bool>(iters: u64, x: f32, y: f32) -> f32 {
    let mut acc = [[1.0f32; 16]; 8];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            for v in a.iter_mut() {
                *v = if FUSED { v.mul_add(x, y) } else { *v * x + y };
            }
        }
    }
    acc.iter().flatten().sum()
}

/// The same chains with explicit AVX-512 FMAs (the compiler does not turn `mul_add` on arrays into
/// vector FMAs reliably).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: u64, x: f32, y: f32) -> f32 {
    use std::arch::x86_64::*;
    let (xv, yv) = (_mm512_set1_ps(x), _mm512_set1_ps(y));
    let mut acc = [_mm512_set1_ps(1.0); 8];
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, xv, yv);
        }
    }
    acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: u64, x: f32, y: f32) -> f32 {
    fma_chains::<true>(iters, x, y)
}

/// Estimates the f32 FMA peak (GFLOPS, 2 per FMA) of all pool threads at the active SIMD level.
pub fn fma_peak(budget: Duration) -> Figure {
    use ascend_kernels::cpu::{active, Level};
    let level = active();
    let run = |iters: u64| -> f32 {
        // Values that keep the chains finite: x·v + y converges to y / (1 − x).
        let (x, y) = (std::hint::black_box(0.999_999f32), std::hint::black_box(1e-6f32));
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `active()` only reports levels this CPU supports.
            Level::Avx512 | Level::Avx512Bf16 | Level::Amx => unsafe { fma_avx512(iters, x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Level::Avx2 => unsafe { fma_avx2(iters, x, y) },
            _ => fma_chains::<false>(iters, x, y),
        }
    };
    let inner = 100_000u64;
    let gflops = pool_gflops(budget, (inner * 8 * 16 * 2) as f64, &|| {
        std::hint::black_box(run(inner));
    });
    Figure {
        name: "limits.fma_peak".into(),
        params: vec![
            ("level".to_string(), Value::from(level.name())),
            ("threads".to_string(), Value::from(pool().threads())),
        ],
        value: gflops,
        unit: "gflops",
    }
}

/// GFLOPS of `call` (`flops` each) run by every pool thread at once, repeated for about `budget`.
fn pool_gflops(budget: Duration, flops: f64, call: &(dyn Fn() + Sync)) -> f64 {
    let threads = pool().threads();
    let t = per_iter(budget, |iters| {
        let t = Instant::now();
        for _ in 0..iters {
            pool().parallel_for(threads, &|_| call());
        }
        t.elapsed()
    });
    threads as f64 * flops / t.as_secs_f64() / 1e9
}

/// The AMX tile unit's bf16 peak (GFLOPS, 2 per product) on all pool threads, when kernels run at
/// [`Level::Amx`](ascend_kernels::cpu::Level::Amx); otherwise None.
pub fn amx_peak(budget: Duration) -> Option<Figure> {
    use ascend_kernels::{amx, cpu};
    if cpu::active() != cpu::Level::Amx {
        return None;
    }
    let inner = 20_000u64;
    let gflops = pool_gflops(budget, (inner * 4 * amx::FLOPS_PER_PRODUCT) as f64, &|| amx::product_probe(inner));
    Some(Figure {
        name: "limits.amx_peak".into(),
        params: vec![("threads".to_string(), Value::from(pool().threads()))],
        value: gflops,
        unit: "gflops",
    })
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
