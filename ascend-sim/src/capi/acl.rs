//! The ACL runtime entry points, with CANN's C signatures and error codes.
//!
//! Each function validates every argument it can (null pointers, handles, sizes, ranges, flags) and
//! returns an `aclError`; the reason of a failure is kept for `aclGetRecentErrMsg`.

use super::{duration_ms, handle, out};
use crate::event::{elapsed_ms, Event};
use crate::fail::{entry, fail, Fail, Result};
use crate::memory::{Location, Span};
use crate::pool::Pool;
use crate::report::Pending;
use crate::runtime::runtime;
use crate::stream::Kind;
use ascend_sys::*;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// The ACL version the simulator reports (that of the newer CANN headers it follows).
pub const VERSION: (i32, i32, i32) = (1, 15, 0);
/// Copies at least this large are split across the compute pool.
const PARALLEL_COPY_BYTES: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------------
// Init, version, errors

/// Initialises the runtime. A non-NULL `configPath` must name a readable file (`ACL_ERROR_INVALID_FILE`)
/// whose text starts with `{` (`ACL_ERROR_PARSE_FILE`); its contents are otherwise ignored. A repeated call
/// is counted and returns `ACL_ERROR_REPEAT_INITIALIZE`.
#[no_mangle]
pub unsafe extern "C" fn aclInit(configPath: *const c_char) -> aclError {
    entry("aclInit", || {
        if !configPath.is_null() {
            // SAFETY: a non-null configPath is a NUL-terminated string by the API contract.
            let path = unsafe { CStr::from_ptr(configPath) }.to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Fail::new(ACL_ERROR_INVALID_FILE, format!("cannot read config file {path:?}: {e}")))?;
            if !text.trim_start().starts_with('{') {
                return fail(ACL_ERROR_PARSE_FILE, format!("config file {path:?} is not a JSON object"));
            }
        }
        let rt = runtime();
        let mut count = rt.init_count.lock().unwrap();
        *count += 1;
        if *count > 1 {
            return fail(ACL_ERROR_REPEAT_INITIALIZE, "aclInit was already called (counted; treat as success)");
        }
        Ok(())
    })
}

/// Waits for the work queued on every stream, then releases all streams, contexts, events, callback
/// subscriptions, and device and pinned memory, and leaves every thread without a current context. One call
/// ends any number of `aclInit` calls; `ACL_ERROR_REPEAT_FINALIZE` when the runtime is not initialised.
#[no_mangle]
pub unsafe extern "C" fn aclFinalize() -> aclError {
    entry("aclFinalize", || {
        let rt = runtime();
        let _alone = rt.finalizing.lock().unwrap();
        if *rt.init_count.lock().unwrap() == 0 {
            return fail(ACL_ERROR_REPEAT_FINALIZE, "aclFinalize without a matching aclInit");
        }
        // Not under `init_count`: the queued work this waits for may call the runtime (a host
        // function, or a report thread answering a blocking callback).
        rt.finalize();
        *rt.init_count.lock().unwrap() = 0;
        Ok(())
    })
}

/// Writes the ACL version the simulator reports ([`VERSION`]) to the three outputs; `ACL_ERROR_INVALID_PARAM`
/// if any of them is NULL. Needs no `aclInit`.
#[no_mangle]
pub unsafe extern "C" fn aclrtGetVersion(
    majorVersion: *mut i32,
    minorVersion: *mut i32,
    patchVersion: *mut i32,
) -> aclError {
    entry("aclrtGetVersion", || {
        if majorVersion.is_null() || minorVersion.is_null() || patchVersion.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "an output pointer is NULL");
        }
        // SAFETY: all three pointers are non-null and point to writable int32_t by the API contract.
        unsafe { (*majorVersion, *minorVersion, *patchVersion) = VERSION };
        Ok(())
    })
}

/// Returns the message of the calling thread's latest failure and clears it: NULL when nothing failed on this
/// thread since the previous call. The string stays valid until the thread calls this function again.
#[no_mangle]
pub unsafe extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    crate::fail::take_recent()
}

// ---------------------------------------------------------------------------------------------------
// Devices

/// Makes `deviceId`'s default context (made with its default stream on first use) current on the calling
/// thread, counting the call for `aclrtResetDevice`. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_INVALID_DEVICEID`, or `ACL_ERROR_RT_NO_STREAM_RESOURCE` (no stream thread).
#[no_mangle]
pub unsafe extern "C" fn aclrtSetDevice(deviceId: i32) -> aclError {
    entry("aclrtSetDevice", || runtime().set_device(deviceId))
}

/// Undoes one `aclrtSetDevice`; the last one destroys the device's default context and its streams once their
/// queued work has run (contexts from `aclrtCreateContext` stay). A device that is not set is left alone,
/// with success. Fails with `ACL_ERROR_UNINITIALIZE` or `ACL_ERROR_RT_INVALID_DEVICEID`.
#[no_mangle]
pub unsafe extern "C" fn aclrtResetDevice(deviceId: i32) -> aclError {
    entry("aclrtResetDevice", || runtime().reset_device(deviceId))
}

/// Writes the device of the calling thread's current context to `*deviceId`. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` (no device set on this thread) or
/// `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtGetDevice(deviceId: *mut i32) -> aclError {
    entry("aclrtGetDevice", || {
        let ctx = runtime().current()?;
        // SAFETY: `out` checks for NULL; otherwise the pointer is writable by the API contract.
        unsafe { out(deviceId, ctx.device as i32) }
    })
}

