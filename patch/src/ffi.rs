//! The C ABI the engine calls (declared in `patch/include/ascend_patch.h`). Every entry validates its
//! arguments, returns 0 or an HCCL result code (`HCCL_E_PARA` for bad arguments), never unwinds
//! into the caller, and keeps a message for the calling thread (`ascend_patch_last_error`).

use crate::comm::{Data, PatchComm};
use crate::layout::{Kind, Sizes};
use ascend_sim::hccl::DType;
use ascend_sim::runtime::Registry;
use ascend_sys::{HCCL_E_INTERNAL, HCCL_E_PARA, HCCL_E_PTR};
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr};
use std::sync::{Arc, OnceLock};

thread_local! {
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs an entry: records the message of a failure (or of a panic, reported as `HCCL_E_INTERNAL`).
fn entry(name: &str, f: impl FnOnce() -> Result<(), (i32, String)>) -> i32 {
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err((HCCL_E_INTERNAL, "internal error (a panic was caught)".into())));
    match result {
        Ok(()) => 0,
        Err((code, msg)) => {
            LAST_ERROR.with(|e| *e.borrow_mut() = format!("{name}: {msg}"));
            code
        }
    }
}

fn para(msg: impl Into<String>) -> (i32, String) {
    (HCCL_E_PARA, msg.into())
}

/// # Safety
/// `s` is null or a NUL-terminated string.
unsafe fn str_arg<'a>(what: &str, s: *const c_char) -> Result<&'a str, (i32, String)> {
    if s.is_null() {
        return Err((HCCL_E_PTR, format!("{what} is null")));
    }
    // SAFETY: NUL-terminated by the contract.
    unsafe { CStr::from_ptr(s) }.to_str().map_err(|_| para(format!("{what} is not UTF-8")))
}

/// Copies `text` and its NUL into `buf` (`cap` bytes) when it fits; `needed` gets its size.
///
/// # Safety
/// `buf` is null or holds `cap` bytes; `needed` is null or writable.
unsafe fn out_text(text: &str, buf: *mut c_char, cap: usize, needed: *mut usize) -> Result<(), (i32, String)> {
    if !needed.is_null() {
        // SAFETY: writable by the contract.
        unsafe { *needed = text.len() + 1 };
    }
    if buf.is_null() && cap == 0 && !needed.is_null() {
        // A size query.
        return Ok(());
    }
    if buf.is_null() || cap < text.len() + 1 {
        return Err(para(format!("the buffer holds {cap} bytes; {} are needed", text.len() + 1)));
    }
    // SAFETY: `buf` holds cap ≥ len + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, text.len());
        *buf.add(text.len()) = 0;
    }
    Ok(())
}

/// The message of this thread's last failed call (empty if none) into `buf`; returns the bytes
/// needed with the NUL (copies nothing when `cap` is smaller).
///
/// # Safety
/// `buf` is null or holds `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_last_error(buf: *mut c_char, cap: usize) -> usize {
    LAST_ERROR.with(|e| {
        let e = e.borrow();
        if !buf.is_null() && cap > e.len() {
            // SAFETY: cap > len bytes are writable.
            unsafe {
                std::ptr::copy_nonoverlapping(e.as_ptr(), buf as *mut u8, e.len());
                *buf.add(e.len()) = 0;
            }
        }
        e.len() + 1
    })
}

/// Writes a new root info (`ASCEND_PATCH_ROOT_INFO_BYTES`) into `out`: for the host transport when
/// `device < 0`, else from the HCCL of `device`.
///
/// # Safety
/// `out` holds `cap` bytes.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_root_info(device: i32, out: *mut u8, cap: usize) -> i32 {
    entry("ascend_patch_root_info", || {
        if out.is_null() || cap < crate::comm::ROOT_INFO_BYTES {
            return Err(para(format!("out must hold {} bytes", crate::comm::ROOT_INFO_BYTES)));
        }
        let info = crate::comm::root_info(device)?;
        // SAFETY: `out` holds cap ≥ info.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(info.as_ptr(), out, info.len()) };
        Ok(())
    })
}

