//! Streams: ordered queues of device work. Allocation, copies and host tasks are stream methods, so
//! every piece of work says where it is ordered.

use crate::buffer::{DeviceBuffer, DeviceRepr};
use crate::context::{Context, PendingFree};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::runtime::acl;
use crate::track::Tracker;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// A stream of one context. Dropping it lets its queued work finish first (`aclrtDestroyStream`).
pub struct Stream {
    ctx: Arc<Context>,
    handle: usize,
    /// Set when a host task on this stream panicked; sticky, like a device error: every later
    /// synchronize and blocking copy on the stream fails with it.
    panicked: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("device", &self.ctx.ordinal()).field("handle", &self.handle).finish()
    }
}

impl PartialEq for Stream {
    fn eq(&self, other: &Self) -> bool {
        self.handle == other.handle
    }
}

impl Stream {
    /// Creates a stream on `ctx`.
    pub fn new(ctx: &Arc<Context>) -> Result<Arc<Stream>> {
        ctx.bind()?;
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a live local.
        unsafe { acl!(ctx.runtime(), aclrtCreateStream(&mut h))? };
        ctx.stream_created();
        Ok(Arc::new(Stream { ctx: ctx.clone(), handle: h as usize, panicked: Arc::default() }))
    }

    /// The owning context.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The raw `aclrtStream`. Do not destroy it.
    pub fn raw(&self) -> *mut c_void {
        self.handle as *mut c_void
    }

