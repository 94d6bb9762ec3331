//! `ascend selftest`: exercises every layer that exists and reports a table of checks.

use ascend::rt::{Context, Device, Error, PinnedHostBuffer, Runtime, Stream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One check's outcome.
pub struct Check {
    pub layer: &'static str,
    pub name: &'static str,
    pub result: Result<String, String>,
}

fn check(layer: &'static str, name: &'static str, f: impl FnOnce() -> Result<String, Error>) -> Check {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Error::Unsupported("the check panicked".into())))
        .map_err(|e| e.to_string());
    Check { layer, name, result }
}

/// Runs every check.
pub fn run() -> Vec<Check> {
    let mut out = vec![check("sys", "function table declared", || Ok(format!("{} C functions", ascend::sys::API_LEN)))];
    out.push(check("sys", "CANN libraries", || {
        Ok(match ascend::sys::load() {
            Ok(l) => format!("loaded ({} symbols)", l.api.present().count()),
            Err(e) => format!("not installed ({} places searched): fine on a host without an NPU", e.attempts.len()),
        })
    }));
    out.push(check("rt", "runtime initialised", || {
        let rt = Runtime::get()?;
        Ok(format!("{}: {}", rt.backend().name(), rt.reason()))
    }));
    out.push(check("rt", "devices", || {
        let n = Device::count()?;
        if n == 0 {
            return Err(Error::Unsupported("no device".into()));
        }
        Ok(format!("{n} device(s), {}", Device::soc_name()?.unwrap_or_default()))
    }));
    out.push(check("rt", "copy round trip", || {
        let s = Stream::new(&Context::new(0)?)?;
        let data: Vec<f32> = (0..100_000).map(|i| i as f32).collect();
        let d = s.clone_htod(&data)?;
        let mut e = s.alloc::<f32>(data.len())?;
        s.memcpy_dtod(&d, &mut e)?;
        if s.clone_dtoh(&e)? != data {
            return Err(Error::Unsupported("data differs after H2D, D2D, D2H".into()));
        }
        Ok("H2D, D2D, D2H of 400 KB".into())
    }));
    out.push(check("rt", "stream order", || {
        let s = Stream::new(&Context::new(0)?)?;
        let next = Arc::new(AtomicUsize::new(0));
        let bad = Arc::new(AtomicUsize::new(0));
        for i in 0..1000 {
            let (next, bad) = (next.clone(), bad.clone());
            s.launch_host(move || {
                if next.fetch_add(1, Ordering::SeqCst) != i {
                    bad.fetch_add(1, Ordering::SeqCst);
                }
            })?;
        }
        s.synchronize()?;
        match bad.load(Ordering::SeqCst) {
            0 => Ok("1000 tasks in order".into()),
            n => Err(Error::Unsupported(format!("{n} tasks out of order"))),
        }
    }));
    out.push(check("rt", "cross-stream events", || {
        let ctx = Context::new(0)?;
        let (a, b) = (Stream::new(&ctx)?, Stream::new(&ctx)?);
        let flag = Arc::new(AtomicUsize::new(0));
        let f = flag.clone();
        a.launch_host(move || {
            std::thread::sleep(std::time::Duration::from_millis(5));
            f.store(1, Ordering::SeqCst);
        })?;
        b.wait(&a.record_event()?)?;
        let (f, seen) = (flag.clone(), Arc::new(AtomicUsize::new(7)));
        let s2 = seen.clone();
        b.launch_host(move || s2.store(f.load(Ordering::SeqCst), Ordering::SeqCst))?;
        b.synchronize()?;
        match seen.load(Ordering::SeqCst) {
            1 => Ok("the waiting stream saw the other stream's work".into()),
            _ => Err(Error::Unsupported("the waiting stream ran early".into())),
        }
    }));
    out.push(check("rt", "pinned async copies", || {
        let ctx = Context::new(0)?;
        let s = Stream::new(&ctx)?;
        let src = PinnedHostBuffer::from_slice(&ctx, &[3u32; 4096])?;
        let mut d = s.alloc::<u32>(4096)?;
        let mut back = PinnedHostBuffer::<u32>::new(&ctx, 4096)?;
        s.memcpy_htod_async(&src, &mut d)?;
        s.memcpy_dtoh_async(&d, &mut back)?;
        if back.as_slice()?.iter().any(|&x| x != 3) {
            return Err(Error::Unsupported("pinned round trip differs".into()));
        }
        Ok("16 KB both ways".into())
    }));
    out.push(check("rt", "errors are values", || match Context::new(1 << 20) {
        Err(e) if e.code() == Some(ascend::sys::ACL_ERROR_RT_INVALID_DEVICEID) => {
            Ok(e.name().unwrap_or("").to_string())
        }
        Err(e) => Err(e),
        Ok(_) => Err(Error::Unsupported("device 1048576 opened".into())),
    }));
    out.push(check("rt", "collectives (HCCL)", || {
        let n = Device::count()?.min(4);
        let ctxs = (0..n).map(Context::new).collect::<Result<Vec<_>, _>>()?;
        let comms = ascend::rt::Communicator::init_all(&ctxs)?;
        let sums = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .zip(&ctxs)
                .map(|(comm, ctx)| {
                    s.spawn(move || -> Result<f32, Error> {
                        let st = Stream::new(ctx)?;
                        let mut x = st.clone_htod(&[comm.rank() as f32 + 1.0; 1000])?;
                        comm.all_reduce_in_place(&mut x, ascend::rt::ReduceOp::Sum, &st)?;
                        Ok(st.clone_dtoh(&x)?[999])
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(Error::Unsupported("a rank panicked".into()))))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let want = (n * (n + 1) / 2) as f32;
        if sums.iter().all(|&v| v == want) {
            Ok(format!("all_reduce over {n} devices"))
        } else {
            Err(Error::Unsupported(format!("all_reduce gave {sums:?}, expected {want}")))
        }
    }));
    out.push(check("kernels", "matmul (host path)", || {
        let (m, n, k) = (37, 29, 41);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let s = Stream::new(&Context::new(0)?)?;
        let (da, db) = (s.clone_htod(&a)?, s.clone_htod(&b)?);
        let mut dc = s.alloc::<f32>(m * n)?;
        ascend::kernels::Matmul::new(ascend::kernels::Shape::new(m, n, k)).run(&s, &da, &db, None, &mut dc)?;
        let c = s.clone_dtoh(&dc)?;
        let want = |r: usize, j: usize| (0..k).map(|p| a[r * k + p] * b[p * n + j]).sum::<f32>();
        match (0..m * n).find(|&i| c[i] != want(i / n, i % n)) {
            None => Ok(format!("{m}x{n}x{k} exact at level {}", ascend::kernels::cpu::active().name())),
            Some(i) => Err(Error::Unsupported(format!("element {i}: {} vs {}", c[i], want(i / n, i % n)))),
        }
    }));
    out.push(check("kernels", "attention (host path)", || {
        // Two sequences of one token each: softmax over a single key is 1, so each output row
        // is exactly its value row, whatever the scores.
        use ascend::kernels::{Heads, Prefill};
        let s = Stream::new(&Context::new(0)?)?;
        let h = Heads::new(4, 2, 64);
        let q: Vec<f32> = (0..2 * 4 * 64).map(|i| (i % 13) as f32 - 6.0).collect();
        let k: Vec<f32> = (0..2 * 2 * 64).map(|i| (i % 7) as f32).collect();
        let v: Vec<f32> = (0..2 * 2 * 64).map(|i| i as f32 * 0.5).collect();
        let (dq, dk, dv) = (s.clone_htod(&q)?, s.clone_htod(&k)?, s.clone_htod(&v)?);
        let mut dout = s.alloc_zeros::<f32>(q.len())?;
        Prefill::new(h).run(&s, &dq, &dk, &dv, &[0, 1, 2], &mut dout)?;
        let out = s.clone_dtoh(&dout)?;
        let want = |t: usize, head: usize, i: usize| v[(t * 2 + head / 2) * 64 + i];
        let bad = (0..2 * 4 * 64).find(|&x| out[x] != want(x / 256, (x / 64) % 4, x % 64));
        match bad {
            Some(x) => Err(Error::Unsupported(format!("output {x} is {} instead of its value row", out[x]))),
            None => {
                Ok(format!("GQA 4:2, one key per sequence, exact at level {}", ascend::kernels::cpu::active().name()))
            }
        }
    }));
    out.push(check("patch", "registry, version gate, layout", || {
        use ascend::patch::{layout, registry, version};
        let problems = registry::problems(registry::PATCHES, None);
        if !problems.is_empty() {
            return Err(Error::Unsupported(problems.join("; ")));
        }
        let supported =
            registry::PATCHES.iter().filter(|p| version::supported("0.33.0", p.versions) == Ok(true)).count();
        let sizes = layout::Sizes { world: 8, tp: 2, pp: 2, dp: 2, pcp: 1, dcp: 1 };
        let tp = sizes.group_of(layout::Kind::Tp, 5).map_err(|e| Error::Unsupported(e.0))?;
        if tp != [4, 5] {
            return Err(Error::Unsupported(format!("rank 5's TP group is {tp:?}, not [4, 5]")));
        }
        Ok(format!("{} patches ({supported} for vLLM 0.33.0); layout consistent", registry::PATCHES.len()))
    }));
    out
}
