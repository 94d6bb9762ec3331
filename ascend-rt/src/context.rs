//! Contexts: a device opened by this process, the owner of its streams, and of the memory waiting
//! for queued work to finish before it is released.

use crate::error::{Error, Result};
use crate::event::Event;
use crate::runtime::{acl, Runtime};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How long dropping a context waits for queued work before it gives up and leaks the memory that
/// work still uses (rather than freeing it under the work, or blocking forever).
const DROP_WAIT_MS: i32 = 30_000;

thread_local! {
    /// The context handle this thread last made current, to skip redundant calls.
    static BOUND: Cell<usize> = const { Cell::new(0) };
}

/// Memory whose release waits for the events recorded after its last uses.
pub(crate) struct PendingFree {
    pub(crate) ptr: usize,
    pub(crate) host: bool,
    pub(crate) after: Vec<Arc<Event>>,
    /// Other contexts whose events are in `after` (declared after it: dropped after the events).
    /// Only pinned memory needs them (device memory orders its release on its own stream instead),
    /// so two contexts can hold each other alive only through pinned buffers each used on the
    /// other's streams and dropped with the copies still queued.
    pub(crate) _keep: Vec<Arc<Context>>,
}

/// Memory waiting for queued work, in the order it was dropped.
#[derive(Default)]
struct Pending {
    frees: VecDeque<PendingFree>,
    /// How many were left after the last full scan. The next waits until the queue has doubled,
    /// so that a long queue (a stream far behind the host) costs O(1) per free, not O(queue).
    scanned: usize,
}

/// Below this many queued frees, every release scans them all.
const SCAN_ALWAYS: usize = 32;

/// A device opened by this process (its default context). Streams, buffers and events keep it alive;
/// dropping the last reference resets the device once their work has finished.
pub struct Context {
    rt: &'static Runtime,
    ordinal: usize,
    handle: usize,
    streams: AtomicUsize,
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("ordinal", &self.ordinal).field("handle", &self.handle).finish()
    }
}

impl Context {
    /// Opens device `ordinal` (`aclrtSetDevice`) and binds its default context to this thread.
    /// Fails with `ACL_ERROR_RT_INVALID_DEVICEID` for a device that does not exist.
    pub fn new(ordinal: usize) -> Result<Arc<Context>> {
        crate::host_task::refuse_inside()?;
        let rt = Runtime::get()?;
        let id =
            i32::try_from(ordinal).map_err(|_| Error::invalid(format!("device ordinal {ordinal} is too large")))?;
        let mut ctx: *mut c_void = std::ptr::null_mut();
        // SAFETY: plain value argument, then an out-pointer to a live local.
        unsafe {
            acl!(rt, aclrtSetDevice(id))?;
            acl!(rt, aclrtGetCurrentContext(&mut ctx))?;
        }
        BOUND.with(|b| b.set(ctx as usize));
        Ok(Arc::new(Context {
            rt,
            ordinal,
            handle: ctx as usize,
            streams: AtomicUsize::new(0),
            pending: Mutex::default(),
        }))
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The runtime this context belongs to.
    pub fn runtime(&self) -> &'static Runtime {
        self.rt
    }

    /// The raw `aclrtContext`. Do not destroy it.
    pub fn raw(&self) -> *mut c_void {
        self.handle as *mut c_void
    }

    /// Makes this context current on the calling thread (a no-op when it already is).
    pub fn bind(&self) -> Result<()> {
        bind_handle(self.rt, self.handle)
    }