/// Writes the number of visible simulated devices to `*count`. Fails with `ACL_ERROR_UNINITIALIZE` or
/// `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> aclError {
    entry("aclrtGetDeviceCount", || {
        let rt = runtime();
        rt.ensure_init()?;
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(count, rt.devices.len() as u32) }
    })
}

/// Waits for the work queued on every stream of the current device and returns the first failure met, in no
/// set order: a sticky stream error, or `ACL_ERROR_RT_PARAM_INVALID` if called from one of those streams'
/// host functions or callbacks. Also `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL`.
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeDevice() -> aclError {
    entry("aclrtSynchronizeDevice", || {
        let rt = runtime();
        let ctx = rt.current()?;
        let mut first = Ok(());
        for s in rt.streams.all().into_iter().filter(|s| s.device == ctx.device) {
            let r = s.core.synchronize(None);
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
}

/// Writes `ACL_HOST` to `*runMode`: the simulator always runs on the host. Fails with
/// `ACL_ERROR_UNINITIALIZE` or `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtGetRunMode(runMode: *mut aclrtRunMode) -> aclError {
    entry("aclrtGetRunMode", || {
        runtime().ensure_init()?;
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(runMode, ACL_HOST) }
    })
}

/// Returns the configured SoC name (`ASCEND_SIM_SOC`), a string that lives as long as the process; NULL, with
/// a message for `aclGetRecentErrMsg`, before `aclInit`.
#[no_mangle]
pub unsafe extern "C" fn aclrtGetSocName() -> *const c_char {
    static NAME: OnceLock<CString> = OnceLock::new();
    let rt = runtime();
    if rt.ensure_init().is_err() {
        crate::fail::set_recent("aclrtGetSocName: aclInit has not been called");
        return std::ptr::null();
    }
    NAME.get_or_init(|| CString::new(rt.config.soc_name.replace('\0', "")).unwrap_or_default()).as_ptr()
}

/// Writes the current device's free and total bytes to `*free` and `*total` for any HBM `attr`, and 0 and 0
/// for a DDR one (the simulated device has no DDR). Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_CONTEXT_NULL`, or `ACL_ERROR_INVALID_PARAM` (NULL output, unknown `attr`).
#[no_mangle]
pub unsafe extern "C" fn aclrtGetMemInfo(attr: aclrtMemAttr, free: *mut usize, total: *mut usize) -> aclError {
    entry("aclrtGetMemInfo", || {
        let rt = runtime();
        let ctx = rt.current()?;
        if free.is_null() || total.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "an output pointer is NULL");
        }
        let (f, t) = match attr {
            ACL_HBM_MEM
            | ACL_HBM_MEM_HUGE
            | ACL_HBM_MEM_NORMAL
            | ACL_HBM_MEM_P2P_HUGE
            | ACL_HBM_MEM_P2P_NORMAL
            | ACL_HBM_MEM_HUGE1G
            | ACL_HBM_MEM_P2P_HUGE1G => rt.memory.info(ctx.device),
            // A 910B-class device has no DDR of its own.
            ACL_DDR_MEM | ACL_DDR_MEM_HUGE | ACL_DDR_MEM_NORMAL | ACL_DDR_MEM_P2P_HUGE | ACL_DDR_MEM_P2P_NORMAL => {
                (0, 0)
            }
            other => return fail(ACL_ERROR_INVALID_PARAM, format!("unknown aclrtMemAttr {other}")),
        };
        // SAFETY: both pointers are non-null (checked) and writable by the API contract.
        unsafe { (*free, *total) = (f, t) };
        Ok(())
    })
}

/// Writes 1 to `*canAccessPeer`: any two distinct simulated devices can access each other. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_INVALID_DEVICEID`, `ACL_ERROR_RT_PARAM_INVALID` (the same device
/// twice) or `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtDeviceCanAccessPeer(
    canAccessPeer: *mut i32,
    deviceId: i32,
    peerDeviceId: i32,
) -> aclError {
    entry("aclrtDeviceCanAccessPeer", || {
        let rt = runtime();
        rt.ensure_init()?;
        rt.device_index(deviceId)?;
        rt.device_index(peerDeviceId)?;
        if deviceId == peerDeviceId {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "a device and its peer must differ");
        }
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(canAccessPeer, 1) }
    })
}

/// Records `peerDeviceId` as a peer of the current device (again: no change); copies do not consult the
/// record. Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL`, `ACL_ERROR_RT_INVALID_DEVICEID`,
/// or `ACL_ERROR_RT_PARAM_INVALID` (non-zero `flags`, or the current device itself).
#[no_mangle]
pub unsafe extern "C" fn aclrtDeviceEnablePeerAccess(peerDeviceId: i32, flags: u32) -> aclError {
    entry("aclrtDeviceEnablePeerAccess", || {
        let rt = runtime();
        let ctx = rt.current()?;
        let peer = rt.device_index(peerDeviceId)?;
        if flags != 0 {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "flags must be 0");
        }
        if peer == ctx.device {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "a device cannot be its own peer");
        }
        let mut peers = rt.devices[ctx.device].peers.lock().unwrap();
        if !peers.contains(&peer) {
            peers.push(peer);
        }
        Ok(())
    })
}

