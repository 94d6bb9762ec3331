//! HCCL entry points with CANN's exact C signatures. Every call validates its arguments and returns an
//! `HcclResult` at once; collectives are enqueued on the stream and run when it reaches them. A
//! collective that fails while running makes its stream's error sticky (`ACL_ERROR_RT_TASK_TIMEOUT`
//! for timeouts and dead peers, `ACL_ERROR_RT_PARAM_INVALID` for arguments that differ between ranks)
//! and is reported by `HcclGetCommAsyncError`. It also fails the communicator for every rank, as does
//! a collective dropped unrun by a stream that had failed before it: such a rank has taken fewer
//! steps than its peers, so its next collective would otherwise pair with their current one. Buffers
//! must be device memory of the communicator's device.

use crate::fail::{entry_with, fail, Fail};
use crate::hccl::comm::{env_timeout, Comm, HFail};
use crate::hccl::ops::P2p;
use crate::hccl::root::Root;
use crate::hccl::{DType, Op};
use crate::memory::{Location, Span};
use crate::runtime::{runtime, Registry};
use crate::stream::{Kind, Stream};
use ascend_sys::*;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::Ordering::*;
use std::sync::{Arc, OnceLock};

fn comms() -> &'static Registry<Comm> {
    static COMMS: OnceLock<Registry<Comm>> = OnceLock::new();
    COMMS.get_or_init(|| Registry::new(0xCC, "HCCL communicator"))
}

/// Runs one HCCL entry point: its code, its message for `aclGetRecentErrMsg`, panics contained.
fn hentry(name: &str, body: impl FnOnce() -> Result<(), HFail>) -> HcclResult {
    entry_with(name, HCCL_E_INTERNAL, || {
        body().map_err(|(code, msg)| Fail::new(code, format!("{msg} [{}]", hccl_result_name(code).unwrap_or("?"))))
    })
}

fn para<T>(msg: impl Into<String>) -> Result<T, HFail> {
    Err((HCCL_E_PARA, msg.into()))
}

