//! Device memory released after the objects that held it are gone in unusual orders: a buffer
//! used by another device's stream, pinned memory dropped with its copy queued, the last references
//! dropped inside a host task. (Its own test binary, one device per test: each watches its
//! device's free memory, which nothing else may change meanwhile.)

use ascend_rt::{Context, PinnedHostBuffer, Stream};
use std::time::{Duration, Instant};

/// Runs `scenario`, then waits (up to 10 s) for `device`'s free memory to come back to what it was.
fn releases_everything(device: usize, scenario: impl FnOnce()) {
    let watch = Context::new(device).unwrap();
    let (free0, _) = watch.memory_info().unwrap();
    scenario();
    let t = Instant::now();
    while watch.memory_info().unwrap().0 != free0 {
        assert!(t.elapsed() < Duration::from_secs(10), "device {device} memory not released after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_buffer_used_from_another_device_is_released_after_that_device_is_dropped() {
    releases_everything(0, || {
        let (c0, c1) = (Context::new(0).unwrap(), Context::new(1).unwrap());
        let (s0, s1) = (Stream::new(&c0).unwrap(), Stream::new(&c1).unwrap());
        let b0 = s0.clone_htod(&vec![1.5f32; 1 << 20]).unwrap();
        let mut b1 = s1.alloc::<f32>(1 << 20).unwrap();
        s1.memcpy_dtod(&b0, &mut b1).unwrap(); // b0 remembers an event of device 1's context
        assert_eq!(b1.to_vec().unwrap()[77], 1.5);
        drop((b1, s1, c1));
        s0.launch_host(|| std::thread::sleep(Duration::from_millis(100))).unwrap();
        drop((b0, s0, c0)); // its release must still order after device 1's use, and then free
    });
}

#[test]
fn pinned_memory_dropped_with_its_copy_queued_lets_its_context_go() {
    releases_everything(2, || {
        let ctx = Context::new(2).unwrap();
        let s = Stream::new(&ctx).unwrap();
        let pinned = PinnedHostBuffer::from_slice(&ctx, &vec![2.5f32; 1 << 20]).unwrap();
        let mut dev = s.alloc::<f32>(1 << 20).unwrap();
        s.launch_host(|| std::thread::sleep(Duration::from_millis(100))).unwrap();
        s.memcpy_htod_async(&pinned, &mut dev).unwrap();
        // The copy is still queued: the pinned buffer's release waits for it, held by its context,
        // which must not hold itself alive (its device memory would never come back).
        drop((pinned, dev, s, ctx));
    });
}

#[test]
fn the_last_references_dropped_inside_a_host_task_are_released_after_it() {
    releases_everything(4, || {
        let ctx = Context::new(4).unwrap();
        let s = Stream::new(&ctx).unwrap();
        let buf = s.alloc::<f32>(1 << 20).unwrap();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let (s2, b2) = (s.clone(), s.alloc::<f32>(1 << 20).unwrap());
        s.launch_host(move || {
            let _ = wait.recv();
            // The last buffer, stream and (through them) context: tearing them down here would
            // wait for work queued behind this task.
            drop((b2, s2));
        })
        .unwrap();
        drop((buf, s, ctx));
        go.send(()).unwrap();
    });
}
