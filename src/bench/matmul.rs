//! Matmul throughput (GFLOPS = 2·m·n·k·batch / time) at any shape, dtype and SIMD level; the same
//! code serves `ascend bench matmul` and `benches/matmul.rs`.

use super::limits::{around_if, read_limit_if, with_read};
use super::{try_per_iter, Figure, DTYPES};
use ascend_kernels::{cpu::Level, Element, Matmul, Shape};
use ascend_rt::{bf16, f16, Context, Error, Result, Stream};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Inputs on a device, ready to be multiplied repeatedly.
pub struct Case {
    run: Box<dyn FnMut(u64) -> Result<Duration>>,
    shape: Shape,
}

impl Case {
    /// Allocates A, B (`[n, k]` when `transpose_b`) and C for `shape` in `dtype` on device 0.
    /// Refused first, allocating nothing, when they cannot fit (see `check`).
    pub fn new(shape: Shape, dtype: &str, level: Option<Level>) -> Result<Case> {
        let stream = Stream::new(&Context::new(0)?)?;
        check(&stream, shape, dtype)?;
        let run = match dtype {
            "f32" => runner::<f32>(&stream, shape, level)?,
            "f16" => runner::<f16>(&stream, shape, level)?,
            "bf16" => runner::<bf16>(&stream, shape, level)?,
            other => return Err(Error::InvalidArgument(format!("dtype {other:?}: expected one of {DTYPES:?}"))),
        };
        Ok(Case { run, shape })
    }

    /// Time for `iters` matmuls, waited for.
    pub fn time(&mut self, iters: u64) -> Result<Duration> {
        (self.run)(iters)
    }

    /// Floating-point operations of one matmul.
    pub fn flops(&self) -> f64 {
        let s = self.shape;
        2.0 * (s.batch * s.m * s.n * s.k) as f64
    }
}

/// Refuses `shape` in `dtype` before anything is allocated: an unknown dtype, or buffers that cannot
/// fit ([`case_bytes`]).
pub(crate) fn check(stream: &Stream, shape: Shape, dtype: &str) -> Result<()> {
    let elem = elem_size(dtype)?;
    super::ensure_bytes(stream, case_bytes(shape, elem))
}

/// Bytes a case of `shape` with `elem`-byte elements takes at its peak: A, every rotated copy of B
/// (decode shapes, see [`rotation`](super::rotation)), C, the host copy of the larger input while it
/// is uploaded, and the kernel's f32 accumulator (`[m, n]`, allocated by each run on the simulator).
/// None when a size overflows.
pub(crate) fn case_bytes(shape: Shape, elem: usize) -> Option<usize> {
    let b_batch = if shape.shared_b { 1 } else { shape.batch };
    let a = super::bytes_of(elem, &[shape.batch, shape.m, shape.k])?;
    let b = super::bytes_of(elem, &[b_batch, shape.k, shape.n])?;
    let c = super::bytes_of(elem, &[shape.batch, shape.m, shape.n])?;
    let acc = super::bytes_of(4, &[shape.m, shape.n])?;
    let copies = if decode(&shape) { super::rotation(b) } else { 1 };
    a.checked_add(b.checked_mul(copies)?)?.checked_add(c)?.checked_add(a.max(b))?.checked_add(acc)
}

/// Whether `shape` takes the bandwidth-bound decode path (m ≤ 32).
fn decode(shape: &Shape) -> bool {
    shape.m <= ascend_kernels::matmul::DECODE_MAX_M
}

/// Whether a figure of `shape` in `dtype` is compared with the memory read limit: a decode shape
/// whose weights, rotated, do not fit in a cache (see [`streams_from_memory`](super::streams_from_memory)).
fn memory_bound(shape: &Shape, dtype: &str) -> bool {
    let b_batch = if shape.shared_b { 1 } else { shape.batch };
    let b = elem_size(dtype).ok().and_then(|e| super::bytes_of(e, &[b_batch, shape.k, shape.n]));
    decode(shape) && b.is_some_and(super::streams_from_memory)
}

fn runner<T: Element>(
    stream: &Arc<Stream>,
    shape: Shape,
    level: Option<Level>,
) -> Result<Box<dyn FnMut(u64) -> Result<Duration>>> {
    let fill = |n: usize| (0..n).map(|i| T::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5)).collect::<Vec<_>>();
    let b_batch = if shape.shared_b { 1 } else { shape.batch };
    let a = stream.clone_htod(&fill(shape.batch * shape.m * shape.k))?;
    let b_len = b_batch * shape.k * shape.n;
    // Decode shapes stream their weights: rotate through copies (see `rotation`; `check` counted them).
    let copies = if decode(&shape) { super::rotation(b_len * std::mem::size_of::<T>()) } else { 1 };
    let bs = (0..copies).map(|_| stream.clone_htod(&fill(b_len))).collect::<Result<Vec<_>>>()?;
    let mut c = stream.alloc_zeros::<T>(shape.batch * shape.m * shape.n)?;
    let mm = match level {
        Some(l) => Matmul::new(shape).level(l),
        None => Matmul::new(shape),
    };
    let stream = stream.clone();
    // The rotation goes on across calls: a short call must not find the previous call's copies cached.
    let mut next = 0;
    Ok(Box::new(move |iters| {
        stream.synchronize()?;
        let t = Instant::now();
        for _ in 0..iters {
            mm.run(&stream, &a, &bs[next], None, &mut c)?;
            next = (next + 1) % bs.len();
        }
        stream.synchronize()?;
        Ok(t.elapsed())
    }))
}