/// Removes `peerDeviceId` from the current device's peers. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_CONTEXT_NULL`, `ACL_ERROR_RT_INVALID_DEVICEID`, or `ACL_ERROR_RT_PARAM_INVALID` if access to
/// it was not enabled.
#[no_mangle]
pub unsafe extern "C" fn aclrtDeviceDisablePeerAccess(peerDeviceId: i32) -> aclError {
    entry("aclrtDeviceDisablePeerAccess", || {
        let rt = runtime();
        let ctx = rt.current()?;
        let peer = rt.device_index(peerDeviceId)?;
        let mut peers = rt.devices[ctx.device].peers.lock().unwrap();
        let Some(i) = peers.iter().position(|&p| p == peer) else {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "peer access to that device was not enabled");
        };
        peers.remove(i);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------
// Contexts

/// Creates a context on `deviceId` with its own default stream, makes it current on the calling thread and
/// writes it to `*context` (no `aclrtSetDevice` needed). Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_INVALID_PARAM` (NULL), `ACL_ERROR_RT_INVALID_DEVICEID` or `ACL_ERROR_RT_NO_STREAM_RESOURCE`.
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateContext(context: *mut aclrtContext, deviceId: i32) -> aclError {
    entry("aclrtCreateContext", || {
        let rt = runtime();
        rt.ensure_init()?;
        if context.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "context is NULL");
        }
        let d = rt.device_index(deviceId)?;
        let ctx = rt.create_context(d, true)?;
        rt.set_current(ctx.handle);
        // SAFETY: non-null (checked), writable by the API contract.
        unsafe { *context = ctx.handle as aclrtContext };
        Ok(())
    })
}

/// Destroys a context made by `aclrtCreateContext`: its streams once their queued work has run, then the
/// context (threads that had it current have none). Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID` (dead, or a device's default context).
#[no_mangle]
pub unsafe extern "C" fn aclrtDestroyContext(context: aclrtContext) -> aclError {
    entry("aclrtDestroyContext", || {
        let rt = runtime();
        rt.ensure_init()?;
        let ctx = rt.contexts.get(handle(context)?)?;
        if !ctx.explicit {
            return fail(
                ACL_ERROR_RT_PARAM_INVALID,
                "a device's default context cannot be destroyed (reset the device)",
            );
        }
        rt.destroy_context(&ctx);
        Ok(())
    })
}

/// Makes `context`, and so its device, current on the calling thread. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID` (not a live context).
#[no_mangle]
pub unsafe extern "C" fn aclrtSetCurrentContext(context: aclrtContext) -> aclError {
    entry("aclrtSetCurrentContext", || {
        let rt = runtime();
        rt.ensure_init()?;
        let ctx = rt.contexts.get(handle(context)?)?;
        rt.set_current(ctx.handle);
        Ok(())
    })
}

/// Writes the calling thread's current context to `*context`. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_CONTEXT_NULL` (none) or `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtGetCurrentContext(context: *mut aclrtContext) -> aclError {
    entry("aclrtGetCurrentContext", || {
        let ctx = runtime().current()?;
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(context, ctx.handle as aclrtContext) }
    })
}

// ---------------------------------------------------------------------------------------------------
// Streams

const STREAM_FLAGS: u32 = 0x3f;

/// Creates a stream in the current context, run by a thread of its own, and writes it to `*stream`. Fails
/// with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL`, `ACL_ERROR_INVALID_PARAM` (NULL) or
/// `ACL_ERROR_RT_NO_STREAM_RESOURCE` (the thread cannot start).
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStream(stream: *mut aclrtStream) -> aclError {
    entry("aclrtCreateStream", || create_stream(stream, 0, 0))
}

/// As `aclrtCreateStream`. `priority` must be 0..=7 and `flag` only `ACL_STREAM_*` bits
/// (`ACL_ERROR_RT_PARAM_INVALID` otherwise); both are then ignored.
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStreamWithConfig(stream: *mut aclrtStream, priority: u32, flag: u32) -> aclError {
    entry("aclrtCreateStreamWithConfig", || create_stream(stream, priority, flag))
}

fn create_stream(stream: *mut aclrtStream, priority: u32, flag: u32) -> Result<()> {
    let rt = runtime();
    let ctx = rt.current()?;
    if stream.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "stream is NULL");
    }
    if priority > 7 {
        return fail(ACL_ERROR_RT_PARAM_INVALID, format!("priority {priority} is outside 0..=7"));
    }
    if flag & !STREAM_FLAGS != 0 {
        return fail(ACL_ERROR_RT_PARAM_INVALID, format!("unknown stream flags {flag:#x}"));
    }
    let s = rt.create_stream_in(ctx.device, ctx.handle)?;
    // SAFETY: non-null (checked), writable by the API contract.
    unsafe { *stream = s.handle as aclrtStream };
    Ok(())
}

/// Destroys `stream` once its queued work, callbacks included, has run, then ends its callback subscription
/// (a subscribed calling thread runs the callbacks delivered meanwhile). Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID` (not a live stream, or a default stream).
#[no_mangle]
pub unsafe extern "C" fn aclrtDestroyStream(stream: aclrtStream) -> aclError {
    entry("aclrtDestroyStream", || {
        let rt = runtime();
        rt.ensure_init()?;
        let h = handle(stream)?;
        if rt.contexts.all().iter().any(|c| c.default_stream == h) {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "a default stream cannot be destroyed");
        }
        rt.destroy_stream(h)
    })
}

/// Waits until the work queued on `stream` (NULL: the current context's default stream) has run and returns
/// its sticky error, if a task failed. Also `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` or
/// `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`, or called from its own host function or callback).
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeStream(stream: aclrtStream) -> aclError {
    entry("aclrtSynchronizeStream", || runtime().stream(stream as usize)?.core.synchronize(None))
}

