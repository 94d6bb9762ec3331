//! Running out of device memory while dropped buffers still wait for their queued work. Its own
//! test binary: it sizes the simulated device before the runtime starts.

use ascend_rt::{Context, Stream};
use std::time::Duration;

#[test]
fn an_allocation_waits_for_memory_that_queued_work_still_holds() {
    // The only test of this binary: nothing else reads the environment meanwhile.
    std::env::set_var("ASCEND_SIM_HBM_BYTES", "64M");
    let s = Stream::new(&Context::new(0).unwrap()).unwrap();
    let (free, _) = s.context().memory_info().unwrap();
    let big = free / 4 * 3 / 4; // u32 elements: three quarters of the free memory
    let a = s.alloc::<u32>(big).unwrap();
    assert!(s.alloc::<u32>(big).is_err(), "two cannot fit at once");
    // Queued work still reads `a` when it is dropped: its memory comes back only after that work.
    let (open, gate) = std::sync::mpsc::channel::<()>();
    s.launch_host(move || {
        let _ = gate.recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    let mut l = s.host_launch().unwrap();
    let view = l.read(&a).unwrap();
    // SAFETY: inside the kernel the view is live and ordered after its writes.
    l.launch(move || assert_eq!(unsafe { view.as_slice() }.len(), big)).unwrap();
    drop(a);
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        open.send(()).unwrap();
    });
    let b = s.alloc::<u32>(big);
    opener.join().unwrap();
    assert!(b.is_ok(), "the allocation did not wait for the memory being released: {:?}", b.err());
    s.synchronize().unwrap();
    drop(b);

    // Memory whose work has finished comes back at once, even when it was queued behind frees
    // still waiting for a busy stream (more of them than one release scans past).
    let t = Stream::new(s.context()).unwrap();
    let (open, gate) = std::sync::mpsc::channel::<()>();
    s.launch_host(move || {
        let _ = gate.recv_timeout(Duration::from_secs(60));
    })
    .unwrap();
    for _ in 0..100 {
        drop(s.alloc::<u8>(64).unwrap());
    }
    // Two of these cannot fit at once, but one fits in what `b` left whether or not `b`'s release
    // ran before the small allocations above were placed (they may sit right after its place).
    let most = free / 4 * 5 / 8;
    drop(t.alloc::<u32>(most).unwrap());
    let started = std::time::Instant::now();
    let c = t.alloc::<u32>(most);
    let waited = started.elapsed();
    open.send(()).unwrap();
    assert!(c.is_ok(), "{:?}", c.err());
    assert!(waited < Duration::from_secs(10), "it waited {waited:?} for the busy stream");
    s.synchronize().unwrap();
}
