//! The simulator's ACL behaviours, each asserting the exact error code of CANN (reference checklist,
//! `shared/reference/cann-api.md` §6). Tests share one simulated runtime, so each uses its own
//! stream(s) and, where it changes device state, a device no other test uses.

// Callback user data here is a small integer passed through a pointer, as C clients do.
#![allow(clippy::manual_dangling_ptr)]
// assert_code! exists to call the unsafe C entry points tersely.
#![allow(clippy::macro_metavars_in_unsafe)]

mod common;

use ascend_sim::capi::acl::*;
use ascend_sys::*;
use common::*;
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------------
// Devices and contexts

#[test]
fn device_queries() {
    setup(0);
    let mut n = 0u32;
    assert_code!(aclrtGetDeviceCount(&mut n), ACL_SUCCESS);
    assert_eq!(n as usize, ascend_sim::config().visible.len());
    assert_code!(aclrtGetDeviceCount(null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtSetDevice(n as i32), ACL_ERROR_RT_INVALID_DEVICEID);
    assert_code!(aclrtSetDevice(-1), ACL_ERROR_RT_INVALID_DEVICEID);
    let mut mode = -1;
    assert_code!(aclrtGetRunMode(&mut mode), ACL_SUCCESS);
    assert_eq!(mode, ACL_HOST);
    // SAFETY: returns a static string.
    let soc = unsafe { CStr::from_ptr(aclrtGetSocName()) };
    assert_eq!(soc.to_str().unwrap(), ascend_sim::config().soc_name);
    let (mut major, mut minor, mut patch) = (0, 0, 0);
    assert_code!(aclrtGetVersion(&mut major, &mut minor, &mut patch), ACL_SUCCESS);
    assert_eq!((major, minor, patch), (1, 15, 0));
    let mut can = 0;
    assert_code!(aclrtDeviceCanAccessPeer(&mut can, 0, 1), ACL_SUCCESS);
    assert_eq!(can, 1);
    assert_code!(aclrtDeviceCanAccessPeer(&mut can, 1, 1), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtDeviceEnablePeerAccess(1, 1), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtDeviceEnablePeerAccess(1, 0), ACL_SUCCESS);
    assert_code!(aclrtDeviceDisablePeerAccess(1), ACL_SUCCESS);
    assert_code!(aclrtDeviceDisablePeerAccess(1), ACL_ERROR_RT_PARAM_INVALID);
}

#[test]
fn current_device_is_per_thread() {
    setup(0);
    let seen: Vec<i32> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..4)
            .map(|d| {
                s.spawn(move || {
                    let mut cur = -1;
                    assert_code!(aclrtGetDevice(&mut cur), ACL_ERROR_RT_CONTEXT_NULL);
                    assert_code!(aclrtGetMemInfo(ACL_HBM_MEM, &mut 0, &mut 0), ACL_ERROR_RT_CONTEXT_NULL);
                    assert_code!(aclrtSetDevice(d), ACL_SUCCESS);
                    std::thread::sleep(Duration::from_millis(5));
                    assert_code!(aclrtGetDevice(&mut cur), ACL_SUCCESS);
                    cur
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(seen, vec![1, 2, 3]);
    let mut cur = -1;
    assert_code!(aclrtGetDevice(&mut cur), ACL_SUCCESS);
    assert_eq!(cur, 0);
    assert_code!(aclrtGetDevice(null_mut()), ACL_ERROR_INVALID_PARAM);
}

#[test]
fn default_context_is_shared_and_reset_is_counted() {
    setup(0);
    const DEV: i32 = 6; // this test's own device
    let ctx_of = || {
        assert_code!(aclrtSetDevice(DEV), ACL_SUCCESS);
        let mut c = null_mut();
        assert_code!(aclrtGetCurrentContext(&mut c), ACL_SUCCESS);
        c as usize
    };
    let a = ctx_of();
    let b = std::thread::spawn(ctx_of).join().unwrap();
    assert_eq!(a, b, "threads share the device's default context");
    // Set twice (here and in the thread): the first reset keeps the context alive.
    assert_code!(aclrtResetDevice(DEV), ACL_SUCCESS);
    assert_code!(aclrtSetCurrentContext(a as aclrtContext), ACL_SUCCESS);
    let s = new_stream();
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    assert_code!(aclrtResetDevice(DEV), ACL_SUCCESS);
    let mut d = -1;
    assert_code!(aclrtGetDevice(&mut d), ACL_ERROR_RT_CONTEXT_NULL);
    assert_code!(aclrtSetCurrentContext(a as aclrtContext), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtSetDevice(0), ACL_SUCCESS);
}

#[test]
fn explicit_contexts() {
    setup(0);
    let mut def = null_mut();
    assert_code!(aclrtGetCurrentContext(&mut def), ACL_SUCCESS);
    let mut ctx = null_mut();
    assert_code!(aclrtCreateContext(&mut ctx, 5), ACL_SUCCESS);
    let mut cur = null_mut();
    assert_code!(aclrtGetCurrentContext(&mut cur), ACL_SUCCESS);
    assert_eq!(cur, ctx, "a new context becomes current");
    let mut d = -1;
    assert_code!(aclrtGetDevice(&mut d), ACL_SUCCESS);
    assert_eq!(d, 5);
    assert_code!(aclrtCreateContext(&mut ctx, 99), ACL_ERROR_RT_INVALID_DEVICEID);
    assert_code!(aclrtCreateContext(null_mut(), 0), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtDestroyContext(def), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtDestroyContext(null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtDestroyContext(cur), ACL_SUCCESS);
    assert_code!(aclrtDestroyContext(cur), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtSetCurrentContext(0x1234usize as aclrtContext), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtSetCurrentContext(def), ACL_SUCCESS);
}

// ---------------------------------------------------------------------------------------------------
// Memory

#[test]
fn malloc_rules() {
    setup(0);
    let mut p = null_mut();
    assert_code!(aclrtMalloc(&mut p, 0, 0), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtMalloc(null_mut(), 16, 0), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtMalloc(&mut p, usize::MAX, 0), ACL_ERROR_INVALID_PARAM); // overflows once padded
    assert_code!(aclrtMalloc(&mut p, 1 << 50, 0), ACL_ERROR_RT_MEMORY_ALLOCATION); // more than the device has
    let p = malloc(100);
    assert_eq!(p as usize % 64, 0, "64-byte aligned");
    // round_up(100, 32) + 32 = 160 usable bytes.
    let host = vec![7u8; 256];
    assert_code!(aclrtMemcpy(p, 160, host.as_ptr().cast(), 160, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(p, 161, host.as_ptr().cast(), 161, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    let mut q = null_mut();
    assert_code!(aclrtMallocAlign32(&mut q, 100, 0), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(q, 128, host.as_ptr().cast(), 128, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(q, 129, host.as_ptr().cast(), 129, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtFree(p), ACL_SUCCESS);
    assert_code!(aclrtFree(q), ACL_SUCCESS);
}

#[test]
fn meminfo_counts_padded_sizes() {
    // Device 4 is used by this test only.
    setup(4);
    let (mut free0, mut total) = (0usize, 0usize);
    assert_code!(aclrtGetMemInfo(ACL_HBM_MEM, &mut free0, &mut total), ACL_SUCCESS);
    assert_eq!(total, ascend_sim::config().hbm_bytes);
    let p = malloc(1000); // round_up(1000, 32) + 32 = 1056
    let mut free1 = 0usize;
    assert_code!(aclrtGetMemInfo(ACL_HBM_MEM, &mut free1, &mut total), ACL_SUCCESS);
    assert_eq!(free0 - free1, 1056);
    assert_code!(aclrtGetMemInfo(99, &mut free1, &mut total), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtFree(p), ACL_SUCCESS);
    assert_code!(aclrtSetDevice(0), ACL_SUCCESS);
}

#[test]
fn free_errors() {
    setup(0);
    let p = malloc(64);
    assert_code!(aclrtFree(null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtFree((p as usize + 64) as *mut c_void), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtFree(p), ACL_SUCCESS);
    assert_code!(aclrtFree(p), ACL_ERROR_RT_PARAM_INVALID); // double free
    let mut local = 0u64;
    assert_code!(aclrtFree((&mut local as *mut u64).cast()), ACL_ERROR_RT_PARAM_INVALID); // not device memory
    let mut h = null_mut();
    assert_code!(aclrtMallocHost(&mut h, 0), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtMallocHost(&mut h, 100), ACL_SUCCESS);
    assert_code!(aclrtFree(h), ACL_ERROR_RT_PARAM_INVALID); // pinned memory is not device memory
    assert_code!(aclrtFreeHost(h), ACL_SUCCESS);
    assert_code!(aclrtFreeHost(h), ACL_ERROR_RT_PARAM_INVALID);
}

#[test]
fn memcpy_rules() {
    setup(0);
    let d = malloc(4096);
    let src = vec![1u8; 4096];
    let mut dst = vec![0u8; 4096];
    let (s, hd) = (src.as_ptr().cast::<c_void>(), dst.as_mut_ptr().cast::<c_void>());
    assert_code!(aclrtMemcpy(d, 4096, s, 0, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS); // count 0
    assert_code!(aclrtMemcpy(d, 16, s, 32, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID); // count > destMax
    assert_code!(aclrtMemcpy(d, 16, s, 16, 9), ACL_ERROR_INVALID_PARAM); // bad kind
    assert_code!(aclrtMemcpy(null_mut(), 16, s, 16, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtMemcpy(d, 8192, s, 8192, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID); // out of range
    assert_code!(aclrtMemcpy(d, 4096, s, 4096, ACL_MEMCPY_DEFAULT), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(hd, 4096, d, 4096, ACL_MEMCPY_HOST_TO_HOST), ACL_SUCCESS); // kind is advisory
    assert_eq!(dst, src);
    assert_code!(aclrtMemset(d, 4096, 3, 4097), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemset(hd, 4096, 3, 16), ACL_ERROR_RT_PARAM_INVALID); // not the runtime's memory
    assert_code!(aclrtMemset(hd, 4096, 3, 0), ACL_SUCCESS); // nothing to set
    let mut pinned = null_mut();
    assert_code!(aclrtMallocHost(&mut pinned, 64), ACL_SUCCESS);
    assert_code!(aclrtMemset(pinned, 64, 0x5a, 64), ACL_SUCCESS); // pinned host memory is
                                                                  // SAFETY: 64 bytes of pinned memory, just set.
    assert!(unsafe { std::slice::from_raw_parts(pinned as *const u8, 64) }.iter().all(|&b| b == 0x5a));
    assert_code!(aclrtMemset(pinned, 64, 0, 65), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtFreeHost(pinned), ACL_SUCCESS);
    assert_code!(aclrtMemset(d, 4096, 0x1ff, 100), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(hd, 4096, d, 101, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    assert!(dst[..100].iter().all(|&b| b == 0xff) && dst[100] == 1);
    // 2-D: 4 rows of 8 bytes, pitches 16 and 8.
    assert_code!(aclrtMemcpy2d(d, 16, s, 8, 9, 4, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemcpy2d(d, 4096, s, 8, 8, 1000, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemcpy2d(d, 16, s, 8, 8, 4, ACL_MEMCPY_HOST_TO_DEVICE), ACL_SUCCESS);
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    // Copy into freed memory.
    assert_code!(aclrtMemcpy(d, 16, s, 16, ACL_MEMCPY_HOST_TO_DEVICE), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemcpy(hd, 16, d, 16, ACL_MEMCPY_DEVICE_TO_HOST), ACL_ERROR_RT_PARAM_INVALID);
}

#[test]
fn async_copy_rules_and_use_after_free_is_a_sticky_error() {
    setup(0);
    let st = new_stream();
    let d = malloc(1024);
    let mut host = vec![5u8; 1024];
    let h = host.as_mut_ptr().cast::<c_void>();
    let mut other = vec![0u8; 16];
    assert_code!(
        aclrtMemcpyAsync(other.as_mut_ptr().cast(), 16, h, 16, ACL_MEMCPY_HOST_TO_HOST, st),
        ACL_ERROR_RT_FEATURE_NOT_SUPPORT
    );
    assert_code!(aclrtMemcpyAsync(d, 8, h, 16, ACL_MEMCPY_HOST_TO_DEVICE, st), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemsetAsync(d, 8, 0, 16, st), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtMemcpyAsync(d, 4096, h, 4096, ACL_MEMCPY_HOST_TO_DEVICE, st), ACL_ERROR_RT_PARAM_INVALID);
    // Free does not wait for queued work: the queued copy (from pinned memory, so the call does not
    // wait for it) then finds its memory gone.
    let mut pinned = null_mut();
    assert_code!(aclrtMallocHost(&mut pinned, 1024), ACL_SUCCESS);
    let gate = Gate::hold(st);
    assert_code!(aclrtMemcpyAsync(d, 1024, pinned, 1024, ACL_MEMCPY_HOST_TO_DEVICE, st), ACL_SUCCESS);
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    gate.open();
    assert_code!(aclrtSynchronizeStream(st), ACL_ERROR_RT_DEVICE_MEM_ERROR);
    assert_code!(aclrtSynchronizeStream(st), ACL_ERROR_RT_DEVICE_MEM_ERROR); // sticky
                                                                             // SAFETY: returns the thread's message.
    let msg = unsafe { CStr::from_ptr(aclGetRecentErrMsg()) }.to_string_lossy().into_owned();
    assert!(msg.contains("failed earlier"), "{msg}");
    assert_code!(aclrtFreeHost(pinned), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(st), ACL_SUCCESS);
}

/// Pageable host memory may be freed as soon as the call returns (CANN 9 makes such copies
/// synchronous): the call waits for the copy, both ways, and the queued work before it.
#[test]
fn async_copies_of_pageable_memory_return_after_the_copy() {
    setup(0);
    let st = new_stream();
    let d = malloc(4096);
    for to_device in [true, false] {
        let mut host = vec![if to_device { 7u8 } else { 0 }; 4096];
        if !to_device {
            assert_code!(aclrtMemset(d, 4096, 9, 4096), ACL_SUCCESS);
        }
        let gate = Gate::hold(st);
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opener = {
            let opened = opened.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                opened.store(true, Ordering::SeqCst);
                gate.open();
            })
        };
        let (dst, src, kind) = match to_device {
            true => (d, host.as_ptr().cast(), ACL_MEMCPY_HOST_TO_DEVICE),
            false => (host.as_mut_ptr().cast(), d.cast_const(), ACL_MEMCPY_DEVICE_TO_HOST),
        };
        assert_code!(aclrtMemcpyAsync(dst, 4096, src, 4096, kind, st), ACL_SUCCESS);
        assert!(opened.load(Ordering::SeqCst), "the call returned before the work queued ahead of it ran");
        if to_device {
            drop(host); // the caller's to free now
            let mut back = vec![0u8; 4096];
            assert_code!(aclrtMemcpy(back.as_mut_ptr().cast(), 4096, d, 4096, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
            assert!(back.iter().all(|&b| b == 7));
        } else {
            assert!(host.iter().all(|&b| b == 9), "the copy had not run when the call returned");
        }
        opener.join().unwrap();
    }
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(st), ACL_SUCCESS);
}

#[test]
fn memory_freed_under_queued_work_is_not_handed_out_again_before_it_runs() {
    setup(7); // a device no other test uses: the allocator would hand the same block back
    let st = new_stream();
    let p = malloc(4096);
    let gate = Gate::hold(st);
    assert_code!(aclrtMemsetAsync(p, 4096, 0xab, 4096, st), ACL_SUCCESS);
    assert_code!(aclrtFree(p), ACL_SUCCESS);
    let q = malloc(4096);
    assert_code!(aclrtMemset(q, 4096, 0, 4096), ACL_SUCCESS);
    gate.open();
    assert_code!(aclrtSynchronizeStream(st), ACL_ERROR_RT_DEVICE_MEM_ERROR);
    let mut out = [1u8; 4096];
    assert_code!(aclrtMemcpy(out.as_mut_ptr().cast(), 4096, q, 4096, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    assert!(out.iter().all(|&b| b == 0), "the queued memset wrote into the new allocation");
    assert_code!(aclrtFree(q), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(st), ACL_SUCCESS);
}

#[test]
fn freed_pinned_memory_is_refused_not_written() {
    setup(0);
    let d = malloc(4096);
    let mut h = std::ptr::null_mut();
    assert_code!(aclrtMallocHost(&mut h, 4096), ACL_SUCCESS);
    assert_code!(aclrtFreeHost(h), ACL_SUCCESS);
    // The block went back to the allocator: copying into it would write freed memory.
    assert_code!(aclrtMemcpy(h, 4096, d, 4096, ACL_MEMCPY_DEVICE_TO_HOST), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtFreeHost(h), ACL_ERROR_RT_PARAM_INVALID); // a double free
    assert_code!(aclrtFree(d), ACL_SUCCESS);
}

#[test]
fn sync_copy_does_not_wait_for_queued_work() {
    setup(0);
    let st = new_stream();
    let d = malloc(64);
    let gate = Gate::hold(st);
    assert_code!(aclrtMemsetAsync(d, 64, 1, 64, st), ACL_SUCCESS);
    let mut out = [9u8; 64];
    // The stream is held, yet the synchronous copy completes (and sees the memset not yet done).
    assert_code!(aclrtMemset(d, 64, 2, 64), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(out.as_mut_ptr().cast(), 64, d, 64, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    assert_eq!(out, [2u8; 64]);
    gate.open();
    assert_code!(aclrtSynchronizeStream(st), ACL_SUCCESS);
    assert_code!(aclrtMemcpy(out.as_mut_ptr().cast(), 64, d, 64, ACL_MEMCPY_DEVICE_TO_HOST), ACL_SUCCESS);
    assert_eq!(out, [1u8; 64]);
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(st), ACL_SUCCESS);
}

#[test]
#[ignore = "run in a child process by oom_at_configured_capacity"]
fn oom_child() {
    if std::env::var("ASCEND_SIM_HBM_BYTES").as_deref() != Ok("64M") {
        return; // only meaningful as the child (e.g. under --include-ignored)
    }
    setup(0);
    let mut p = null_mut();
    assert_code!(aclrtMalloc(&mut p, 64 << 20, 0), ACL_ERROR_RT_MEMORY_ALLOCATION); // 64 MiB + padding > 64 MiB
    let a = malloc(40 << 20);
    assert_code!(aclrtMalloc(&mut p, 30 << 20, 0), ACL_ERROR_RT_MEMORY_ALLOCATION);
    assert_code!(aclrtFree(a), ACL_SUCCESS);
    let b = malloc(60 << 20);
    assert_code!(aclrtFree(b), ACL_SUCCESS);
}

#[test]
fn oom_at_configured_capacity() {
    assert!(run_isolated("oom_child", &[("ASCEND_SIM_HBM_BYTES", "64M")]));
}

#[test]
#[ignore = "run in a child process by visible_devices_remap_indices"]
fn visible_devices_child() {
    if std::env::var("ASCEND_RT_VISIBLE_DEVICES").as_deref() != Ok("1,3,x") {
        return; // only meaningful as the child (e.g. under --include-ignored)
    }
    setup(0);
    let mut n = 0u32;
    assert_code!(aclrtGetDeviceCount(&mut n), ACL_SUCCESS);
    assert_eq!(n, 2);
    assert_code!(aclrtSetDevice(1), ACL_SUCCESS);
    assert_code!(aclrtSetDevice(2), ACL_ERROR_RT_INVALID_DEVICEID);
    // SAFETY: returns a static string.
    assert_eq!(unsafe { CStr::from_ptr(aclrtGetSocName()) }.to_str().unwrap(), "Ascend910_9392");
}

#[test]
fn visible_devices_remap_indices() {
    assert!(run_isolated(
        "visible_devices_child",
        &[("ASCEND_SIM_DEVICES", "4"), ("ASCEND_RT_VISIBLE_DEVICES", "1,3,x"), ("ASCEND_SIM_SOC", "Ascend910_9392")]
    ));
}

// ---------------------------------------------------------------------------------------------------
// Streams

#[test]
fn stream_rules() {
    setup(0);
    let mut s = null_mut();
    assert_code!(aclrtCreateStream(null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtCreateStreamWithConfig(&mut s, 8, 0), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtCreateStreamWithConfig(&mut s, 0, 0x100), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtCreateStreamWithConfig(&mut s, 7, ACL_STREAM_FAST_LAUNCH as u32), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, -2), ACL_ERROR_RT_PARAM_INVALID);
    let gate = Gate::hold(s);
    let mut status = -1;
    assert_code!(aclrtStreamQuery(s, &mut status), ACL_SUCCESS);
    assert_eq!(status, ACL_STREAM_STATUS_NOT_READY);
    let t = Instant::now();
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, 20), ACL_ERROR_RT_STREAM_SYNC_TIMEOUT);
    assert!(t.elapsed() >= Duration::from_millis(20));
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, 0), ACL_ERROR_RT_STREAM_SYNC_TIMEOUT);
    gate.open();
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, -1), ACL_SUCCESS);
    assert_code!(aclrtStreamQuery(s, &mut status), ACL_SUCCESS);
    assert_eq!(status, ACL_STREAM_STATUS_COMPLETE);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtSynchronizeStream(s), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtSynchronizeStream(null_mut()), ACL_SUCCESS); // NULL = default stream
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);
extern "C" fn bump(_: *mut c_void) {
    std::thread::sleep(Duration::from_micros(200));
    COUNTER.fetch_add(1, Ordering::SeqCst);
}

#[test]
fn destroying_a_stream_runs_its_pending_work() {
    setup(0);
    let s = new_stream();
    let gate = Gate::hold(s);
    for _ in 0..50 {
        assert_code!(aclrtLaunchHostFunc(s, Some(bump), null_mut()), ACL_SUCCESS);
    }
    let opener = std::thread::spawn({
        let gate = gate.clone();
        move || {
            std::thread::sleep(Duration::from_millis(20));
            gate.open();
        }
    });
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    assert_eq!(COUNTER.load(Ordering::SeqCst), 50, "destroy waits for queued work");
    opener.join().unwrap();
    assert_code!(aclrtLaunchHostFunc(s, Some(bump), null_mut()), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtLaunchHostFunc(null_mut(), None, null_mut()), ACL_ERROR_INVALID_PARAM);
}

// ---------------------------------------------------------------------------------------------------
// Events

#[test]
fn event_rules() {
    setup(0);
    let s = new_stream();
    let (mut e, mut ex, mut plain) = (null_mut(), null_mut(), null_mut());
    assert_code!(aclrtCreateEventWithFlag(&mut e, 0x4), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtCreateEventWithFlag(&mut e, ACL_EVENT_SYNC as u32), ACL_SUCCESS);
    assert_code!(aclrtCreateEventExWithFlag(&mut ex, ACL_EVENT_SYNC as u32), ACL_SUCCESS);
    assert_code!(aclrtCreateEvent(&mut plain), ACL_SUCCESS);
    let mut st = -1;
    assert_code!(aclrtQueryEventStatus(ex, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_COMPLETE, "an un-recorded Ex event reads complete");
    assert_code!(aclrtQueryEventStatus(e, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_NOT_READY);
    let gate = Gate::hold(s);
    assert_code!(aclrtRecordEvent(e, s), ACL_SUCCESS);
    assert_code!(aclrtQueryEventStatus(e, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_NOT_READY);
    assert_code!(aclrtSynchronizeEventWithTimeout(e, 10), ACL_ERROR_RT_EVENT_SYNC_TIMEOUT);
    assert_code!(aclrtSynchronizeEventWithTimeout(e, -5), ACL_ERROR_RT_PARAM_INVALID);
    gate.open();
    assert_code!(aclrtSynchronizeEvent(e), ACL_SUCCESS);
    assert_code!(aclrtQueryEventStatus(e, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_COMPLETE);
    assert_code!(aclrtResetEvent(e, s), ACL_SUCCESS);
    assert_code!(aclrtResetEvent(plain, s), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtResetEvent(ex, s), ACL_ERROR_RT_PARAM_INVALID); // Ex events cannot be reset
                                                                      // Without ACL_EVENT_SYNC a stream cannot wait on an event (the host can), nor can it be reset;
                                                                      // without ACL_EVENT_TIME_LINE it has no timestamps (e has SYNC only).
    let mut marker = null_mut();
    assert_code!(aclrtCreateEventWithFlag(&mut marker, ACL_EVENT_TIME_LINE as u32), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(marker, s), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeEvent(marker), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeEventWithTimeout(marker, 1000), ACL_SUCCESS);
    assert_code!(aclrtStreamWaitEvent(s, marker), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtResetEvent(marker, s), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtRecordEvent(e, s), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
    let mut ms = 0f32;
    assert_code!(aclrtEventElapsedTime(&mut ms, marker, e), ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID);
    assert_code!(aclrtEventElapsedTime(&mut ms, marker, marker), ACL_SUCCESS);
    assert_code!(aclrtDestroyEvent(marker), ACL_SUCCESS);
    assert_code!(aclrtQueryEventStatus(e, null_mut()), ACL_ERROR_INVALID_PARAM);
    for h in [e, ex, plain] {
        assert_code!(aclrtDestroyEvent(h), ACL_SUCCESS);
    }
    assert_code!(aclrtDestroyEvent(e), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

/// A reset is queued on its stream (after the wait before it), not done when called.
#[test]
fn a_reset_takes_effect_in_stream_order() {
    setup(0);
    let (a, b) = (new_stream(), new_stream());
    let mut e = null_mut();
    assert_code!(aclrtCreateEventWithFlag(&mut e, ACL_EVENT_SYNC as u32), ACL_SUCCESS);
    let gate = Gate::hold(a);
    assert_code!(aclrtRecordEvent(e, a), ACL_SUCCESS);
    assert_code!(aclrtStreamWaitEvent(b, e), ACL_SUCCESS);
    assert_code!(aclrtResetEvent(e, b), ACL_SUCCESS);
    // The record still stands: the host still waits for a's work.
    assert_code!(aclrtSynchronizeEventWithTimeout(e, 20), ACL_ERROR_RT_EVENT_SYNC_TIMEOUT);
    gate.open();
    assert_code!(aclrtSynchronizeStream(b), ACL_SUCCESS);
    let mut st = -1;
    assert_code!(aclrtQueryEventStatus(e, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_NOT_READY, "reset once b reached it");
    assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(a), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(b), ACL_SUCCESS);
}

extern "C" fn sleep_10ms(_: *mut c_void) {
    std::thread::sleep(Duration::from_millis(10));
}

#[test]
fn elapsed_time() {
    setup(0);
    let s = new_stream();
    let (mut a, mut b) = (null_mut(), null_mut());
    assert_code!(aclrtCreateEvent(&mut a), ACL_SUCCESS);
    assert_code!(aclrtCreateEvent(&mut b), ACL_SUCCESS);
    let mut ms = 0f32;
    assert_code!(aclrtEventElapsedTime(&mut ms, a, b), ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID);
    let gate = Gate::hold(s);
    assert_code!(aclrtRecordEvent(a, s), ACL_SUCCESS);
    assert_code!(aclrtLaunchHostFunc(s, Some(sleep_10ms), null_mut()), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(b, s), ACL_SUCCESS);
    assert_code!(aclrtEventElapsedTime(&mut ms, a, b), ACL_ERROR_RT_EVENT_NOT_COMPLETE);
    gate.open();
    assert_code!(aclrtSynchronizeEvent(b), ACL_SUCCESS);
    assert_code!(aclrtEventElapsedTime(null_mut(), a, b), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtEventElapsedTime(&mut ms, a, b), ACL_SUCCESS);
    assert!((10.0..1000.0).contains(&ms), "{ms} ms");
    assert_code!(aclrtEventElapsedTime(&mut ms, b, a), ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

/// Stream B waits for an event recorded on A after A's memset; B's copy must always see the memset.
#[test]
fn cross_stream_wait_orders_work() {
    setup(0);
    let (a, b) = (new_stream(), new_stream());
    let d = malloc(4096);
    let mut e = null_mut();
    assert_code!(aclrtCreateEvent(&mut e), ACL_SUCCESS);
    let mut out = vec![0u8; 4096];
    for i in 0..300u32 {
        let v = (i % 250 + 1) as i32;
        if i % 3 == 0 {
            assert_code!(aclrtLaunchHostFunc(a, Some(sleep_short), null_mut()), ACL_SUCCESS);
        }
        assert_code!(aclrtMemsetAsync(d, 4096, v, 4096, a), ACL_SUCCESS);
        assert_code!(aclrtRecordEvent(e, a), ACL_SUCCESS);
        assert_code!(aclrtStreamWaitEvent(b, e), ACL_SUCCESS);
        assert_code!(
            aclrtMemcpyAsync(out.as_mut_ptr().cast(), 4096, d, 4096, ACL_MEMCPY_DEVICE_TO_HOST, b),
            ACL_SUCCESS
        );
        assert_code!(aclrtSynchronizeStream(b), ACL_SUCCESS);
        assert!(out.iter().all(|&x| x == v as u8), "iteration {i}: saw {} instead of {v}", out[0]);
    }
    assert_code!(aclrtStreamWaitEvent(b, null_mut()), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(a), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(b), ACL_SUCCESS);
}

/// A failed task shows at the next synchronization of what depends on it: an event recorded after
/// it, and a stream that waits for that event (whose later work would read what was not produced).
#[test]
fn a_failure_reaches_the_events_and_streams_that_depend_on_it() {
    setup(0);
    let (a, b) = (new_stream(), new_stream());
    let (d, mut pinned) = (malloc(1024), null_mut());
    assert_code!(aclrtMallocHost(&mut pinned, 1024), ACL_SUCCESS);
    let (mut before, mut after) = (null_mut(), null_mut());
    assert_code!(aclrtCreateEvent(&mut before), ACL_SUCCESS);
    assert_code!(aclrtCreateEvent(&mut after), ACL_SUCCESS);
    let gate = Gate::hold(a);
    assert_code!(aclrtRecordEvent(before, a), ACL_SUCCESS);
    // A copy into memory freed while it was queued fails stream a.
    assert_code!(aclrtMemcpyAsync(d, 1024, pinned, 1024, ACL_MEMCPY_HOST_TO_DEVICE, a), ACL_SUCCESS);
    assert_code!(aclrtFree(d), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(after, a), ACL_SUCCESS);
    assert_code!(aclrtStreamWaitEvent(b, after), ACL_SUCCESS);
    gate.open();
    assert_code!(aclrtSynchronizeEvent(before), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeEvent(after), ACL_ERROR_RT_DEVICE_MEM_ERROR);
    let mut st = -1;
    assert_code!(aclrtQueryEventStatus(after, &mut st), ACL_SUCCESS);
    assert_eq!(st, ACL_EVENT_RECORDED_STATUS_COMPLETE, "the work is over");
    assert_code!(aclrtSynchronizeStream(b), ACL_ERROR_RT_DEVICE_MEM_ERROR);
    for e in [before, after] {
        assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
    }
    assert_code!(aclrtFreeHost(pinned), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(a), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(b), ACL_SUCCESS);
}

extern "C" fn sleep_short(_: *mut c_void) {
    std::thread::sleep(Duration::from_micros(100));
}

// ---------------------------------------------------------------------------------------------------
// Callbacks

static CALLED: AtomicUsize = AtomicUsize::new(0);
extern "C" fn record_call(data: *mut c_void) {
    CALLED.fetch_add(data as usize, Ordering::SeqCst);
}

#[test]
fn callbacks() {
    setup(0);
    let s = new_stream();
    assert_code!(aclrtProcessReport(0), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtProcessReport(-2), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtProcessReport(10), ACL_ERROR_RT_THREAD_SUBSCRIBE);
    assert_code!(
        aclrtLaunchCallback(Some(record_call), 1 as *mut c_void, ACL_CALLBACK_BLOCK, s),
        ACL_ERROR_RT_STREAM_NO_CB_REG
    );

    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<i32>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        setup(0);
        tx.send(libc_pthread_self()).unwrap();
        go_rx.recv().unwrap();
        // First call: nothing launched yet → timeout.
        done_tx.send(unsafe { aclrtProcessReport(20) }).unwrap();
        done_tx.send(unsafe { aclrtProcessReport(5000) }).unwrap();
    });
    let tid = rx.recv().unwrap();
    assert_code!(aclrtSubscribeReport(tid, s), ACL_SUCCESS);
    assert_code!(aclrtSubscribeReport(tid, s), ACL_ERROR_REPEAT_SUBSCRIBE);
    go_tx.send(()).unwrap();
    assert_eq!(done_rx.recv().unwrap(), ACL_ERROR_RT_REPORT_TIMEOUT);
    assert_code!(aclrtLaunchCallback(Some(record_call), 1 as *mut c_void, 7, s), ACL_ERROR_INVALID_PARAM);
    assert_code!(aclrtLaunchCallback(None, null_mut(), ACL_CALLBACK_BLOCK, s), ACL_ERROR_INVALID_PARAM);
    // A blocking callback holds the stream until the subscribed thread has run it.
    let gate = Gate::hold(s);
    assert_code!(aclrtLaunchCallback(Some(record_call), 5 as *mut c_void, ACL_CALLBACK_BLOCK, s), ACL_SUCCESS);
    let mut e = null_mut();
    assert_code!(aclrtCreateEvent(&mut e), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(e, s), ACL_SUCCESS);
    gate.open();
    assert_eq!(done_rx.recv().unwrap(), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeEvent(e), ACL_SUCCESS);
    assert_eq!(CALLED.load(Ordering::SeqCst), 5);
    worker.join().unwrap();
    assert_code!(aclrtUnSubscribeReport(tid, s), ACL_SUCCESS);
    assert_code!(aclrtUnSubscribeReport(tid, s), ACL_ERROR_RT_STREAM_SUBSCRIBE);
    assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

#[test]
fn a_thread_waiting_for_callbacks_wakes_when_its_subscription_ends() {
    setup(0);
    let (s1, s2) = (new_stream(), new_stream());
    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<u64>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (code_tx, code) = std::sync::mpsc::channel::<i32>();
    std::thread::spawn(move || {
        setup(0);
        tid_tx.send(libc_pthread_self()).unwrap();
        // Each time it is told to, waits without a timeout, as report threads do.
        while go.recv().is_ok() {
            code_tx.send(unsafe { aclrtProcessReport(-1) }).unwrap();
        }
    });
    let tid = tid_rx.recv().unwrap();
    let next = || code.recv_timeout(Duration::from_secs(10)).expect("ProcessReport(-1) never returned");
    assert_code!(aclrtSubscribeReport(tid, s1), ACL_SUCCESS);
    go_tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // it now waits on s1's subscription
    assert_code!(aclrtUnSubscribeReport(tid, s1), ACL_SUCCESS);
    assert_eq!(next(), ACL_ERROR_RT_THREAD_SUBSCRIBE, "woken when its subscription ended");
    // Subscribed again, to another stream: that stream's callbacks reach it.
    assert_code!(aclrtSubscribeReport(tid, s2), ACL_SUCCESS);
    go_tx.send(()).unwrap();
    assert_code!(aclrtLaunchCallback(Some(record_call), null_mut(), ACL_CALLBACK_BLOCK, s2), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeStreamWithTimeout(s2, 5000), ACL_SUCCESS);
    assert_eq!(next(), ACL_SUCCESS);
    assert_code!(aclrtUnSubscribeReport(tid, s2), ACL_SUCCESS);
    drop(go_tx);
    assert_code!(aclrtDestroyStream(s1), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s2), ACL_SUCCESS);
}

/// Adds one to the counter `data` points to (a test's own `'static` counter).
extern "C" fn count_into(data: *mut c_void) {
    // SAFETY: the tests below pass a pointer to a `static AtomicUsize`.
    unsafe { &*(data as *const AtomicUsize) }.fetch_add(1, Ordering::SeqCst);
}

fn counter_arg(c: &'static AtomicUsize) -> *mut c_void {
    c as *const AtomicUsize as *mut c_void
}

#[test]
fn destroying_a_stream_runs_its_queued_callbacks_first() {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    setup(0);
    let s = new_stream();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<u64>();
    let (code_tx, code) = std::sync::mpsc::channel::<i32>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        setup(0);
        tid_tx.send(libc_pthread_self()).unwrap();
        go.recv().unwrap();
        // A report thread: runs callbacks until its subscription has ended and nothing is left.
        loop {
            let r = unsafe { aclrtProcessReport(10_000) };
            code_tx.send(r).unwrap();
            if r != ACL_SUCCESS {
                break;
            }
        }
    });
    let tid = tid_rx.recv().unwrap();
    assert_code!(aclrtSubscribeReport(tid, s), ACL_SUCCESS);
    go_tx.send(()).unwrap();
    // Both callbacks are still queued behind the gate when the stream is destroyed.
    let gate = Gate::hold(s);
    assert_code!(aclrtLaunchCallback(Some(count_into), counter_arg(&RUN), ACL_CALLBACK_NO_BLOCK, s), ACL_SUCCESS);
    assert_code!(aclrtLaunchCallback(Some(count_into), counter_arg(&RUN), ACL_CALLBACK_BLOCK, s), ACL_SUCCESS);
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    opener.join().unwrap();
    let next = || code.recv_timeout(Duration::from_secs(20)).expect("ProcessReport never returned");
    assert_eq!((next(), next()), (ACL_SUCCESS, ACL_SUCCESS), "both callbacks ran on the report thread");
    assert_eq!(RUN.load(Ordering::SeqCst), 2);
    assert_eq!(next(), ACL_ERROR_RT_THREAD_SUBSCRIBE, "the subscription ended with the stream");
    worker.join().unwrap();
}

#[test]
fn a_callback_delivered_before_its_stream_is_destroyed_still_runs() {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    setup(0);
    let s = new_stream();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<u64>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let (code_tx, code) = std::sync::mpsc::channel::<(i32, i32)>();
    let worker = std::thread::spawn(move || {
        setup(0);
        tid_tx.send(libc_pthread_self()).unwrap();
        go.recv().unwrap();
        code_tx.send(unsafe { (aclrtProcessReport(1000), aclrtProcessReport(1000)) }).unwrap();
    });
    let tid = tid_rx.recv().unwrap();
    assert_code!(aclrtSubscribeReport(tid, s), ACL_SUCCESS);
    assert_code!(aclrtLaunchCallback(Some(count_into), counter_arg(&RUN), ACL_CALLBACK_NO_BLOCK, s), ACL_SUCCESS);
    // Delivered (the stream did not wait for it), then the stream is gone before the thread looks.
    assert_code!(aclrtSynchronizeStream(s), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    go_tx.send(()).unwrap();
    let codes = code.recv_timeout(Duration::from_secs(20)).expect("ProcessReport never returned");
    assert_eq!(codes, (ACL_SUCCESS, ACL_ERROR_RT_THREAD_SUBSCRIBE));
    assert_eq!(RUN.load(Ordering::SeqCst), 1);
    worker.join().unwrap();
}

#[test]
fn a_report_thread_destroying_its_stream_runs_the_callbacks_itself() {
    static RUN: AtomicUsize = AtomicUsize::new(0);
    setup(0);
    let s = new_stream();
    // This thread serves the stream's callbacks and destroys it while a blocking one is queued.
    assert_code!(aclrtSubscribeReport(libc_pthread_self(), s), ACL_SUCCESS);
    let gate = Gate::hold(s);
    assert_code!(aclrtLaunchCallback(Some(count_into), counter_arg(&RUN), ACL_CALLBACK_BLOCK, s), ACL_SUCCESS);
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        gate.open();
    });
    let (done_tx, done) = std::sync::mpsc::channel();
    let destroyer = std::thread::current();
    let watchdog = std::thread::spawn(move || {
        if done.recv_timeout(Duration::from_secs(20)).is_err() {
            // The test thread is stuck: end the process rather than hang the suite.
            eprintln!("aclrtDestroyStream deadlocked on its own thread's callback ({destroyer:?})");
            std::process::abort();
        }
    });
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
    done_tx.send(()).unwrap();
    watchdog.join().unwrap();
    opener.join().unwrap();
    assert_eq!(RUN.load(Ordering::SeqCst), 1, "the callback ran before the stream was destroyed");
    assert_code!(aclrtProcessReport(10), ACL_ERROR_RT_THREAD_SUBSCRIBE);
}

static BLOCKING_WAIT: AtomicI32 = AtomicI32::new(-1);

extern "C" fn syncs_its_stream(arg: *mut c_void) {
    // SAFETY: a plain call; `arg` is the stream, alive until the test destroys it.
    BLOCKING_WAIT.store(unsafe { aclrtSynchronizeStream(arg as aclrtStream) }, Ordering::SeqCst);
}

/// A blocking callback holds its stream: waiting for that stream from it fails instead of deadlocking.
#[test]
fn a_blocking_callback_waiting_for_its_stream_fails_instead_of_hanging() {
    setup(0);
    let s = new_stream();
    let (tid_tx, tid_rx) = std::sync::mpsc::channel::<u64>();
    let (go_tx, go) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        setup(0);
        tid_tx.send(libc_pthread_self()).unwrap();
        go.recv().unwrap();
        unsafe { aclrtProcessReport(10_000) }
    });
    let tid = tid_rx.recv().unwrap();
    assert_code!(aclrtSubscribeReport(tid, s), ACL_SUCCESS);
    go_tx.send(()).unwrap();
    assert_code!(aclrtLaunchCallback(Some(syncs_its_stream), s, ACL_CALLBACK_BLOCK, s), ACL_SUCCESS);
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, 10_000), ACL_SUCCESS);
    assert_eq!(worker.join().unwrap(), ACL_SUCCESS);
    assert_eq!(BLOCKING_WAIT.load(Ordering::SeqCst), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtUnSubscribeReport(tid, s), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

extern "C" fn set_device_5(_: *mut c_void) {
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: plain calls.
    unsafe {
        aclrtSetDevice(5);
        aclrtResetDevice(5);
    }
}

#[test]
fn resetting_a_device_lets_its_queued_host_functions_use_the_runtime() {
    setup(5);
    let s = new_stream();
    assert_code!(aclrtLaunchHostFunc(s, Some(set_device_5), null_mut()), ACL_SUCCESS);
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        setup(5);
        assert_code!(aclrtResetDevice(5), ACL_SUCCESS);
        done_tx.send(unsafe { aclrtResetDevice(5) }).unwrap(); // the last reset: waits for the stream
    });
    assert_eq!(done.recv_timeout(Duration::from_secs(20)), Ok(ACL_SUCCESS), "the reset deadlocked");
}

fn libc_pthread_self() -> u64 {
    extern "C" {
        fn pthread_self() -> usize;
    }
    // SAFETY: pthread_self has no preconditions.
    unsafe { pthread_self() as u64 }
}

// ---------------------------------------------------------------------------------------------------
// aclnn objects (and the HCCL error strings)

#[test]
fn aclnn_descriptors_work_and_operators_need_an_npu() {
    use ascend_sim::capi::{aclnn::*, hccl::*};
    setup(0);
    // SAFETY: returns a static string.
    assert_eq!(unsafe { CStr::from_ptr(HcclGetErrorString(HCCL_E_TIMEOUT)) }.to_str().unwrap(), "HCCL_E_TIMEOUT");
    let dims = [2i64, 3];
    let strides = [3i64, 1];
    // SAFETY: arrays of the stated lengths.
    let new_tensor = || unsafe {
        aclCreateTensor(dims.as_ptr(), 2, ACL_FLOAT, strides.as_ptr(), 0, ACL_FORMAT_ND, dims.as_ptr(), 2, null_mut())
    };
    let t = new_tensor();
    assert!(!t.is_null());
    // SAFETY: `t` is live and ours.
    let desc = unsafe { tensor_desc(t) };
    assert_eq!((desc.view_dims.as_slice(), desc.strides.as_slice(), desc.dtype), (&dims[..], &strides[..], ACL_FLOAT));
    // SAFETY: `t` destroyed once; NULL is rejected.
    unsafe {
        assert_eq!(aclDestroyTensor(t), ACLNN_SUCCESS);
        assert_eq!(aclDestroyTensor(t), ACLNN_ERR_PARAM_INVALID, "destroyed twice: refused, not freed twice");
        assert_eq!(aclDestroyTensor(null()), ACLNN_ERR_PARAM_NULLPTR);
        // A handle destroyed as another kind, and a list holding a dead tensor, are refused too.
        let a = aclCreateIntArray(dims.as_ptr(), 2);
        assert_eq!(aclDestroyTensor(a.cast()), ACLNN_ERR_PARAM_INVALID);
        assert!(aclCreateTensorList([t as *const aclTensor].as_ptr(), 1).is_null());
        assert_eq!(aclDestroyIntArray(a), ACLNN_SUCCESS);
        // A list whose tensor was destroyed, then a new tensor (likely at the freed one's address):
        // destroying the list must not take the new tensor with it.
        let t1 = new_tensor();
        let l = aclCreateTensorList([t1 as *const aclTensor].as_ptr(), 1);
        assert!(!l.is_null());
        assert_eq!(aclDestroyTensor(t1), ACLNN_SUCCESS);
        let t2 = new_tensor();
        assert_eq!(aclDestroyTensorList(l), ACLNN_ERR_PARAM_INVALID, "its tensor was destroyed already");
        assert_eq!(tensor_desc(t2).view_dims, dims);
        assert_eq!(aclDestroyTensor(t2), ACLNN_SUCCESS, "the new tensor is still alive");
        // Int arrays are not bounded as dims are (sequence lengths of a batch of 256, say).
        let lens: Vec<i64> = (1..=256).collect();
        let a = aclCreateIntArray(lens.as_ptr(), 256);
        assert!(!a.is_null());
        assert_eq!(aclDestroyIntArray(a), ACLNN_SUCCESS);
        let many = vec![1i64; 65];
        assert!(aclCreateTensor(many.as_ptr(), 65, ACL_FLOAT, many.as_ptr(), 0, ACL_FORMAT_ND, null(), 0, null_mut())
            .is_null());
        assert!(aclCreateTensor(null(), 2, ACL_FLOAT, null(), 0, ACL_FORMAT_ND, null(), 0, null_mut()).is_null());
        let negative = [2i64, -3];
        assert!(
            aclCreateTensor(
                dims.as_ptr(),
                2,
                ACL_FLOAT,
                strides.as_ptr(),
                0,
                ACL_FORMAT_ND,
                negative.as_ptr(),
                2,
                null_mut()
            )
            .is_null(),
            "a negative storage dim"
        );
        assert_eq!(aclnnMm(null_mut(), 0, null_mut(), null_mut()), ACLNN_ERR_INNER_FIND_KERNEL_ERROR);
    }
}

/// What the host function below got from synchronizing its own stream, then an event recorded on
/// that stream after it.
static SELF_WAIT: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

extern "C" fn waits_for_own_stream(arg: *mut c_void) {
    // SAFETY: `arg` is the (stream, event) pair the test keeps alive until the stream is idle.
    let (s, e) = unsafe { *(arg as *const (aclrtStream, aclrtEvent)) };
    // SAFETY: plain calls with live handles.
    SELF_WAIT[0].store(unsafe { aclrtSynchronizeStream(s) }, Ordering::SeqCst);
    // SAFETY: as above.
    SELF_WAIT[1].store(unsafe { aclrtSynchronizeEvent(e) }, Ordering::SeqCst);
}

#[test]
fn a_host_function_waiting_for_its_own_stream_fails_instead_of_hanging() {
    setup(0);
    let s = new_stream();
    let mut e = null_mut();
    assert_code!(aclrtCreateEvent(&mut e), ACL_SUCCESS);
    let mut pair = (s, e);
    let arg = &mut pair as *mut (aclrtStream, aclrtEvent) as *mut c_void;
    // Held until the event's record is queued behind the host function.
    let gate = Gate::hold(s);
    assert_code!(aclrtLaunchHostFunc(s, Some(waits_for_own_stream), arg), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(e, s), ACL_SUCCESS);
    gate.open();
    // With a limit: a host function that waited for itself would hold the stream forever.
    assert_code!(aclrtSynchronizeStreamWithTimeout(s, 10_000), ACL_SUCCESS);
    assert_eq!(SELF_WAIT[0].load(Ordering::SeqCst), ACL_ERROR_RT_PARAM_INVALID, "stream");
    assert_eq!(SELF_WAIT[1].load(Ordering::SeqCst), ACL_ERROR_RT_PARAM_INVALID, "event recorded after it");
    assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
    assert_code!(aclrtDestroyStream(s), ACL_SUCCESS);
}

static TEARDOWN_WAIT: AtomicI32 = AtomicI32::new(-1);

extern "C" fn waits_for_event_after_it(arg: *mut c_void) {
    // SAFETY: a plain call; `arg` is the event handle, alive until the test destroys it.
    TEARDOWN_WAIT.store(unsafe { aclrtSynchronizeEvent(arg as aclrtEvent) }, Ordering::SeqCst);
}

/// The same while its stream is being destroyed (the destroyer waits for the stream's work).
#[test]
fn a_host_function_waiting_for_its_own_stream_during_teardown_fails_instead_of_hanging() {
    setup(0);
    let s = new_stream();
    let mut e = null_mut();
    assert_code!(aclrtCreateEvent(&mut e), ACL_SUCCESS);
    let gate = Gate::hold(s);
    assert_code!(aclrtLaunchHostFunc(s, Some(waits_for_event_after_it), e), ACL_SUCCESS);
    assert_code!(aclrtRecordEvent(e, s), ACL_SUCCESS);
    let (done_tx, done) = std::sync::mpsc::channel();
    let stream = s as usize;
    std::thread::spawn(move || {
        setup(0);
        done_tx.send(unsafe { aclrtDestroyStream(stream as aclrtStream) }).unwrap();
    });
    std::thread::sleep(Duration::from_millis(50)); // the destroyer now waits for the stream
    gate.open();
    assert_eq!(done.recv_timeout(Duration::from_secs(20)), Ok(ACL_SUCCESS), "the stream never finished");
    assert_eq!(TEARDOWN_WAIT.load(Ordering::SeqCst), ACL_ERROR_RT_PARAM_INVALID);
    assert_code!(aclrtDestroyEvent(e), ACL_SUCCESS);
}