/// As `aclrtSynchronizeStream`, waiting at most `timeout` ms (-1: no limit; 0: check without waiting):
/// `ACL_ERROR_RT_STREAM_SYNC_TIMEOUT` on expiry, `ACL_ERROR_RT_PARAM_INVALID` for a timeout below -1.
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeStreamWithTimeout(stream: aclrtStream, timeout: i32) -> aclError {
    entry("aclrtSynchronizeStreamWithTimeout", || {
        let timeout = duration_ms(timeout, ACL_ERROR_RT_PARAM_INVALID, true)?;
        runtime().stream(stream as usize)?.core.synchronize(timeout)
    })
}

/// Writes `ACL_STREAM_STATUS_COMPLETE` to `*status` if all work queued on `stream` has run, else
/// `ACL_STREAM_STATUS_NOT_READY`; a failed task is not reported. Fails with `ACL_ERROR_INVALID_PARAM` (NULL),
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`).
#[no_mangle]
pub unsafe extern "C" fn aclrtStreamQuery(stream: aclrtStream, status: *mut aclrtStreamStatus) -> aclError {
    entry("aclrtStreamQuery", || {
        let s = runtime().stream(stream as usize)?;
        let v = if s.core.idle() { ACL_STREAM_STATUS_COMPLETE } else { ACL_STREAM_STATUS_NOT_READY };
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(status, v) }
    })
}

/// Queues on `stream` a wait for the work captured by `event`'s latest record and returns at once (no wait if
/// it is unrecorded or was recorded on `stream`); if that work failed, `stream` fails too. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL`, `ACL_ERROR_INVALID_PARAM` (NULL `event`) or
/// `ACL_ERROR_RT_PARAM_INVALID` (dead handle, or an event lacking `ACL_EVENT_SYNC`).
#[no_mangle]
pub unsafe extern "C" fn aclrtStreamWaitEvent(stream: aclrtStream, event: aclrtEvent) -> aclError {
    entry("aclrtStreamWaitEvent", || {
        let rt = runtime();
        let s = rt.stream(stream as usize)?;
        let e = rt.events.get(handle(event)?)?;
        e.check_waitable()?;
        if let Some(r) = e.latest() {
            if !Arc::ptr_eq(&r.core, &s.core) {
                s.core.enqueue(Kind::Order, move || {
                    r.core.wait_for(r.seq, None);
                    // The work after the wait would use what the failed work did not produce: this
                    // stream fails too (stricter than CANN documents; see event.rs).
                    match r.failure.get() {
                        Some(f) => Err(Fail::new(f.code, format!("waited for work that failed: {}", f.message))),
                        None => Ok(()),
                    }
                })?;
            }
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------
// Events

const EVENT_FLAGS: u32 = 0x7b;

/// Creates an event with `ACL_EVENT_SYNC | ACL_EVENT_TIME_LINE` and writes it to `*event`. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` (no device set) or `ACL_ERROR_INVALID_PARAM` (NULL).
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEvent(event: *mut aclrtEvent) -> aclError {
    entry("aclrtCreateEvent", || create_event(event, ACL_EVENT_SYNC as u32 | ACL_EVENT_TIME_LINE as u32, false, false))
}

/// As `aclrtCreateEvent`, with the flags `flag` (`ACL_EVENT_*` bits only, else `ACL_ERROR_RT_PARAM_INVALID`).
/// Without `ACL_EVENT_SYNC` streams cannot wait on the event; without `ACL_EVENT_TIME_LINE` it cannot be
/// timed.
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEventWithFlag(event: *mut aclrtEvent, flag: u32) -> aclError {
    entry("aclrtCreateEventWithFlag", || create_event(event, flag, false, true))
}

/// As `aclrtCreateEventWithFlag`, for an Ex event: it reads complete until first recorded, and cannot be
/// reset.
#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEventExWithFlag(event: *mut aclrtEvent, flag: u32) -> aclError {
    entry("aclrtCreateEventExWithFlag", || create_event(event, flag, true, true))
}

fn create_event(event: *mut aclrtEvent, flags: u32, ex: bool, with_flag: bool) -> Result<()> {
    let rt = runtime();
    rt.current()?;
    if event.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "event is NULL");
    }
    if flags & !EVENT_FLAGS != 0 {
        return fail(ACL_ERROR_RT_PARAM_INVALID, format!("unknown event flags {flags:#x}"));
    }
    let h = rt.events.fresh();
    rt.events.insert(h, Arc::new(Event::new(flags, ex, with_flag)));
    // SAFETY: non-null (checked), writable by the API contract.
    unsafe { *event = h as aclrtEvent };
    Ok(())
}

/// Queues a record of `event` on `stream`, returning at once: the event now captures the work queued there so
/// far, and completes when the stream reaches the record. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`), `ACL_ERROR_INVALID_PARAM`
/// (NULL `event`) or `ACL_ERROR_RT_PARAM_INVALID` (dead `event`).
#[no_mangle]
pub unsafe extern "C" fn aclrtRecordEvent(event: aclrtEvent, stream: aclrtStream) -> aclError {
    entry("aclrtRecordEvent", || {
        runtime().ensure_init()?;
        let rt = runtime();
        let e = rt.events.get(handle(event)?)?;
        let s = rt.stream(stream as usize)?;
        e.record(&s.core)
    })
}

/// Queues a reset of `event` on `stream`, returning at once: once reached, the event is unrecorded unless
/// recorded again meanwhile. Only `aclrtCreateEventWithFlag` events with `ACL_EVENT_SYNC` can be reset
/// (`ACL_ERROR_RT_PARAM_INVALID`); other errors as in `aclrtRecordEvent`.
#[no_mangle]
pub unsafe extern "C" fn aclrtResetEvent(event: aclrtEvent, stream: aclrtStream) -> aclError {
    entry("aclrtResetEvent", || {
        runtime().ensure_init()?;
        let rt = runtime();
        let e = rt.events.get(handle(event)?)?;
        let s = rt.stream(stream as usize)?;
        if !e.with_flag || e.ex || e.flags & ACL_EVENT_SYNC as u32 == 0 {
            return fail(
                ACL_ERROR_RT_PARAM_INVALID,
                "only events created by aclrtCreateEventWithFlag with ACL_EVENT_SYNC can be reset",
            );
        }
        e.reset_on(&s.core)
    })
}

/// Writes `ACL_EVENT_RECORDED_STATUS_COMPLETE` to `*status` once the latest record is reached, else
/// `ACL_EVENT_RECORDED_STATUS_NOT_READY` (an unrecorded Ex event reads complete; failed work is not
/// reported). Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL) or
/// `ACL_ERROR_RT_PARAM_INVALID` (dead).
#[no_mangle]
pub unsafe extern "C" fn aclrtQueryEventStatus(event: aclrtEvent, status: *mut aclrtEventRecordedStatus) -> aclError {
    entry("aclrtQueryEventStatus", || {
        runtime().ensure_init()?;
        let e = runtime().events.get(handle(event)?)?;
        // SAFETY: as for aclrtGetDevice.
        unsafe { out(status, e.status()) }
    })
}

/// Waits until its stream reaches `event`'s latest record (at once if unrecorded); returns the stream's error
/// if that work failed. Also `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL) or
/// `ACL_ERROR_RT_PARAM_INVALID` (dead, or called from that stream's own host function or callback).
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeEvent(event: aclrtEvent) -> aclError {
    entry("aclrtSynchronizeEvent", || {
        runtime().ensure_init()?;
        let e = runtime().events.get(handle(event)?)?;
        e.synchronize(None)
    })
}

/// As `aclrtSynchronizeEvent`, waiting at most `timeout` ms (-1: no limit; 0: check without waiting):
/// `ACL_ERROR_RT_EVENT_SYNC_TIMEOUT` on expiry, `ACL_ERROR_RT_PARAM_INVALID` for a timeout below -1.
#[no_mangle]
pub unsafe extern "C" fn aclrtSynchronizeEventWithTimeout(event: aclrtEvent, timeout: i32) -> aclError {
    entry("aclrtSynchronizeEventWithTimeout", || {
        runtime().ensure_init()?;
        let timeout = duration_ms(timeout, ACL_ERROR_RT_PARAM_INVALID, true)?;
        let e = runtime().events.get(handle(event)?)?;
        e.synchronize(timeout)
    })
}

/// Writes to `*ms` the milliseconds between the moments the streams reached the two events' records. Fails
/// with `ACL_ERROR_RT_EVENT_TIMESTAMP_INVALID` (unrecorded, or no `ACL_EVENT_TIME_LINE`),
/// `ACL_ERROR_RT_EVENT_NOT_COMPLETE`, `ACL_ERROR_RT_EVENT_TIMESTAMP_REVERSAL` (end first),
/// `ACL_ERROR_INVALID_PARAM` (NULL), `ACL_ERROR_RT_PARAM_INVALID` (dead) or `ACL_ERROR_UNINITIALIZE`.
#[no_mangle]
pub unsafe extern "C" fn aclrtEventElapsedTime(ms: *mut f32, startEvent: aclrtEvent, endEvent: aclrtEvent) -> aclError {
    entry("aclrtEventElapsedTime", || {
        runtime().ensure_init()?;
        let rt = runtime();
        let (a, b) = (rt.events.get(handle(startEvent)?)?, rt.events.get(handle(endEvent)?)?);
        if ms.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "ms is NULL");
        }
        let v = elapsed_ms(&a, &b)?;
        // SAFETY: non-null (checked), writable by the API contract.
        unsafe { *ms = v };
        Ok(())
    })
}

