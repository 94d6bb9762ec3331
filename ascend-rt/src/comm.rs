//! Collective communication (HCCL): typed collectives on device buffers, ordered on streams.
//!
//! One [`Communicator`] per rank: from a [`RootInfo`] shared out of band (one process per device, the
//! usual deployment), or for several devices of one process with [`Communicator::init_all`]. Every
//! collective is enqueued on the given stream and returns at once; buffer uses are ordered like any
//! other stream work (a buffer written by a collective on one stream is not read on another before it).
//!
//! A collective whose stream or buffers are on another device, whose lengths break its rule, or whose
//! root or peer is not a rank fails with [`Error::InvalidArgument`] and enqueues nothing; so does a
//! reduction of a type CANN does not reduce (unsigned integers, f64), with [`Error::Hccl`]
//! (`HCCL_E_NOT_SUPPORT`). Failures
//! seen while it runs (a peer that died or timed out, mismatched calls across ranks) surface at the
//! stream's next synchronize and in [`Communicator::async_error`], and the communicator stays failed.

use crate::buffer::{DeviceBuffer, DeviceRepr};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::runtime::Runtime;
use crate::stream::Stream;
use ascend_sys::{HcclRootInfo, HCCL_ROOT_INFO_BYTES};
use std::ffi::c_void;
use std::sync::Arc;

/// Calls one HCCL function through the runtime's table; a non-zero result is an [`Error::Hccl`].
/// Must be used inside an `unsafe` block whose SAFETY comment covers the call.
macro_rules! hccl {
    ($rt:expr, $f:ident($($arg:expr),* $(,)?)) => {{
        let rt: &$crate::runtime::Runtime = $rt;
        match rt.api().$f {
            Some(f) => rt.check_hccl(stringify!($f), f($($arg),*)),
            None => Err($crate::error::Error::MissingSymbol(stringify!($f))),
        }
    }};
}

/// A reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum (fp16/bf16 accumulate in f32).
    Sum,
    /// Product (not supported for i16 and bf16, as in CANN).
    Prod,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

impl ReduceOp {
    fn raw(self) -> ascend_sys::HcclReduceOp {
        match self {
            ReduceOp::Sum => ascend_sys::HCCL_REDUCE_SUM,
            ReduceOp::Prod => ascend_sys::HCCL_REDUCE_PROD,
            ReduceOp::Max => ascend_sys::HCCL_REDUCE_MAX,
            ReduceOp::Min => ascend_sys::HCCL_REDUCE_MIN,
        }
    }
}

/// What a rank needs to join a communicator: 4108 opaque bytes, created by one rank and given to the
/// others out of band (a file, a pipe, a key-value store). Treat it as a secret: it lets a process join.
#[derive(Clone)]
pub struct RootInfo(Box<HcclRootInfo>);

impl RootInfo {
    /// Creates a fresh root info (`HcclGetRootInfo`).
    pub fn new() -> Result<RootInfo> {
        let rt = Runtime::get()?;
        let mut info = Box::new(HcclRootInfo { internal: [0; HCCL_ROOT_INFO_BYTES as usize] });
        // SAFETY: `info` is a writable, correctly sized root-info struct.
        unsafe { hccl!(rt, HcclGetRootInfo(&mut *info))? };
        Ok(RootInfo(info))
    }

    /// The raw bytes, to send to the other ranks.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.internal.iter().map(|&c| c as u8).collect()
    }

    /// From bytes received from the creating rank (exactly 4108 of them). A corrupt blob is reported
    /// when it is used (`HCCL_E_PARA`).
    pub fn from_bytes(bytes: &[u8]) -> Result<RootInfo> {
        if bytes.len() != HCCL_ROOT_INFO_BYTES as usize {
            return Err(Error::invalid(format!("a root info is {HCCL_ROOT_INFO_BYTES} bytes, not {}", bytes.len())));
        }
        let mut info = Box::new(HcclRootInfo { internal: [0; HCCL_ROOT_INFO_BYTES as usize] });
        for (d, &s) in info.internal.iter_mut().zip(bytes) {
            *d = s as std::ffi::c_char;
        }
        Ok(RootInfo(info))
    }
}

