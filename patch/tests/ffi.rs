//! The C ABI as the engine uses it: host communicators over threads on plain Vec memory, a device
//! communicator on simulator streams, and argument errors with their messages.

use ascend_patch::ffi::*;
use ascend_rt::{Context, Stream};
use std::ffi::{c_void, CString};
use std::thread;

const F32: i32 = 4;
const SUM: i32 = 0;
const MAX: i32 = 2;

fn last_error() -> String {
    let mut buf = vec![0u8; 1024];
    // SAFETY: buf holds 1024 bytes.
    let n = unsafe { ascend_patch_last_error(buf.as_mut_ptr() as *mut _, buf.len()) };
    String::from_utf8_lossy(&buf[..n - 1]).into_owned()
}

fn root(device: i32) -> Vec<u8> {
    let mut root = vec![0u8; 4108];
    // SAFETY: root holds 4108 bytes.
    assert_eq!(unsafe { ascend_patch_root_info(device, root.as_mut_ptr(), root.len()) }, 0, "{}", last_error());
    root
}

struct Comm(*mut c_void);
// SAFETY: the handle is used by one thread at a time (each test thread owns its rank's handle).
unsafe impl Send for Comm {}

fn join(root: &[u8], n: u32, rank: u32, device: i32) -> Comm {
    let mut c = std::ptr::null_mut();
    // SAFETY: valid root bytes and out-pointer.
    let code = unsafe { ascend_patch_comm_init(root.as_ptr(), root.len(), n, rank, device, &mut c) };
    assert_eq!(code, 0, "{}", last_error());
    Comm(c)
}