/// Destroys `event` at once; records and waits already queued still run. Fails with `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID` (dead handle).
#[no_mangle]
pub unsafe extern "C" fn aclrtDestroyEvent(event: aclrtEvent) -> aclError {
    entry("aclrtDestroyEvent", || {
        runtime().ensure_init()?;
        runtime().events.remove(handle(event)?).map(drop)
    })
}

// ---------------------------------------------------------------------------------------------------
// Memory

/// Allocates `size` bytes on the current device and writes the address (64-byte aligned;
/// `round_up(size, 32) + 32` bytes reserved) to `*devPtr`; `policy` is ignored. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL`, `ACL_ERROR_INVALID_PARAM` (NULL, zero or
/// overflowing `size`) or `ACL_ERROR_RT_MEMORY_ALLOCATION` (no room).
#[no_mangle]
pub unsafe extern "C" fn aclrtMalloc(devPtr: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) -> aclError {
    entry("aclrtMalloc", || malloc(devPtr, size, policy, false))
}

/// As `aclrtMalloc`, without the 32 bytes of padding: `round_up(size, 32)` bytes are reserved.
#[no_mangle]
pub unsafe extern "C" fn aclrtMallocAlign32(
    devPtr: *mut *mut c_void,
    size: usize,
    policy: aclrtMemMallocPolicy,
) -> aclError {
    entry("aclrtMallocAlign32", || malloc(devPtr, size, policy, true))
}

fn malloc(dev_ptr: *mut *mut c_void, size: usize, _policy: aclrtMemMallocPolicy, align32_only: bool) -> Result<()> {
    let rt = runtime();
    let ctx = rt.current()?;
    if dev_ptr.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "devPtr is NULL");
    }
    // Any policy value is accepted, as CANN does (an unknown one falls back to huge pages >= 2 MiB).
    let p = rt.memory.malloc(ctx.device, size, align32_only)?;
    // SAFETY: non-null (checked), writable by the API contract.
    unsafe { *dev_ptr = p as *mut c_void };
    Ok(())
}