impl std::fmt::Debug for RootInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootInfo(<4108 bytes>)")
    }
}

/// One rank of a communicator.
pub struct Communicator {
    ctx: Arc<Context>,
    handle: usize,
    rank: usize,
    size: usize,
}

impl std::fmt::Debug for Communicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Communicator").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

impl Communicator {
    /// Joins the communicator of `root` as `rank` of `size`, on `ctx`'s device. Blocks until every rank
    /// has joined (`HCCL_CONNECT_TIMEOUT`, default 120 s, then `HCCL_E_TIMEOUT`).
    pub fn from_root_info(ctx: &Arc<Context>, root: &RootInfo, size: usize, rank: usize) -> Result<Communicator> {
        if rank >= size || u32::try_from(size).is_err() {
            return Err(Error::invalid(format!("rank {rank} of a {size}-rank communicator")));
        }
        ctx.bind()?;
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: the root info is a full 4108-byte struct; `h` is a live out-pointer.
        unsafe { hccl!(ctx.runtime(), HcclCommInitRootInfo(size as u32, &*root.0, rank as u32, &mut h))? };
        Ok(Communicator { ctx: ctx.clone(), handle: h as usize, rank, size })
    }

    /// One communicator per context, for the devices of this process (`HcclCommInitAll`); rank i is
    /// `contexts[i]`'s device.
    pub fn init_all(contexts: &[Arc<Context>]) -> Result<Vec<Communicator>> {
        let first = contexts.first().ok_or_else(|| Error::invalid("init_all needs at least one context"))?;
        let mut devices: Vec<i32> = contexts.iter().map(|c| c.ordinal() as i32).collect();
        let mut handles = vec![std::ptr::null_mut::<c_void>(); contexts.len()];
        first.bind()?;
        // SAFETY: `devices` and `handles` both hold `contexts.len()` elements.
        unsafe {
            hccl!(first.runtime(), HcclCommInitAll(devices.len() as u32, devices.as_mut_ptr(), handles.as_mut_ptr()))?
        };
        let size = contexts.len();
        Ok(contexts
            .iter()
            .zip(handles)
            .enumerate()
            .map(|(rank, (ctx, h))| Communicator { ctx: ctx.clone(), handle: h as usize, rank, size })
            .collect())
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The raw `HcclComm`. Do not destroy it.
    pub fn raw(&self) -> *mut c_void {
        self.handle as *mut c_void
    }

    fn check<T: DeviceRepr>(&self, stream: &Stream, bufs: &[&DeviceBuffer<T>]) -> Result<()> {
        let dev = self.ctx.ordinal();
        if stream.context().ordinal() != dev || bufs.iter().any(|b| b.stream().context().ordinal() != dev) {
            return Err(Error::invalid(format!(
                "the stream and every buffer must be on the communicator's device {dev}"
            )));
        }
        Ok(())
    }

    /// `r` as HCCL's rank argument, if it is a rank of this communicator.
    fn rank_arg(&self, what: &str, r: usize) -> Result<u32> {
        match u32::try_from(r) {
            Ok(v) if r < self.size => Ok(v),
            _ => Err(Error::invalid(format!("{what} {r} is not a rank of this {}-rank communicator", self.size))),
        }
    }

    /// True when `n` is `self.size × per` (without overflowing).
    fn is_size_times(&self, n: usize, per: usize) -> bool {
        per.checked_mul(self.size) == Some(n)
    }

    fn rt(&self) -> &'static Runtime {
        self.ctx.runtime()
    }

