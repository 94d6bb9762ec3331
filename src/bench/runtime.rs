//! Runtime overheads and copy bandwidth: empty host-task launch rate, launch + synchronize round
//! trip, event record + query, allocation + free behind a busy stream, and host↔device /
//! device↔device copies from 4 KiB to 256 MiB.

use super::{try_per_iter, Figure};
use ascend_rt::{Context, DeviceBuffer, Event, PinnedHostBuffer, Result, Stream};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Copy sizes of the sweep (bytes).
pub const COPY_SIZES: [usize; 5] = [4 << 10, 256 << 10, 4 << 20, 64 << 20, 256 << 20];

/// Direction of a copy benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Pinned host memory to device.
    HostToDevice,
    /// Device to pinned host memory.
    DeviceToHost,
    /// Device to device (same device).
    DeviceToDevice,
}

impl Direction {
    /// Every direction.
    pub const ALL: [Direction; 3] = [Direction::HostToDevice, Direction::DeviceToHost, Direction::DeviceToDevice];

    /// `h2d`, `d2h` or `d2d`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::HostToDevice => "h2d",
            Direction::DeviceToHost => "d2h",
            Direction::DeviceToDevice => "d2d",
        }
    }
}

/// Time to enqueue `iters` empty host tasks (the queue is drained afterwards, outside the timing).
pub fn enqueue(stream: &Stream, iters: u64) -> Result<Duration> {
    let t = Instant::now();
    for _ in 0..iters {
        stream.launch_host(|| {})?;
    }
    let d = t.elapsed();
    stream.synchronize()?;
    Ok(d)
}

/// Time for `iters` round trips of one empty host task followed by a synchronize.
pub fn round_trip(stream: &Stream, iters: u64) -> Result<Duration> {
    let t = Instant::now();
    for _ in 0..iters {
        stream.launch_host(|| {})?;
        stream.synchronize()?;
    }
    Ok(t.elapsed())
}

/// Frees queued at most by [`drop_queued`] before it lets the stream drain (untimed).
pub const DROP_QUEUE: u64 = 4096;

/// Time for `iters` allocations of 64 bytes, each dropped at once while the stream is held busy
/// by a host task, so that every free waits in the queue: in runs of [`DROP_QUEUE`], each followed
/// by releasing the stream and synchronizing (untimed). The cost of a free must not grow with the
/// queue.
pub fn drop_queued(stream: &Arc<Stream>, iters: u64) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let run = left.min(DROP_QUEUE);
        let (open, gate) = std::sync::mpsc::channel::<()>();
        stream.launch_host(move || {
            let _ = gate.recv();
        })?;
        let t = Instant::now();
        let timed = (0..run).try_for_each(|_| stream.alloc::<u8>(64).map(drop));
        spent += t.elapsed();
        let _ = open.send(());
        stream.synchronize()?;
        timed?;
        left -= run;
    }
    Ok(spent)
}

/// Time for `iters` event records followed by a completion query each.
pub fn event_record_query(stream: &Stream, event: &Event, iters: u64) -> Result<Duration> {
    let t = Instant::now();
    for _ in 0..iters {
        event.record(stream)?;
        std::hint::black_box(event.is_complete()?);
    }
    let d = t.elapsed();
    stream.synchronize()?;
    Ok(d)
}

/// Buffers for copy benchmarks of one size.
pub struct CopyBuffers {
    stream: Arc<Stream>,
    host: PinnedHostBuffer<u8>,
    a: DeviceBuffer<u8>,
    b: DeviceBuffer<u8>,
}

impl CopyBuffers {
    /// Refuses `bytes` per buffer before anything is allocated when the pinned buffer and the two
    /// device buffers cannot fit.
    pub fn check(stream: &Stream, bytes: usize) -> Result<()> {
        super::ensure_bytes(stream, bytes.checked_mul(3))
    }

