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
    pub fn new(shape: Shape, dtype: &str, level: Option<Level>) -> Result<Case> {
        let stream = Stream::new(&Context::new(0)?)?;
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

fn runner<T: Element>(
    stream: &Arc<Stream>,
    shape: Shape,
    level: Option<Level>,
) -> Result<Box<dyn FnMut(u64) -> Result<Duration>>> {
    let fill = |n: usize| (0..n).map(|i| T::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5)).collect::<Vec<_>>();
    let b_batch = if shape.shared_b { 1 } else { shape.batch };
    super::ensure_fits(
        stream,
        std::mem::size_of::<T>(),
        &[
            (&[shape.batch, shape.m, shape.k], 1),
            (&[b_batch, shape.k, shape.n], 1),
            (&[shape.batch, shape.m, shape.n], 1),
        ],
    )?;
    let a = stream.clone_htod(&fill(shape.batch * shape.m * shape.k))?;
    let b_len = b_batch * shape.k * shape.n;
    // Decode shapes stream their weights: rotate through copies (see `rotation`; they add at most
    // 256 MiB, which the check above leaves to the allocation).
    let copies = if shape.m <= ascend_kernels::matmul::DECODE_MAX_M {
        super::rotation(b_len * std::mem::size_of::<T>())
    } else {
        1
    };
    let bs = (0..copies).map(|_| stream.clone_htod(&fill(b_len))).collect::<Result<Vec<_>>>()?;
    let mut c = stream.alloc_zeros::<T>(shape.batch * shape.m * shape.n)?;
    let mm = match level {
        Some(l) => Matmul::new(shape).level(l),
        None => Matmul::new(shape),
    };
    let stream = stream.clone();
    Ok(Box::new(move |iters| {
        stream.synchronize()?;
        let t = Instant::now();
        for i in 0..iters as usize {
            mm.run(&stream, &a, &bs[i % bs.len()], None, &mut c)?;
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
    if shape.m <= ascend_kernels::matmul::DECODE_MAX_M {
        let b_bytes = (if shape.shared_b { 1 } else { shape.batch } * shape.n * shape.k * elem_bytes(dtype)) as f64;
        params.push(("weights_gbps".to_string(), Value::from(b_bytes / t.as_secs_f64() / 1e9)));
    }
    Ok(Figure { name: "kernels.matmul".into(), params, value: case.flops() / t.as_secs_f64() / 1e9, unit: "gflops" })
}

fn elem_bytes(dtype: &str) -> usize {
    if dtype == "f32" {
        4
    } else {
        2
    }
}

/// The default sweep's shapes: square 512..4096, and decode (m = 1 and 16 against `[4096, 4096]`
/// weights stored `[n, k]`, as in a linear layer).
pub fn default_shapes() -> Vec<Shape> {
    let square = [512, 1024, 2048, 4096].map(|n| Shape::new(n, n, n));
    let decode = [1, 16].map(|m| Shape::new(m, 4096, 4096).transposed_b());
    square.into_iter().chain(decode).collect()
}

/// Measures the streaming-read limit (when there are decode shapes), then every shape in every
/// dtype; decode figures get `read_gbps` (the limit measured around them, see
/// [`ReadLimit`](super::limits::ReadLimit)) and `read_fraction` = weights_gbps / read_gbps.
/// `progress` is told each step.
pub fn sweep(
    shapes: &[Shape],
    dtypes: &[&str],
    level: Option<Level>,
    budget: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Figure>> {
    let decode = |s: &Shape| s.m <= ascend_kernels::matmul::DECODE_MAX_M;
    let mut out = Vec::new();
    let mut limit = read_limit_if(shapes.iter().any(decode), budget, &mut progress, &mut out)?;
    for &shape in shapes {
        for &dtype in dtypes {
            progress(&format!("kernels.matmul {dtype} {}x{}x{}", shape.m, shape.n, shape.k));
            let decode_limit = limit.as_mut().filter(|_| decode(&shape));
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