    /// Enqueues a collective that reads `send` and writes `recv`, after checking their devices and
    /// `lengths_ok` (`what` explains the rule). `call` gets (send, recv, stream) raw pointers.
    fn two<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        stream: &Stream,
        (lengths_ok, what): (bool, &str),
        call: impl FnOnce(*mut c_void, *mut c_void, *mut c_void) -> Result<()>,
    ) -> Result<()> {
        self.check(stream, &[send, recv])?;
        if !lengths_ok {
            return Err(Error::invalid(what));
        }
        stream.device_op(&[(send.tracker(), false), (recv.tracker(), true)], |s| call(send.raw(), recv.raw(), s.raw()))
    }

    /// Enqueues a collective on one buffer (`write`: whether it is written).
    fn one<T: DeviceRepr>(
        &self,
        buf: &DeviceBuffer<T>,
        write: bool,
        stream: &Stream,
        call: impl FnOnce(*mut c_void, *mut c_void) -> Result<()>,
    ) -> Result<()> {
        self.check(stream, &[buf])?;
        stream.device_op(&[(buf.tracker(), write)], |s| call(buf.raw(), s.raw()))
    }

    /// `recv = op(send of every rank)`.
    pub fn all_reduce<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
        stream: &Stream,
    ) -> Result<()> {
        let n = send.len() as u64;
        let rule = (send.len() == recv.len(), "all_reduce: send and recv lengths differ");
        // SAFETY (every collective below): the buffers are live device allocations of the checked
        // lengths, and their release waits for this stream work.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclAllReduce(x, y, n, T::HCCL_DTYPE, op.raw(), self.raw(), s))
        })
    }

    /// `buf = op(buf of every rank)`, in place.
    pub fn all_reduce_in_place<T: DeviceRepr>(
        &self,
        buf: &mut DeviceBuffer<T>,
        op: ReduceOp,
        stream: &Stream,
    ) -> Result<()> {
        let n = buf.len() as u64;
        // SAFETY: as above; send == recv is supported.
        self.one(buf, true, stream, |b, s| unsafe {
            hccl!(self.rt(), HcclAllReduce(b, b, n, T::HCCL_DTYPE, op.raw(), self.raw(), s))
        })
    }

    /// `recv[r * n ..][..n]` = rank r's `send` (`recv` holds `size × send.len()` elements).
    pub fn all_gather<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        stream: &Stream,
    ) -> Result<()> {
        let n = send.len() as u64;
        let rule = (self.is_size_times(recv.len(), send.len()), "all_gather: recv must hold size × send elements");
        // SAFETY: as above.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclAllGather(x, y, n, T::HCCL_DTYPE, self.raw(), s))
        })
    }

    /// `recv = op over ranks of their send[rank * n ..][..n]` (`send` holds `size × recv.len()`).
    pub fn reduce_scatter<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
        stream: &Stream,
    ) -> Result<()> {
        let n = recv.len() as u64;
        let rule = (self.is_size_times(send.len(), recv.len()), "reduce_scatter: send must hold size × recv elements");
        // SAFETY: as above.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclReduceScatter(x, y, n, T::HCCL_DTYPE, op.raw(), self.raw(), s))
        })
    }

    /// Every rank's `buf` becomes the root's.
    pub fn broadcast<T: DeviceRepr>(&self, buf: &mut DeviceBuffer<T>, root: usize, stream: &Stream) -> Result<()> {
        let (n, root) = (buf.len() as u64, self.rank_arg("root", root)?);
        // SAFETY: as above.
        self.one(buf, true, stream, |b, s| unsafe {
            hccl!(self.rt(), HcclBroadcast(b, n, T::HCCL_DTYPE, root, self.raw(), s))
        })
    }

    /// The root's `recv = op(send of every rank)`; other ranks' `recv` is untouched.
    pub fn reduce<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        op: ReduceOp,
        root: usize,
        stream: &Stream,
    ) -> Result<()> {
        let (n, root) = (send.len() as u64, self.rank_arg("root", root)?);
        let rule = (send.len() == recv.len(), "reduce: send and recv lengths differ");
        // SAFETY: as above.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclReduce(x, y, n, T::HCCL_DTYPE, op.raw(), root, self.raw(), s))
        })
    }

    /// `recv = the root's send[rank * n ..][..n]`; `send` (size × recv elements) is read on the root only.
    pub fn scatter<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        root: usize,
        stream: &Stream,
    ) -> Result<()> {
        let n = recv.len() as u64;
        let root32 = self.rank_arg("root", root)?;
        let rule = (
            self.rank != root || self.is_size_times(send.len(), recv.len()),
            "scatter: the root's send must hold size × recv elements",
        );
        // SAFETY: as above.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclScatter(x, y, n, T::HCCL_DTYPE, root32, self.raw(), s))
        })
    }

    /// `recv[r * n ..][..n]` = rank r's `send[rank * n ..][..n]`, with `n = len / size`.
    pub fn all_to_all<T: DeviceRepr>(
        &self,
        send: &DeviceBuffer<T>,
        recv: &mut DeviceBuffer<T>,
        stream: &Stream,
    ) -> Result<()> {
        let n = (send.len() / self.size) as u64;
        let rule = (
            send.len() == recv.len() && send.len().is_multiple_of(self.size),
            "all_to_all: equal lengths, divisible by size",
        );
        // SAFETY: as above.
        self.two(send, recv, stream, rule, |x, y, s| unsafe {
            hccl!(self.rt(), HcclAlltoAll(x, n, T::HCCL_DTYPE, y, n, T::HCCL_DTYPE, self.raw(), s))
        })
    }

    /// Sends `buf` to rank `peer` (which must call [`Communicator::recv`] with the same length).
    pub fn send<T: DeviceRepr>(&self, buf: &DeviceBuffer<T>, peer: usize, stream: &Stream) -> Result<()> {
        let (n, peer) = (buf.len() as u64, self.rank_arg("peer", peer)?);
        // SAFETY: as above.
        self.one(buf, false, stream, |b, s| unsafe {
            hccl!(self.rt(), HcclSend(b, n, T::HCCL_DTYPE, peer, self.raw(), s))
        })
    }

    /// Receives `buf` from rank `peer`.
    pub fn recv<T: DeviceRepr>(&self, buf: &mut DeviceBuffer<T>, peer: usize, stream: &Stream) -> Result<()> {
        let (n, peer) = (buf.len() as u64, self.rank_arg("peer", peer)?);
        // SAFETY: as above.
        self.one(buf, true, stream, |b, s| unsafe {
            hccl!(self.rt(), HcclRecv(b, n, T::HCCL_DTYPE, peer, self.raw(), s))
        })
    }

    /// Later work on `stream` waits until every rank has reached the barrier.
    pub fn barrier(&self, stream: &Stream) -> Result<()> {
        self.check::<u8>(stream, &[])?;
        // As every call: refused inside a host task, and made in the stream's context.
        stream.context().bind()?;
        // SAFETY: live handles.
        unsafe { hccl!(self.rt(), HcclBarrier(self.raw(), stream.raw())) }
    }

    /// The error of the last failed collective, if any (`HcclGetCommAsyncError`).
    pub fn async_error(&self) -> Result<Option<Error>> {
        let mut code = 0;
        // SAFETY: live handle, out-pointer to a local.
        unsafe { hccl!(self.rt(), HcclGetCommAsyncError(self.raw(), &mut code))? };
        Ok((code != 0).then(|| self.rt().hccl_error("collective", code)))
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        let (ctx, handle, rank, size) = (self.ctx.clone(), self.handle, self.rank, self.size);
        if crate::host_task::defer_drop(|| Communicator { ctx, handle, rank, size }) {
            return;
        }
        // Queued collectives make destroy answer HCCL_E_AGAIN: give them a bounded time to finish.
        for _ in 0..3000 {
            // SAFETY: the handle is owned by this value; destroyed at most once (loop exits on success).
            match unsafe { hccl!(self.rt(), HcclCommDestroy(self.raw())) } {
                Err(Error::Hccl { code: ascend_sys::HCCL_E_AGAIN, .. }) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return eprintln!("ascend-rt: {e}"),
                Ok(()) => return,
            }
        }
        eprintln!("ascend-rt: a communicator still had queued work after 30 s; leaking it");
    }
}
