//! The safe layer on the simulator backend: ordering, release of memory in use, errors.

use ascend_rt::{bf16, f16, Backend, Context, DeviceBuffer, Error, PinnedHostBuffer, Runtime, Stream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn stream(device: usize) -> Arc<Stream> {
    Stream::new(&Context::new(device).unwrap()).unwrap()
}

#[test]
fn runtime_reports_backend_and_reason() {
    let rt = Runtime::get().unwrap();
    if std::env::var("ASCEND_BACKEND").as_deref() != Ok("cann") {
        assert_eq!(rt.backend(), Backend::Sim);
        assert!(!rt.reason().is_empty());
    }
}

#[test]
fn round_trips_every_dtype_and_ndarray() {
    let s = stream(0);
    let f: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
    assert_eq!(s.clone_dtoh(&s.clone_htod(&f).unwrap()).unwrap(), f);
    let h: Vec<f16> = f.iter().map(|&x| f16::from_f32(x)).collect();
    assert_eq!(s.clone_dtoh(&s.clone_htod(&h).unwrap()).unwrap(), h);
    let b: Vec<bf16> = f.iter().map(|&x| bf16::from_f32(x)).collect();
    assert_eq!(s.clone_dtoh(&s.clone_htod(&b).unwrap()).unwrap(), b);
    let i: Vec<i64> = (0..77).map(|x| x * -3).collect();
    assert_eq!(s.clone_dtoh(&s.clone_htod(&i).unwrap()).unwrap(), i);
    let a = ndarray::Array2::from_shape_fn((7, 5), |(r, c)| (r * 10 + c) as f32);
    let t = a.t(); // non-contiguous view: copied in logical order
    let d = s.clone_htod_array(&t).unwrap();
    let back = s.clone_dtoh_array(&d, (5, 7)).unwrap();
    assert_eq!(back, t);
    assert!(matches!(s.clone_dtoh_array(&d, (4, 4)), Err(Error::InvalidArgument(_))));
    let z = s.alloc_zeros::<u16>(333).unwrap();
    assert!(z.to_vec().unwrap().iter().all(|&x| x == 0));
}

#[test]
fn ten_thousand_tasks_run_in_order() {
    let s = stream(0);
    let log = Arc::new(Mutex::new(Vec::with_capacity(10_000)));
    for i in 0..10_000 {
        let log = log.clone();
        s.launch_host(move || log.lock().unwrap().push(i)).unwrap();
    }
    s.synchronize().unwrap();
    assert_eq!(*log.lock().unwrap(), (0..10_000).collect::<Vec<_>>());
}

/// A host kernel on stream A writes `i` into a buffer; stream B copies it out. The tracker must order
/// B after A every time, with no explicit event from the user.
#[test]
fn two_streams_never_observe_an_unordered_value() {
    let ctx = Context::new(1).unwrap();
    let (a, b) = (Stream::new(&ctx).unwrap(), Stream::new(&ctx).unwrap());
    let mut buf: DeviceBuffer<u32> = a.alloc_zeros(4096).unwrap();
    let mut copy: DeviceBuffer<u32> = b.alloc_zeros(4096).unwrap();
    for i in 1..=300u32 {
        let mut l = a.host_launch().unwrap();
        let mut w = l.write(&mut buf).unwrap();
        l.launch(move || {
            if i % 4 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
            // SAFETY: inside the kernel the view is live and exclusively ours.
            unsafe { w.as_mut_slice() }.fill(i);
        })
        .unwrap();
        b.memcpy_dtod(&buf, &mut copy).unwrap();
        let seen = b.clone_dtoh(&copy).unwrap();
        assert!(seen.iter().all(|&x| x == i), "iteration {i}: saw {}", seen[0]);
    }
    // The reverse direction: a write on A (the buffer's home) must wait for B's pending read (held
    // behind a gate), or the read would see the new value.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    b.launch_host(move || {
        let _ = gate.recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    b.memcpy_dtod(&buf, &mut copy).unwrap(); // reads 300, once the gate opens
    let mut l = a.host_launch().unwrap();
    let mut w = l.write(&mut buf).unwrap();
    // SAFETY: inside the kernel the view is live and exclusively ours.
    l.launch(move || unsafe { w.as_mut_slice() }.fill(7)).unwrap();
    std::thread::sleep(Duration::from_millis(20)); // an unordered write would have run by now
    open.send(()).unwrap();
    assert!(b.clone_dtoh(&copy).unwrap().iter().all(|&x| x == 300), "B's read saw A's later write");
    assert!(a.clone_dtoh(&buf).unwrap().iter().all(|&x| x == 7));
}

/// Streams of two `Context`s of one device (each with a single stream of its own): a write on the
/// other context's stream must still order a later read on the buffer's home stream.
#[test]
fn a_stream_of_another_context_is_ordered_too() {
    // Device 1: no test of this binary watches its free memory (device 3's is).
    let (ca, cb) = (Context::new(1).unwrap(), Context::new(1).unwrap());
    let (home, other) = (Stream::new(&ca).unwrap(), Stream::new(&cb).unwrap());
    let mut buf: DeviceBuffer<u32> = home.alloc_zeros(1 << 16).unwrap();
    for i in 1..=3u32 {
        let mut l = other.host_launch().unwrap();
        let mut w = l.write(&mut buf).unwrap();
        l.launch(move || {
            std::thread::sleep(Duration::from_millis(50));
            // SAFETY: inside the kernel the view is live and exclusively ours.
            unsafe { w.as_mut_slice() }.fill(i);
        })
        .unwrap();
        let seen = home.clone_dtoh(&buf).unwrap();
        assert!(seen.iter().all(|&x| x == i), "round {i}: saw {} and {}", seen[0], seen[seen.len() - 1]);
    }
}

#[test]
fn explicit_events_order_streams_and_time_work() {
    let ctx = Context::new(2).unwrap();
    let (a, b) = (Stream::new(&ctx).unwrap(), Stream::new(&ctx).unwrap());
    let flag = Arc::new(AtomicUsize::new(0));
    let start = a.record_event().unwrap();
    let f = flag.clone();
    a.launch_host(move || {
        std::thread::sleep(Duration::from_millis(20));
        f.store(1, Ordering::SeqCst);
    })
    .unwrap();
    let end = a.record_event().unwrap();
    b.wait(&end).unwrap();
    let f = flag.clone();
    let seen = Arc::new(AtomicUsize::new(9));
    let s2 = seen.clone();
    b.launch_host(move || s2.store(f.load(Ordering::SeqCst), Ordering::SeqCst)).unwrap();
    b.synchronize().unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(end.is_complete().unwrap());
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(ms >= 19.0, "{ms} ms");
}

#[test]
fn dropping_a_buffer_in_use_waits_for_the_work_without_blocking() {
    let s = stream(3);
    let (free0, _) = s.context().memory_info().unwrap();
    let data: Vec<f32> = (0..1 << 20).map(|i| i as f32).collect();
    let src = s.clone_htod(&data).unwrap();
    let mut dst = s.alloc::<f32>(1 << 20).unwrap();
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let g = gate.clone();
    s.launch_host(move || {
        let mut open = g.0.lock().unwrap();
        while !*open {
            open = g.1.wait(open).unwrap();
        }
    })
    .unwrap();
    s.memcpy_dtod(&src, &mut dst).unwrap();
    let (free_before, _) = s.context().memory_info().unwrap();
    drop(src); // queued copy still reads it: the release must wait
    let (free_mid, _) = s.context().memory_info().unwrap();
    assert_eq!(free_mid, free_before, "src released while the copy that reads it is queued");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    assert_eq!(s.clone_dtoh(&dst).unwrap(), data);
    drop(dst);
    s.synchronize().unwrap();
    let (free1, _) = s.context().memory_info().unwrap();
    assert_eq!(free1, free0, "all memory released once the work finished");
}

#[test]
fn dropping_a_stream_runs_its_pending_work() {
    let s = stream(0);
    let n = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        let n = n.clone();
        s.launch_host(move || {
            std::thread::sleep(Duration::from_micros(100));
            n.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
    }
    drop(s);
    assert_eq!(n.load(Ordering::SeqCst), 100);
}

#[test]
fn errors_carry_code_name_and_message() {
    let e = Context::new(4096).unwrap_err();
    assert_eq!(e.code(), Some(ascend_sys::ACL_ERROR_RT_INVALID_DEVICEID));
    assert_eq!(e.name(), Some("ACL_ERROR_RT_INVALID_DEVICEID"));
    let text = e.to_string();
    assert!(text.contains("aclrtSetDevice") && text.contains("does not exist"), "{text}");
    let s = stream(0);
    assert!(matches!(s.alloc::<f32>(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(s.alloc::<f32>(usize::MAX), Err(Error::InvalidArgument(_))));
    let e = s.alloc::<u8>(1 << 50).unwrap_err();
    assert_eq!(e.code(), Some(ascend_sys::ACL_ERROR_RT_MEMORY_ALLOCATION), "{e}");
    let mut small = s.alloc::<f32>(3).unwrap();
    assert!(matches!(s.memcpy_htod(&[1.0, 2.0], &mut small), Err(Error::InvalidArgument(_))));
}

#[test]
fn a_panicking_host_task_is_reported_by_synchronize() {
    let s = stream(0);
    s.launch_host(|| panic!("kernel bug")).unwrap();
    match s.synchronize() {
        Err(Error::HostTaskPanicked(m)) => assert!(m.contains("kernel bug")),
        other => panic!("expected a host-task error, got {other:?}"),
    }
}

#[test]
fn pinned_memory_copied_after_a_host_kernel_panicked_reports_the_panic() {
    let s = stream(0);
    let mut y = s.clone_htod(&[1u32; 8]).unwrap();
    let mut host = PinnedHostBuffer::from_slice(s.context(), &[7u32; 8]).unwrap();
    let mut l = s.host_launch().unwrap();
    let _y = l.write(&mut y).unwrap();
    l.launch(|| panic!("kernel bug")).unwrap();
    s.memcpy_dtoh_async(&y, &mut host).unwrap();
    match host.as_slice() {
        Err(Error::HostTaskPanicked(m)) => assert!(m.contains("kernel bug")),
        other => panic!("expected the panic, got {other:?}"),
    }
}

#[test]
fn pinned_async_copies() {
    let s = stream(5);
    let ctx = s.context().clone();
    let src = PinnedHostBuffer::from_slice(&ctx, &[1.5f64, 2.5, 3.5]).unwrap();
    let mut dev = s.alloc::<f64>(3).unwrap();
    s.memcpy_htod_async(&src, &mut dev).unwrap();
    let mut out = PinnedHostBuffer::<f64>::new(&ctx, 3).unwrap();
    s.memcpy_dtoh_async(&dev, &mut out).unwrap();
    assert_eq!(out.as_slice().unwrap(), &[1.5, 2.5, 3.5]); // waits for the copy
    let mut wrong = PinnedHostBuffer::<f64>::new(&ctx, 4).unwrap();
    assert!(matches!(s.memcpy_dtoh_async(&dev, &mut wrong), Err(Error::InvalidArgument(_))));
}

#[test]
fn host_kernels_are_checked_for_the_device() {
    let a = stream(6);
    let b = stream(7);
    let buf = a.alloc_zeros::<f32>(16).unwrap();
    let mut l = b.host_launch().unwrap();
    assert!(matches!(l.read(&buf), Err(Error::InvalidArgument(_))));
}

#[test]
fn runtime_calls_inside_a_host_task_are_refused_before_anything_is_enqueued() {
    let s = stream(0);
    let zeros = s.alloc_zeros::<u8>(1 << 16).unwrap();
    let out = Arc::new(Mutex::new(vec![7u8; 1 << 16]));
    let (tx, rx) = std::sync::mpsc::channel();
    let (s2, o) = (s.clone(), out.clone());
    s.launch_host(move || {
        let mut o = o.lock().unwrap();
        // A blocking copy here would wait for this very task; if it were enqueued anyway, it would
        // write into `o` after the borrow (and the lock) ended.
        let copy = s2.memcpy_dtoh(&zeros, &mut o[..]);
        let sync = s2.synchronize();
        let other = Context::new(1).map(|_| ());
        tx.send([copy, sync, other]).unwrap();
    })
    .unwrap();
    s.synchronize().unwrap();
    for r in rx.recv().unwrap() {
        assert!(matches!(r, Err(Error::Unsupported(ref m)) if m.contains("host task")), "{r:?}");
    }
    assert!(out.lock().unwrap().iter().all(|&x| x == 7), "a refused copy still ran");
}

#[test]
fn concurrent_host_reads_of_pinned_memory_both_wait_for_the_copy() {
    let s = stream(0);
    let n = 1 << 16;
    let ones = s.clone_htod(&vec![1f32; n]).unwrap();
    let mut pinned = PinnedHostBuffer::<f32>::new(s.context(), n).unwrap();
    s.launch_host(|| std::thread::sleep(Duration::from_millis(200))).unwrap();
    s.memcpy_dtoh_async(&ones, &mut pinned).unwrap();
    let pinned = &pinned;
    std::thread::scope(|sc| {
        let read = || sc.spawn(move || pinned.as_slice().unwrap().iter().all(|&x| x == 1.0));
        let first = read();
        std::thread::sleep(Duration::from_millis(20));
        let second = read();
        assert!(first.join().unwrap(), "the first reader saw the copy unfinished");
        assert!(second.join().unwrap(), "the second reader saw the copy unfinished");
    });
}

#[test]
fn a_host_task_reads_pinned_memory_its_stream_has_filled() {
    // The usual completion callback: the copy before the task is done when it runs, so reading the
    // pinned buffer needs no wait (which a host task may not do).
    let s = stream(0);
    let dev = s.clone_htod(&[4u16, 5, 6]).unwrap();
    let mut pinned = PinnedHostBuffer::<u16>::new(s.context(), 3).unwrap();
    s.memcpy_dtoh_async(&dev, &mut pinned).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    s.launch_host(move || tx.send(pinned.as_slice().map(|x| x.to_vec())).unwrap()).unwrap();
    s.synchronize().unwrap();
    assert_eq!(rx.recv().unwrap(), Ok(vec![4, 5, 6]));
}
