//! All-reduce latency and bus bandwidth, with the ranks in threads of this process or in separate
//! processes. The same [`World`] serves `ascend bench collectives` and `benches/collectives.rs`.
//!
//! Each rank owns a device (rank r → device r), a stream and a communicator. A measurement is: every
//! rank synchronises on a barrier, enqueues `iters` in-place all-reduces, waits for its stream, and
//! reports its time; the slowest rank's time is the result. busbw = algbw · 2(n−1)/n (nccl-tests).

use super::{try_per_iter, Figure};
use ascend_rt::{bf16, f16, Communicator, Context, Device, DeviceRepr, Error, ReduceOp, Result, RootInfo, Stream};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Element types the benchmark can reduce.
pub const DTYPES: [&str; 4] = ["f32", "bf16", "f16", "i32"];

/// Bytes per element of a [`DTYPES`] entry.
pub fn element_bytes(dtype: &str) -> Option<usize> {
    match dtype {
        "f32" | "i32" => Some(4),
        "bf16" | "f16" => Some(2),
        _ => None,
    }
}

/// One rank: its device, stream and communicator.
pub struct Rank {
    stream: Arc<Stream>,
    comm: Communicator,
}

impl Rank {
    /// Joins the communicator as `rank` of `ranks` on device `rank`.
    pub fn join(root: &RootInfo, ranks: usize, rank: usize) -> Result<Rank> {
        let ctx = Context::new(rank)?;
        let stream = Stream::new(&ctx)?;
        let comm = Communicator::from_root_info(&ctx, root, ranks, rank)?;
        Ok(Rank { stream, comm })
    }

    /// Time for `iters` in-place all-reduces of `bytes` of `dtype`, started together on every rank.
    pub fn all_reduce(&self, bytes: usize, dtype: &str, iters: u64) -> Result<Duration> {
        match dtype {
            "f32" => self.timed::<f32>(bytes, iters),
            "bf16" => self.timed::<bf16>(bytes, iters),
            "f16" => self.timed::<f16>(bytes, iters),
            "i32" => self.timed::<i32>(bytes, iters),
            other => Err(Error::InvalidArgument(format!("dtype {other:?}: expected one of {DTYPES:?}"))),
        }
    }

    fn timed<T: DeviceRepr>(&self, bytes: usize, iters: u64) -> Result<Duration> {
        let n = (bytes / std::mem::size_of::<T>()).max(1);
        let mut buf = self.stream.alloc_zeros::<T>(n)?;
        let s = &self.stream;
        self.comm.all_reduce_in_place(&mut buf, ReduceOp::Sum, s)?; // warm up: touch the staging memory
        self.comm.barrier(s)?;
        s.synchronize()?;
        let t = Instant::now();
        for _ in 0..iters {
            self.comm.all_reduce_in_place(&mut buf, ReduceOp::Sum, s)?;
        }
        s.synchronize()?;
        Ok(t.elapsed())
    }
}

enum Member {
    Thread(Sender<(usize, String, u64)>, Receiver<Result<Duration>>),
    Process(Child, ChildStdin, BufReader<ChildStdout>),
}

/// A set of ranks ready to measure.
pub struct World {
    ranks: usize,
    members: Vec<Member>,
}

/// Rank r runs on device r: refused up front when there are fewer devices, rather than after the
/// other ranks have waited out HCCL_CONNECT_TIMEOUT for the one that could not start.
fn enough_devices(ranks: usize) -> Result<()> {
    let n = Device::count()?;
    if ranks > n {
        return Err(Error::InvalidArgument(format!(
            "{ranks} ranks need {ranks} devices, {n} are visible (ASCEND_SIM_DEVICES sets the simulator's)"
        )));
    }
    Ok(())
}

/// Refuses a sweep before any rank starts when there are fewer devices than ranks, or when its
/// buffers cannot fit: each rank holds one buffer of the message being reduced (the largest of
/// `sizes` at most) on its device, and on the simulator every rank's device memory is this host's
/// memory, so the ranks' buffers add up there.
pub fn ensure_fits(ranks: usize, sizes: &[usize]) -> Result<()> {
    enough_devices(ranks)?;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    let stream = Stream::new(&Context::new(0)?)?;
    super::ensure_bytes(&stream, Some(largest))?;
    if stream.context().runtime().host_addressable() {
        super::ensure_host_bytes(largest.checked_mul(ranks))?;
    }
    Ok(())
}

impl World {
    /// `ranks` ranks as threads of this process.
    pub fn threads(ranks: usize) -> Result<World> {
        enough_devices(ranks)?;
        let root = RootInfo::new()?;
        let mut members = Vec::new();
        let (ready_tx, ready_rx) = channel();
        for r in 0..ranks {
            let (cmd_tx, cmd_rx) = channel::<(usize, String, u64)>();
            let (res_tx, res_rx) = channel();
            let (root, ready) = (root.clone(), ready_tx.clone());
            std::thread::spawn(move || {
                // Each thread's sender lives only until it has reported (or dies trying), so that a
                // rank that panics before reporting ends the wait below instead of blocking it.
                let rank = match Rank::join(&root, ranks, r) {
                    Ok(rank) => {
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        rank
                    }
                    Err(e) => return drop(ready.send(Err(e))),
                };
                for (bytes, dtype, iters) in cmd_rx {
                    let _ = res_tx.send(rank.all_reduce(bytes, &dtype, iters));
                }
            });
            members.push(Member::Thread(cmd_tx, res_rx));
        }
        // Only the rank threads hold senders now: when every one still to report has died, recv fails.
        drop(ready_tx);
        for _ in 0..ranks {
            ready_rx.recv().map_err(|_| Error::Unsupported("a rank thread died".into()))??;
        }
        Ok(World { ranks, members })
    }

