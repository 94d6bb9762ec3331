//! What code running as a host task ([`crate::Stream::launch_host`], host kernels) may do.
//!
//! CANN forbids host functions to allocate, free, synchronize or launch (cann-api.md, "Callbacks"),
//! and for good reason: a task runs on its stream's own thread, so a synchronous call there waits for
//! the task itself, and teardown waits for work queued behind it. So while a task runs, calls that
//! reach the runtime are refused before anything is enqueued, and values the task drops (the last
//! reference to a buffer, stream, context, event or communicator) are torn down on a separate thread.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

thread_local! {
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` as a host task of the calling (stream) thread.
pub(crate) fn run(f: impl FnOnce()) {
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RUNNING.set(false);
        }
    }
    RUNNING.set(true);
    let _done = Done;
    f();
}

/// True while the calling thread runs a host task.
pub(crate) fn running() -> bool {
    RUNNING.get()
}

/// Refuses a runtime call made from inside a host task.
pub(crate) fn refuse_inside() -> Result<()> {
    if running() {
        return Err(Error::Unsupported(
            "runtime calls are not allowed inside a host task (CANN forbids host functions to allocate, free, \
             synchronize or launch; a synchronous call there would wait for the task itself): make them from \
             the thread that launched the task"
                .into(),
        ));
    }
    Ok(())
}

/// Inside a host task, moves a value being dropped (built by `take` from the resources of the one
/// whose `Drop` runs) to the teardown thread and returns true; elsewhere returns false and the
/// caller tears down in place.
pub(crate) fn defer_drop<T: Send + 'static>(take: impl FnOnce() -> T) -> bool {
    if !running() {
        return false;
    }
    let value = take();
    later(Box::new(move || drop(value)));
    true
}

/// Runs `release` now, or, inside a host task, on the teardown thread.
pub(crate) fn now_or_later(release: impl FnOnce() + Send + 'static) {
    match running() {
        true => later(Box::new(release)),
        false => release(),
    }
}

type Job = Box<dyn FnOnce() + Send>;

fn later(job: Job) {
    let refused = match teardown_thread() {
        Some(t) => t.send(job).err().map(|e| e.0),
        None => Some(job),
    };
    if let Some(job) = refused {
        // Running it here would come back here: leak what it holds (this needs a teardown thread
        // that could not be started, or that died).
        eprintln!("ascend-rt: no teardown thread; leaking what a host task dropped");
        std::mem::forget(job);
    }
}

/// The thread that runs the teardown host tasks hand over, started on first use.
fn teardown_thread() -> Option<&'static Sender<Job>> {
    static THREAD: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    THREAD
        .get_or_init(|| {
            let (tx, rx) = channel::<Job>();
            std::thread::Builder::new()
                .name("ascend-rt-teardown".into())
                .spawn(move || {
                    for job in rx {
                        // Teardown only prints its errors; a panic must not end the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}