/// Joins the communicator of `root` (`len` bytes) as `rank` of `nranks`; `device < 0` selects the
/// host transport (collectives on host memory, no stream). On success `*comm` is the handle.
/// Timeouts come from `HCCL_CONNECT_TIMEOUT` and `HCCL_EXEC_TIMEOUT`.
///
/// # Safety
/// `root` holds `len` bytes; `comm` is writable.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_comm_init(
    root: *const u8,
    len: usize,
    nranks: u32,
    rank: u32,
    device: i32,
    comm: *mut *mut c_void,
) -> i32 {
    // SAFETY: forwarded contract.
    unsafe { ascend_patch_comm_init_timeout(root, len, nranks, rank, device, 0.0, comm) }
}

/// As `ascend_patch_comm_init`, with `timeout_s` seconds (when positive and finite) instead of
/// `HCCL_CONNECT_TIMEOUT` and `HCCL_EXEC_TIMEOUT` for the host transport: the engine's own
/// distributed timeout, so that a peer that is alive but stuck fails a collective in that time.
///
/// # Safety
/// As `ascend_patch_comm_init`.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_comm_init_timeout(
    root: *const u8,
    len: usize,
    nranks: u32,
    rank: u32,
    device: i32,
    timeout_s: f64,
    comm: *mut *mut c_void,
) -> i32 {
    entry("ascend_patch_comm_init", || {
        if root.is_null() || comm.is_null() {
            return Err((HCCL_E_PTR, "root and comm must not be null".into()));
        }
        // Before the slice is made: a wild `len` must not reach from_raw_parts.
        if len != crate::comm::ROOT_INFO_BYTES {
            return Err(para(format!("root info is {len} bytes, not {}", crate::comm::ROOT_INFO_BYTES)));
        }
        // SAFETY: `root` holds `len` bytes by the contract.
        let bytes = unsafe { std::slice::from_raw_parts(root, len) };
        let timeout = (timeout_s.is_finite() && timeout_s > 0.0)
            .then(|| std::time::Duration::from_secs_f64(timeout_s.min(i32::MAX as f64)));
        let c = PatchComm::init(bytes, nranks as usize, rank as usize, device, timeout)?;
        let h = comms().fresh();
        comms().insert(h, Arc::new(c));
        // SAFETY: writable by the contract.
        unsafe { *comm = h as *mut c_void };
        Ok(())
    })
}

/// Live communicators by handle. A handle is a number never given twice, not an address: a
/// destroyed (or twice destroyed, or made-up) handle is refused instead of touching freed memory,
/// and a call in flight holds its communicator, so a destroy from another thread releases it only
/// when that call returns.
fn comms() -> &'static Registry<PatchComm> {
    static COMMS: OnceLock<Registry<PatchComm>> = OnceLock::new();
    COMMS.get_or_init(|| Registry::new(0xAC, "ascend_patch communicator"))
}

/// Destroys a communicator: the handle is invalid from now on; its shared memory is released when
/// the calls in flight on it have returned and the last rank has destroyed its handle. An unknown or
/// already destroyed handle is `HCCL_E_PARA`.
///
/// # Safety
/// None beyond the C ABI: `comm` is only compared with live handles.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_comm_destroy(comm: *mut c_void) -> i32 {
    entry("ascend_patch_comm_destroy", || {
        handle(comm)?;
        // The last reference unless a call is in flight.
        comms().remove(comm as usize).map(drop).map_err(unknown)
    })
}

/// Aborts a host communicator: every call in flight on it, in this process and on the other ranks,
/// fails within milliseconds (`HCCL_E_REMOTE`), and so does every later one; the handle must still be
/// destroyed. For leaving while calls on other threads wait for peers (a bounded-time destroy).
/// `HCCL_E_NOT_SUPPORT` for a device communicator; `HCCL_E_PARA` for an unknown handle.
///
/// # Safety
/// None beyond the C ABI: `comm` is only compared with live handles.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_comm_abort(comm: *mut c_void) -> i32 {
    entry("ascend_patch_comm_abort", || handle(comm)?.abort())
}

/// The communicator of a live handle (held for the call).
fn handle(comm: *mut c_void) -> Result<Arc<PatchComm>, (i32, String)> {
    if comm.is_null() {
        return Err((HCCL_E_PTR, "comm is null".into()));
    }
    comms().get(comm as usize).map_err(unknown)
}

fn unknown(f: ascend_sim::fail::Fail) -> (i32, String) {
    para(format!("{} (destroyed, or never made)", f.message))
}