/// Frees a device allocation at once: queued work using it fails when it runs; work already running keeps it
/// until done. Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL) or
/// `ACL_ERROR_RT_PARAM_INVALID` (not the start of a live device allocation).
#[no_mangle]
pub unsafe extern "C" fn aclrtFree(devPtr: *mut c_void) -> aclError {
    entry("aclrtFree", || {
        let rt = runtime();
        rt.ensure_init()?;
        if devPtr.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "devPtr is NULL");
        }
        rt.memory.free(devPtr as usize)
    })
}

/// Allocates `size` bytes of pinned host memory (tracked, 64-byte aligned) and writes the address to
/// `*hostPtr`; needs no device. Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL, zero
/// `size`) or `ACL_ERROR_RT_MEMORY_ALLOCATION` (the pinned region, the size of physical memory, is full).
#[no_mangle]
pub unsafe extern "C" fn aclrtMallocHost(hostPtr: *mut *mut c_void, size: usize) -> aclError {
    entry("aclrtMallocHost", || {
        let rt = runtime();
        rt.ensure_init()?;
        if hostPtr.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "hostPtr is NULL");
        }
        let p = rt.memory.malloc_host(size)?;
        // SAFETY: non-null (checked), writable by the API contract.
        unsafe { *hostPtr = p as *mut c_void };
        Ok(())
    })
}