#[test]
fn host_collectives_on_plain_memory_across_threads() {
    let n = 3usize;
    let root = root(-1);
    let handles: Vec<_> = (0..n)
        .map(|r| {
            let root = root.clone();
            thread::spawn(move || {
                let c = join(&root, n as u32, r as u32, -1);
                let null = std::ptr::null_mut();
                // all_reduce, in place, with max.
                let mut x: Vec<f32> = (0..1000).map(|i| (i * (r + 1)) as f32).collect();
                // SAFETY: buffers of the stated sizes for every call below.
                unsafe {
                    assert_eq!(
                        ascend_patch_all_reduce(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, 1000, F32, MAX, null),
                        0
                    );
                    assert!(x.iter().enumerate().all(|(i, &v)| v == (i * n) as f32));
                    // all_gather.
                    let mine = [r as f32; 5];
                    let mut all = vec![0f32; 5 * n];
                    assert_eq!(
                        ascend_patch_all_gather(c.0, mine.as_ptr() as _, all.as_mut_ptr() as _, 5, F32, null),
                        0
                    );
                    assert!(all.iter().enumerate().all(|(i, &v)| v == (i / 5) as f32));
                    // reduce_scatter.
                    let send: Vec<f32> = (0..4 * n).map(|i| i as f32).collect();
                    let mut part = vec![0f32; 4];
                    assert_eq!(
                        ascend_patch_reduce_scatter(c.0, send.as_ptr() as _, part.as_mut_ptr() as _, 4, F32, SUM, null),
                        0
                    );
                    assert_eq!(part, (0..4).map(|i| (n * (4 * r + i)) as f32).collect::<Vec<_>>());
                    // gather to rank 1.
                    let mut got = vec![-1f32; 2 * n];
                    let send = [r as f32, 10.0 + r as f32];
                    assert_eq!(ascend_patch_gather(c.0, send.as_ptr() as _, got.as_mut_ptr() as _, 2, F32, 1, null), 0);
                    if r == 1 {
                        assert_eq!(got, (0..n).flat_map(|k| [k as f32, 10.0 + k as f32]).collect::<Vec<_>>());
                    } else {
                        assert!(got.iter().all(|&v| v == -1.0), "gather wrote a non-root buffer");
                    }
                    // broadcast from 2, then a ring of send/recv.
                    let mut b = vec![r as f32; 7];
                    assert_eq!(ascend_patch_broadcast(c.0, b.as_mut_ptr() as _, 7, F32, 2, null), 0);
                    assert!(b.iter().all(|&v| v == 2.0));
                    let out = [r as f32; 3];
                    let mut inp = vec![0f32; 3];
                    let (next, prev) = ((r + 1) % n, (r + n - 1) % n);
                    if r % 2 == 0 {
                        assert_eq!(ascend_patch_send(c.0, out.as_ptr() as _, 3, F32, next as i32, null), 0);
                        assert_eq!(ascend_patch_recv(c.0, inp.as_mut_ptr() as _, 3, F32, prev as i32, null), 0);
                    } else {
                        assert_eq!(ascend_patch_recv(c.0, inp.as_mut_ptr() as _, 3, F32, prev as i32, null), 0);
                        assert_eq!(ascend_patch_send(c.0, out.as_ptr() as _, 3, F32, next as i32, null), 0);
                    }
                    assert!(inp.iter().all(|&v| v == prev as f32));
                    assert_eq!(ascend_patch_barrier(c.0, null), 0);
                    assert_eq!(ascend_patch_comm_destroy(c.0), 0);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn device_collectives_are_stream_ordered() {
    let root = root(0);
    let handles: Vec<_> = (0..2u32)
        .map(|r| {
            let root = root.clone();
            thread::spawn(move || {
                let c = join(&root, 2, r, r as i32);
                let st = Stream::new(&Context::new(r as usize).unwrap()).unwrap();
                let buf = st.clone_htod(&vec![r as f32 + 1.0; 64]).unwrap();
                // SAFETY: a device buffer of 64 f32 and its stream.
                let code = unsafe { ascend_patch_all_reduce(c.0, buf.raw(), buf.raw(), 64, F32, SUM, st.raw()) };
                assert_eq!(code, 0, "{}", last_error());
                // A host communicator needs no stream; a device one needs one.
                // SAFETY: as above.
                let code =
                    unsafe { ascend_patch_all_reduce(c.0, buf.raw(), buf.raw(), 64, F32, SUM, std::ptr::null_mut()) };
                assert_eq!(code, 1);
                assert!(last_error().contains("needs the stream"), "{}", last_error());
                assert_eq!(st.clone_dtoh(&buf).unwrap(), vec![3.0f32; 64]);
                // SAFETY: destroyed once.
                assert_eq!(unsafe { ascend_patch_comm_destroy(c.0) }, 0);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn bad_arguments_return_codes_and_messages() {
    let mut c = std::ptr::null_mut();
    let short = [0u8; 10];
    // SAFETY: valid pointers; the sizes are what is being refused.
    unsafe {
        assert_eq!(ascend_patch_comm_init(short.as_ptr(), short.len(), 2, 0, -1, &mut c), 1);
        assert!(last_error().contains("4108"), "{}", last_error());
        // A wild length is refused before any slice of it is made.
        assert_eq!(ascend_patch_comm_init(short.as_ptr(), usize::MAX, 2, 0, -1, &mut c), 1);
        assert!(last_error().contains("4108"), "{}", last_error());
        let r = root(-1);
        assert_eq!(ascend_patch_comm_init(r.as_ptr(), r.len(), 2, 5, -1, &mut c), 1);
        assert!(last_error().contains("rank 5 of 2"), "{}", last_error());
        let mut out = [0u8; 4108];
        assert_eq!(ascend_patch_root_info(4096, out.as_mut_ptr(), out.len()), 1, "no device 4096: HCCL_E_PARA");
        assert_eq!(
            ascend_patch_all_reduce(
                std::ptr::null_mut(),
                short.as_ptr() as _,
                std::ptr::null_mut(),
                1,
                F32,
                SUM,
                std::ptr::null_mut()
            ),
            2
        );
        // One rank alone: bad dtype, bad op, self-send.
        let c = join(&r, 1, 0, -1);
        let mut x = [1f32; 4];
        assert_eq!(
            ascend_patch_all_reduce(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, 4, 99, SUM, std::ptr::null_mut()),
            1
        );
        assert!(last_error().contains("data type 99"), "{}", last_error());
        assert_eq!(
            ascend_patch_all_reduce(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, 4, F32, 7, std::ptr::null_mut()),
            1
        );
        // Counts whose bytes overflow: refused, nothing read (4 × 2^62 wraps to 0 bytes).
        for count in [1u64 << 62, u64::MAX] {
            assert_eq!(
                ascend_patch_all_reduce(
                    c.0,
                    x.as_ptr() as _,
                    x.as_mut_ptr() as _,
                    count,
                    F32,
                    SUM,
                    std::ptr::null_mut()
                ),
                1
            );
            assert!(last_error().contains("overflows"), "{}", last_error());
            assert_eq!(
                ascend_patch_all_gather(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, count, F32, std::ptr::null_mut()),
                1
            );
        }
        assert_eq!(ascend_patch_send(c.0, x.as_ptr() as _, 4, F32, 0, std::ptr::null_mut()), 1);
        assert_eq!(ascend_patch_broadcast(c.0, x.as_mut_ptr() as _, 4, F32, -1, std::ptr::null_mut()), 1);
        assert!(last_error().contains("negative"), "{}", last_error());
        assert_eq!(
            ascend_patch_all_reduce(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, 4, F32, SUM, std::ptr::null_mut()),
            0
        );
        assert_eq!(x, [1f32; 4]);
        assert_eq!(ascend_patch_comm_destroy(c.0), 0);
        // A destroyed handle is refused (not freed twice, not read), and so is one never made.
        assert_eq!(ascend_patch_comm_destroy(c.0), 1);
        assert!(last_error().contains("not a live ascend_patch communicator"), "{}", last_error());
        assert_eq!(
            ascend_patch_all_reduce(c.0, x.as_ptr() as _, x.as_mut_ptr() as _, 4, F32, SUM, std::ptr::null_mut()),
            1
        );
        assert_eq!(ascend_patch_barrier(0xdead0 as *mut c_void, std::ptr::null_mut()), 1);
    }
}

#[test]
fn layout_registry_and_versions_through_the_abi() {
    let kind = CString::new("pp").unwrap();
    let (mut groups, mut size) = (0usize, 0usize);
    let mut out = vec![-1i32; 8];
    // SAFETY: out holds 8 entries; the strings are NUL-terminated.
    unsafe {
        assert_eq!(
            ascend_patch_layout(8, 2, 4, 1, 1, 1, kind.as_ptr(), out.as_mut_ptr(), 8, &mut groups, &mut size),
            0
        );
        assert_eq!((groups, size), (2, 4));
        assert_eq!(out, vec![0, 2, 4, 6, 1, 3, 5, 7]);
        let bad = CString::new("xx").unwrap();
        assert_eq!(ascend_patch_layout(8, 2, 4, 1, 1, 1, bad.as_ptr(), out.as_mut_ptr(), 8, &mut groups, &mut size), 1);
        assert_eq!(
            ascend_patch_layout(6, 4, 1, 1, 1, 1, kind.as_ptr(), out.as_mut_ptr(), 8, &mut groups, &mut size),
            1
        );
        assert!(last_error().contains("not a multiple"), "{}", last_error());
        assert_eq!(
            ascend_patch_layout(u32::MAX, 1, 1, 1, 1, 1, kind.as_ptr(), out.as_mut_ptr(), 8, &mut groups, &mut size),
            1
        );
        assert!(last_error().contains("beyond"), "{}", last_error());

        let mut needed = 0usize;
        assert_eq!(ascend_patch_registry_json(std::ptr::null_mut(), 0, &mut needed), 0, "a size query");
        let mut small = [0u8; 4];
        assert_eq!(ascend_patch_registry_json(small.as_mut_ptr() as _, small.len(), &mut needed), 1);
        let mut buf = vec![0u8; needed];
        assert_eq!(ascend_patch_registry_json(buf.as_mut_ptr() as _, buf.len(), &mut needed), 0);
        let v: serde_json::Value = serde_json::from_slice(&buf[..needed - 1]).unwrap();
        assert_eq!(v.as_array().unwrap().len(), ascend_patch::registry::PATCHES.len());

        let mut ok = -1;
        let (v1, spec) = (CString::new("0.33.0+cpu").unwrap(), CString::new("0.32.0; ==0.33.*").unwrap());
        assert_eq!(ascend_patch_version_supported(v1.as_ptr(), spec.as_ptr(), &mut ok), 0);
        assert_eq!(ok, 1);
        let v2 = CString::new("banana").unwrap();
        assert_eq!(ascend_patch_version_supported(v2.as_ptr(), spec.as_ptr(), &mut ok), 1);
        assert!(last_error().contains("banana"), "{}", last_error());
    }
}
