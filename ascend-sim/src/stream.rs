//! Streams: in-order queues of tasks, executed asynchronously to the caller by one thread per stream.
//!
//! The stream thread only orders work (copies, event records and waits, callbacks, host functions); a
//! host kernel hands its heavy part to the shared compute pool. A task that fails makes the stream's
//! error sticky: later copies and memsets are skipped, and every synchronize returns the error. Host
//! functions and callbacks still run, since they are the user's own code (and may release resources).

use crate::fail::{Fail, Result};
use ascend_sys::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

/// What a task is, for the sticky-error rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Device work (copy, memset, collective): skipped once the stream has failed.
    Device,
    /// The user's host code (host function, callback): always runs.
    Host,
    /// Ordering only (event record or wait): always runs.
    Order,
}

type TaskFn = Box<dyn FnOnce() -> Result<()> + Send>;

struct Queue {
    tasks: VecDeque<(Kind, TaskFn)>,
    sleeping: bool,
    closed: bool,
}

/// The shared state of a stream, kept alive by tasks and events that refer to it.
pub struct StreamCore {
    queue: Mutex<Queue>,
    work: Condvar,
    submitted: AtomicU64,
    completed: AtomicU64,
    /// The lowest task number a sleeping waiter waits for (`u64::MAX`: none), so the stream thread
    /// wakes waiters once, when their task finishes, not after every task.
    wake_at: AtomicU64,
    done_lock: Mutex<()>,
    done: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<Fail>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The stream thread's id, kept after `shutdown` takes the handle (its last tasks still run).
    thread_id: OnceLock<ThreadId>,
}

/// How long an idle stream thread (or a synchronizing caller) spins before it sleeps: short enough to
/// cost little on a busy machine, long enough that back-to-back launches never pay a wake-up.
const SPIN: Duration = Duration::from_micros(50);

