//! Objects that outlive the context that made them: a buffer of one device used by a stream of
//! another device keeps that stream's context alive until its release no longer needs it. (Its own
//! test binary: it watches device memory, which no other test may use meanwhile.)

use ascend_rt::{Context, PinnedHostBuffer, Stream};
use std::time::{Duration, Instant};

#[test]
fn a_buffer_used_from_another_device_is_released_after_that_device_is_dropped() {
    let watch = Context::new(0).unwrap();
    let (free0, _) = watch.memory_info().unwrap();
    let (c0, c1) = (Context::new(0).unwrap(), Context::new(1).unwrap());
    let (s0, s1) = (Stream::new(&c0).unwrap(), Stream::new(&c1).unwrap());
    let b0 = s0.clone_htod(&vec![1.5f32; 1 << 20]).unwrap();
    let mut b1 = s1.alloc::<f32>(1 << 20).unwrap();
    s1.memcpy_dtod(&b0, &mut b1).unwrap(); // b0 remembers an event of device 1's context
    assert_eq!(b1.to_vec().unwrap()[77], 1.5);
    drop((b1, s1, c1));
    s0.launch_host(|| std::thread::sleep(Duration::from_millis(100))).unwrap();
    drop((b0, s0, c0)); // its release must still order after device 1's use, and then free
    let t = Instant::now();
    while watch.memory_info().unwrap().0 != free0 {
        assert!(t.elapsed() < Duration::from_secs(10), "device 0 memory not released");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn pinned_memory_dropped_with_its_copy_queued_lets_its_context_go() {
    // Device 2: watched by this test only.
    let watch = Context::new(2).unwrap();
    let (free0, _) = watch.memory_info().unwrap();
    let ctx = Context::new(2).unwrap();
    let s = Stream::new(&ctx).unwrap();
    let pinned = PinnedHostBuffer::from_slice(&ctx, &vec![2.5f32; 1 << 20]).unwrap();
    let mut dev = s.alloc::<f32>(1 << 20).unwrap();
    s.launch_host(|| std::thread::sleep(Duration::from_millis(100))).unwrap();
    s.memcpy_htod_async(&pinned, &mut dev).unwrap();
    // The copy is still queued: the pinned buffer's release waits for it, held by its context,
    // which must not hold itself alive (its device memory would never come back).
    drop((pinned, dev, s, ctx));
    let t = Instant::now();
    while watch.memory_info().unwrap().0 != free0 {
        assert!(t.elapsed() < Duration::from_secs(10), "device 2 memory not released");
        std::thread::sleep(Duration::from_millis(5));
    }
}
