//! EngineCore: the engine thread's loop. It owns the scheduler, the block allocator, the sampler
//! and the model; other threads reach it only through [`Command`]s and per-request event
//! channels.
//!
//! Each turn of the loop: take commands (blocking only when there is no work), then one
//! [`step`](EngineCore::step) = schedule → execute (one forward) → sample → update → emit, then
//! publish stats. Aborts and new requests are thus applied at one point between steps.

mod command;
mod masks;
mod step;
#[cfg(test)]
mod tests;

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;

pub(crate) use command::Command;

use crate::api::{
    EngineConfig, EngineError, EngineRequest, Event, FinishReason, KvEventBatch, KvEventSender,
};
use crate::kv::BlockAllocator;
use crate::model::ModelExecutor;
use crate::sample::Sampler;
use crate::sched::{Place, Scheduler, SchedulerConfig};
use crate::seq::{RequestId, SequenceGroup};
use crate::shared::{RunningGuard, Shared};

/// The model's fixed sizes, read once at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ModelShape {
    pub(crate) vocab_size: usize,
    pub(crate) max_context: usize,
    pub(crate) block_size: usize,
}

impl ModelShape {
    pub(crate) fn of(model: &dyn ModelExecutor) -> ModelShape {
        ModelShape {
            vocab_size: model.vocab_size(),
            max_context: model.max_context(),
            block_size: model.block_size(),
        }
    }
}

/// The state of the engine thread.
pub(crate) struct EngineCore {
    model: Box<dyn ModelExecutor>,
    shape: ModelShape,
    blocks: BlockAllocator,
    scheduler: Scheduler,
    sampler: Sampler,
    /// Logits of the last forward, `vocab_size` per row.
    logits: Vec<f32>,
    steps: u64,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
    /// Where the prefix cache's changes go (`EngineConfig::kv_events`).
    kv_events: Option<KvEventSender>,
    /// The sequence number of the next KV-event batch.
    kv_seq: u64,
}