impl StreamCore {
    /// Creates the stream and starts its thread.
    pub fn start(name: String) -> Result<Arc<StreamCore>> {
        let core = Arc::new(StreamCore {
            queue: Mutex::new(Queue { tasks: VecDeque::new(), sleeping: false, closed: false }),
            work: Condvar::new(),
            submitted: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            thread: Mutex::new(None),
            thread_id: OnceLock::new(),
        });
        let worker = core.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || worker.run())
            .map_err(|e| Fail::new(ACL_ERROR_RT_NO_STREAM_RESOURCE, format!("cannot start a stream thread: {e}")))?;
        let _ = core.thread_id.set(handle.thread().id());
        *core.thread.lock().unwrap() = Some(handle);
        Ok(core)
    }

    /// Appends a task; returns its sequence number (the stream has reached it once `completed() >= seq`).
    pub fn enqueue(&self, kind: Kind, task: impl FnOnce() -> Result<()> + Send + 'static) -> Result<u64> {
        let mut q = self.queue.lock().unwrap();
        if q.closed {
            return Err(Fail::new(ACL_ERROR_RT_PARAM_INVALID, "the stream is being destroyed"));
        }
        q.tasks.push_back((kind, Box::new(task)));
        let seq = self.submitted.fetch_add(1, SeqCst) + 1;
        let wake = q.sleeping;
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(seq)
    }

    /// Sequence number of the last task submitted.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(SeqCst)
    }

    /// Number of tasks finished.
    pub fn completed(&self) -> u64 {
        self.completed.load(SeqCst)
    }

    /// The sticky error, if a task failed.
    pub fn error(&self) -> Option<Fail> {
        if self.failed.load(Acquire) {
            self.error.lock().unwrap().clone()
        } else {
            None
        }
    }

    /// Fails when the calling thread is this stream's own (a host function), or runs a blocking
    /// callback this stream waits for, and task `seq` has not finished: it would wait for itself
    /// forever. CANN forbids synchronizing there.
    pub fn check_not_waiting_on_itself(&self, seq: u64) -> Result<()> {
        let held = HELD.with(|h| h.borrow().contains(&(self as *const StreamCore as usize)));
        let own = held || self.thread_id.get() == Some(&std::thread::current().id());
        if own && self.completed() < seq {
            return Err(Fail::new(
                ACL_ERROR_RT_PARAM_INVALID,
                "a host function or callback cannot wait for its own stream's later work (it would wait for itself)",
            ));
        }
        Ok(())
    }

    /// Waits until task `seq` has finished. `timeout` None waits forever. Returns false on expiry.
    pub fn wait_for(&self, seq: u64, timeout: Option<Duration>) -> bool {
        if self.completed() >= seq {
            return true;
        }
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        // Spin briefly: most synchronizes are short round trips.
        while start.elapsed() < SPIN.min(timeout.unwrap_or(SPIN)) {
            if self.completed() >= seq {
                return true;
            }
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let mut guard = self.done_lock.lock().unwrap();
        let reached = loop {
            // (Re-)register after every wake-up: the stream thread clears the mark when it notifies.
            self.wake_at.fetch_min(seq, SeqCst);
            if self.completed() >= seq {
                break true;
            }
            match deadline {
                None => guard = self.done.wait(guard).unwrap(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break false;
                    }
                    guard = self.done.wait_timeout(guard, d - now).unwrap().0;
                }
            }
        };
        drop(guard);
        reached
    }

    /// Waits for everything submitted so far; returns the sticky error if there is one, or
    /// `ACL_ERROR_RT_STREAM_SYNC_TIMEOUT` when `timeout` expires first.
    pub fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        self.check_not_waiting_on_itself(self.submitted())?;
        if !self.wait_for(self.submitted(), timeout) {
            return Err(Fail::new(
                ACL_ERROR_RT_STREAM_SYNC_TIMEOUT,
                format!("stream synchronize timed out after {} ms", timeout.unwrap_or_default().as_millis()),
            ));
        }
        match self.error() {
            Some(f) => Err(Fail::new(f.code, format!("a task on this stream failed earlier: {}", f.message))),
            None => Ok(()),
        }
    }

    /// True when every submitted task has finished.
    pub fn idle(&self) -> bool {
        self.completed() >= self.submitted()
    }

    /// Refuses new tasks; queued ones still run.
    pub fn close(&self) {
        self.queue.lock().unwrap().closed = true;
        self.work.notify_one();
    }

    /// Lets queued work finish, then stops the thread. Called from the stream's own thread (a callback
    /// destroying its stream), it only closes the queue.
    pub fn shutdown(&self) {
        self.close();
        let handle = self.thread.lock().unwrap().take();
        if let Some(handle) = handle {
            if self.thread_id.get() != Some(&std::thread::current().id()) {
                let _ = handle.join();
            }
        }
    }

    fn run(&self) {
        loop {
            let next = {
                let mut q = self.queue.lock().unwrap();
                loop {
                    if let Some(t) = q.tasks.pop_front() {
                        break Some(t);
                    }
                    if q.closed {
                        break None;
                    }
                    drop(q);
                    // Spin for a short while before sleeping, so bursts of launches stay cheap.
                    let start = Instant::now();
                    while self.completed() == self.submitted() && start.elapsed() < SPIN {
                        std::hint::spin_loop();
                        std::thread::yield_now();
                    }
                    q = self.queue.lock().unwrap();
                    if q.tasks.is_empty() && !q.closed {
                        q.sleeping = true;
                        q = self.work.wait(q).unwrap();
                        q.sleeping = false;
                    }
                }
            };
            let Some((kind, task)) = next else { return };
            if kind != Kind::Device || !self.failed.load(Acquire) {
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(task))
                    .unwrap_or_else(|_| Err(Fail::new(ACL_ERROR_RT_INTERNAL_ERROR, "a stream task panicked")));
                if let Err(f) = result {
                    let mut e = self.error.lock().unwrap();
                    if e.is_none() {
                        *e = Some(f);
                        self.failed.store(true, Release);
                    }
                }
            }
            let completed = self.completed.fetch_add(1, SeqCst) + 1;
            if completed >= self.wake_at.load(SeqCst) {
                let _g = self.done_lock.lock().unwrap();
                self.wake_at.store(u64::MAX, SeqCst);
                self.done.notify_all();
            }
        }
    }
}