/// # Safety
/// A non-null `p` must be valid for writes of `T`.
unsafe fn out<T>(p: *mut T, v: T) -> Result<(), HFail> {
    if p.is_null() {
        return Err((HCCL_E_PTR, "an output pointer is NULL".into()));
    }
    // SAFETY: non-null; valid by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

fn comm(c: HcclComm) -> Result<Arc<Comm>, HFail> {
    if c.is_null() {
        return Err((HCCL_E_PTR, "comm is NULL".into()));
    }
    comms().get(c as usize).map_err(|f| (HCCL_E_PARA, f.message))
}

fn current_device() -> Result<usize, HFail> {
    runtime()
        .current()
        .map(|c| c.device)
        .map_err(|f| (HCCL_E_PARA, format!("set a device on this thread first ({})", f.message)))
}

fn timeouts() -> (std::time::Duration, std::time::Duration) {
    (env_timeout("HCCL_CONNECT_TIMEOUT", 120), env_timeout("HCCL_EXEC_TIMEOUT", 1836))
}

fn register(c: Comm) -> HcclComm {
    let h = comms().fresh();
    comms().insert(h, Arc::new(c));
    h as HcclComm
}

/// Writes a fresh root info (a random shared-memory segment name and key) to `*rootInfo`, for every rank to
/// pass to `HcclCommInitRootInfo`. Needs no `aclInit`; `HCCL_E_PTR` if `rootInfo` is NULL.
#[no_mangle]
pub unsafe extern "C" fn HcclGetRootInfo(rootInfo: *mut HcclRootInfo) -> HcclResult {
    // SAFETY: `out` checks NULL; otherwise the caller provides a writable HcclRootInfo.
    hentry("HcclGetRootInfo", || unsafe { out(rootInfo, Root::generate().encode()) })
}

/// Joins `rootInfo`'s communicator as `rank` of `nRanks` on the current device, blocking until all ranks have
/// joined, and writes it to `*comm`. Fails with `HCCL_E_PTR` (NULL), `HCCL_E_TIMEOUT` (ranks missing after
/// `HCCL_CONNECT_TIMEOUT`), `HCCL_E_MEMORY` (`/dev/shm` full) or `HCCL_E_PARA` (no device set; bad root info,
/// `rank` or `nRanks`; ranks disagreeing on `nRanks`; a rank joining twice).
#[no_mangle]
pub unsafe extern "C" fn HcclCommInitRootInfo(
    nRanks: u32,
    rootInfo: *const HcclRootInfo,
    rank: u32,
    comm: *mut HcclComm,
) -> HcclResult {
    // SAFETY: forwarded contract.
    hentry("HcclCommInitRootInfo", || unsafe { init_root(nRanks, rootInfo, rank, None, comm) })
}

/// As `HcclCommInitRootInfo`; of `config` only `hcclCommName` (the communicator's name) and, from version 10,
/// a positive exec timeout (in place of `HCCL_EXEC_TIMEOUT`) are used. `HCCL_E_PTR` for a NULL `config`,
/// `HCCL_E_PARA` for one not set up by `HcclCommConfigInit` (magic, version or size).
#[no_mangle]
pub unsafe extern "C" fn HcclCommInitRootInfoConfig(
    nRanks: u32,
    rootInfo: *const HcclRootInfo,
    rank: u32,
    config: *const HcclCommConfig,
    comm: *mut HcclComm,
) -> HcclResult {
    hentry("HcclCommInitRootInfoConfig", || {
        if config.is_null() {
            return Err((HCCL_E_PTR, "config is NULL".into()));
        }
        // SAFETY: a non-null config points to at least the header (24 bytes) by the API contract;
        // fields past it are read only when the header's size says they exist.
        let cfg = unsafe { read_config(config as *const u8)? };
        // SAFETY: forwarded contract.
        unsafe { init_root(nRanks, rootInfo, rank, Some(cfg), comm) }
    })
}

/// What the simulator honours of an `HcclCommConfig`: its name, and (version >= 10) the exec timeout.
struct ConfigSeen {
    name: Option<String>,
    exec_timeout_s: Option<u32>,
}

/// # Safety
/// `p` points to a config whose header's `size` bytes are readable.
unsafe fn read_config(p: *const u8) -> Result<ConfigSeen, HFail> {
    // SAFETY: the header is 24 bytes: size_t size, u32 magic, u32 version, u64 reserved.
    let (size, magic, version) = unsafe {
        (
            (p as *const usize).read_unaligned(),
            (p.add(8) as *const u32).read_unaligned(),
            (p.add(12) as *const u32).read_unaligned(),
        )
    };
    if magic != HCCL_COMM_CONFIG_MAGIC_WORD as u32 {
        return para(format!(
            "config magic {magic:#x} is not {HCCL_COMM_CONFIG_MAGIC_WORD:#x} (call HcclCommConfigInit)"
        ));
    }
    if version == 0 || size < 300 {
        return para(format!("config version {version} / size {size} is not a valid HcclCommConfig"));
    }
    // SAFETY: size >= 300 covers the v5 fields.
    let name_bytes = unsafe { std::slice::from_raw_parts(p.add(32), 128) };
    let name = name_bytes
        .iter()
        .position(|&b| b == 0)
        .map(|n| String::from_utf8_lossy(&name_bytes[..n]).into_owned())
        .filter(|s| !s.is_empty());
    let exec_timeout_s = if version >= 10 && size >= 320 {
        // SAFETY: the header says the v10 fields (up to offset 320) exist.
        let t = unsafe { (p.add(316) as *const i32).read_unaligned() };
        (t > 0).then_some(t as u32)
    } else {
        None
    };
    Ok(ConfigSeen { name, exec_timeout_s })
}

/// # Safety
/// `root_info` and `comm` as in `HcclCommInitRootInfo`.
unsafe fn init_root(
    n: u32,
    root_info: *const HcclRootInfo,
    rank: u32,
    cfg: Option<ConfigSeen>,
    comm: *mut HcclComm,
) -> Result<(), HFail> {
    if root_info.is_null() || comm.is_null() {
        return Err((HCCL_E_PTR, "rootInfo or comm is NULL".into()));
    }
    // SAFETY: non-null; the caller passes a full 4108-byte root info.
    let root = Root::decode(unsafe { &*root_info })?;
    let device = current_device()?;
    let (connect, mut exec) = timeouts();
    if let Some(t) = cfg.as_ref().and_then(|c| c.exec_timeout_s) {
        exec = std::time::Duration::from_secs(t as u64);
    }
    let mut c = Comm::join(&root, n as usize, rank as usize, device, connect, exec)?;
    if let Some(name) = cfg.and_then(|c| c.name) {
        c.name = name;
    }
    // SAFETY: non-null (checked).
    unsafe { *comm = register(c) };
    Ok(())
}

/// Creates an `ndev`-rank communicator in this process, rank `i` on device `devices[i]`, and writes the
/// `ndev` handles to `comms_out`; no device need be set. Fails with `HCCL_E_PTR` (NULL), `HCCL_E_PARA`
/// (`ndev` not 1..=64, no `aclInit`, unknown or repeated device), or `HCCL_E_MEMORY` or `HCCL_E_TIMEOUT` from
/// the rendezvous (bounded by `HCCL_CONNECT_TIMEOUT`).
#[no_mangle]
pub unsafe extern "C" fn HcclCommInitAll(ndev: u32, devices: *mut i32, comms_out: *mut HcclComm) -> HcclResult {
    hentry("HcclCommInitAll", || {
        if devices.is_null() || comms_out.is_null() {
            return Err((HCCL_E_PTR, "devices or comms is NULL".into()));
        }
        if ndev == 0 || ndev as usize > crate::hccl::comm::MAX_RANKS {
            return para(format!("ndev {ndev} is outside 1..={}", crate::hccl::comm::MAX_RANKS));
        }
        // SAFETY: the caller passes `ndev` device ids.
        let ids = unsafe { std::slice::from_raw_parts(devices, ndev as usize) };
        let rt = runtime();
        rt.ensure_init().map_err(|f| (HCCL_E_PARA, f.message))?;
        let mut devs = Vec::with_capacity(ids.len());
        for &d in ids {
            let d = rt.device_index(d).map_err(|f| (HCCL_E_PARA, f.message))?;
            if devs.contains(&d) {
                return para(format!("device {d} appears twice"));
            }
            devs.push(d);
        }
        let all = Comm::create_all(&devs, timeouts())?;
        for (i, c) in all.into_iter().enumerate() {
            // SAFETY: the caller provides room for `ndev` handles.
            unsafe { *comms_out.add(i) = register(c) };
        }
        Ok(())
    })
}

/// Releases this rank's communicator (peers that then wait for the rank fail). Fails with `HCCL_E_AGAIN`
/// while collectives of it are queued or running (synchronize their streams first), `HCCL_E_PTR` (NULL) or
/// `HCCL_E_PARA` (not a live communicator).
#[no_mangle]
pub unsafe extern "C" fn HcclCommDestroy(comm_: HcclComm) -> HcclResult {
    hentry("HcclCommDestroy", || {
        let c = comm(comm_)?;
        if c.inflight.load(Acquire) > 0 {
            return Err((
                HCCL_E_AGAIN,
                "the communicator still has queued work (synchronize its streams first)".into(),
            ));
        }
        comms().remove(comm_ as usize).map(drop).map_err(|f| (HCCL_E_PARA, f.message))
    })
}

/// Writes the communicator's number of ranks to `*rankSize`. Fails with `HCCL_E_PTR` (NULL) or `HCCL_E_PARA`
/// (not a live communicator).
#[no_mangle]
pub unsafe extern "C" fn HcclGetRankSize(comm_: HcclComm, rankSize: *mut u32) -> HcclResult {
    // SAFETY: `out` checks NULL.
    hentry("HcclGetRankSize", || unsafe { out(rankSize, comm(comm_)?.n as u32) })
}

/// Writes this rank's number in the communicator to `*rank`. Fails with `HCCL_E_PTR` (NULL) or `HCCL_E_PARA`
/// (not a live communicator).
#[no_mangle]
pub unsafe extern "C" fn HcclGetRankId(comm_: HcclComm, rank: *mut u32) -> HcclResult {
    // SAFETY: `out` checks NULL.
    hentry("HcclGetRankId", || unsafe { out(rank, comm(comm_)?.rank as u32) })
}

/// Writes to `*asyncError` the code of this rank's latest collective that failed while running
/// (`HCCL_SUCCESS` if none; reading does not clear it). Fails with `HCCL_E_PTR` (NULL) or `HCCL_E_PARA` (not
/// a live communicator).
#[no_mangle]
pub unsafe extern "C" fn HcclGetCommAsyncError(comm_: HcclComm, asyncError: *mut HcclResult) -> HcclResult {
    // SAFETY: `out` checks NULL.
    hentry("HcclGetCommAsyncError", || unsafe { out(asyncError, comm(comm_)?.async_error.load(Acquire)) })
}

/// Copies the communicator's name (the config's `hcclCommName`, else the segment name) to `commName`,
/// NUL-terminated and cut to `COMM_NAME_MAX_LENGTH - 1` bytes. Fails with `HCCL_E_PTR` (NULL) or
/// `HCCL_E_PARA` (not a live communicator).
#[no_mangle]
pub unsafe extern "C" fn HcclGetCommName(comm_: HcclComm, commName: *mut c_char) -> HcclResult {
    hentry("HcclGetCommName", || {
        let c = comm(comm_)?;
        if commName.is_null() {
            return Err((HCCL_E_PTR, "commName is NULL".into()));
        }
        let bytes = c.name.as_bytes();
        let n = bytes.len().min(COMM_NAME_MAX_LENGTH as usize - 1);
        // SAFETY: the caller provides COMM_NAME_MAX_LENGTH bytes (API contract); we write n + 1 <= that.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), commName as *mut u8, n);
            *commName.add(n) = 0;
        }
        Ok(())
    })
}