/// `count` elements of `dtype` on `comm`, refused when the largest buffer an operation may touch
/// (every rank's `count`, gathered) has more bytes than an address space holds.
fn data(comm: &PatchComm, count: u64, dtype: i32) -> Result<Data, (i32, String)> {
    let elem = DType::from_hccl(dtype).map_or(1, DType::size); // an unknown type fails later, by name
    let bytes = usize::try_from(count).ok().and_then(|c| c.checked_mul(elem)).and_then(|b| b.checked_mul(comm.size));
    match bytes {
        Some(b) if b <= isize::MAX as usize => Ok(Data { count: count as usize, dtype }),
        _ => Err(para(format!("count {count} of data type {dtype} overflows a buffer's size"))),
    }
}

fn index(what: &str, v: i32) -> Result<usize, (i32, String)> {
    usize::try_from(v).map_err(|_| para(format!("{what} {v} is negative")))
}

/// `recv = op(send of every rank)`, `count` elements (`send == recv` allowed).
///
/// # Safety
/// The buffers hold `count` elements of `dtype` (host memory for a host communicator, device memory
/// otherwise); `comm` is live; `stream` is null (host) or a stream of the communicator's device.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_all_reduce(
    comm: *mut c_void,
    send: *const c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    op: i32,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: forwarded contract.
    entry("ascend_patch_all_reduce", || unsafe {
        let c = handle(comm)?;
        c.all_reduce(send as usize, recv as usize, data(&c, count, dtype)?, op, stream)
    })
}

/// `recv` (nranks × count) = every rank's `send` (count), in rank order.
///
/// # Safety
/// As `ascend_patch_all_reduce`, with `recv` holding nranks × count elements.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_all_gather(
    comm: *mut c_void,
    send: *const c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: forwarded contract.
    entry("ascend_patch_all_gather", || unsafe {
        let c = handle(comm)?;
        c.all_gather(send as usize, recv as usize, data(&c, count, dtype)?, stream)
    })
}

/// `recv` (count) = this rank's block of `op` over every rank's `send` (nranks × count).
///
/// # Safety
/// As `ascend_patch_all_reduce`, with `send` holding nranks × count elements.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_reduce_scatter(
    comm: *mut c_void,
    send: *const c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    op: i32,
    stream: *mut c_void,
) -> i32 {
    // SAFETY: forwarded contract.
    entry("ascend_patch_reduce_scatter", || unsafe {
        let c = handle(comm)?;
        c.reduce_scatter(send as usize, recv as usize, data(&c, count, dtype)?, op, stream)
    })
}

/// On `root`, `recv` (nranks × count) = every rank's `send` (count); `recv` is ignored elsewhere.
///
/// # Safety
/// As `ascend_patch_all_reduce`; on the root `recv` holds nranks × count elements.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_gather(
    comm: *mut c_void,
    send: *const c_void,
    recv: *mut c_void,
    count: u64,
    dtype: i32,
    root: i32,
    stream: *mut c_void,
) -> i32 {
    entry("ascend_patch_gather", || {
        let root = index("root", root)?;
        // SAFETY: forwarded contract.
        unsafe {
            let c = handle(comm)?;
            c.gather(send as usize, recv as usize, data(&c, count, dtype)?, root, stream)
        }
    })
}

/// Every rank's `buf` (count) becomes `root`'s.
///
/// # Safety
/// As `ascend_patch_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_broadcast(
    comm: *mut c_void,
    buf: *mut c_void,
    count: u64,
    dtype: i32,
    root: i32,
    stream: *mut c_void,
) -> i32 {
    entry("ascend_patch_broadcast", || {
        let root = index("root", root)?;
        // SAFETY: forwarded contract.
        unsafe {
            let c = handle(comm)?;
            c.broadcast(buf as usize, data(&c, count, dtype)?, root, stream)
        }
    })
}

/// Sends `buf` (count) to `peer`; returns when the peer has taken it (host) or in stream order.
///
/// # Safety
/// As `ascend_patch_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_send(
    comm: *mut c_void,
    buf: *const c_void,
    count: u64,
    dtype: i32,
    peer: i32,
    stream: *mut c_void,
) -> i32 {
    entry("ascend_patch_send", || {
        let peer = index("peer", peer)?;
        // SAFETY: forwarded contract.
        unsafe {
            let c = handle(comm)?;
            c.send(buf as usize, data(&c, count, dtype)?, peer, stream)
        }
    })
}