impl EngineCore {
    pub(crate) fn new(
        model: Box<dyn ModelExecutor>,
        config: &EngineConfig,
        sampler: Sampler,
        commands: Receiver<Command>,
        shared: Arc<Shared>,
    ) -> EngineCore {
        let shape = ModelShape::of(model.as_ref());
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: config.max_num_seqs.max(1),
            max_prefill_tokens: config.max_prefill_tokens.max(1),
            block_size: shape.block_size,
            max_loras: config.max_loras,
        });
        let mut blocks = BlockAllocator::with_window(
            model.num_blocks(),
            config.enable_prefix_caching,
            model.window_pool(),
        )
        .with_hash_seed(&config.prefix_hash_seed);
        if config.kv_events.is_some() {
            blocks = blocks.recording_events();
        }
        EngineCore {
            model,
            shape,
            blocks,
            scheduler,
            sampler,
            logits: Vec::new(),
            steps: 0,
            commands,
            shared,
            kv_events: config.kv_events.clone(),
            kv_seq: 0,
        }
    }

    /// The loop; returns when shut down or when every handle and stream is gone.
    pub(crate) fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let _guard = RunningGuard(&shared);
        self.model.on_engine_thread();
        tracing::info!(blocks = self.blocks.total(), "engine thread started");
        while self.take_commands().is_continue() {
            if !self.scheduler.is_idle() {
                self.step_isolated();
            }
            // Events first: stats that show a step's effects come after its events.
            self.send_kv_events();
            self.publish();
        }
        self.shut_down();
        tracing::info!("engine thread stopped");
    }

    /// Applies queued commands; blocks for the first one when there is no work. Break means
    /// stop (shutdown asked, or no sender left).
    fn take_commands(&mut self) -> ControlFlow<()> {
        if self.scheduler.is_idle() {
            match self.commands.recv() {
                Ok(cmd) => self.apply(cmd)?,
                Err(_) => return ControlFlow::Break(()),
            }
        }
        loop {
            match self.commands.try_recv() {
                Ok(cmd) => self.apply(cmd)?,
                Err(TryRecvError::Empty) => return ControlFlow::Continue(()),
                Err(TryRecvError::Disconnected) => return ControlFlow::Break(()),
            }
        }
    }

    fn apply(&mut self, cmd: Command) -> ControlFlow<()> {
        match cmd {
            Command::Add {
                id,
                request,
                events,
            } => self.add(id, *request, events),
            Command::Abort { id } => self.abort(id),
            Command::StopChoice { id, choice } => self.stop_choice(id, choice),
            Command::Shutdown => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn add(&mut self, id: RequestId, request: EngineRequest, events: EventSender) {
        let mut group = SequenceGroup::new(id, request, events);
        let bs = self.shape.block_size;
        let (mut needed, mut total) = (
            group.max_blocks(bs, self.shape.max_context),
            self.blocks.total(),
        );
        if let Some(w) = self.blocks.window() {
            // A sequence's window entries are a subset of its main entries, shared and copied
            // alike, so the window pool never holds more than the main pool would.
            let window = group
                .max_window_blocks(bs, w.window, self.scheduler.max_prefill_tokens())
                .min(needed);
            if needed <= total && window > w.pool.total() {
                (needed, total) = (window, w.pool.total());
            }
        }
        if group.params.max_new_tokens == 0 && !group.params.prompt_logprobs {
            finish_without_tokens(&mut group);
        } else if needed > total {
            group.fail(EngineError::TooLarge { needed, total });
        } else {
            self.scheduler.push_waiting(group);
            return;
        }
        self.shared.left_waiting(1);
    }

    fn abort(&mut self, id: RequestId) {
        let place = self.scheduler.abort(id, &mut self.blocks);
        if place == Some(Place::Waiting) {
            self.shared.left_waiting(1);
        }
        if place.is_some() {
            tracing::debug!(request = id, "aborted");
        }
    }

    /// Ends one choice early (see `Command::StopChoice`); the request ends when it was its last.
    fn stop_choice(&mut self, id: RequestId, choice: usize) {
        let Some(group) = self.scheduler.find_mut(id) else {
            return;
        };
        let mut events = Vec::new();
        if !group.stop_choice(choice, &mut events) {
            return;
        }
        group.choices[choice].blocks.release(&mut self.blocks);
        group.finish_if_done(&mut events);
        group.send_all(events);
        let (gone, waiting) = self.scheduler.remove_where(|g| g.done, &mut self.blocks);
        self.shared.left_waiting(waiting);
        if !gone.is_empty() {
            tracing::debug!(request = id, "finished by stop phrase");
        }
    }

    /// Ends every request whose deadline passed with `EngineError::Timeout`, freeing its blocks.
    fn expire(&mut self, now: std::time::Instant) {
        let (expired, waiting) = self
            .scheduler
            .remove_where(|g| g.expired(now) && !g.done, &mut self.blocks);
        self.shared.left_waiting(waiting);
        for mut group in expired {
            tracing::debug!(request = group.id, "timed out");
            group.fail(EngineError::Timeout);
        }
    }

    /// One step; a panic inside it (a bug, or a panicking model) fails the running requests
    /// instead of killing the thread, and the engine goes on with a fresh block allocator.
    fn step_isolated(&mut self) {
        if catch_unwind(AssertUnwindSafe(|| self.step())).is_ok() {
            return;
        }
        tracing::error!("engine step panicked; failing the running requests");
        let err = EngineError::Model("internal engine error".to_string());
        for mut group in std::mem::take(&mut self.scheduler.running) {
            if !group.done {
                group.fail(err.clone());
            }
        }
        // Waiting groups hold no blocks, so every block is free now; the prefix cache is
        // dropped too, since a block the failed step was writing may be registered.
        self.blocks = self.blocks.fresh();
    }

    fn publish(&self) {
        let s = &self.shared;
        s.free_blocks
            .store(self.blocks.num_free(), Ordering::Release);
        s.cached_free_blocks
            .store(self.blocks.num_cached_free(), Ordering::Release);
        if let Some(w) = self.blocks.window() {
            s.free_window_blocks
                .store(w.pool.num_free(), Ordering::Release);
        }
        s.running_seqs
            .store(self.scheduler.running_seqs(), Ordering::Release);
        s.steps.store(self.steps, Ordering::Release);
        s.publish_loras(
            self.scheduler.running_loras(),
            self.scheduler.waiting_loras(),
        );
    }

    /// Sends the prefix cache's changes since the last call as one batch, without waiting: a
    /// batch that does not fit in the channel is dropped and counted (its number is skipped).
    fn send_kv_events(&mut self) {
        let Some(sender) = &self.kv_events else {
            return;
        };
        let events = self.blocks.take_events();
        if events.is_empty() {
            return;
        }
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let batch = KvEventBatch {
            seq: self.kv_seq,
            ts,
            events,
        };
        self.kv_seq += 1;
        if sender.try_send(batch).is_err() {
            self.shared
                .kv_events_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends every request with `ShuttingDown`, including those still in the channel.
    fn shut_down(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
        for mut group in self.scheduler.take_all(&mut self.blocks) {
            group.fail(EngineError::ShuttingDown);
        }
        while let Ok(cmd) = self.commands.try_recv() {
            if let Command::Add { events, .. } = cmd {
                let _ = events.send(Event::Error(EngineError::ShuttingDown));
            }
        }
        self.shared.waiting.store(0, Ordering::Release);
        self.send_kv_events();
        self.publish();
    }
}

type EventSender = tokio::sync::mpsc::UnboundedSender<Event>;

/// `max_new_tokens == 0` (and no prompt to score): every choice ends at once with `Length`.
fn finish_without_tokens(group: &mut SequenceGroup) {
    for choice in 0..group.reported_choices() {
        let _ = group.send(Event::ChoiceFinished {
            choice,
            reason: FinishReason::Length,
        });
    }
    let prompt_tokens = group.prompt.len();
    let _ = group.send(Event::Finished {
        prompt_tokens,
        completion_tokens: 0,
    });
    group.done = true;
}