    /// Allocates (and touches) `bytes` of pinned memory and two device buffers; refused first when
    /// they cannot fit (see [`CopyBuffers::check`]).
    pub fn new(stream: &Arc<Stream>, bytes: usize) -> Result<Self> {
        Self::check(stream, bytes)?;
        let mut host = PinnedHostBuffer::new(stream.context(), bytes)?;
        host.as_mut_slice()?.fill(1);
        let a = stream.alloc_zeros(bytes)?;
        let b = stream.alloc_zeros(bytes)?;
        stream.synchronize()?;
        Ok(CopyBuffers { stream: stream.clone(), host, a, b })
    }

    /// Bytes per copy.
    pub fn bytes(&self) -> usize {
        self.a.len()
    }

    /// Time for `iters` copies in `dir`, each waited for.
    pub fn copy(&mut self, dir: Direction, iters: u64) -> Result<Duration> {
        let s = &self.stream;
        let t = Instant::now();
        for _ in 0..iters {
            match dir {
                Direction::HostToDevice => s.memcpy_htod_async(&self.host, &mut self.a)?,
                Direction::DeviceToHost => s.memcpy_dtoh_async(&self.a, &mut self.host)?,
                Direction::DeviceToDevice => s.memcpy_dtod(&self.a, &mut self.b)?,
            }
            s.synchronize()?;
        }
        Ok(t.elapsed())
    }
}

/// The whole runtime sweep as figures; `budget` is the target time per measurement.
/// `progress` is called before each measurement with its name.
pub fn sweep(device: usize, budget: Duration, sizes: &[usize], mut progress: impl FnMut(&str)) -> Result<Vec<Figure>> {
    let ctx = Context::new(device)?;
    let stream = Stream::new(&ctx)?;
    let backend = ctx.runtime().backend().name();
    let base = |extra: Vec<(&str, Value)>| {
        let mut p = vec![("backend".to_string(), Value::from(backend)), ("device".to_string(), Value::from(device))];
        p.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        p
    };
    // The copy buffers of the largest size must fit: refused before anything is measured.
    CopyBuffers::check(&stream, sizes.iter().copied().max().unwrap_or(0))?;
    let mut out = Vec::new();
    let timed = |f: &mut dyn FnMut(u64) -> Result<Duration>| try_per_iter(budget, f);

    progress("runtime.enqueue");
    let t = timed(&mut |n| enqueue(&stream, n))?;
    out.push(Figure { name: "runtime.enqueue".into(), params: base(vec![]), value: t.as_secs_f64() * 1e6, unit: "us" });

    progress("runtime.round_trip");
    let t = timed(&mut |n| round_trip(&stream, n))?;
    out.push(Figure {
        name: "runtime.round_trip".into(),
        params: base(vec![]),
        value: t.as_secs_f64() * 1e6,
        unit: "us",
    });

    progress("runtime.event_record_query");
    let event = Event::new(&ctx)?;
    let t = timed(&mut |n| event_record_query(&stream, &event, n))?;
    out.push(Figure {
        name: "runtime.event_record_query".into(),
        params: base(vec![]),
        value: t.as_secs_f64() * 1e6,
        unit: "us",
    });

    progress("runtime.drop_queued");
    let t = timed(&mut |n| drop_queued(&stream, n))?;
    out.push(Figure {
        name: "runtime.drop_queued".into(),
        params: base(vec![("queue", Value::from(DROP_QUEUE))]),
        value: t.as_secs_f64() * 1e6,
        unit: "us",
    });

    for &bytes in sizes {
        let mut bufs = CopyBuffers::new(&stream, bytes)?;
        for dir in Direction::ALL {
            progress(&format!("runtime.copy {} {}", dir.name(), human_bytes(bytes)));
            let t = timed(&mut |n| bufs.copy(dir, n))?;
            out.push(Figure {
                name: "runtime.copy".into(),
                params: base(vec![("direction", Value::from(dir.name())), ("bytes", Value::from(bytes))]),
                value: bytes as f64 / t.as_secs_f64() / 1e9,
                unit: "gbps",
            });
        }
    }
    Ok(out)
}

/// `4 KiB`, `64 MiB`, ...
pub fn human_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
