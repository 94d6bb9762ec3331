//! The one pool of compute threads that all host work shares, sized to the machine's cores whatever the
//! number of simulated devices or streams: stream threads only order work, and hand the heavy part of a
//! host kernel (or a large copy) to this pool, so eight simulated devices on two cores never
//! oversubscribe them (a caller runs one index itself, more only while every worker is idle). Idle
//! workers spin briefly before sleeping, and callers of small jobs spin for their end, because a
//! wake-up costs more than a small job (a decode step of one short sequence) on a VM.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker (at most one fewer than the pool's threads) keeps looking for the next
/// job before it sleeps, and how long a caller spins for its job's last indices before it sleeps:
/// back-to-back small jobs (one decode step per layer) then never pay a wake-up, which on a VM
/// costs tens of microseconds.
const SPIN: Duration = Duration::from_micros(50);

/// A fixed set of worker threads running `parallel_for` jobs.
pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
}

struct Shared {
    jobs: Mutex<Jobs>,
    work: Condvar,
    /// Jobs ever posted: a spinning worker watches it change.
    posted: AtomicU64,
    /// Workers running a job now.
    active: AtomicUsize,
    /// Workers spinning for the next job.
    spinning: AtomicUsize,
}

struct Jobs {
    queue: Vec<Arc<Job>>,
    /// Workers asleep on `work`.
    sleeping: usize,
}

struct Job {
    /// The body, with its lifetime erased; valid until `finished == n` (the submitter waits for it).
    body: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    finished: AtomicUsize,
    panicked: AtomicBool,
    done: (Mutex<bool>, Condvar),
    /// The submitter sleeps on `done` (set and read under its lock): only then is it notified.
    sleeping: AtomicBool,
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
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let n = match std::env::var("ASCEND_SIM_THREADS") {
                Err(_) => cores,
                Ok(v) => match v.trim().parse::<usize>() {
                    Ok(n) if (1..=4096).contains(&n) => n,
                    _ => {
                        eprintln!("ascend-sim: warning: ASCEND_SIM_THREADS={v:?} is not a number in 1..=4096; using {cores}");
                        cores
                    }
                },
            };
            Pool::new(n)
        })
    }

    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            jobs: Mutex::new(Jobs { queue: Vec::new(), sleeping: 0 }),
            work: Condvar::new(),
            posted: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            spinning: AtomicUsize::new(0),
        });
        for i in 0..threads {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("ascend-pool-{i}"))
                .spawn(move || worker(&shared, threads))
                .expect("spawn pool thread");
        }
        Pool { threads, shared }
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `body(i)` for every `i` in `0..n` on the pool's threads and returns when all have finished.
    /// The calling thread runs one index, and more while every worker is idle (waking one takes a
    /// while), then waits: at most one index per caller runs beyond the pool size.
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
            sleeping: AtomicBool::new(false),
        });
        let wake = {
            let mut jobs = self.shared.jobs.lock().unwrap();
            jobs.queue.push(job.clone());
            self.shared.posted.fetch_add(1, Ordering::AcqRel);
            // Sleepers are woken only for indices that the caller and the spinning workers cannot
            // take at once (a needless wake-up may land on the caller's core and preempt it).
            jobs.sleeping > 0 && n > 1 + self.shared.spinning.load(Ordering::Acquire)
        };
        if wake {
            self.shared.work.notify_all();
        }
        // Waking a worker takes several microseconds (tens on a busy VM): the caller runs one
        // index itself, and more while every worker is idle, so a small job does not wait for
        // the wake-up. Once any worker runs, the caller only waits: each caller runs at most one
        // index beyond the pool's threads.
        let mut first = true;
        while std::mem::take(&mut first) || self.shared.active.load(Ordering::Acquire) == 0 {
            let i = job.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            IN_POOL.with(|c| c.set(true));
            run_index(&job, i);
            IN_POOL.with(|c| c.set(false));
        }
        // A worker busy with another job stopped the caller: make sure the rest does not wait for it.
        if job.next.load(Ordering::Relaxed) < n && self.shared.jobs.lock().unwrap().sleeping > 0 {
            self.shared.work.notify_all();
        }
        // With every index handed out, the rest finishes about now (small jobs): spin rather than
        // pay a wake-up. With indices still queued, sleep and leave the cores to the workers.
        let start = Instant::now();
        while job.next.load(Ordering::Relaxed) >= n
            && job.finished.load(Ordering::Acquire) < n
            && start.elapsed() < SPIN
        {
            std::hint::spin_loop();
            std::thread::yield_now();
        }
        let mut done = job.done.0.lock().unwrap();
        while !*done {
            job.sleeping.store(true, Ordering::Relaxed);
            done = job.done.1.wait(done).unwrap();
        }
        drop(done);
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a parallel_for body panicked");
        }
    }
}

fn worker(shared: &Shared, threads: usize) {
    IN_POOL.with(|c| c.set(true));
    loop {
        let job = next_job(shared, threads);
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

/// The oldest job with indices left. Without one, the worker spins for [`SPIN`] (if fewer than
/// `threads − 1` others do: the calling thread is the last participant), then sleeps.
fn next_job(shared: &Shared, threads: usize) -> Arc<Job> {
    let mut jobs = shared.jobs.lock().unwrap();
    let mut may_spin = true;
    loop {
        // Drop jobs whose indices are all handed out; take the oldest one with work left.
        jobs.queue.retain(|j| j.next.load(Ordering::Relaxed) < j.n);
        if let Some(j) = jobs.queue.first() {
            return j.clone();
        }
        if may_spin
            && shared
                .spinning
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| (s + 1 < threads).then_some(s + 1))
                .is_ok()
        {
            let seen = shared.posted.load(Ordering::Acquire);
            drop(jobs);
            let start = Instant::now();
            while shared.posted.load(Ordering::Acquire) == seen && start.elapsed() < SPIN {
                std::hint::spin_loop();
                std::thread::yield_now();
            }
            // After a post, spin again if that job is already gone; after a quiet spell, sleep.
            may_spin = shared.posted.load(Ordering::Acquire) != seen;
            shared.spinning.fetch_sub(1, Ordering::AcqRel);
            jobs = shared.jobs.lock().unwrap();
            continue;
        }
        jobs.sleeping += 1;
        jobs = shared.work.wait(jobs).unwrap();
        jobs.sleeping -= 1;
        may_spin = true;
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
        let mut done = job.done.0.lock().unwrap();
        *done = true;
        if job.sleeping.load(Ordering::Relaxed) {
            job.done.1.notify_all();
        }
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
    fn small_jobs_from_several_callers_all_finish_whether_workers_spin_or_sleep() {
        // Pauses longer than SPIN let the workers fall asleep between bursts; a lost wake-up would
        // hang a caller, which the watchdog turns into a failure.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = Pool::new(2);
            let total = AtomicUsize::new(0);
            std::thread::scope(|s| {
                for _ in 0..3 {
                    s.spawn(|| {
                        for i in 0..3000 {
                            pool.parallel_for(2 + i % 3, &|_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            });
                            if i % 200 == 0 {
                                std::thread::sleep(SPIN * 4);
                            }
                        }
                    });
                }
            });
            tx.send(total.load(Ordering::Relaxed)).unwrap();
        });
        let total = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("every job finished");
        assert_eq!(total, 3 * (0..3000).map(|i| 2 + i % 3).sum::<usize>());
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