thread_local! {
    /// Streams (addresses of their cores) held by the blocking callbacks this thread is running.
    static HELD: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` (a blocking callback of `core`'s stream, on a report thread) with the stream marked as
/// waiting for this thread, so that a wait on it from `f` fails instead of deadlocking.
pub fn holding<R>(core: &StreamCore, f: impl FnOnce() -> R) -> R {
    let me = core as *const StreamCore as usize;
    HELD.with(|h| h.borrow_mut().push(me));
    struct Release(usize);
    impl Drop for Release {
        fn drop(&mut self) {
            HELD.with(|h| {
                let mut h = h.borrow_mut();
                if let Some(i) = h.iter().rposition(|&x| x == self.0) {
                    h.remove(i);
                }
            });
        }
    }
    let _release = Release(me);
    f()
}

/// A stream as the C ABI sees it.
pub struct Stream {
    /// Its handle value.
    pub handle: usize,
    /// Logical device.
    pub device: usize,
    /// Handle of the owning context.
    pub context: usize,
    /// The queue and its thread.
    pub core: Arc<StreamCore>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_run_in_order_and_errors_stick() {
        let s = StreamCore::start("t".into()).unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for i in 0..100 {
            let log = log.clone();
            s.enqueue(Kind::Device, move || {
                log.lock().unwrap().push(i);
                Ok(())
            })
            .unwrap();
        }
        s.synchronize(None).unwrap();
        assert_eq!(*log.lock().unwrap(), (0..100).collect::<Vec<_>>());
        s.enqueue(Kind::Device, || Err(Fail::new(507053, "boom"))).unwrap();
        let l2 = log.clone();
        s.enqueue(Kind::Device, move || {
            l2.lock().unwrap().push(1000);
            Ok(())
        })
        .unwrap();
        assert_eq!(s.synchronize(None).unwrap_err().code, 507053);
        assert_eq!(s.synchronize(None).unwrap_err().code, 507053, "sticky");
        assert_eq!(log.lock().unwrap().len(), 100, "device work after a failure is skipped");
        s.shutdown();
    }

    #[test]
    fn a_waiter_wakes_when_its_own_task_finishes() {
        let s = StreamCore::start("t".into()).unwrap();
        // Task 1 outlasts the waiters' spin, so they sleep; task 2 holds the stream until released.
        let first = s
            .enqueue(Kind::Host, || {
                std::thread::sleep(Duration::from_millis(30));
                Ok(())
            })
            .unwrap();
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let second = s
            .enqueue(Kind::Host, move || {
                let _ = gate.recv_timeout(Duration::from_secs(30));
                Ok(())
            })
            .unwrap();
        let (early_tx, early) = std::sync::mpsc::channel();
        let (late_tx, late) = std::sync::mpsc::channel();
        for (seq, tx) in [(first, early_tx), (second, late_tx)] {
            let s = s.clone();
            std::thread::spawn(move || tx.send(s.wait_for(seq, Some(Duration::from_secs(20)))).unwrap());
        }
        // The waiter for task 1 returns while task 2 still runs; the other one is still waiting.
        let woke = early.recv_timeout(Duration::from_secs(10));
        let still_waiting = late.try_recv().is_err();
        release.send(()).unwrap();
        assert_eq!(woke, Ok(true), "the waiter for task 1 was not woken when it finished");
        assert!(still_waiting, "the waiter for task 2 returned before task 2 finished");
        assert_eq!(late.recv_timeout(Duration::from_secs(10)), Ok(true));
        s.shutdown();
    }

    #[test]
    fn timeout_expires() {
        let s = StreamCore::start("t".into()).unwrap();
        s.enqueue(Kind::Host, || {
            std::thread::sleep(Duration::from_millis(200));
            Ok(())
        })
        .unwrap();
        let e = s.synchronize(Some(Duration::from_millis(10))).unwrap_err();
        assert_eq!(e.code, ACL_ERROR_RT_STREAM_SYNC_TIMEOUT);
        s.synchronize(None).unwrap();
        s.shutdown();
    }
}
