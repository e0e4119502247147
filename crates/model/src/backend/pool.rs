//! One persistent compute thread pool, sized to the cores. The calling thread takes part, so a
//! pool of `n` threads runs `n - 1` workers. Tasks are handed out dynamically (an atomic
//! counter), so a thread slowed by another process simply takes fewer tasks: the result does
//! not depend on which thread ran which task. Idle workers spin briefly, then sleep on a condvar
//! (no endless spinning that would starve a busy machine).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// The current job (a lifetime-erased pointer, valid while `run` waits for it).
    job: UnsafeCell<*const Job>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    /// The job state: generation in the high 32 bits, [`CLOSED`] once the caller stops letting
    /// workers in, and in the low bits the number of workers inside the job. A worker that
    /// has not entered when the job closes skips it, so the caller never waits for a worker
    /// that is asleep or descheduled and has no task.
    state: AtomicU64,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// A worker's task panicked during the current run.
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `run` while no worker reads it (all workers are idle, waiting
// for the next generation), and read by workers only after they observe the new generation.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Iterations a worker spins waiting for work before it sleeps.
const SPIN: u32 = 2_000;

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serializes `run` calls (the pool runs one job at a time) and holds the contention state.
    running: Mutex<Contention>,
}

/// Raises the calling thread's nice value by `by` (up to 19; Linux keeps one per thread): a
/// lower priority against this process's other threads (the HTTP workers) and other processes,
/// so they preempt it at once when they wake. Raising is always allowed; elsewhere than Linux
/// it is an error.
pub fn raise_thread_nice(by: i32) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let nice = (thread_nice() + by.max(0)).min(19);
        // SAFETY: plain system call; `who` 0 is the calling thread under Linux's threads.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = by;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "per-thread nice values are Linux only",
        ))
    }
}

/// The calling thread's nice value (Linux; 0 elsewhere).
pub fn thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system call. -1 is also a valid value, so errno is cleared first.
        unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, 0)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

impl ThreadPool {
    /// A pool of `threads` threads in all (the caller counts as one); 0 = available cores.
    pub fn new(threads: usize) -> ThreadPool {
        ThreadPool::with_nice(threads, 0)
    }