    /// `ranks` ranks as processes running `exe bench-worker` (the `ascend` tool).
    pub fn processes(ranks: usize, exe: &std::path::Path) -> Result<World> {
        enough_devices(ranks)?;
        let root = RootInfo::new()?;
        let hex: String = root.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
        let mut members = Vec::new();
        for r in 0..ranks {
            let mut child = Command::new(exe)
                .args(["bench-worker", "--rank", &r.to_string(), "--ranks", &ranks.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| Error::Unsupported(format!("cannot start {}: {e}", exe.display())))?;
            let mut stdin = child.stdin.take().unwrap();
            writeln!(stdin, "{hex}").map_err(io)?;
            let stdout = BufReader::new(child.stdout.take().unwrap());
            members.push(Member::Process(child, stdin, stdout));
        }
        Ok(World { ranks, members })
    }

    /// Number of ranks.
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// The slowest rank's time for `iters` all-reduces of `bytes` of `dtype`.
    pub fn all_reduce(&mut self, bytes: usize, dtype: &str, iters: u64) -> Result<Duration> {
        for m in &mut self.members {
            match m {
                Member::Thread(tx, _) => tx
                    .send((bytes, dtype.to_string(), iters))
                    .map_err(|_| Error::Unsupported("a rank thread died".into()))?,
                Member::Process(_, stdin, _) => writeln!(stdin, "{bytes} {dtype} {iters}").map_err(io)?,
            }
        }
        let mut slowest = Duration::ZERO;
        for m in &mut self.members {
            let t = match m {
                Member::Thread(_, rx) => rx.recv().map_err(|_| Error::Unsupported("a rank thread died".into()))??,
                Member::Process(_, _, out) => {
                    let mut line = String::new();
                    out.read_line(&mut line).map_err(io)?;
                    let ns: u64 = line
                        .trim()
                        .parse()
                        .map_err(|_| Error::Unsupported(format!("a rank process failed: {line:?}")))?;
                    Duration::from_nanos(ns)
                }
            };
            slowest = slowest.max(t);
        }
        Ok(slowest)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for m in self.members.drain(..) {
            if let Member::Process(mut child, stdin, _) = m {
                drop(stdin); // end of commands: the worker exits
                let _ = child.wait();
            }
        }
    }
}

fn io(e: std::io::Error) -> Error {
    Error::Unsupported(format!("talking to a rank process: {e}"))
}

/// The body of a rank process: reads the root info (hex) and then `bytes dtype iters` lines from
/// stdin, answers each with the elapsed nanoseconds (or `error: ...`).
pub fn worker(rank: usize, ranks: usize) -> Result<()> {
    let mut lines = std::io::stdin().lock().lines();
    let hex = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let bytes: Vec<u8> =
        (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect();
    let rank = Rank::join(&RootInfo::from_bytes(&bytes)?, ranks, rank)?;
    for line in lines {
        let line = line.map_err(io)?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let reply = match (f.first().and_then(|b| b.parse().ok()), f.get(1), f.get(2).and_then(|i| i.parse().ok())) {
            (Some(b), Some(d), Some(i)) => match rank.all_reduce(b, d, i) {
                Ok(t) => t.as_nanos().to_string(),
                Err(e) => format!("error: {e}"),
            },
            _ => format!("error: bad command {line:?}"),
        };
        println!("{reply}");
    }
    Ok(())
}

/// Measures all-reduce at each size on `world`; each measurement takes about `budget`.
pub fn sweep(
    world: &mut World,
    sizes: &[usize],
    dtype: &str,
    budget: Duration,
    mut progress: impl FnMut(&str),
) -> Result<Vec<Figure>> {
    let n = world.ranks();
    let mode = if world.members.iter().any(|m| matches!(m, Member::Process(..))) { "processes" } else { "threads" };
    let mut out = Vec::new();
    for &bytes in sizes {
        progress(&format!("all_reduce {} ranks ({mode}) {}", n, super::runtime::human_bytes(bytes)));
        let t = try_per_iter(budget, |iters| world.all_reduce(bytes, dtype, iters))?;
        let algbw = bytes as f64 / t.as_secs_f64() / 1e9;
        let params = |extra: Vec<(&str, Value)>| {
            let mut p: Vec<(String, Value)> = vec![
                ("ranks".into(), Value::from(n)),
                ("mode".into(), Value::from(mode)),
                ("dtype".into(), Value::from(dtype)),
                ("bytes".into(), Value::from(bytes)),
            ];
            p.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
            p
        };
        out.push(Figure {
            name: "collectives.all_reduce.latency".into(),
            params: params(vec![]),
            value: t.as_secs_f64() * 1e6,
            unit: "us",
        });
        out.push(Figure {
            name: "collectives.all_reduce.algbw".into(),
            params: params(vec![]),
            value: algbw,
            unit: "gbps",
        });
        let busbw = algbw * 2.0 * (n as f64 - 1.0) / n as f64;
        out.push(Figure {
            name: "collectives.all_reduce.busbw".into(),
            params: params(vec![]),
            value: busbw,
            unit: "gbps",
        });
    }
    Ok(out)
}