/// Frees an `aclrtMallocHost` block at once, as `aclrtFree` does device memory. Fails with
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID` (not a live
/// `aclrtMallocHost` block).
#[no_mangle]
pub unsafe extern "C" fn aclrtFreeHost(hostPtr: *mut c_void) -> aclError {
    entry("aclrtFreeHost", || {
        let rt = runtime();
        rt.ensure_init()?;
        if hostPtr.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "hostPtr is NULL");
        }
        rt.memory.free_host(hostPtr as usize)
    })
}

/// Validates the arguments common to the copy calls; `None` means there is nothing to copy.
fn check_copy(
    dst: *mut c_void,
    dest_max: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> Result<Option<[Span; 2]>> {
    if dst.is_null() || src.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "dst or src is NULL");
    }
    if !(ACL_MEMCPY_HOST_TO_HOST..=ACL_MEMCPY_INTER_DEVICE_TO_DEVICE).contains(&kind) {
        return fail(ACL_ERROR_INVALID_PARAM, format!("unknown aclrtMemcpyKind {kind}"));
    }
    if count > dest_max {
        return fail(ACL_ERROR_RT_PARAM_INVALID, format!("count {count} exceeds destMax {dest_max}"));
    }
    if count == 0 {
        return Ok(None);
    }
    Ok(Some([
        Span { addr: dst as usize, len: count, write: true },
        Span { addr: src as usize, len: count, write: false },
    ]))
}

/// Copies `n` bytes (ranges already checked and locked); large non-overlapping copies use the pool.
fn copy_bytes(dst: usize, src: usize, n: usize) {
    let overlap = dst < src + n && src < dst + n;
    if n < PARALLEL_COPY_BYTES || overlap {
        // SAFETY: both ranges were checked against live allocations (or are the caller's host memory)
        // and the allocation locks are held; `copy` handles overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, n) };
        return;
    }
    let pool = Pool::global();
    let chunks = pool.threads().max(1) * 2;
    let step = n.div_ceil(chunks).next_multiple_of(4096);
    pool.parallel_for(n.div_ceil(step), &|i| {
        let off = i * step;
        let len = step.min(n - off);
        // SAFETY: as above; the chunks are disjoint and the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping((src + off) as *const u8, (dst + off) as *mut u8, len) };
    });
}

/// Copies `count` bytes from `src` to `dst` now, not ordered with any stream; `kind` is range-checked only.
/// Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL, unknown `kind`) or
/// `ACL_ERROR_RT_PARAM_INVALID` (`count > destMax`, a device or pinned range outside one live allocation).
#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> aclError {
    entry("aclrtMemcpy", || {
        runtime().ensure_init()?;
        let Some(spans) = check_copy(dst, destMax, src, count, kind)? else {
            return Ok(());
        };
        let _held = runtime().memory.access(&spans)?;
        copy_bytes(dst as usize, src as usize, count);
        Ok(())
    })
}

/// Queues the copy on `stream`, returning at once, or after it ran (with the stream's error) when a side is
/// pageable host memory. Checks as `aclrtMemcpy`, plus `ACL_ERROR_RT_CONTEXT_NULL` or
/// `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`), `ACL_ERROR_RT_FEATURE_NOT_SUPPORT` (no device side); a range
/// freed before the copy runs fails the stream with `ACL_ERROR_RT_DEVICE_MEM_ERROR`.
#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> aclError {
    entry("aclrtMemcpyAsync", || {
        let rt = runtime();
        let s = rt.stream(stream as usize)?;
        let Some(spans) = check_copy(dst, destMax, src, count, kind)? else {
            return Ok(());
        };
        let on_device = |a: usize| matches!(rt.memory.locate(a), Location::Device(_));
        if kind == ACL_MEMCPY_HOST_TO_HOST || (!on_device(dst as usize) && !on_device(src as usize)) {
            return fail(ACL_ERROR_RT_FEATURE_NOT_SUPPORT, "asynchronous host-to-host copies are not supported");
        }
        // Pageable host memory (neither device nor pinned) is the caller's to free as soon as the
        // call returns: as in CANN 9, the copy is then synchronous (waits for its turn and runs).
        let pageable = [dst as usize, src as usize].iter().any(|&a| rt.memory.locate(a) == Location::Host);
        if pageable {
            s.core.check_not_waiting_on_itself(s.core.submitted() + 1)?;
        }
        // Fail now if the ranges are already bad; and keep them pinned while the copy is queued, so
        // that memory freed meanwhile is not handed out again before the copy finds it freed.
        let queued = rt.memory.access(&spans)?;
        let (d, sr) = (dst as usize, src as usize);
        let seq = s.core.enqueue(Kind::Device, move || {
            let _queued = queued;
            let _held =
                runtime().memory.access(&spans).map_err(|f| Fail::new(ACL_ERROR_RT_DEVICE_MEM_ERROR, f.message))?;
            copy_bytes(d, sr, count);
            Ok(())
        })?;
        if pageable {
            s.core.wait_for(seq, None);
            if let Some(f) = s.core.error() {
                return Err(Fail::new(f.code, format!("the copy did not run: {}", f.message)));
            }
        }
        Ok(())
    })
}

fn check_memset(dev_ptr: *mut c_void, max_count: usize, count: usize) -> Result<Option<Span>> {
    if dev_ptr.is_null() {
        return fail(ACL_ERROR_INVALID_PARAM, "devPtr is NULL");
    }
    if count > max_count {
        return fail(ACL_ERROR_RT_PARAM_INVALID, format!("count {count} exceeds maxCount {max_count}"));
    }
    if count == 0 {
        return Ok(None);
    }
    // Device or pinned host memory (CANN decides by address); other host memory is not the runtime's.
    if runtime().memory.locate(dev_ptr as usize) == Location::Host {
        return fail(ACL_ERROR_RT_PARAM_INVALID, "devPtr is neither device memory nor pinned host memory");
    }
    Ok(Some(Span { addr: dev_ptr as usize, len: count, write: true }))
}

/// Sets `count` bytes at `devPtr` to the low byte of `value`, on the calling thread; `count` 0 does nothing.
/// Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL) or `ACL_ERROR_RT_PARAM_INVALID`
/// (`count > maxCount`, memory neither device nor pinned, or a range not inside one live allocation).
#[no_mangle]
pub unsafe extern "C" fn aclrtMemset(devPtr: *mut c_void, maxCount: usize, value: i32, count: usize) -> aclError {
    entry("aclrtMemset", || {
        runtime().ensure_init()?;
        let Some(span) = check_memset(devPtr, maxCount, count)? else {
            return Ok(());
        };
        let _held = runtime().memory.access(&[span])?;
        // SAFETY: the range is inside a live device or pinned allocation and its lock is held.
        unsafe { std::ptr::write_bytes(devPtr as *mut u8, value as u8, count) };
        Ok(())
    })
}

/// Queues `aclrtMemset`'s work on `stream` and returns at once. Checks as `aclrtMemset`, plus
/// `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`); a range freed before it runs
/// fails the stream with `ACL_ERROR_RT_DEVICE_MEM_ERROR`.
#[no_mangle]
pub unsafe extern "C" fn aclrtMemsetAsync(
    devPtr: *mut c_void,
    maxCount: usize,
    value: i32,
    count: usize,
    stream: aclrtStream,
) -> aclError {
    entry("aclrtMemsetAsync", || {
        let s = runtime().stream(stream as usize)?;
        let Some(span) = check_memset(devPtr, maxCount, count)? else {
            return Ok(());
        };
        let queued = runtime().memory.access(&[span])?; // as in aclrtMemcpyAsync
        let p = devPtr as usize;
        s.core.enqueue(Kind::Device, move || {
            let _queued = queued;
            let _held =
                runtime().memory.access(&[span]).map_err(|f| Fail::new(ACL_ERROR_RT_DEVICE_MEM_ERROR, f.message))?;
            // SAFETY: the range is inside a live device allocation and its lock is held.
            unsafe { std::ptr::write_bytes(p as *mut u8, value as u8, count) };
            Ok(())
        })?;
        Ok(())
    })
}

/// Copies `height` rows of `width` bytes from `src` (rows `spitch` apart) to `dst` (rows `dpitch` apart) now.
/// Fails with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (NULL, unknown `kind`) or
/// `ACL_ERROR_RT_PARAM_INVALID` (`width` above a pitch, overflow, a range outside one live allocation).
#[no_mangle]
pub unsafe extern "C" fn aclrtMemcpy2d(
    dst: *mut c_void,
    dpitch: usize,
    src: *const c_void,
    spitch: usize,
    width: usize,
    height: usize,
    kind: aclrtMemcpyKind,
) -> aclError {
    entry("aclrtMemcpy2d", || {
        runtime().ensure_init()?;
        if dst.is_null() || src.is_null() {
            return fail(ACL_ERROR_INVALID_PARAM, "dst or src is NULL");
        }
        if !(ACL_MEMCPY_HOST_TO_HOST..=ACL_MEMCPY_INTER_DEVICE_TO_DEVICE).contains(&kind) {
            return fail(ACL_ERROR_INVALID_PARAM, format!("unknown aclrtMemcpyKind {kind}"));
        }
        if width > dpitch || width > spitch {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "width exceeds a pitch");
        }
        if width == 0 || height == 0 {
            return Ok(());
        }
        let extent = |pitch: usize| pitch.checked_mul(height - 1).and_then(|v| v.checked_add(width));
        let (Some(dlen), Some(slen)) = (extent(dpitch), extent(spitch)) else {
            return fail(ACL_ERROR_RT_PARAM_INVALID, "pitch × height overflows");
        };
        let _held = runtime().memory.access(&[
            Span { addr: dst as usize, len: dlen, write: true },
            Span { addr: src as usize, len: slen, write: false },
        ])?;
        for row in 0..height {
            copy_bytes(dst as usize + row * dpitch, src as usize + row * spitch, width);
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------
// Host callbacks and host functions

/// Makes thread `threadId` (a `pthread_self` value, not checked) run `stream`'s callbacks through
/// `aclrtProcessReport`; a thread may serve several streams. Fails with `ACL_ERROR_REPEAT_SUBSCRIBE` (the
/// stream has one), `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID`
/// (bad `stream`).
#[no_mangle]
pub unsafe extern "C" fn aclrtSubscribeReport(threadId: u64, stream: aclrtStream) -> aclError {
    entry("aclrtSubscribeReport", || {
        let rt = runtime();
        let s = rt.stream(stream as usize)?;
        rt.reports.subscribe(threadId, s.handle)
    })
}

/// Ends `threadId`'s subscription to `stream`; if it was the thread's last, callbacks still waiting for the
/// thread are dropped unrun. Fails with `ACL_ERROR_RT_STREAM_SUBSCRIBE` (not subscribed to it),
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`).
#[no_mangle]
pub unsafe extern "C" fn aclrtUnSubscribeReport(threadId: u64, stream: aclrtStream) -> aclError {
    entry("aclrtUnSubscribeReport", || {
        let rt = runtime();
        let s = rt.stream(stream as usize)?;
        rt.reports.unsubscribe(threadId, s.handle)
    })
}

