//! Communicators for the engine, on two transports:
//!
//! - **host**: collectives on host memory (vLLM's CPU tensors), run synchronously on the calling
//!   thread over the simulator's shared-memory transport. The tensors' memory is read and written
//!   directly; the only copies are through the shared staging slots the transport needs.
//! - **device**: collectives on device memory, enqueued on the caller's stream through HCCL (CANN on
//!   an NPU host, the simulator elsewhere), so they are ordered with the engine's other device work.

use ascend_rt::{Communicator, Context, RootInfo};
use ascend_sim::hccl::ops::P2p;
use ascend_sim::hccl::{root::Root, Comm, DType, Op};
use ascend_sys::{HcclRootInfo, HCCL_E_NOT_SUPPORT, HCCL_E_PARA, HCCL_E_PTR};
use std::ffi::c_void;
use std::sync::Arc;
use std::time::Duration;

/// An error: an HCCL result code and a message.
pub type Fail = (i32, String);

/// Bytes of a root info.
pub const ROOT_INFO_BYTES: usize = std::mem::size_of::<HcclRootInfo>();

/// A new root info (rank 0 makes it and hands it to the others): for the host transport when
/// `device` is negative, else from the backend's HCCL for `device`.
pub fn root_info(device: i32) -> Result<Vec<u8>, Fail> {
    if device < 0 {
        let info = Root::generate().encode();
        return Ok(info.internal.iter().map(|&c| c as u8).collect());
    }
    // Initialising the device's context first (as HCCL requires).
    let _ctx = Context::new(device as usize).map_err(rt_fail)?;
    Ok(RootInfo::new().map_err(rt_fail)?.to_bytes())
}

fn rt_fail(e: ascend_rt::Error) -> Fail {
    let code = match &e {
        ascend_rt::Error::Hccl { code, .. } => *code,
        ascend_rt::Error::InvalidArgument(_) => HCCL_E_PARA,
        // A device that does not exist is a bad argument too.
        ascend_rt::Error::Acl { code: ascend_sys::ACL_ERROR_RT_INVALID_DEVICEID, .. } => HCCL_E_PARA,
        _ => ascend_sys::HCCL_E_INTERNAL,
    };
    (code, e.to_string())
}

enum Transport {
    Host(Box<Comm>),
    Device { comm: Communicator, _ctx: Arc<Context> },
}

/// One rank of a communicator.
pub struct PatchComm {
    transport: Transport,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
}

/// What a collective moves: element count and type.
#[derive(Clone, Copy, Debug)]
pub struct Data {
    /// Elements (per rank where the operation says so).
    pub count: usize,
    /// HcclDataType value.
    pub dtype: i32,
}

impl PatchComm {
    /// Joins the communicator of `root` as `rank` of `size`; `device < 0` selects the host transport.
    /// Waits up to `HCCL_CONNECT_TIMEOUT` for the other ranks. `timeout`, when given, replaces
    /// `HCCL_CONNECT_TIMEOUT` and `HCCL_EXEC_TIMEOUT` for the host transport (the engine's own
    /// distributed timeout); the device transport keeps HCCL's.
    pub fn init(
        root: &[u8],
        size: usize,
        rank: usize,
        device: i32,
        timeout: Option<Duration>,
    ) -> Result<PatchComm, Fail> {
        if size == 0 || rank >= size {
            return Err((HCCL_E_PARA, format!("rank {rank} of {size} ranks")));
        }
        if root.len() != ROOT_INFO_BYTES {
            return Err((HCCL_E_PARA, format!("root info is {} bytes, not {ROOT_INFO_BYTES}", root.len())));
        }
        let transport = if device < 0 {
            let mut info = HcclRootInfo { internal: [0; ROOT_INFO_BYTES] };
            info.internal.iter_mut().zip(root).for_each(|(d, &s)| *d = s as _);
            let root = Root::decode(&info)?;
            let timeout = |var, default| timeout.unwrap_or_else(|| ascend_sim::hccl::comm::env_timeout(var, default));
            let comm = Comm::join(
                &root,
                size,
                rank,
                rank,
                timeout("HCCL_CONNECT_TIMEOUT", 120),
                timeout("HCCL_EXEC_TIMEOUT", 1836),
            )?;
            Transport::Host(Box::new(comm))
        } else {
            let ctx = Context::new(device as usize).map_err(rt_fail)?;
            let info = RootInfo::from_bytes(root).map_err(rt_fail)?;
            let comm = Communicator::from_root_info(&ctx, &info, size, rank).map_err(rt_fail)?;
            Transport::Device { comm, _ctx: ctx }
        };
        Ok(PatchComm { transport, rank, size })
    }

    /// Fails the communicator for every rank now (host transport; `HCCL_E_NOT_SUPPORT` on a
    /// device): calls in flight return within milliseconds, here and on the other ranks.
    pub fn abort(&self) -> Result<(), Fail> {
        match &self.transport {
            Transport::Host(c) => {
                c.abort();
                Ok(())
            }
            Transport::Device { .. } => Err((HCCL_E_NOT_SUPPORT, "only a host communicator can be aborted".into())),
        }
    }