    /// As [`ThreadPool::new`], its own threads' nice value raised by `nice` over the caller's
    /// (see [`raise_thread_nice`]; the caller's thread is left as it is).
    pub fn with_nice(threads: usize, nice: i32) -> ThreadPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let noop: &Job = &|_, _| {};
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(noop as *const Job),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            state: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..threads)
            .map(|id| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("cordial-compute-{id}"))
                    .spawn(move || {
                        if nice != 0 {
                            // Raising one's own nice value is always allowed on Linux, and the
                            // server refuses a nonzero value elsewhere: nothing to report.
                            let _ = raise_thread_nice(nice);
                        }
                        worker(s, id)
                    })
                    .expect("spawn compute thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            running: Mutex::new(Contention::default()),
        }
    }

    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(task, thread)` for every `task` in `0..n_tasks`, spread over the pool; returns
    /// when all are done. `thread` is in `0..threads()` (for per-thread scratch).
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(|t| f(t, 0));
            return;
        }
        let mut state = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if state.solo_left > 0 {
            // Another process is using our cores: run alone rather than wait for descheduled
            // workers at every step (the results do not depend on which thread runs a task).
            state.solo_left -= 1;
            (0..n_tasks).for_each(|t| f(t, 0));
            return;
        }
        let s = &*self.shared;
        // SAFETY: erase the lifetime; we do not return before every worker is done with `f`.
        let short: *const (dyn Fn(usize, usize) + Sync + '_) = f;
        let ptr: *const Job = unsafe {
            std::mem::transmute::<*const (dyn Fn(usize, usize) + Sync + '_), *const Job>(short)
        };
        // SAFETY: no worker is inside a job (the previous run waited for the count to be 0,
        // and a closed job admits nobody).
        unsafe { *s.job.get() = ptr };
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        let generation = ((s.state.load(Ordering::Relaxed) >> 32) + 1) & 0xFFFF_FFFF;
        s.state.store(generation << 32, Ordering::Release);
        if s.sleepers.load(Ordering::Acquire) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let start = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f, 0)));
        let own_done = std::time::Instant::now();
        let own = own_done - start;
        // Every task is claimed: close the job, then wait only for workers inside it.
        s.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while s.state.load(Ordering::Acquire) & INSIDE != 0 {
            spins += 1;
            if spins < 1000 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let mean_task = own / (*result.as_ref().unwrap_or(&1)).max(1) as u32;
        state.record(own_done.elapsed(), mean_task);
        if let Err(p) = result {
            s.panicked.store(false, Ordering::Relaxed);
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a compute task panicked on a worker thread");
        }
    }
}

/// Bit of [`Shared::state`]: the job admits no more workers.
const CLOSED: u64 = 1 << 31;
/// Bits of [`Shared::state`]: workers inside the job.
const INSIDE: u64 = CLOSED - 1;

/// A wait for workers, after our own share of a job is done, longer than this plus a few
/// task lengths means a worker was descheduled (a worker that is running finishes its last
/// task within one task length).
const STRAGGLE: std::time::Duration = std::time::Duration::from_micros(2000);
/// Straggling runs in the recent window that switch the pool to running alone.
const STRAGGLE_LIMIT: u32 = 4;
/// Runs in the window.
const WINDOW: u32 = 64;
/// Runs done alone before trying the workers again.
const SOLO_RUNS: u32 = 4096;

/// Detects another process competing for our cores, from how long the caller waits for
/// workers at the end of each run.
#[derive(Default)]
struct Contention {
    runs: u32,
    straggles: u32,
    solo_left: u32,
    /// Times the pool switched to running alone (for tests and logs).
    solo_switches: u64,
}

impl Contention {
    fn record(&mut self, waited: std::time::Duration, mean_task: std::time::Duration) {
        self.runs += 1;
        if waited >= STRAGGLE + 4 * mean_task {
            self.straggles += 1;
        }
        if self.straggles >= STRAGGLE_LIMIT {
            self.solo_left = SOLO_RUNS;
            self.solo_switches += 1;
            self.runs = 0;
            self.straggles = 0;
        } else if self.runs >= WINDOW {
            self.runs = 0;
            self.straggles = 0;
        }
    }
}

impl ThreadPool {
    /// How often the pool has switched to running alone because workers were descheduled.
    pub fn solo_switches(&self) -> u64 {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .solo_switches
    }
}

/// Runs tasks until none are left; returns how many this thread ran.
fn run_tasks(s: &Shared, f: &(dyn Fn(usize, usize) + Sync + '_), thread: usize) -> usize {
    let n = s.n_tasks.load(Ordering::Relaxed);
    let mut ran = 0;
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= n {
            break;
        }
        f(t, thread);
        ran += 1;
    }
    ran
}

fn worker(s: Arc<Shared>, id: usize) {
    let generation = |s: &Shared| s.state.load(Ordering::Acquire) >> 32;
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Ordering::Acquire) {
                return;
            }
            if generation(&s) != seen {
                break;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::AcqRel);
            while generation(&s) == seen && !s.shutdown.load(Ordering::Acquire) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::AcqRel);
            drop(g);
        }
        // Enter the job unless it is already closed (then all its tasks are claimed).
        let mut st = s.state.load(Ordering::Acquire);
        seen = st >> 32;
        let entered = loop {
            if st & CLOSED != 0 || st >> 32 != seen {
                break false;
            }
            match s
                .state
                .compare_exchange_weak(st, st + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break true,
                Err(now) => st = now,
            }
        };
        if !entered {
            continue;
        }
        // SAFETY: the job pointer was published before the state we entered, and the caller
        // does not return while we are inside.
        let f: &Job = unsafe { &**s.job.get() };
        // A panicking task must not kill the worker: the caller re-raises it after the run.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(&s, f, id))).is_err()
        {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.state.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A raw pointer that tasks may share to write disjoint parts of one buffer.
#[derive(Clone, Copy)]
pub struct SyncPtr<T>(pub *mut T);
// SAFETY: users guarantee disjoint writes per task.
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline]
    pub fn get(&self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_every_task_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|t, th| {
                assert!(th < 3);
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n}");
        }
    }

    #[test]
    fn many_runs_after_sleeping() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for i in 0..200 {
            if i % 50 == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5)); // workers fall asleep
            }
            pool.run(4, &|_, _| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 800);
    }

    #[test]
    fn a_descheduled_worker_switches_the_pool_to_running_alone() {
        let pool = ThreadPool::new(2);
        let ran = AtomicUsize::new(0);
        let on_worker_before = AtomicUsize::new(0);
        // The worker (thread 1) stalls in each task, as if another process held its core. A
        // run the worker joins too late (woken slowly on a loaded machine) does not straggle,
        // so there may be a few more runs than the limit before the switch.
        let mut rounds = 0;
        while pool.solo_switches() == 0 && rounds < 4 * STRAGGLE_LIMIT {
            rounds += 1;
            pool.run(8, &|_, th| {
                // Every task takes a while, so the worker gets some; the worker's are slow.
                std::thread::sleep(std::time::Duration::from_micros(300));
                if th == 1 {
                    on_worker_before.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(STRAGGLE * 20);
                }
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(ran.load(Ordering::Relaxed), 8 * rounds as usize);
        assert!(on_worker_before.load(Ordering::Relaxed) >= STRAGGLE_LIMIT as usize);
        assert_eq!(pool.solo_switches(), 1);
        // Alone, every task runs on the caller.
        let on_worker = AtomicUsize::new(0);
        pool.run(16, &|_, th| {
            on_worker.fetch_add(th, Ordering::Relaxed);
        });
        assert_eq!(on_worker.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn caller_panic_propagates_and_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(64, &|t, _| {
                if t == 0 {
                    panic!("boom")
                }
            })
        }));
        assert!(
            r.is_err(),
            "the panic reaches the caller wherever the task ran"
        );
        let total = AtomicUsize::new(0);
        pool.run(10, &|_, _| {
            total.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 10);
    }

    /// The pool's own threads take its nice value; the caller's thread keeps its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn pool_threads_take_the_nice_value_and_the_caller_keeps_its_own() {
        std::thread::spawn(|| {
            let before = super::thread_nice();
            let pool = ThreadPool::with_nice(2, 3);
            let seen = Mutex::new(Vec::new());
            pool.run(64, &|_, thread| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                seen.lock().unwrap().push((thread, super::thread_nice()));
            });
            let seen = seen.into_inner().unwrap();
            assert!(
                seen.iter().any(|&(t, _)| t != 0),
                "no task ran on the worker"
            );
            for (thread, nice) in seen {
                let want = if thread == 0 {
                    before
                } else {
                    (before + 3).min(19)
                };
                assert_eq!(nice, want, "thread {thread}");
            }
            super::raise_thread_nice(1).unwrap();
            assert_eq!(super::thread_nice(), (before + 1).min(19));
        })
        .join()
        .unwrap();
    }
}