/// `HcclGetErrorString`: the C name of a result code ("HCCL_E_UNKNOWN" for one it does not know).
#[no_mangle]
pub unsafe extern "C" fn HcclGetErrorString(code: HcclResult) -> *const c_char {
    static NAMES: OnceLock<Vec<(i32, CString)>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..=HCCL_E_RESERVED)
            .filter_map(|c| hccl_result_name(c).map(|n| (c, CString::new(n).unwrap_or_default())))
            .collect()
    });
    names.iter().find(|(c, _)| *c == code).map_or(c"HCCL_E_UNKNOWN".as_ptr(), |(_, n)| n.as_ptr())
}

/// `HcclGetCommConfigCapability`: config fields up to `HCCL_COMM_CONFIG_COMM_NAME` are understood.
#[no_mangle]
pub unsafe extern "C" fn HcclGetCommConfigCapability() -> u32 {
    HCCL_COMM_CONFIG_COMM_NAME as u32 + 1
}

// ---------------------------------------------------------------------------------------------------
// Collectives

/// The communicator, stream and element type of a collective call, validated.
struct Call {
    comm: Arc<Comm>,
    stream: Arc<Stream>,
    t: DType,
    spans: Vec<Span>,
}

impl Call {
    fn new(comm_: HcclComm, stream: aclrtStream, dtype: HcclDataType) -> Result<Call, HFail> {
        let comm = comm(comm_)?;
        let t = DType::from_hccl(dtype).map_err(|c| (c, format!("data type {dtype} is not supported")))?;
        let stream = runtime().stream(stream as usize).map_err(|f| (HCCL_E_PARA, f.message))?;
        if stream.device != comm.device {
            return para(format!(
                "the stream is on device {}, the communicator on device {}",
                stream.device, comm.device
            ));
        }
        Ok(Call { comm, stream, t, spans: Vec::new() })
    }