    /// (free, total) bytes of device memory.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: out-pointers to live locals.
        unsafe { acl!(self.rt, aclrtGetMemInfo(ascend_sys::ACL_HBM_MEM, &mut free, &mut total))? };
        Ok((free, total))
    }

    /// Waits for all work on every stream of this device.
    pub fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: no arguments.
        let synced = unsafe { acl!(self.rt, aclrtSynchronizeDevice()) };
        // Also after a failure: the memory of finished work comes back all the same.
        self.release_finished(true);
        synced
    }

    pub(crate) fn stream_created(&self) {
        self.streams.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn stream_destroyed(&self) {
        self.streams.fetch_sub(1, Ordering::AcqRel);
    }

    /// True while more than one stream of this context exists: only then are buffer uses tracked
    /// with events (a single stream orders everything by itself).
    pub(crate) fn multi_stream(&self) -> bool {
        self.streams.load(Ordering::Acquire) > 1
    }

    /// Queues memory for release once `after` have completed.
    pub(crate) fn release_later(&self, p: PendingFree) {
        self.pending.lock().unwrap().frees.push_back(p);
        self.release_finished(false);
    }

    /// Runs `malloc`; when it fails (out of memory) while dropped memory still waits for queued
    /// work, releases that memory as its work finishes (polling every millisecond) and retries, for
    /// at most `DROP_WAIT_MS` in all; then returns the last error. Work that never finishes leaves its
    /// memory queued.
    pub(crate) fn alloc_retrying<T>(&self, malloc: impl Fn() -> Result<T>) -> Result<T> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(DROP_WAIT_MS as u64);
        loop {
            let err = match malloc() {
                Ok(p) => return Ok(p),
                Err(e) => e,
            };
            loop {
                if self.release_finished(true) > 0 {
                    break;
                }
                if self.pending.lock().unwrap().frees.is_empty() || std::time::Instant::now() >= deadline {
                    return Err(err);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    /// Releases queued memory whose work has finished: the finished front of the queue (frees
    /// ordered on one stream finish in order), and, when `all` is set or the queue has doubled since
    /// the last full scan, every finished one. Returns how many were released.
    pub(crate) fn release_finished(&self, all: bool) -> usize {
        let finished = |p: &PendingFree| p.after.iter().all(|e| e.is_complete().unwrap_or(false));
        let done: Vec<PendingFree> = {
            let mut pending = self.pending.lock().unwrap();
            let mut done = Vec::new();
            while pending.frees.front().is_some_and(finished) {
                done.extend(pending.frees.pop_front());
            }
            if all || pending.frees.len() >= SCAN_ALWAYS.max(2 * pending.scanned) {
                let (now, wait): (VecDeque<_>, VecDeque<_>) = pending.frees.drain(..).partition(finished);
                done.extend(now);
                pending.scanned = wait.len();
                pending.frees = wait;
            }
            done
        };
        for p in &done {
            self.free_now(p);
        }
        done.len()
    }

    fn free_now(&self, p: &PendingFree) {
        let _ = self.bind();
        // SAFETY: the pointer came from aclrtMalloc / aclrtMallocHost of this context and every use
        // of it has completed; it is freed exactly once (it was removed from the pending list).
        let r = unsafe {
            if p.host {
                acl!(self.rt, aclrtFreeHost(p.ptr as *mut c_void))
            } else {
                acl!(self.rt, aclrtFree(p.ptr as *mut c_void))
            }
        };
        if let Err(e) = r {
            eprintln!("ascend-rt: releasing memory failed: {e}");
        }
    }
}

/// Makes the context `handle` current on the calling thread unless it already is.
pub(crate) fn bind_handle(rt: &Runtime, handle: usize) -> Result<()> {
    crate::host_task::refuse_inside()?;
    if BOUND.with(|b| b.get()) != handle {
        // SAFETY: callers pass the handle of a context they keep alive.
        unsafe { acl!(rt, aclrtSetCurrentContext(handle as *mut c_void))? };
        BOUND.with(|b| b.set(handle));
    }
    Ok(())
}

impl Drop for Context {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut self.pending.lock().unwrap().frees);
        // Inside a host task, waiting for the work queued behind it would wait for the task itself.
        let (rt, ordinal, handle, streams) = (self.rt, self.ordinal, self.handle, self.streams.load(Ordering::Acquire));
        let mut pending = Some(pending);
        let take = || Context {
            rt,
            ordinal,
            handle,
            streams: AtomicUsize::new(streams),
            pending: Mutex::new(Pending { frees: pending.take().unwrap_or_default(), scanned: 0 }),
        };
        if crate::host_task::defer_drop(take) {
            return;
        }
        let pending = pending.unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(DROP_WAIT_MS as u64);
        let left = || deadline.saturating_duration_since(std::time::Instant::now()).as_millis() as i32;
        for p in pending {
            if p.after.iter().all(|e| e.finished_within(left())) {
                self.free_now(&p);
            } else {
                eprintln!("ascend-rt: queued work did not finish in {DROP_WAIT_MS} ms; leaking its memory");
            }
        }
        let _ = self.bind();
        // SAFETY: matches the aclrtSetDevice of `new`; reference counted by the runtime.
        if let Err(e) = unsafe { acl!(self.rt, aclrtResetDevice(self.ordinal as i32)) } {
            eprintln!("ascend-rt: {e}");
        }
        BOUND.with(|b| {
            if b.get() == self.handle {
                b.set(0)
            }
        });
    }
}
