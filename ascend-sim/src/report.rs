//! Host callbacks: `aclrtSubscribeReport` binds a thread to a stream, `aclrtLaunchCallback` enqueues a
//! callback that the stream hands to that thread when it reaches it, and `aclrtProcessReport` runs it
//! there. `ACL_CALLBACK_BLOCK` holds the stream until the callback has run.
//!
//! An explicit `aclrtUnSubscribeReport` abandons the callbacks still waiting for the thread (it no
//! longer handles them). A destroyed stream's subscription instead ends after its work has run, and
//! callbacks it delivered stay with the thread until it has run them.

use crate::fail::{fail, Result};
use crate::stream::{holding, StreamCore};
use ascend_sys::*;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A callback handed to a subscribed thread.
pub struct Pending {
    /// The C function.
    pub func: unsafe extern "C" fn(*mut std::ffi::c_void),
    /// Its argument.
    pub data: usize,
    /// Signalled once it has run (blocking callbacks hold their stream on it).
    pub done: Arc<(Mutex<bool>, Condvar)>,
    /// For a blocking callback, the stream it holds (a wait on it from the callback is refused).
    pub holds: Option<std::sync::Weak<StreamCore>>,
}

#[derive(Default)]
struct ThreadQueue {
    pending: Mutex<Queue>,
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    callbacks: VecDeque<Pending>,
    /// Set when the thread's last subscription ended: a waiting `ProcessReport` returns.
    closed: bool,
}

impl ThreadQueue {
    /// Ends the thread's last subscription: no callback is delivered any more, and a waiting
    /// `ProcessReport` returns once nothing is left. With `abandon`, the waiting callbacks are
    /// dropped (their streams go on); otherwise the thread may still run them. Returns whether the
    /// queue is empty.
    fn close(&self, abandon: bool) -> bool {
        let mut q = self.pending.lock().unwrap();
        q.closed = true;
        if abandon {
            q.callbacks.drain(..).for_each(|p| p.finish());
        }
        self.ready.notify_all();
        q.callbacks.is_empty()
    }
}

/// Subscriptions of the process.
#[derive(Default)]
pub struct Reports {
    /// stream handle → subscribed thread id.
    streams: Mutex<HashMap<usize, u64>>,
    /// thread id → its queue and number of streams it serves (0: its subscriptions ended, callbacks
    /// it may still run are left).
    threads: Mutex<HashMap<u64, (Arc<ThreadQueue>, usize)>>,
}

impl Pending {
    /// Marks the callback as run (or abandoned) and releases a stream blocked on it.
    pub fn finish(&self) {
        *self.done.0.lock().unwrap() = true;
        self.done.1.notify_all();
    }
}

/// The calling thread's id as ACL applications pass it (`pthread_self`).
pub fn this_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

impl Reports {
    /// `aclrtSubscribeReport`.
    pub fn subscribe(&self, tid: u64, stream: usize) -> Result<()> {
        let mut streams = self.streams.lock().unwrap();
        if streams.contains_key(&stream) {
            return fail(ACL_ERROR_REPEAT_SUBSCRIBE, "the stream already has a subscribed thread");
        }
        streams.insert(stream, tid);
        let mut threads = self.threads.lock().unwrap();
        let (q, n) = threads.entry(tid).or_insert_with(|| (Arc::default(), 0));
        if *n == 0 {
            q.pending.lock().unwrap().closed = false;
        }
        *n += 1;
        Ok(())
    }

    /// `aclrtUnSubscribeReport`: callbacks still waiting for the thread are abandoned (their streams
    /// are released without running them).
    pub fn unsubscribe(&self, tid: u64, stream: usize) -> Result<()> {
        let mut streams = self.streams.lock().unwrap();
        if streams.get(&stream) != Some(&tid) {
            return fail(ACL_ERROR_RT_STREAM_SUBSCRIBE, "this thread is not subscribed to the stream");
        }
        streams.remove(&stream);
        self.release_thread(tid, true);
        Ok(())
    }

    fn release_thread(&self, tid: u64, abandon: bool) {
        let mut threads = self.threads.lock().unwrap();
        if let Some((q, n)) = threads.get_mut(&tid) {
            *n -= 1;
            if *n == 0 && q.close(abandon) {
                threads.remove(&tid);
            }
        }
    }

    /// Ends the subscription of a destroyed stream, whose work has run: the callbacks it delivered
    /// stay with their thread.
    pub fn forget_stream(&self, stream: usize) {
        if let Some(tid) = self.streams.lock().unwrap().remove(&stream) {
            self.release_thread(tid, false);
        }
    }

    /// The thread subscribed to `stream`, if any.
    pub fn subscriber(&self, stream: usize) -> Option<u64> {
        self.streams.lock().unwrap().get(&stream).copied()
    }

    /// Hands a callback to thread `tid` (from the stream's thread). False if it is gone.
    pub fn deliver(&self, tid: u64, p: Pending) -> bool {
        let q = self.threads.lock().unwrap().get(&tid).map(|(q, _)| q.clone());
        match q {
            Some(q) => {
                let mut queue = q.pending.lock().unwrap();
                if queue.closed {
                    // The subscription ended since the lookup: nobody will run it.
                    p.finish();
                    return false;
                }
                queue.callbacks.push_back(p);
                q.ready.notify_all();
                true
            }
            None => {
                p.finish();
                false
            }
        }
    }

    /// `aclrtProcessReport` for the calling thread: runs one callback, waiting up to `timeout`.
    pub fn process(&self, timeout: Option<Duration>) -> Result<()> {
        let tid = this_thread();
        let Some(q) = self.threads.lock().unwrap().get(&tid).map(|(q, _)| q.clone()) else {
            return fail(ACL_ERROR_RT_THREAD_SUBSCRIBE, "this thread is not subscribed to any stream");
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pending = q.pending.lock().unwrap();
        let p = loop {
            if let Some(p) = pending.callbacks.pop_front() {
                break p;
            }
            if pending.closed {
                drop(pending);
                self.remove_if_drained(tid, &q);
                return fail(ACL_ERROR_RT_THREAD_SUBSCRIBE, "this thread's subscription ended while it waited");
            }
            match deadline {
                None => pending = q.ready.wait(pending).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return fail(ACL_ERROR_RT_REPORT_TIMEOUT, "no callback arrived before the timeout");
                    }
                    pending = q.ready.wait_timeout(pending, d - now).unwrap().0;
                }
            }
        };
        drop(pending);
        // SAFETY: the function and its argument were given by the application to aclrtLaunchCallback,
        // which is its promise that calling them here is valid.
        let call = || unsafe { (p.func)(p.data as *mut std::ffi::c_void) };
        match p.holds.as_ref().and_then(std::sync::Weak::upgrade) {
            Some(core) => holding(&core, call),
            None => call(),
        }
        p.finish();
        Ok(())
    }

    /// Forgets thread `tid`'s queue `q` once its subscriptions have ended and it has run what was left.
    fn remove_if_drained(&self, tid: u64, q: &Arc<ThreadQueue>) {
        let mut threads = self.threads.lock().unwrap();
        if let Some((current, 0)) = threads.get(&tid) {
            if Arc::ptr_eq(current, q) && current.pending.lock().unwrap().callbacks.is_empty() {
                threads.remove(&tid);
            }
        }
    }

    /// Drops every subscription (finalize).
    pub fn clear(&self) {
        self.streams.lock().unwrap().clear();
        for (_, (q, _)) in self.threads.lock().unwrap().drain() {
            q.close(true);
        }
    }
}