    /// Checks a buffer of `count` elements (NULL allowed only when empty) and records its range.
    fn buf(&mut self, p: *const c_void, count: u64, write: bool) -> Result<usize, HFail> {
        let bytes = (count as usize).checked_mul(self.t.size()).filter(|_| count <= isize::MAX as u64);
        let Some(bytes) = bytes else {
            return para(format!("count {count} overflows"));
        };
        if bytes == 0 {
            return Ok(p as usize);
        }
        if p.is_null() {
            return Err((HCCL_E_PTR, "a buffer is NULL".into()));
        }
        if !(p as usize).is_multiple_of(self.t.size()) {
            return para(format!("buffer {p:?} is not aligned to its {}-byte elements", self.t.size()));
        }
        // HCCL moves device memory only; a host pointer would reach the copy loops unchecked.
        let place = runtime().memory.locate(p as usize);
        if !matches!(place, Location::Device(d) if d == self.comm.device) {
            return para(format!("buffer {p:?} is not device memory of device {} (it is {place:?})", self.comm.device));
        }
        self.spans.push(Span { addr: p as usize, len: bytes, write });
        Ok(p as usize)
    }

    fn op(&self, op: HcclReduceOp) -> Result<Op, HFail> {
        let o = Op::from_hccl(op).map_err(|c| (c, format!("reduce op {op} is unknown")))?;
        // cann-api.md: reductions take int8/16/32/64, fp16, fp32 and bf16 only (A2/A3).
        if matches!(self.t, DType::U8 | DType::U16 | DType::U32 | DType::U64 | DType::F64) {
            return Err((HCCL_E_NOT_SUPPORT, format!("reductions do not support {:?} (as in CANN)", self.t)));
        }
        if !o.supported_for(self.t) {
            return Err((HCCL_E_NOT_SUPPORT, format!("{o:?} is not supported for {:?} (as in CANN)", self.t)));
        }
        Ok(o)
    }

