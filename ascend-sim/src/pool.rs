//! The one pool of compute threads that all host work shares, sized to the machine's cores whatever the
//! number of simulated devices or streams: stream threads only order work, and hand the heavy part of a
//! host kernel (or a large copy) to this pool, so eight simulated devices on two cores never
//! oversubscribe them (a caller runs an index itself only while every worker is idle).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// A fixed set of worker threads running `parallel_for` jobs.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
}

struct Shared {
    jobs: Mutex<Vec<Arc<Job>>>,
    work: Condvar,
    /// Workers running a job now.
    active: AtomicUsize,
}

struct Job {
    /// The body, with its lifetime erased; valid until `finished == n` (the submitter waits for it).
    body: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    finished: AtomicUsize,
    panicked: AtomicBool,
    done: (Mutex<bool>, Condvar),
}

// SAFETY: `body` points to a `Sync` closure that the submitting thread keeps alive until every index
// has finished; workers only call it through a shared reference.
unsafe impl Send for Job {}
// SAFETY: as above; all other fields are thread-safe.
unsafe impl Sync for Job {}

thread_local! {
    static IN_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Pool {
    /// The process-wide pool: one thread per available core (`ASCEND_SIM_THREADS` overrides).
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(|| {
            let n = std::env::var("ASCEND_SIM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n: &usize| n >= 1)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            Pool::new(n)
        })
    }

    fn new(threads: usize) -> Pool {
        let shared =
            Arc::new(Shared { jobs: Mutex::new(Vec::new()), work: Condvar::new(), active: AtomicUsize::new(0) });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("ascend-pool-{i}"))
                .spawn(move || worker(&shared))
                .expect("spawn pool thread");
        }
        Pool { threads, shared }
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `body(i)` for every `i` in `0..n` on the pool's threads and returns when all have finished.
    /// The calling thread runs indices only while every worker is idle (waking one takes a while),
    /// then waits: at most one index per caller runs beyond the pool size.
    /// Called from inside a pool job, it runs inline. A panic in `body` is re-raised here.
    pub fn parallel_for(&self, n: usize, body: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if n == 1 || IN_POOL.with(|c| c.get()) {
            (0..n).for_each(body);
            return;
        }
        // SAFETY: only the lifetime is erased; this function does not return before every index has
        // finished running (`done` below), so `body` outlives all uses.
        let body: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(body) };
        let job = Arc::new(Job {
            body,
            n,
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            done: (Mutex::new(false), Condvar::new()),
        });
        self.shared.jobs.lock().unwrap().push(job.clone());
        self.shared.work.notify_all();
        // Waking a worker takes several microseconds (tens on a busy VM): while every worker is
        // idle, the caller runs indices itself, so a small job does not wait for the wake-up. Once
        // any worker runs, the caller only waits: each caller runs at most one index beyond the
        // pool's threads.
        while self.shared.active.load(Ordering::Acquire) == 0 {
            let i = job.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            IN_POOL.with(|c| c.set(true));
            run_index(&job, i);
            IN_POOL.with(|c| c.set(false));
        }
        let mut done = job.done.0.lock().unwrap();
        while !*done {
            done = job.done.1.wait(done).unwrap();
        }
        drop(done);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a parallel_for body panicked");
        }
    }
}

fn worker(shared: &Shared) {
    IN_POOL.with(|c| c.set(true));
    loop {
        let job = {
            let mut jobs = shared.jobs.lock().unwrap();
            loop {
                // Drop jobs whose indices are all handed out; take the oldest one with work left.
                jobs.retain(|j| j.next.load(Ordering::Relaxed) < j.n);
                if let Some(j) = jobs.first() {
                    break j.clone();
                }
                jobs = shared.work.wait(jobs).unwrap();
            }
        };
        shared.active.fetch_add(1, Ordering::AcqRel);
        loop {
            let i = job.next.fetch_add(1, Ordering::Relaxed);
            if i >= job.n {
                break;
            }
            run_index(&job, i);
        }
        shared.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs index `i` of `job` and counts it finished (waking the submitter after the last one).
fn run_index(job: &Job, i: usize) {
    // SAFETY: the submitter keeps the closure alive until `finished` reaches `n`.
    let body = unsafe { &*job.body };
    if catch_unwind(AssertUnwindSafe(|| body(i))).is_err() {
        job.panicked.store(true, Ordering::Relaxed);
    }
    if job.finished.fetch_add(1, Ordering::AcqRel) + 1 == job.n {
        *job.done.0.lock().unwrap() = true;
        job.done.1.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_index_once_from_many_threads() {
        let pool = Pool::new(2);
        let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    pool.parallel_for(1000, &|i| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    })
                });
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 4));
    }

    #[test]
    fn nested_calls_run_inline_and_panics_propagate() {
        let pool = Pool::new(2);
        let total = AtomicUsize::new(0);
        pool.parallel_for(4, &|_| {
            pool.parallel_for(3, &|_| {
                total.fetch_add(1, Ordering::Relaxed);
            })
        });
        assert_eq!(total.load(Ordering::Relaxed), 12);
        let r = catch_unwind(AssertUnwindSafe(|| pool.parallel_for(8, &|i| assert!(i != 5))));
        assert!(r.is_err());
    }
}