    /// True for the host transport.
    pub fn is_host(&self) -> bool {
        matches!(self.transport, Transport::Host(_))
    }

    fn check_stream(&self, stream: *mut c_void) -> Result<(), Fail> {
        match (&self.transport, stream.is_null()) {
            (Transport::Host(_), false) => {
                Err((HCCL_E_PARA, "a host communicator runs on the calling thread: pass no stream".into()))
            }
            (Transport::Device { .. }, true) => {
                Err((HCCL_E_PARA, "a device communicator needs the stream to order the collective on".into()))
            }
            _ => Ok(()),
        }
    }

    fn rank_arg(&self, what: &str, r: usize) -> Result<usize, Fail> {
        if r < self.size {
            Ok(r)
        } else {
            Err((HCCL_E_PARA, format!("{what} {r} is not a rank of {}", self.size)))
        }
    }

    /// Calls the device HCCL function `f(comm, stream)`.
    fn device(
        &self,
        name: &'static str,
        f: impl FnOnce(&ascend_sys::AscendApi, *mut c_void) -> Option<i32>,
    ) -> Result<(), Fail> {
        let Transport::Device { comm, .. } = &self.transport else { unreachable!("checked by check_stream") };
        let api = ascend_rt::Runtime::get().map_err(rt_fail)?.api();
        match f(api, comm.raw()) {
            None => Err((HCCL_E_NOT_SUPPORT, format!("{name} is missing from the loaded HCCL"))),
            Some(0) => Ok(()),
            Some(code) => Err((code, format!("{name} failed: {}", ascend_sys::hccl_result_name(code).unwrap_or("?")))),
        }
    }

    fn host(&self) -> &Comm {
        match &self.transport {
            Transport::Host(c) => c,
            Transport::Device { .. } => unreachable!("checked by check_stream"),
        }
    }