    fn root(&self, root: u32) -> Result<usize, HFail> {
        if root as usize >= self.comm.n {
            return para(format!("root {root} is not a rank of this {}-rank communicator", self.comm.n));
        }
        Ok(root as usize)
    }

    /// Enqueues `run` on the stream; the buffers are checked now and again (locked) when it runs.
    fn enqueue(
        self,
        name: &'static str,
        run: impl FnOnce(&Comm) -> Result<(), HFail> + Send + 'static,
    ) -> Result<(), HFail> {
        let Call { comm, stream, spans, .. } = self;
        // Pinned while queued, as in aclrtMemcpyAsync: freed memory is not reused before the check.
        let queued = runtime().memory.access(&spans).map_err(|f| (HCCL_E_PARA, f.message))?;
        /// Counts the collective in flight until its task has run or been dropped unrun.
        struct Inflight {
            comm: Arc<Comm>,
            ran: bool,
        }
        impl Drop for Inflight {
            fn drop(&mut self) {
                if !self.ran {
                    // Dropped unrun (its stream had failed): this rank will never take its part, so
                    // the peers fail now instead of after HCCL_EXEC_TIMEOUT.
                    self.comm.poison((HCCL_E_TIMEOUT, "a rank dropped a collective".into()));
                }
                self.comm.inflight.fetch_sub(1, AcqRel);
            }
        }
        comm.inflight.fetch_add(1, AcqRel);
        let mut guard = Inflight { comm, ran: false };
        stream
            .core
            .enqueue(Kind::Device, move || {
                let _queued = queued;
                let c = &guard.comm;
                let result = match runtime().memory.access(&spans) {
                    // The operations themselves refuse to start on a failed communicator.
                    Ok(_held) => run(c),
                    Err(f) => Err((HCCL_E_PARA, f.message)),
                };
                // Only now: a panic in `run` leaves this rank out of step, as a dropped collective does.
                guard.ran = true;
                let c = &guard.comm;
                result.map_err(|(code, msg)| {
                    // A rank that failed a collective may have taken fewer of its steps than the
                    // others: its next collective would pair with their current one. Nothing on
                    // this communicator may run any more.
                    c.poison((code, msg.clone()));
                    c.async_error.store(code, Release);
                    let acl =
                        if code == HCCL_E_TIMEOUT { ACL_ERROR_RT_TASK_TIMEOUT } else { ACL_ERROR_RT_PARAM_INVALID };
                    Fail::new(acl, format!("{name} failed: {msg} [{}]", hccl_result_name(code).unwrap_or("?")))
                })
            })
            .map(drop)
            .map_err(|f| (HCCL_E_PARA, f.message))
    }
}

/// Queues on `stream` an all-reduce of `count` elements: every rank's `recvBuf` gets `op` over all `sendBuf`s
/// (in place allowed); returns at once. Fails with `HCCL_E_PTR` (NULL `comm_` or buffer),
/// `HCCL_E_NOT_SUPPORT` (`dataType`, or `op` for it) or `HCCL_E_PARA` (dead comm or stream, stream on another
/// device, unknown type or op, buffer misaligned or not in one live allocation of the comm's device).
#[no_mangle]
pub unsafe extern "C" fn HcclAllReduce(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    op: HcclReduceOp,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclAllReduce", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let op = c.op(op)?;
        let (t, n) = (c.t, count as usize);
        let s = c.buf(sendBuf, count, false)?;
        let r = c.buf(recvBuf, count, true)?;
        c.enqueue("HcclAllReduce", move |comm| comm.all_reduce(s, r, n, t, op))
    })
}

/// Queues on `stream` a broadcast of the root's `buf` (`count` elements) to every rank's `buf`; returns at
/// once. Fails as `HcclAllReduce` does (without `op`), and with `HCCL_E_PARA` for a `root` outside the
/// communicator.
#[no_mangle]
pub unsafe extern "C" fn HcclBroadcast(
    buf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    root: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclBroadcast", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let root = c.root(root)?;
        let (t, n) = (c.t, count as usize);
        let b = c.buf(buf, count, true)?;
        c.enqueue("HcclBroadcast", move |comm| comm.broadcast(b, n, t, root))
    })
}

