//! Page-locked host memory, the source or destination of asynchronous copies.

use crate::buffer::DeviceRepr;
use crate::context::{Context, PendingFree};
use crate::error::{Error, Result};
use crate::runtime::acl;
use crate::track::Tracker;
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

/// `len` elements of `T` in pinned host memory (`aclrtMallocHost`). Host access waits for queued
/// copies that use it; dropping it waits (without blocking) for them before the memory is freed.
pub struct PinnedHostBuffer<T: DeviceRepr> {
    ctx: Arc<Context>,
    ptr: usize,
    len: usize,
    tracker: Tracker,
    _t: PhantomData<T>,
}

impl<T: DeviceRepr> PinnedHostBuffer<T> {
    /// Allocates `len` zeroed elements. Fails with `InvalidArgument` for zero elements or a size that
    /// overflows, and with the runtime's error when memory runs out (after waiting, at most 30 s, for
    /// memory that dropped buffers still hold for their queued work).
    pub fn new(ctx: &Arc<Context>, len: usize) -> Result<Self> {
        let bytes = len
            .checked_mul(std::mem::size_of::<T>())
            .filter(|&b| b > 0)
            .ok_or_else(|| Error::invalid(format!("cannot allocate {len} pinned elements")))?;
        ctx.bind()?;
        let p = ctx.alloc_retrying(|| {
            let mut p: *mut c_void = std::ptr::null_mut();
            // SAFETY: out-pointer to a live local; size non-zero.
            unsafe { acl!(ctx.runtime(), aclrtMallocHost(&mut p, bytes)) }.map(|()| p)
        })?;
        // SAFETY: `p` is a fresh host allocation of `bytes` bytes.
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        Ok(PinnedHostBuffer {
            ctx: ctx.clone(),
            ptr: p as usize,
            len,
            tracker: Tracker::new(None, ctx),
            _t: PhantomData,
        })
    }

    /// A pinned copy of `data`.
    pub fn from_slice(ctx: &Arc<Context>, data: &[T]) -> Result<Self> {
        let mut b = Self::new(ctx, data.len())?;
        b.as_mut_slice()?.copy_from_slice(data);
        Ok(b)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for zero elements (never: allocations are non-empty).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address.
    pub fn raw(&self) -> *mut c_void {
        self.ptr as *mut c_void
    }

    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The contents, once every queued copy into it has finished (waits for them). Fails with the
    /// stream's error when such a copy (or the work it copied from) failed, or with
    /// [`Error::HostTaskPanicked`] after a panic on its stream: the memory may not hold what was
    /// copied. That failure is reported again on every later access.
    pub fn as_slice(&self) -> Result<&[T]> {
        self.tracker.wait_host(false)?;
        // SAFETY: the allocation holds `len` initialised elements, and no queued write is pending.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr as *const T, self.len) })
    }

    /// The contents for writing, once every queued use has finished (waits for them). Fails as
    /// [`PinnedHostBuffer::as_slice`] does when a copy into it failed; a failed copy out of it only
    /// needs to be over.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.tracker.wait_host(true)?;
        // SAFETY: as above, and no queued use remains; `&mut self` makes this the only access.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut T, self.len) })
    }
}

impl<T: DeviceRepr> Drop for PinnedHostBuffer<T> {
    fn drop(&mut self) {
        let (ctx, ptr) = (self.ctx.clone(), self.ptr);
        let (after, keep): (Vec<_>, Vec<_>) = self.tracker.take_events().into_iter().unzip();
        let _keep = keep.into_iter().flatten().collect();
        crate::host_task::now_or_later(move || ctx.release_later(PendingFree { ptr, host: true, after, _keep }));
    }
}
