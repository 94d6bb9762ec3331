//! Events: markers recorded on a stream, for cross-stream ordering, completion queries and timing.

use crate::context::{bind_handle, Context};
use crate::error::Result;
use crate::runtime::{acl, Runtime};
use crate::stream::Stream;
use std::ffi::c_void;

/// An event. Recording captures the work submitted to the stream so far; the event completes when
/// that work has finished. Dropping it never blocks.
///
/// It belongs to its context: resetting the device (dropping the context's last reference)
/// destroys it, after which its calls fail. Keep the context alive as long as the event is used
/// (the safe layer does so for the events it records for buffers).
pub struct Event {
    rt: &'static Runtime,
    ctx: usize,
    handle: usize,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event").field("handle", &self.handle).finish()
    }
}

impl Event {
    /// A new event that records timestamps (`aclrtCreateEvent`).
    pub fn new(ctx: &Context) -> Result<Event> {
        ctx.bind()?;
        let mut h: *mut c_void = std::ptr::null_mut();
        // SAFETY: out-pointer to a live local.
        unsafe { acl!(ctx.runtime(), aclrtCreateEvent(&mut h))? };
        Ok(Event { rt: ctx.runtime(), ctx: ctx.raw() as usize, handle: h as usize })
    }

    /// Records the event on `stream`: it completes once everything submitted there so far has finished.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        stream.context().bind()?;
        // SAFETY: both handles are live (the event is owned, the stream borrowed).
        unsafe { acl!(self.rt, aclrtRecordEvent(self.handle as *mut c_void, stream.raw())) }
    }

    /// True once the recorded work has finished, also when a task of it failed (only synchronizing
    /// reports that).
    pub fn is_complete(&self) -> Result<bool> {
        let mut status = 0;
        // SAFETY: live handle and an out-pointer to a live local.
        unsafe { acl!(self.rt, aclrtQueryEventStatus(self.handle as *mut c_void, &mut status))? };
        Ok(status == ascend_sys::ACL_EVENT_RECORDED_STATUS_COMPLETE)
    }

    /// Blocks until the recorded work has finished. Fails with the stream's error when a task of
    /// that work failed (the work after it on that stream did not run).
    pub fn synchronize(&self) -> Result<()> {
        bind_handle(self.rt, self.ctx)?;
        // SAFETY: live handle.
        unsafe { acl!(self.rt, aclrtSynchronizeEvent(self.handle as *mut c_void)) }
    }

    /// Like [`Event::synchronize`], giving up after `ms` milliseconds (`ACL_ERROR_RT_EVENT_SYNC_TIMEOUT`).
    pub fn synchronize_timeout(&self, ms: i32) -> Result<()> {
        bind_handle(self.rt, self.ctx)?;
        // SAFETY: live handle.
        unsafe { acl!(self.rt, aclrtSynchronizeEventWithTimeout(self.handle as *mut c_void, ms)) }
    }

    /// True once the recorded work is over within `ms` milliseconds (at once for 0), whether it
    /// succeeded or failed: memory it used may then be released.
    pub(crate) fn finished_within(&self, ms: i32) -> bool {
        (ms > 0 && self.synchronize_timeout(ms).is_ok()) || matches!(self.is_complete(), Ok(true))
    }

    /// Blocks until the recorded work is over, whether it succeeded or failed (inside a host task,
    /// where synchronizing is refused, only work already over passes).
    pub(crate) fn wait_over(&self) -> Result<()> {
        match self.synchronize() {
            Err(_) if matches!(self.is_complete(), Ok(true)) => Ok(()),
            r => r,
        }
    }

    /// Milliseconds between this event's completion and `end`'s (both recorded and complete).
    pub fn elapsed_ms(&self, end: &Event) -> Result<f32> {
        let mut ms = 0f32;
        // SAFETY: live handles and an out-pointer to a live local.
        unsafe {
            acl!(self.rt, aclrtEventElapsedTime(&mut ms, self.handle as *mut c_void, end.handle as *mut c_void))?
        };
        Ok(ms)
    }

    /// The raw `aclrtEvent`. Do not destroy it.
    pub fn raw(&self) -> *mut c_void {
        self.handle as *mut c_void
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let (rt, ctx, handle) = (self.rt, self.ctx, self.handle);
        if crate::host_task::defer_drop(|| Event { rt, ctx, handle }) {
            return;
        }
        let _ = bind_handle(self.rt, self.ctx);
        // SAFETY: the handle is owned by this value and destroyed once; destroying does not block.
        if let Err(e) = unsafe { acl!(self.rt, aclrtDestroyEvent(self.handle as *mut c_void)) } {
            eprintln!("ascend-rt: {e}");
        }
    }
}

// The event is only a handle; the runtime allows using it from any thread.
// (Send/Sync are derived automatically: every field is a plain value or a shared static reference.)