/// Queues on `stream` a reduce-scatter: rank r's `recvBuf` (`recvCount` elements) gets `op` over every rank's
/// block r of `sendBuf` (`recvCount` × ranks elements); returns at once. Fails as `HcclAllReduce` does.
#[no_mangle]
pub unsafe extern "C" fn HcclReduceScatter(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    recvCount: u64,
    dataType: HcclDataType,
    op: HcclReduceOp,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclReduceScatter", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let op = c.op(op)?;
        let (t, n, ranks) = (c.t, recvCount as usize, c.comm.n as u64);
        let s = c.buf(sendBuf, recvCount.saturating_mul(ranks), false)?;
        let r = c.buf(recvBuf, recvCount, true)?;
        c.enqueue("HcclReduceScatter", move |comm| comm.reduce_scatter(s, r, n, t, op))
    })
}

/// Queues on `stream` an all-gather: block r of every rank's `recvBuf` (`sendCount` × ranks elements) gets
/// rank r's `sendBuf` (`sendCount` elements); returns at once. Fails as `HcclAllReduce` does (without `op`).
#[no_mangle]
pub unsafe extern "C" fn HcclAllGather(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    sendCount: u64,
    dataType: HcclDataType,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclAllGather", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let (t, n, ranks) = (c.t, sendCount as usize, c.comm.n as u64);
        let s = c.buf(sendBuf, sendCount, false)?;
        let r = c.buf(recvBuf, sendCount.saturating_mul(ranks), true)?;
        c.enqueue("HcclAllGather", move |comm| comm.all_gather(s, r, n, t))
    })
}

/// Queues on `stream` a scatter: rank r's `recvBuf` (`recvCount` elements) gets block r of the root's
/// `sendBuf`, which other ranks may pass NULL; returns at once. Fails as `HcclBroadcast` does.
#[no_mangle]
pub unsafe extern "C" fn HcclScatter(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    recvCount: u64,
    dataType: HcclDataType,
    root: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclScatter", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let root = c.root(root)?;
        let (t, n, ranks) = (c.t, recvCount as usize, c.comm.n as u64);
        // Only the root's send buffer is read (it may be NULL elsewhere).
        let s = if c.comm.rank == root { c.buf(sendBuf, recvCount.saturating_mul(ranks), false)? } else { 0 };
        let r = c.buf(recvBuf, recvCount, true)?;
        c.enqueue("HcclScatter", move |comm| comm.scatter(s, r, n, t, root))
    })
}

/// Queues on `stream` a reduce of `count` elements: the root's `recvBuf` gets `op` over all ranks' `sendBuf`
/// (other ranks' `recvBuf` is ignored); returns at once. Fails as `HcclAllReduce` does, and with
/// `HCCL_E_PARA` for a `root` outside the communicator.
#[no_mangle]
pub unsafe extern "C" fn HcclReduce(
    sendBuf: *mut c_void,
    recvBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    op: HcclReduceOp,
    root: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclReduce", || {
        let mut c = Call::new(comm_, stream, dataType)?;
        let op = c.op(op)?;
        let root = c.root(root)?;
        let (t, n) = (c.t, count as usize);
        let s = c.buf(sendBuf, count, false)?;
        let r = if c.comm.rank == root { c.buf(recvBuf, count, true)? } else { 0 };
        c.enqueue("HcclReduce", move |comm| comm.reduce(s, r, n, t, op, root))
    })
}

/// Queues on `stream` an all-to-all: block r of `recvBuf` gets rank r's block for this rank, blocks of
/// `sendCount` elements; returns at once. `HCCL_E_PARA` unless send and receive counts and types are equal;
/// otherwise fails as `HcclAllGather` does.
#[no_mangle]
pub unsafe extern "C" fn HcclAlltoAll(
    sendBuf: *const c_void,
    sendCount: u64,
    sendType: HcclDataType,
    recvBuf: *const c_void,
    recvCount: u64,
    recvType: HcclDataType,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclAlltoAll", || {
        let mut c = Call::new(comm_, stream, sendType)?;
        if sendType != recvType || sendCount != recvCount {
            return para("HcclAlltoAll needs equal send and receive counts and types");
        }
        let (t, n, ranks) = (c.t, sendCount as usize, c.comm.n as u64);
        let s = c.buf(sendBuf, sendCount.saturating_mul(ranks), false)?;
        let r = c.buf(recvBuf, recvCount.saturating_mul(ranks), true)?;
        c.enqueue("HcclAlltoAll", move |comm| comm.all_to_all(s, r, n, t))
    })
}