    /// Waits until all work submitted so far has finished. Returns the stream's sticky error if a task
    /// failed, and releases memory whose last uses have finished.
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: live handle.
        let synced = unsafe { acl!(self.ctx.runtime(), aclrtSynchronizeStream(self.raw())) };
        // Also after a failure: the memory of finished work comes back all the same.
        self.ctx.release_finished(true);
        synced?;
        self.check_host_panic()
    }

    /// Like [`Stream::synchronize`], giving up after `ms` milliseconds (`ACL_ERROR_RT_STREAM_SYNC_TIMEOUT`).
    pub fn synchronize_timeout(&self, ms: i32) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: live handle.
        unsafe { acl!(self.ctx.runtime(), aclrtSynchronizeStreamWithTimeout(self.raw(), ms))? };
        self.check_host_panic()
    }

    /// Waits until the work enqueued so far has run, because it uses host memory borrowed for this
    /// call only. If the event wait fails, the whole stream is synchronized before the error is
    /// returned: returning earlier would let the caller free memory a queued copy still uses.
    fn wait_for_borrowed(&self) -> Result<()> {
        if let Err(e) = self.record_event().and_then(|ev| ev.synchronize()) {
            self.drain();
            return Err(e);
        }
        self.check_host_panic()
    }

    /// Waits for everything queued here, on an error path: the caller is about to return an error
    /// while queued work may still use memory it no longer orders (the error being returned says
    /// more than this wait's own result would).
    fn drain(&self) {
        if self.ctx.bind().is_ok() {
            // SAFETY: live handle.
            let _ = unsafe { acl!(self.ctx.runtime(), aclrtSynchronizeStream(self.raw())) };
        }
    }

    /// The flag a panicking host task of this stream sets (with its message).
    pub(crate) fn panic_flag(&self) -> Arc<Mutex<Option<String>>> {
        self.panicked.clone()
    }

    fn check_host_panic(&self) -> Result<()> {
        match self.panicked.lock().unwrap().clone() {
            Some(m) => Err(Error::HostTaskPanicked(m)),
            None => Ok(()),
        }
    }

    /// True when all submitted work has finished.
    pub fn is_idle(&self) -> Result<bool> {
        let mut status = 0;
        // SAFETY: live handle, out-pointer to a live local.
        unsafe { acl!(self.ctx.runtime(), aclrtStreamQuery(self.raw(), &mut status))? };
        Ok(status == ascend_sys::ACL_STREAM_STATUS_COMPLETE)
    }

    /// Records a new event here.
    pub fn record_event(&self) -> Result<Event> {
        let e = Event::new(&self.ctx)?;
        e.record(self)?;
        Ok(e)
    }

    /// Makes later work on this stream wait for `event`'s recorded work.
    pub fn wait(&self, event: &Event) -> Result<()> {
        self.ctx.bind()?;
        // SAFETY: live handles.
        unsafe { acl!(self.ctx.runtime(), aclrtStreamWaitEvent(self.raw(), event.raw())) }
    }

    /// Allocates `len` elements of device memory, ordered on this stream. The contents are whatever the
    /// memory held (every `DeviceRepr` type accepts any bit pattern). Fails with `InvalidArgument` for
    /// zero elements or a size that overflows, and with the runtime's error when memory runs out.
    /// When it runs out while dropped buffers still wait for their queued work, it retries as that
    /// work finishes and their memory comes back, for at most 30 s (the only case where allocating
    /// blocks).
    pub fn alloc<T: DeviceRepr>(self: &Arc<Self>, len: usize) -> Result<DeviceBuffer<T>> {
        let bytes = len.checked_mul(std::mem::size_of::<T>()).filter(|&b| b > 0).ok_or_else(|| {
            Error::invalid(format!("cannot allocate {len} elements of {} bytes", std::mem::size_of::<T>()))
        })?;
        self.ctx.bind()?;
        self.ctx.release_finished(false);
        let malloc = || {
            let mut p: *mut c_void = std::ptr::null_mut();
            // SAFETY: out-pointer to a live local; size checked non-zero.
            unsafe { acl!(self.ctx.runtime(), aclrtMalloc(&mut p, bytes, ascend_sys::ACL_MEM_MALLOC_HUGE_FIRST)) }
                .map(|()| p)
        };
        let p = self.ctx.alloc_retrying(malloc)?;
        // SAFETY: `p` is a fresh allocation of `len` elements of `T`, owned by the new buffer.
        Ok(unsafe { DeviceBuffer::from_raw(p as usize, len, self.clone()) })
    }

    /// Allocates `len` zeroed elements.
    pub fn alloc_zeros<T: DeviceRepr>(self: &Arc<Self>, len: usize) -> Result<DeviceBuffer<T>> {
        let mut b = self.alloc(len)?;
        self.memset_zeros(&mut b)?;
        Ok(b)
    }

    /// Sets every byte of `buf` to zero, ordered on this stream.
    pub fn memset_zeros<T: DeviceRepr>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        let bytes = buf.bytes();
        self.device_op(&[(buf.tracker(), true)], |s| {
            // SAFETY: the range is the buffer's own live allocation.
            unsafe { acl!(s.ctx.runtime(), aclrtMemsetAsync(buf.raw(), bytes, 0, bytes, s.raw())) }
        })
    }

    /// Copies `src` into a new device buffer. Waits for the copy (`src` is borrowed only for this call).
    pub fn clone_htod<T: DeviceRepr>(self: &Arc<Self>, src: &[T]) -> Result<DeviceBuffer<T>> {
        let mut b = self.alloc(src.len())?;
        self.memcpy_htod(src, &mut b)?;
        Ok(b)
    }

    /// Copies `src` into `dst` (same length). Waits until the copy has run, since `src` is only borrowed
    /// for this call; use [`Stream::memcpy_htod_async`] with pinned memory to avoid waiting.
    pub fn memcpy_htod<T: DeviceRepr>(&self, src: &[T], dst: &mut DeviceBuffer<T>) -> Result<()> {
        same_len(src.len(), dst.len())?;
        let bytes = dst.bytes();
        self.device_op(&[(dst.tracker(), true)], |s| {
            // SAFETY: `dst` is a live allocation of `bytes`; `src` stays borrowed until the copy has run
            // (the event synchronize below).
            unsafe {
                acl!(
                    s.ctx.runtime(),
                    aclrtMemcpyAsync(
                        dst.raw(),
                        bytes,
                        src.as_ptr().cast(),
                        bytes,
                        ascend_sys::ACL_MEMCPY_HOST_TO_DEVICE,
                        s.raw()
                    )
                )
            }
        })?;
        self.wait_for_borrowed()
    }

    /// Copies `src` (pinned) into `dst` without waiting.
    pub fn memcpy_htod_async<T: DeviceRepr>(
        &self,
        src: &crate::PinnedHostBuffer<T>,
        dst: &mut DeviceBuffer<T>,
    ) -> Result<()> {
        same_len(src.len(), dst.len())?;
        let bytes = dst.bytes();
        self.device_op(&[(src.tracker(), false), (dst.tracker(), true)], |s| {
            // SAFETY: both are live allocations of `bytes`, kept alive (stream-ordered release) until
            // the copy has run.
            unsafe {
                acl!(
                    s.ctx.runtime(),
                    aclrtMemcpyAsync(
                        dst.raw(),
                        bytes,
                        src.raw(),
                        bytes,
                        ascend_sys::ACL_MEMCPY_HOST_TO_DEVICE,
                        s.raw()
                    )
                )
            }
        })
    }

    /// Copies `src` (device) into `dst` (pinned) without waiting; read `dst` after the work is done
    /// ([`crate::PinnedHostBuffer::as_slice`] waits for it).
    pub fn memcpy_dtoh_async<T: DeviceRepr>(
        &self,
        src: &DeviceBuffer<T>,
        dst: &mut crate::PinnedHostBuffer<T>,
    ) -> Result<()> {
        same_len(src.len(), dst.len())?;
        let bytes = src.bytes();
        self.device_op(&[(src.tracker(), false), (dst.tracker(), true)], |s| {
            // SAFETY: as in memcpy_htod_async.
            unsafe {
                acl!(
                    s.ctx.runtime(),
                    aclrtMemcpyAsync(
                        dst.raw(),
                        bytes,
                        src.raw(),
                        bytes,
                        ascend_sys::ACL_MEMCPY_DEVICE_TO_HOST,
                        s.raw()
                    )
                )
            }
        })
    }

    /// Copies `src` into `dst` (same length) and waits for the copy, and so for the work before it.
    pub fn memcpy_dtoh<T: DeviceRepr>(&self, src: &DeviceBuffer<T>, dst: &mut [T]) -> Result<()> {
        same_len(src.len(), dst.len())?;
        let bytes = src.bytes();
        self.device_op(&[(src.tracker(), false)], |s| {
            // SAFETY: `src` is a live allocation; `dst` stays borrowed until the copy has run (below).
            unsafe {
                acl!(
                    s.ctx.runtime(),
                    aclrtMemcpyAsync(
                        dst.as_mut_ptr().cast(),
                        bytes,
                        src.raw(),
                        bytes,
                        ascend_sys::ACL_MEMCPY_DEVICE_TO_HOST,
                        s.raw()
                    )
                )
            }
        })?;
        self.wait_for_borrowed()
    }

    /// Copies `src` to a new `Vec` (waits).
    pub fn clone_dtoh<T: DeviceRepr>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut v = vec![T::default(); src.len()];
        self.memcpy_dtoh(src, &mut v)?;
        Ok(v)
    }

    /// Copies `src` into `dst` on the device (same length), without waiting.
    pub fn memcpy_dtod<T: DeviceRepr>(&self, src: &DeviceBuffer<T>, dst: &mut DeviceBuffer<T>) -> Result<()> {
        same_len(src.len(), dst.len())?;
        let bytes = src.bytes();
        self.device_op(&[(src.tracker(), false), (dst.tracker(), true)], |s| {
            // SAFETY: both are live allocations of `bytes`, released only after this work.
            unsafe {
                acl!(
                    s.ctx.runtime(),
                    aclrtMemcpyAsync(
                        dst.raw(),
                        bytes,
                        src.raw(),
                        bytes,
                        ascend_sys::ACL_MEMCPY_DEVICE_TO_DEVICE,
                        s.raw()
                    )
                )
            }
        })
    }

    /// Copies an `ndarray` (any layout) into a new device buffer, in logical (row-major) order.
    pub fn clone_htod_array<T: DeviceRepr, D: ndarray::Dimension>(
        self: &Arc<Self>,
        a: &ndarray::ArrayBase<impl ndarray::Data<Elem = T>, D>,
    ) -> Result<DeviceBuffer<T>> {
        match a.as_slice() {
            Some(s) => self.clone_htod(s),
            None => self.clone_htod(&a.iter().copied().collect::<Vec<_>>()),
        }
    }

    /// Copies `src` into a new array of `shape` (its element count must equal the buffer's length).
    pub fn clone_dtoh_array<T: DeviceRepr, Sh: ndarray::ShapeBuilder>(
        &self,
        src: &DeviceBuffer<T>,
        shape: Sh,
    ) -> Result<ndarray::Array<T, Sh::Dim>> {
        let v = self.clone_dtoh(src)?;
        ndarray::Array::from_shape_vec(shape, v)
            .map_err(|e| Error::invalid(format!("shape does not match the buffer: {e}")))
    }

    /// Runs `f` on the host when the stream reaches this point (it may not touch device memory; see
    /// [`crate::HostLaunch`] for host kernels). A panic in `f` is an error of the stream from then
    /// on, as a failed device task is: every later synchronize and blocking copy returns it (use a new
    /// stream to go on).
    ///
    /// `f` may not call the runtime (CANN forbids host functions to allocate, free, synchronize or
    /// launch): such calls return [`Error::Unsupported`] and enqueue nothing. Buffers, streams and
    /// contexts whose last reference `f` drops are torn down on another thread.
    pub fn launch_host<F: FnOnce() + Send + 'static>(&self, f: F) -> Result<()> {
        self.ctx.bind()?;
        let panicked = self.panicked.clone();
        let task: Box<Box<dyn FnOnce() + Send>> = Box::new(Box::new(move || {
            if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                let msg =
                    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                *panicked.lock().unwrap() = Some(msg.unwrap_or_else(|| "non-string panic payload".into()));
            }
        }));
        let arg = Box::into_raw(task);
        // SAFETY: `trampoline` takes ownership of `arg` exactly once, when the stream runs it.
        let r = unsafe { acl!(self.ctx.runtime(), aclrtLaunchHostFunc(self.raw(), Some(trampoline), arg.cast())) };
        if r.is_err() {
            // SAFETY: the launch failed, so the stream never received `arg`; reclaim it here.
            drop(unsafe { Box::from_raw(arg) });
        }
        r
    }

    /// Starts a host kernel launch on this stream (simulator only: device memory must be
    /// host-addressable). See [`crate::HostLaunch`].
    pub fn host_launch(self: &Arc<Self>) -> Result<crate::HostLaunch<'_>> {
        crate::HostLaunch::new(self)
    }

    /// Starts an ordered launch of raw device work (vendor operators); see [`crate::DeviceLaunch`].
    pub fn device_launch(&self) -> crate::DeviceLaunch<'_> {
        crate::DeviceLaunch::new(self)
    }

    /// Orders one device operation: waits for conflicting uses on other streams, enqueues `op`, then
    /// records the uses. `uses`: each buffer's tracker and whether it is written.
    pub(crate) fn device_op(&self, uses: &[(&Tracker, bool)], op: impl FnOnce(&Self) -> Result<()>) -> Result<()> {
        self.ctx.bind()?;
        for (t, write) in uses {
            t.before(self, *write)?;
        }
        op(self)?;
        for (t, write) in uses {
            if let Err(e) = t.after(self, *write) {
                // The work is queued but not recorded as a use, so nothing would order a later use
                // or the release after it: wait for it instead.
                self.drain();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Frees `ptr` once the work using it (the tracker's uses, and everything queued here) is done.
    /// Uses on streams of other contexts are ordered before this stream's release point, so the
    /// pending free holds only this context's events (and no other context alive).
    pub(crate) fn release(&self, ptr: usize, host: bool, uses: Vec<crate::track::Pending>) {
        let (mut after, mut keep) = (Vec::new(), Vec::new());
        for (event, context) in uses {
            match context {
                Some(c) if self.wait(&event).is_err() => {
                    after.push(event);
                    keep.push(c);
                }
                // Ordered here now: the event goes, then (explicitly after it) its context.
                Some(c) => drop((event, c)),
                None => after.push(event),
            }
        }
        match self.record_event() {
            Ok(e) => after.push(Arc::new(e)),
            Err(e) => {
                // Without an ordering point we cannot know when the memory is unused: wait here.
                eprintln!("ascend-rt: cannot record a release event ({e}); synchronizing instead");
                let _ = self.synchronize();
            }
        }
        self.ctx.release_later(PendingFree { ptr, host, after, _keep: keep });
    }
}

extern "C" fn trampoline(arg: *mut c_void) {
    // SAFETY: `arg` is the `Box<Box<dyn FnOnce>>` leaked by `launch_host`; the runtime calls each
    // host function exactly once.
    let f = unsafe { Box::from_raw(arg as *mut Box<dyn FnOnce() + Send>) };
    crate::host_task::run(f);
}

fn same_len(a: usize, b: usize) -> Result<()> {
    if a != b {
        return Err(Error::invalid(format!("lengths differ: {a} and {b} elements")));
    }
    Ok(())
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Inside a host task of this stream, destroying it would wait for the task itself.
        let (ctx, handle, panicked) = (self.ctx.clone(), self.handle, self.panicked.clone());
        if crate::host_task::defer_drop(|| Stream { ctx, handle, panicked }) {
            return;
        }
        let _ = self.ctx.bind();
        // SAFETY: the handle is owned by this value and destroyed once; queued work finishes first.
        if let Err(e) = unsafe { acl!(self.ctx.runtime(), aclrtDestroyStream(self.raw())) } {
            eprintln!("ascend-rt: {e}");
        }
        self.ctx.stream_destroyed();
    }
}