/// Queues `fn_(userData)` on `stream`, returning at once; once reached it goes to the subscribed thread's
/// `aclrtProcessReport`, holding the stream until it has run if `ACL_CALLBACK_BLOCK`. Fails with
/// `ACL_ERROR_INVALID_PARAM` (NULL `fn_`, bad `blockType`), `ACL_ERROR_RT_STREAM_NO_CB_REG` (no subscriber),
/// `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`).
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchCallback(
    fn_: aclrtCallback,
    userData: *mut c_void,
    blockType: aclrtCallbackBlockType,
    stream: aclrtStream,
) -> aclError {
    entry("aclrtLaunchCallback", || {
        let rt = runtime();
        let s = rt.stream(stream as usize)?;
        let Some(func) = fn_ else {
            return fail(ACL_ERROR_INVALID_PARAM, "fn is NULL");
        };
        let block = match blockType {
            ACL_CALLBACK_NO_BLOCK => false,
            ACL_CALLBACK_BLOCK => true,
            other => return fail(ACL_ERROR_INVALID_PARAM, format!("unknown aclrtCallbackBlockType {other}")),
        };
        let Some(tid) = rt.reports.subscriber(s.handle) else {
            return fail(
                ACL_ERROR_RT_STREAM_NO_CB_REG,
                "no thread is subscribed to this stream (aclrtSubscribeReport)",
            );
        };
        let data = userData as usize;
        let holds = block.then(|| Arc::downgrade(&s.core));
        s.core.enqueue(Kind::Host, move || {
            let done = Arc::new((Mutex::new(false), Condvar::new()));
            runtime().reports.deliver(tid, Pending { func, data, done: done.clone(), holds });
            if block {
                let mut d = done.0.lock().unwrap();
                while !*d {
                    d = done.1.wait(d).unwrap();
                }
            }
            Ok(())
        })?;
        Ok(())
    })
}

/// Runs one callback delivered to the calling thread, waiting up to `timeout` ms (-1: no limit) for it. Fails
/// with `ACL_ERROR_UNINITIALIZE`, `ACL_ERROR_INVALID_PARAM` (`timeout` 0 or < -1),
/// `ACL_ERROR_RT_THREAD_SUBSCRIBE` (no subscription, or it ended while waiting) or
/// `ACL_ERROR_RT_REPORT_TIMEOUT`.
#[no_mangle]
pub unsafe extern "C" fn aclrtProcessReport(timeout: i32) -> aclError {
    entry("aclrtProcessReport", || {
        let rt = runtime();
        rt.ensure_init()?;
        let timeout = duration_ms(timeout, ACL_ERROR_INVALID_PARAM, false)?;
        rt.reports.process(timeout)
    })
}

/// Queues `fn_(args)` on `stream` and returns at once; the stream's thread calls it when it gets there, even
/// after an earlier task failed. Fails with `ACL_ERROR_INVALID_PARAM` (NULL `fn_`), `ACL_ERROR_UNINITIALIZE`,
/// `ACL_ERROR_RT_CONTEXT_NULL` or `ACL_ERROR_RT_PARAM_INVALID` (bad `stream`).
#[no_mangle]
pub unsafe extern "C" fn aclrtLaunchHostFunc(stream: aclrtStream, fn_: aclrtHostFunc, args: *mut c_void) -> aclError {
    entry("aclrtLaunchHostFunc", || {
        let s = runtime().stream(stream as usize)?;
        let Some(func) = fn_ else {
            return fail(ACL_ERROR_INVALID_PARAM, "fn is NULL");
        };
        let args = args as usize;
        s.core.enqueue(Kind::Host, move || {
            // SAFETY: the application passed this function and argument to aclrtLaunchHostFunc,
            // promising that calling it from the stream is valid.
            unsafe { func(args as *mut c_void) };
            Ok(())
        })?;
        Ok(())
    })
}