/// Reads a per-rank `uint64_t` array (C callers need not align it to 8 bytes).
///
/// # Safety
/// A non-null `p` points to `n` values.
unsafe fn u64s(p: *const c_void, n: usize, what: &str) -> Result<Vec<u64>, HFail> {
    if p.is_null() {
        return Err((HCCL_E_PTR, format!("{what} is NULL")));
    }
    // SAFETY: by the contract, each of the n values is readable; read_unaligned needs no alignment.
    Ok((0..n).map(|i| unsafe { (p as *const u64).add(i).read_unaligned() }).collect())
}

/// Queues on `stream` an all-to-all with per-rank element counts and displacements (one `uint64_t` per rank
/// in each array); returns at once. Fails with `HCCL_E_PTR` (NULL array), `HCCL_E_PARA` (unequal types, a
/// count plus its displacement overflowing) or as `HcclAllGather` does; counts the ranks disagree on fail at
/// run time.
#[no_mangle]
pub unsafe extern "C" fn HcclAlltoAllV(
    sendBuf: *const c_void,
    sendCounts: *const c_void,
    sdispls: *const c_void,
    sendType: HcclDataType,
    recvBuf: *const c_void,
    recvCounts: *const c_void,
    rdispls: *const c_void,
    recvType: HcclDataType,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclAlltoAllV", || {
        let mut c = Call::new(comm_, stream, sendType)?;
        if sendType != recvType {
            return para("HcclAlltoAllV needs equal send and receive types");
        }
        let n = c.comm.n;
        // SAFETY: the API passes one uint64_t per rank in each array.
        let (sc, sd, rc, rd) = unsafe {
            (
                u64s(sendCounts, n, "sendCounts")?,
                u64s(sdispls, n, "sdispls")?,
                u64s(recvCounts, n, "recvCounts")?,
                u64s(rdispls, n, "rdispls")?,
            )
        };
        let extent = |c: &[u64], d: &[u64]| {
            c.iter().zip(d).map(|(c, d)| c.checked_add(*d)).try_fold(0u64, |m, e| e.map(|e| m.max(e)))
        };
        let (Some(se), Some(re)) = (extent(&sc, &sd), extent(&rc, &rd)) else {
            return para("counts + displacements overflow");
        };
        let t = c.t;
        let s = c.buf(sendBuf, se, false)?;
        let r = c.buf(recvBuf, re, true)?;
        c.enqueue("HcclAlltoAllV", move |comm| comm.all_to_all_v(s, &sc, &sd, r, &rc, &rd, t))
    })
}

/// Queues on `stream` a barrier, which completes once every rank's stream has reached its own; returns at
/// once. Fails with `HCCL_E_PTR` (NULL `comm_`) or `HCCL_E_PARA` (dead communicator or stream, stream of
/// another device).
#[no_mangle]
pub unsafe extern "C" fn HcclBarrier(comm_: HcclComm, stream: aclrtStream) -> HcclResult {
    hentry("HcclBarrier", || {
        Call::new(comm_, stream, HCCL_DATA_TYPE_INT8)?.enqueue("HcclBarrier", |comm| comm.barrier())
    })
}

fn p2p(
    comm_: HcclComm,
    stream: aclrtStream,
    items: &[(*mut c_void, u64, HcclDataType, u32, bool)],
    name: &'static str,
) -> Result<(), HFail> {
    let mut c = Call::new(comm_, stream, items.first().map_or(HCCL_DATA_TYPE_INT8, |i| i.2))?;
    let mut plan = Vec::with_capacity(items.len());
    for &(buf, count, dtype, peer, send) in items {
        c.t = DType::from_hccl(dtype).map_err(|code| (code, format!("data type {dtype} is not supported")))?;
        if peer as usize >= c.comm.n || peer as usize == c.comm.rank {
            return para(format!("peer rank {peer} is not another rank of this {}-rank communicator", c.comm.n));
        }
        let p = c.buf(buf, count, !send)?;
        plan.push(P2p::new(peer as usize, send, p, count as usize, c.t));
    }
    // SAFETY: every buffer of the plan was checked (`Call::buf`) against an allocation of its size,
    // and its range is held by the queued task (as for the collectives).
    c.enqueue(name, move |comm| unsafe { comm.send_recv(&mut plan) })
}