/// Receives `buf` (count) from `peer`.
///
/// # Safety
/// As `ascend_patch_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_recv(
    comm: *mut c_void,
    buf: *mut c_void,
    count: u64,
    dtype: i32,
    peer: i32,
    stream: *mut c_void,
) -> i32 {
    entry("ascend_patch_recv", || {
        let peer = index("peer", peer)?;
        // SAFETY: forwarded contract.
        unsafe {
            let c = handle(comm)?;
            c.recv(buf as usize, data(&c, count, dtype)?, peer, stream)
        }
    })
}

/// Returns when every rank has entered it.
///
/// # Safety
/// `comm` is live; `stream` as for `ascend_patch_all_reduce`.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_barrier(comm: *mut c_void, stream: *mut c_void) -> i32 {
    // SAFETY: forwarded contract.
    entry("ascend_patch_barrier", || unsafe { handle(comm)?.barrier(stream) })
}

/// The groups of `kind` ("tp", "dcp", "pcp", "pp", "dp", "ep"/"eplb") for the given sizes, as
/// `*groups` rows of `*group_size` ranks in `out` (`cap` entries; sizes are written even when it is
/// too small).
///
/// # Safety
/// `kind` is a NUL-terminated string; `out` holds `cap` entries; `groups`, `group_size` writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ascend_patch_layout(
    world: u32,
    tp: u32,
    pp: u32,
    dp: u32,
    pcp: u32,
    dcp: u32,
    kind: *const c_char,
    out: *mut i32,
    cap: usize,
    groups: *mut usize,
    group_size: *mut usize,
) -> i32 {
    entry("ascend_patch_layout", || {
        // SAFETY: forwarded contract.
        let name = unsafe { str_arg("kind", kind) }?;
        let kind = Kind::parse(name).ok_or_else(|| para(format!("unknown group kind {name:?}")))?;
        if groups.is_null() || group_size.is_null() {
            return Err((HCCL_E_PTR, "groups and group_size must not be null".into()));
        }
        let sizes = Sizes {
            world: world as usize,
            tp: tp as usize,
            pp: pp as usize,
            dp: dp as usize,
            pcp: pcp as usize,
            dcp: dcp as usize,
        };
        let list = sizes.groups(kind).map_err(|e| para(e.0))?;
        let flat: Vec<i32> = list.iter().flatten().map(|&r| r as i32).collect();
        // SAFETY: writable by the contract.
        unsafe {
            *groups = list.len();
            *group_size = list.first().map_or(0, Vec::len);
        }
        if out.is_null() || cap < flat.len() {
            return Err(para(format!("out holds {cap} entries; {} are needed", flat.len())));
        }
        // SAFETY: `out` holds cap ≥ flat.len() entries.
        unsafe { std::ptr::copy_nonoverlapping(flat.as_ptr(), out, flat.len()) };
        Ok(())
    })
}

/// The patch registry as JSON into `buf` (`cap` bytes, NUL-terminated); `*needed` gets its size.
/// `buf` NULL with `cap` 0 asks only for the size (returns 0).
///
/// # Safety
/// `buf` is null or holds `cap` bytes; `needed` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_registry_json(buf: *mut c_char, cap: usize, needed: *mut usize) -> i32 {
    entry("ascend_patch_registry_json", || {
        let text = crate::registry::to_json().to_string();
        // SAFETY: forwarded contract.
        unsafe { out_text(&text, buf, cap, needed) }
    })
}

/// Whether `version` satisfies any of `specs` (separated by `;`), into `*supported` (1 or 0).
/// An unparsable version or specifier is `HCCL_E_PARA` with the reason.
///
/// # Safety
/// `version` and `specs` are NUL-terminated strings; `supported` is writable.
#[no_mangle]
pub unsafe extern "C" fn ascend_patch_version_supported(
    version: *const c_char,
    specs: *const c_char,
    supported: *mut i32,
) -> i32 {
    entry("ascend_patch_version_supported", || {
        // SAFETY: forwarded contract.
        let (v, s) = unsafe { (str_arg("version", version)?, str_arg("specs", specs)?) };
        if supported.is_null() {
            return Err((HCCL_E_PTR, "supported is null".into()));
        }
        let list: Vec<&str> = s.split(';').map(str::trim).filter(|x| !x.is_empty()).collect();
        let ok = crate::version::supported(v, &list).map_err(|e| para(e.0))?;
        // SAFETY: writable by the contract.
        unsafe { *supported = i32::from(ok) };
        Ok(())
    })
}
