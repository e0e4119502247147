//! State shared between the handles and the engine thread: a few atomics, nothing else.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::api::EngineStats;

/// Counters the engine thread publishes after each step, and the admission counter `submit`
/// reserves from. Engine state itself never sits behind a lock (the LoRA id lists are a
/// published copy, like the counters).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) total_blocks: usize,
    pub(crate) free_blocks: AtomicUsize,
    /// The window pool's blocks (0 without one), and its free ones.
    pub(crate) total_window_blocks: usize,
    pub(crate) free_window_blocks: AtomicUsize,
    pub(crate) block_size: usize,
    /// KV bytes per position in the main and the window pool (0 = unknown).
    pub(crate) bytes_per_token: (usize, usize),
    pub(crate) cached_free_blocks: AtomicUsize,
    pub(crate) running_seqs: AtomicUsize,
    /// Requests submitted (or preempted) and not yet admitted. `submit` increments it, so
    /// requests still in the command channel count too.
    pub(crate) waiting: AtomicUsize,
    pub(crate) steps: AtomicU64,
    pub(crate) preemptions: AtomicU64,
    pub(crate) prefix_queries: AtomicU64,
    pub(crate) prefix_hits: AtomicU64,
    pub(crate) kv_events_dropped: AtomicU64,
    /// The engine thread is alive.
    pub(crate) running: AtomicBool,
    /// `shutdown` has not been called.
    pub(crate) accepting: AtomicBool,
    /// LoRA adapter ids of running and (only) waiting requests, as last published.
    loras: Mutex<(Vec<u32>, Vec<u32>)>,
}

impl Shared {
    pub(crate) fn new(
        total_blocks: usize,
        total_window_blocks: usize,
        block_size: usize,
        bytes_per_token: (usize, usize),
    ) -> Shared {
        Shared {
            total_blocks,
            free_blocks: AtomicUsize::new(total_blocks),
            total_window_blocks,
            free_window_blocks: AtomicUsize::new(total_window_blocks),
            block_size,
            bytes_per_token,
            cached_free_blocks: AtomicUsize::new(0),
            running_seqs: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            steps: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_queries: AtomicU64::new(0),
            prefix_hits: AtomicU64::new(0),
            kv_events_dropped: AtomicU64::new(0),
            running: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            loras: Mutex::new((Vec::new(), Vec::new())),
        }
    }

    /// Takes one waiting slot if fewer than `max_waiting` are taken; else how many are.
    pub(crate) fn reserve_waiting(&self, max_waiting: usize) -> Result<(), usize> {
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max_waiting).then_some(w + 1)
            })
            .map(|_| ())
    }

    /// `n` requests left the waiting queue (admitted, ended or aborted).
    pub(crate) fn left_waiting(&self, n: usize) {
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                Some(w.saturating_sub(n))
            });
    }

    /// `n` requests went back to the waiting queue (preempted).
    pub(crate) fn rejoined_waiting(&self, n: usize) {
        self.waiting.fetch_add(n, Ordering::AcqRel);
        self.preemptions.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Admissions looked up `queried` prompt tokens in the prefix cache; `hits` were reused.
    pub(crate) fn prefix_queried(&self, queried: usize, hits: usize) {
        self.prefix_queries
            .fetch_add(queried as u64, Ordering::Relaxed);
        self.prefix_hits.fetch_add(hits as u64, Ordering::Relaxed);
    }

    /// Publishes the LoRA ids of running and waiting requests (a copy, replaced when changed).
    pub(crate) fn publish_loras(&self, running: Vec<u32>, waiting: Vec<u32>) {
        let mut l = self.loras.lock().unwrap_or_else(|e| e.into_inner());
        if l.0 != running || l.1 != waiting {
            *l = (running, waiting);
        }
    }

    pub(crate) fn snapshot(&self) -> EngineStats {
        let (running_loras, waiting_loras) =
            self.loras.lock().unwrap_or_else(|e| e.into_inner()).clone();
        EngineStats {
            running_loras,
            waiting_loras,
            total_blocks: self.total_blocks,
            free_blocks: self.free_blocks.load(Ordering::Acquire),
            total_window_blocks: self.total_window_blocks,
            free_window_blocks: self.free_window_blocks.load(Ordering::Acquire),
            block_size: self.block_size,
            kv_bytes_per_token: self.bytes_per_token.0,
            kv_window_bytes_per_token: self.bytes_per_token.1,
            cached_free_blocks: self.cached_free_blocks.load(Ordering::Acquire),
            running_seqs: self.running_seqs.load(Ordering::Acquire),
            waiting_requests: self.waiting.load(Ordering::Acquire),
            steps: self.steps.load(Ordering::Acquire),
            preemptions: self.preemptions.load(Ordering::Acquire),
            prefix_cache_queries_tokens: self.prefix_queries.load(Ordering::Acquire),
            prefix_cache_hit_tokens: self.prefix_hits.load(Ordering::Acquire),
            kv_event_batches_dropped: self.kv_events_dropped.load(Ordering::Acquire),
        }
    }
}

/// Marks the engine stopped when the engine thread ends, even by a panic.
pub(crate) struct RunningGuard<'a>(pub(crate) &'a Shared);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.accepting.store(false, Ordering::Release);
        self.0.running.store(false, Ordering::Release);
    }
}