/// Measures one shape; `budget` is the target time per measurement. Decode shapes (m ≤ 32) also
/// report the weight bytes streamed per second (`weights_gbps`), the figure that bounds them.
pub fn measure(shape: Shape, dtype: &str, level: Option<Level>, budget: Duration) -> Result<Figure> {
    let mut case = Case::new(shape, dtype, level)?;
    let t = try_per_iter(budget, |n| case.time(n))?;
    let mut params = vec![
        ("m".to_string(), Value::from(shape.m)),
        ("n".to_string(), Value::from(shape.n)),
        ("k".to_string(), Value::from(shape.k)),
        ("dtype".to_string(), Value::from(dtype)),
        ("transpose_b".to_string(), Value::from(shape.transpose_b)),
        ("level".to_string(), Value::from(level.unwrap_or_else(ascend_kernels::cpu::active).name())),
    ];
    if decode(&shape) {
        let elem = elem_size(dtype)?;
        let b_bytes = (if shape.shared_b { 1 } else { shape.batch } * shape.n * shape.k * elem) as f64;
        params.push(("weights_gbps".to_string(), Value::from(b_bytes / t.as_secs_f64() / 1e9)));
    }
    Ok(Figure { name: "kernels.matmul".into(), params, value: case.flops() / t.as_secs_f64() / 1e9, unit: "gflops" })
}

/// Bytes per element of a [`DTYPES`] entry.
fn elem_size(dtype: &str) -> Result<usize> {
    match dtype {
        "f32" => Ok(4),
        "f16" | "bf16" => Ok(2),
        other => Err(Error::InvalidArgument(format!("dtype {other:?}: expected one of {DTYPES:?}"))),
    }
}

/// The default sweep's shapes: square 512..4096, and decode (m = 1 and 16 against `[4096, 4096]`
/// weights stored `[n, k]`, as in a linear layer).
pub fn default_shapes() -> Vec<Shape> {
    let square = [512, 1024, 2048, 4096].map(|n| Shape::new(n, n, n));
    let decode = [1, 16].map(|m| Shape::new(m, 4096, 4096).transposed_b());
    square.into_iter().chain(decode).collect()
}

/// Checks every case (nothing is allocated for a sweep that would be refused), then measures the
/// streaming-read limit (when there are memory-bound decode figures), then every shape in every
/// dtype; decode figures whose weights stream from memory get `read_gbps` (the limit measured
/// around them, see [`ReadLimit`](super::limits::ReadLimit)) and `read_fraction` = weights_gbps /
/// read_gbps. `progress` is told each step.
pub fn sweep(
    shapes: &[Shape],
    dtypes: &[&str],
    level: Option<Level>,
    budget: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Figure>> {
    {
        let stream = Stream::new(&Context::new(0)?)?;
        for &shape in shapes {
            for &dtype in dtypes {
                check(&stream, shape, dtype)?;
            }
        }
    }
    let bound = shapes.iter().any(|s| dtypes.iter().any(|d| memory_bound(s, d)));
    let mut out = Vec::new();
    let mut limit = read_limit_if(bound, budget, &mut progress, &mut out)?;
    for &shape in shapes {
        for &dtype in dtypes {
            progress(&format!("kernels.matmul {dtype} {}x{}x{}", shape.m, shape.n, shape.k));
            let decode_limit = limit.as_mut().filter(|_| memory_bound(&shape, dtype));
            let (f, read_gbps) = around_if(decode_limit, || measure(shape, dtype, level, budget))?;
            out.push(match read_gbps {
                Some(r) => {
                    let w = f.param("weights_gbps").unwrap_or(f64::NAN);
                    with_read(f, w, r)
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
    fn case_bytes_counts_the_f32_accumulator() {
        // A [64, 16], B [16, 32], C [64, 32]; the upload of A; the f32 accumulator [64, 32].
        let s = Shape::new(64, 32, 16);
        assert_eq!(case_bytes(s, 4), Some(4096 + 2048 + 8192 + 4096 + 8192));
        // The accumulator is f32 whatever the inputs are.
        assert_eq!(case_bytes(s, 2), Some(2048 + 1024 + 4096 + 2048 + 8192));
        // A decode shape holds its rotated copies of B (bf16 [4096, 4096]: 32 MiB, 8 copies).
        let d = Shape::new(1, 4096, 4096).transposed_b();
        let b = 32 << 20;
        assert_eq!(super::super::rotation(b), 8);
        assert_eq!(case_bytes(d, 2), Some(8192 + 8 * b + 8192 + b + 4 * 4096));
        assert_eq!(case_bytes(Shape::new(usize::MAX, 2, 2), 4), None);
    }

    #[test]
    fn only_decode_weights_beyond_the_cache_are_memory_bound() {
        assert!(memory_bound(&Shape::new(1, 4096, 4096).transposed_b(), "bf16"));
        assert!(!memory_bound(&Shape::new(1, 2, 2), "f32"), "16 bytes of weights stay in cache");
        assert!(!memory_bound(&Shape::new(512, 512, 512), "f32"), "not a decode shape");
    }
}