/// Queues on `stream` a send of `count` elements of `sendBuf` to `destRank`, complete once that rank has
/// received them; returns at once. Fails as `HcclAllGather` does, and with `HCCL_E_PARA` if `destRank` is not
/// another rank; a size or type the receiver disagrees with fails when it runs.
#[no_mangle]
pub unsafe extern "C" fn HcclSend(
    sendBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    destRank: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclSend", || p2p(comm_, stream, &[(sendBuf, count, dataType, destRank, true)], "HcclSend"))
}

/// Queues on `stream` a receive of `count` elements into `recvBuf` from `srcRank`; returns at once. Fails as
/// `HcclSend` does.
#[no_mangle]
pub unsafe extern "C" fn HcclRecv(
    recvBuf: *mut c_void,
    count: u64,
    dataType: HcclDataType,
    srcRank: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclRecv", || p2p(comm_, stream, &[(recvBuf, count, dataType, srcRank, false)], "HcclRecv"))
}

/// Queues on `stream` the `itemNum` sends and receives of `sendRecvInfo` as one task, all progressing
/// together (in order per peer and direction); returns at once. Fails with `HCCL_E_PTR` (NULL array),
/// `HCCL_E_PARA` (unknown `sendRecvType`) or as `HcclSend` does for an item.
#[no_mangle]
pub unsafe extern "C" fn HcclBatchSendRecv(
    sendRecvInfo: *mut HcclSendRecvItem,
    itemNum: u32,
    comm_: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    hentry("HcclBatchSendRecv", || {
        if sendRecvInfo.is_null() && itemNum > 0 {
            return Err((HCCL_E_PTR, "sendRecvInfo is NULL".into()));
        }
        // SAFETY: the caller passes `itemNum` items.
        let items =
            if itemNum == 0 { &[][..] } else { unsafe { std::slice::from_raw_parts(sendRecvInfo, itemNum as usize) } };
        let mut plan = Vec::with_capacity(items.len());
        for it in items {
            let send = match it.sendRecvType {
                HCCL_SEND => true,
                HCCL_RECV => false,
                other => return para(format!("unknown HcclSendRecvType {other}")),
            };
            plan.push((it.buf, it.count, it.dataType, it.remoteRank, send));
        }
        p2p(comm_, stream, &plan, "HcclBatchSendRecv")
    })
}

// ---------------------------------------------------------------------------------------------------
// Declared but not provided by the simulator: each reports HCCL_E_NOT_SUPPORT with a message.

macro_rules! not_supported {
    ($($name:ident($($arg:ident: $ty:ty),* $(,)?);)*) => {$(
        /// Declared by the API but not provided by the simulator: ignores its arguments and returns
        /// `HCCL_E_NOT_SUPPORT`, with a message for `aclGetRecentErrMsg`.
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> HcclResult {
            $(let _ = $arg;)*
            entry_with(stringify!($name), HCCL_E_INTERNAL, || {
                fail(HCCL_E_NOT_SUPPORT, "not provided by the simulator (use HcclCommInitRootInfo / HcclCommInitAll and the collectives)")
            })
        }
    )*};
}

not_supported! {
    HcclCommInitClusterInfo(clusterInfo: *const c_char, rank: u32, comm: *mut HcclComm);
    HcclCommInitClusterInfoConfig(clusterInfo: *const c_char, rank: u32, config: *mut HcclCommConfig, comm: *mut HcclComm);
    HcclCreateSubCommConfig(comm: *mut HcclComm, rankNum: u32, rankIds: *mut u32, subCommId: u64, subCommRankId: u32, config: *mut HcclCommConfig, subComm: *mut HcclComm);
    HcclReduceScatterV(sendBuf: *mut c_void, sendCounts: *const c_void, sendDispls: *const c_void, recvBuf: *mut c_void, recvCount: u64, dataType: HcclDataType, op: HcclReduceOp, comm: HcclComm, stream: aclrtStream);
    HcclAllGatherV(sendBuf: *mut c_void, sendCount: u64, recvBuf: *mut c_void, recvCounts: *const c_void, recvDispls: *const c_void, dataType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclAlltoAllVC(sendBuf: *const c_void, sendCountMatrix: *const c_void, sendType: HcclDataType, recvBuf: *const c_void, recvType: HcclDataType, comm: HcclComm, stream: aclrtStream);
    HcclSetConfig(config: HcclConfig, configValue: HcclConfigValue);
    HcclGetConfig(config: HcclConfig, configValue: *mut HcclConfigValue);
    HcclCommSuspend(comm: HcclComm);
    HcclCommResume(comm: HcclComm);
    HcclGroupStart();
    HcclGroupEnd();
}
