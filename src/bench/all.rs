//! `ascend bench all`: a quick sweep of every benchmark on the current backend, each figure next to
//! the limit it is bound by, measured in the same run (copy bandwidth and FMA peak at the start,
//! streaming-read bandwidth around each figure it bounds), and the fraction of it reached.

use super::attention::{self, Workload};
use super::{collectives, limits, matmul, runtime, try_per_iter, Figure};
use ascend_kernels::cpu::{active, Level};
use ascend_kernels::{Heads, Shape};
use ascend_rt::{Context, Device, Result, Stream};
use serde_json::Value;
use std::time::Duration;

/// Adds the limit a figure is bound by (`limit`, `limit_value`, `fraction` parameters), when there
/// is one (the host limits are not measured for an NPU, whose memory the host cannot read).
fn against(mut f: Figure, limit: Option<&Figure>, value: f64) -> Figure {
    if let Some(limit) = limit {
        f.params.push(("limit".into(), Value::from(limit.name.clone())));
        f.params.push(("limit_value".into(), Value::from(limit.value)));
        f.params.push(("fraction".into(), Value::from(value / limit.value)));
    }
    f
}

fn param(f: &Figure, key: &str) -> f64 {
    f.param(key).unwrap_or(f64::NAN)
}

/// Runs the sweep; `budget` is the target time of each measurement; `progress` hears each step.
pub fn quick(budget: Duration, mut progress: impl FnMut(&str)) -> Result<Vec<Figure>> {
    // The limits are this host's: they bound the simulator's kernels, not an NPU's, and are
    // skipped there (no read limit means device memory is not host memory).
    let mut out = Vec::new();
    let mut read_limit = limits::read_limit_if(true, budget, &mut progress, &mut out)?;
    let read = out.first().cloned();
    let host = read_limit.is_some();
    if host {
        progress("limits (copy, FMA peak)");
    }
    let copy = host.then(|| limits::copy_bandwidth(budget)).transpose()?;
    let fma = host.then(|| limits::fma_peak(budget));
    // The bf16 matmuls' limit: AMX tiles where kernels use them; else vdpbf16ps, two products per
    // lane, so twice the f32 peak where the CPU has it.
    let amx = host.then(|| limits::amx_peak(budget)).flatten();
    let bf16_factor = if active() == Level::Avx512Bf16 { 2.0 } else { 1.0 };
    let bf16_peak = amx.clone().or_else(|| {
        fma.clone().map(|mut f| {
            f.name = "limits.fma_peak(bf16)".into();
            f.value *= bf16_factor;
            f
        })
    });
    out.extend([&copy, &fma, &amx].into_iter().flatten().cloned());
    // The read limit around a figure, as a `limits.read` figure of that value.
    let read_at = |r: Option<f64>| read.clone().zip(r).map(|(f, value)| Figure { value, ..f });

    progress("runtime (round trip, device copy)");
    let stream = Stream::new(&Context::new(0)?)?;
    let t = try_per_iter(budget, |n| runtime::round_trip(&stream, n))?;
    out.push(Figure { name: "runtime.round_trip".into(), params: vec![], value: t.as_secs_f64() * 1e6, unit: "us" });
    // The size of the copy limit's probe: both from memory, not from the last-level cache.
    let bytes = limits::PROBE_BYTES;
    let mut bufs = runtime::CopyBuffers::new(&stream, bytes)?;
    let t = try_per_iter(budget, |n| bufs.copy(runtime::Direction::DeviceToDevice, n))?;
    let gbps = bytes as f64 / t.as_secs_f64() / 1e9;
    let f = Figure {
        name: "runtime.copy".into(),
        params: vec![("direction".into(), Value::from("d2d")), ("bytes".into(), Value::from(bytes))],
        value: gbps,
        unit: "gbps",
    };
    out.push(against(f, copy.as_ref(), gbps));

    // Two ranks need two devices; with one, the other figures still stand.
    if Device::count()? >= 2 {
        progress("collectives (2 ranks)");
        let mut world = collectives::World::threads(2)?;
        for f in collectives::sweep(&mut world, &[4 << 10, 16 << 20], "f32", budget, |_| {})? {
            let keep = (f.name.ends_with("latency") && param(&f, "bytes") == 4096.0)
                || (f.name.ends_with("busbw") && param(&f, "bytes") == (16 << 20) as f64);
            if keep && f.unit == "gbps" {
                let v = f.value;
                out.push(against(f, copy.as_ref(), v));
            } else if keep {
                out.push(f);
            }
        }
    }

    progress("matmul");
    for (shape, dtype) in [(Shape::new(1024, 1024, 1024), "f32"), (Shape::new(1024, 1024, 1024), "bf16")] {
        let f = matmul::measure(shape, dtype, None, budget)?;
        let v = f.value;
        out.push(against(f, if dtype == "f32" { fma.as_ref() } else { bf16_peak.as_ref() }, v));
    }
    let (f, r) = limits::around_if(read_limit.as_mut(), || {
        matmul::measure(Shape::new(1, 4096, 4096).transposed_b(), "bf16", None, budget)
    })?;
    let w = param(&f, "weights_gbps");
    out.push(against(f, read_at(r).as_ref(), w));

    progress("attention");
    let heads = Heads::new(32, 8, 128);
    for dtype in ["f32", "bf16"] {
        let f = attention::measure(Workload::Prefill { seq: 1024 }, heads, dtype, budget)?;
        let v = f.value;
        out.push(against(f, if dtype == "f32" { fma.as_ref() } else { bf16_peak.as_ref() }, v));
    }
    let decode = Workload::Decode { batch: 8, context: 2048, block_size: 16 };
    let (f, r) = limits::around_if(read_limit.as_mut(), || attention::measure(decode, heads, "bf16", budget))?;
    let v = f.value;
    out.push(against(f, read_at(r).as_ref(), v));
    Ok(out)
}