    /// `recv = op over ranks of send` (`send == recv` allowed).
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn all_reduce(
        &self,
        send: usize,
        recv: usize,
        d: Data,
        op: i32,
        stream: *mut c_void,
    ) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let (t, o) = (dtype(d.dtype)?, reduce_op(op)?);
        if !o.supported_for(t) {
            return Err((HCCL_E_NOT_SUPPORT, format!("reduction {op} is not supported for data type {}", d.dtype)));
        }
        nonnull(&[send, recv], d.count)?;
        if self.is_host() {
            return self.host().all_reduce(send, recv, d.count, t, o);
        }
        self.device("HcclAllReduce", |api, c| {
            // SAFETY: the caller's buffers hold `count` elements in device memory (C ABI contract).
            api.HcclAllReduce.map(|f| unsafe { f(send as _, recv as _, d.count as u64, d.dtype, op, c, stream) })
        })
    }

    /// `recv` (`size × count`) = every rank's `send` (`count`), in rank order.
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn all_gather(&self, send: usize, recv: usize, d: Data, stream: *mut c_void) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let t = dtype(d.dtype)?;
        nonnull(&[send, recv], d.count)?;
        if self.is_host() {
            return self.host().all_gather(send, recv, d.count, t);
        }
        self.device("HcclAllGather", |api, c| {
            // SAFETY: as above.
            api.HcclAllGather.map(|f| unsafe { f(send as _, recv as _, d.count as u64, d.dtype, c, stream) })
        })
    }

    /// `recv` (`count`) = this rank's block of `op` over every rank's `send` (`size × count`).
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn reduce_scatter(
        &self,
        send: usize,
        recv: usize,
        d: Data,
        op: i32,
        stream: *mut c_void,
    ) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let (t, o) = (dtype(d.dtype)?, reduce_op(op)?);
        if !o.supported_for(t) {
            return Err((HCCL_E_NOT_SUPPORT, format!("reduction {op} is not supported for data type {}", d.dtype)));
        }
        nonnull(&[send, recv], d.count)?;
        if self.is_host() {
            return self.host().reduce_scatter(send, recv, d.count, t, o);
        }
        self.device("HcclReduceScatter", |api, c| {
            // SAFETY: as above.
            api.HcclReduceScatter.map(|f| unsafe { f(send as _, recv as _, d.count as u64, d.dtype, op, c, stream) })
        })
    }

    /// On `root`, `recv` (`size × count`) = every rank's `send`, in rank order; elsewhere `recv` is
    /// not touched (may be null).
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn gather(
        &self,
        send: usize,
        recv: usize,
        d: Data,
        root: usize,
        stream: *mut c_void,
    ) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let t = dtype(d.dtype)?;
        let root = self.rank_arg("root", root)?;
        nonnull(&[send], d.count)?;
        if self.rank == root {
            nonnull(&[recv], d.count)?;
        }
        let bytes = d.count * t.size();
        if self.is_host() {
            let mut items: Vec<_> = if self.rank == root {
                // My own part is a plain copy; the others arrive through the transport.
                // SAFETY: send holds `count` elements and recv `size × count` (C ABI contract);
                // ptr::copy allows send and recv to overlap.
                unsafe { std::ptr::copy(send as *const u8, (recv + root * bytes) as *mut u8, bytes) };
                (0..self.size)
                    .filter(|&r| r != root)
                    .map(|r| P2p::new(r, false, recv + r * bytes, d.count, t))
                    .collect()
            } else {
                vec![P2p::new(root, true, send, d.count, t)]
            };
            return self.host().send_recv(&mut items);
        }
        // HCCL has no gather: point-to-point transfers to the root, ordered on the stream.
        if self.rank != root {
            // SAFETY: forwarded contract.
            return unsafe { self.send(send, d, root, stream) };
        }
        for r in (0..self.size).filter(|&r| r != root) {
            // SAFETY: forwarded contract (recv holds size × count elements on the root).
            unsafe { self.recv(recv + r * bytes, d, r, stream) }?;
        }
        let api = ascend_rt::Runtime::get().map_err(rt_fail)?.api();
        let copy = api.aclrtMemcpyAsync.ok_or((HCCL_E_NOT_SUPPORT, "aclrtMemcpyAsync is missing".to_string()))?;
        // SAFETY: both are device buffers of at least `bytes` at these offsets (C ABI contract).
        let code = unsafe {
            copy((recv + root * bytes) as _, bytes, send as _, bytes, ascend_sys::ACL_MEMCPY_DEVICE_TO_DEVICE, stream)
        };
        if code != 0 {
            return Err((ascend_sys::HCCL_E_RUNTIME, format!("aclrtMemcpyAsync failed with {code}")));
        }
        Ok(())
    }

    /// Every rank's `buf` becomes `root`'s.
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn broadcast(&self, buf: usize, d: Data, root: usize, stream: *mut c_void) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let t = dtype(d.dtype)?;
        let root = self.rank_arg("root", root)?;
        nonnull(&[buf], d.count)?;
        if self.is_host() {
            return self.host().broadcast(buf, d.count, t, root);
        }
        self.device("HcclBroadcast", |api, c| {
            // SAFETY: as above.
            api.HcclBroadcast.map(|f| unsafe { f(buf as _, d.count as u64, d.dtype, root as u32, c, stream) })
        })
    }

    /// Sends `buf` to `peer` (completes when the peer took it).
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn send(&self, buf: usize, d: Data, peer: usize, stream: *mut c_void) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let t = dtype(d.dtype)?;
        let peer = self.peer(peer)?;
        nonnull(&[buf], d.count)?;
        if self.is_host() {
            return self.host().send_recv(&mut [P2p::new(peer, true, buf, d.count, t)]);
        }
        self.device("HcclSend", |api, c| {
            // SAFETY: as above.
            api.HcclSend.map(|f| unsafe { f(buf as _, d.count as u64, d.dtype, peer as u32, c, stream) })
        })
    }

    /// Receives `buf` from `peer`.
    ///
    /// # Safety
    /// The buffers hold the elements the operation reads or writes: host memory for a host
    /// communicator, device memory of its device otherwise; `stream` is null or a live stream.
    pub unsafe fn recv(&self, buf: usize, d: Data, peer: usize, stream: *mut c_void) -> Result<(), Fail> {
        self.check_stream(stream)?;
        let t = dtype(d.dtype)?;
        let peer = self.peer(peer)?;
        nonnull(&[buf], d.count)?;
        if self.is_host() {
            return self.host().send_recv(&mut [P2p::new(peer, false, buf, d.count, t)]);
        }
        self.device("HcclRecv", |api, c| {
            // SAFETY: as above.
            api.HcclRecv.map(|f| unsafe { f(buf as _, d.count as u64, d.dtype, peer as u32, c, stream) })
        })
    }

    fn peer(&self, peer: usize) -> Result<usize, Fail> {
        let p = self.rank_arg("peer", peer)?;
        if p == self.rank {
            return Err((HCCL_E_PARA, format!("rank {p} cannot send to or receive from itself")));
        }
        Ok(p)
    }

    /// Returns when every rank has called it.
    ///
    /// # Safety
    /// `stream` is null or a live stream of the communicator's device.
    pub unsafe fn barrier(&self, stream: *mut c_void) -> Result<(), Fail> {
        self.check_stream(stream)?;
        if self.is_host() {
            return self.host().barrier();
        }
        self.device("HcclBarrier", |api, c| {
            // SAFETY: a live communicator and the caller's stream.
            api.HcclBarrier.map(|f| unsafe { f(c, stream) })
        })
    }
}

fn dtype(t: i32) -> Result<DType, Fail> {
    DType::from_hccl(t).map_err(|code| (code, format!("data type {t} is not an HCCL data type this build supports")))
}

fn reduce_op(op: i32) -> Result<Op, Fail> {
    Op::from_hccl(op)
        .map_err(|code| (code, format!("reduction {op} is not an HCCL reduction (0 sum, 1 prod, 2 max, 3 min)")))
}

/// Null buffers are refused unless nothing moves.
fn nonnull(ptrs: &[usize], count: usize) -> Result<(), Fail> {
    if count > 0 && ptrs.contains(&0) {
        return Err((HCCL_E_PTR, "a buffer is null".into()));
    }
    Ok(())
}
