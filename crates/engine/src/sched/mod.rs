//! The scheduler: decides each step which sequences run and with how many tokens.
//!
//! [`Scheduler::schedule`] runs two named policies, in this order:
//!
//! 1. `schedule_running`: every running group, oldest first, gets its decodes and (under the
//!    prefill budget) its next prefill chunk. A group is scheduled whole or not at all: its block
//!    need is counted first, per pool ([`plan::blocks_needed`]; the window pool's too, for
//!    models that keep their sliding-window layers apart); when blocks are short, the NEWEST running
//!    group is preempted (all its blocks freed, put back at the front of the waiting queue, to
//!    be recomputed later) until the need fits, which may be the group itself. The oldest group
//!    can always run, since no admitted request needs more blocks than the cache holds
//!    (`EngineError::TooLarge` otherwise), so this never deadlocks.
//! 2. `admit_waiting` (only when nothing was preempted this step): waiting groups join in FIFO
//!    order while `max_num_seqs`, the prefill budget and the free blocks allow. A group is
//!    admitted only if, after its first chunk, a reserve of one block per running sequence stays
//!    free in each pool, so that admissions rarely force a preemption at the next decode. Before its plan is
//!    counted, a group takes the cached blocks its prompt starts with (prefix caching), so its
//!    first chunk starts after them and they count neither against the budget nor as new
//!    blocks; a group that is not admitted gives them back at once. A group whose LoRA
//!    adapters would make the running groups use more than `max_loras` distinct adapters waits
//!    (keeping its place) until one frees up, and later groups that fit go first (as in vLLM).
//!
//! The output is a plain value: the chunks to run (in batch order) and the block copies the
//! model must make before the forward.

mod budget;
mod plan;

use std::collections::VecDeque;

use crate::kv::{BlockAllocator, BlockCopies, Need};
use crate::seq::{RequestId, SequenceGroup, Target};
use budget::TokenBudget;
use plan::{blocks_needed, plan_group, Planned};

/// The scheduler's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SchedulerConfig {
    pub(crate) max_num_seqs: usize,
    pub(crate) max_prefill_tokens: usize,
    pub(crate) block_size: usize,
    /// Most distinct LoRA adapters among running groups (0 = no limit).
    pub(crate) max_loras: usize,
}

/// One sequence's share of the step: `len` tokens of `target` of `running[group]` from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ScheduledChunk {
    pub(crate) group: usize,
    pub(crate) target: Target,
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) want_logits: bool,
    /// A logits row for every token of the chunk (prompt log-probabilities).
    pub(crate) all_logits: bool,
}

impl ScheduledChunk {
    /// Logits rows the forward returns for this chunk.
    pub(crate) fn rows(&self) -> usize {
        if self.all_logits {
            self.len
        } else {
            usize::from(self.want_logits)
        }
    }
}

/// What [`Scheduler::schedule`] decided.
#[derive(Debug, Default)]
pub(crate) struct SchedulerOutput {
    /// The batch; a group's chunks are adjacent.
    pub(crate) chunks: Vec<ScheduledChunk>,
    /// `(src, dst)` block copies (copy-on-write) to make before the forward, in order, per pool.
    pub(crate) copies: BlockCopies,
    /// Groups that left the waiting queue this step.
    pub(crate) admitted: usize,
    /// Groups preempted back into the waiting queue this step.
    pub(crate) preempted: usize,
    /// Prompt tokens of the groups admitted this step, when prefix caching is on.
    pub(crate) prefix_query_tokens: usize,
    /// Of those, the tokens reused from the prefix cache instead of computed.
    pub(crate) prefix_hit_tokens: usize,
}

/// Where an aborted request was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Waiting,
    Running,
}

/// The waiting queue (FIFO) and the running groups (in admission order).
#[derive(Debug)]
pub(crate) struct Scheduler {
    config: SchedulerConfig,
    waiting: VecDeque<SequenceGroup>,
    pub(crate) running: Vec<SequenceGroup>,
}

impl Scheduler {
    pub(crate) fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    pub(crate) fn max_prefill_tokens(&self) -> usize {
        self.config.max_prefill_tokens
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Live sequences of running groups (a group still in prefill counts all its choices).
    pub(crate) fn running_seqs(&self) -> usize {
        self.running.iter().map(SequenceGroup::num_live).sum()
    }

    pub(crate) fn push_waiting(&mut self, group: SequenceGroup) {
        self.waiting.push_back(group);
    }

    /// Removes request `id`, freeing its blocks; where it was, if found.
    pub(crate) fn abort(&mut self, id: RequestId, alloc: &mut BlockAllocator) -> Option<Place> {
        if let Some(pos) = self.waiting.iter().position(|g| g.id == id) {
            let mut group = self.waiting.remove(pos)?;
            group.release_blocks(alloc);
            return Some(Place::Waiting);
        }
        let pos = self.running.iter().position(|g| g.id == id)?;
        self.running.remove(pos).release_blocks(alloc);
        Some(Place::Running)
    }

    /// The group of request `id`, running or waiting.
    pub(crate) fn find_mut(&mut self, id: RequestId) -> Option<&mut SequenceGroup> {
        self.running
            .iter_mut()
            .chain(self.waiting.iter_mut())
            .find(|g| g.id == id)
    }

    /// Takes out the groups `pred` selects (waiting ones first), with their blocks freed, and
    /// how many of them were waiting.
    pub(crate) fn remove_where(
        &mut self,
        pred: impl Fn(&SequenceGroup) -> bool,
        alloc: &mut BlockAllocator,
    ) -> (Vec<SequenceGroup>, usize) {
        let mut out = Vec::new();
        let (kept, taken): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|g| !pred(g));
        self.waiting = kept;
        let from_waiting = taken.len();
        out.extend(taken);
        let (kept, taken): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|g| !pred(g));
        self.running = kept;
        out.extend(taken);
        for group in &mut out {
            group.release_blocks(alloc);
        }
        (out, from_waiting)
    }

    /// Takes every group out (waiting ones first), with its blocks freed.
    pub(crate) fn take_all(&mut self, alloc: &mut BlockAllocator) -> Vec<SequenceGroup> {
        let mut all: Vec<SequenceGroup> = self.waiting.drain(..).collect();
        all.append(&mut self.running);
        for group in &mut all {
            group.release_blocks(alloc);
        }
        all
    }

    /// Drops the running groups marked done, freeing their blocks.
    pub(crate) fn remove_done(&mut self, alloc: &mut BlockAllocator) {
        self.running.retain_mut(|g| {
            if g.done {
                g.release_blocks(alloc);
            }
            !g.done
        });
    }

    /// Plans the next step (see the module docs).
    pub(crate) fn schedule(&mut self, alloc: &mut BlockAllocator) -> SchedulerOutput {
        let mut out = SchedulerOutput::default();
        let mut budget = TokenBudget::new(self.config.max_prefill_tokens.max(1));
        self.schedule_running(alloc, &mut budget, &mut out);
        if out.preempted == 0 {
            self.admit_waiting(alloc, &mut budget, &mut out);
        }
        out
    }

    fn schedule_running(
        &mut self,
        alloc: &mut BlockAllocator,
        budget: &mut TokenBudget,
        out: &mut SchedulerOutput,
    ) {
        let mut i = 0;
        while i < self.running.len() {
            let mut trial = *budget;
            let plan = plan_group(&self.running[i], &mut trial);
            if plan.is_empty() {
                i += 1;
                continue;
            }
            let need = blocks_needed(&self.running[i], &plan, self.config.block_size, alloc);
            if !self.make_room(i, need, alloc, out) {
                break; // group `i` was the newest and is preempted itself
            }
            if self.apply(i, &plan, alloc, out) {
                *budget = trial;
                i += 1;
            }
        }
    }

    fn admit_waiting(
        &mut self,
        alloc: &mut BlockAllocator,
        budget: &mut TokenBudget,
        out: &mut SchedulerOutput,
    ) {
        let block_size = self.config.block_size;
        let mut loras = self.running_loras();
        let mut i = 0;
        loop {
            let running_seqs = self.running_seqs();
            let Some(group) = self.waiting.get_mut(i) else {
                break;
            };
            if budget.is_spent() {
                break;
            }
            if !fits_loras(&loras, &group.lora, self.config.max_loras) {
                i += 1; // waits for a running adapter to finish; later requests may fit
                continue;
            }
            let seqs_after = running_seqs + group.num_live();
            if !self.running.is_empty() && seqs_after > self.config.max_num_seqs {
                break;
            }
            let hit = group.attach_cached_prefix(alloc, block_size);
            let mut trial = *budget;
            let plan = plan_group(group, &mut trial);
            let need = blocks_needed(group, &plan, block_size, alloc);
            let reserve = if self.running.is_empty() {
                0
            } else {
                seqs_after
            };
            if plan.is_empty() || !alloc.fits(need, reserve) {
                group.detach_cached_prefix(alloc);
                break;
            }
            if alloc.prefix_caching() {
                out.prefix_query_tokens += group.prompt.len();
                out.prefix_hit_tokens += hit;
            }
            let Some(group) = self.waiting.remove(i) else {
                break;
            };
            add_loras(&mut loras, &group.lora);
            tracing::debug!(request = group.id, cached_tokens = hit, "admitted");
            self.running.push(group);
            out.admitted += 1;
            if self.apply(self.running.len() - 1, &plan, alloc, out) {
                *budget = trial;
            }
        }
    }

    /// The distinct LoRA adapter ids of the running groups, sorted.
    pub(crate) fn running_loras(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for g in &self.running {
            add_loras(&mut ids, &g.lora);
        }
        ids
    }

    /// The distinct LoRA adapter ids of the waiting groups that no running group uses, sorted.
    pub(crate) fn waiting_loras(&self) -> Vec<u32> {
        let running = self.running_loras();
        let mut ids = Vec::new();
        for g in &self.waiting {
            add_loras(&mut ids, &g.lora);
        }
        ids.retain(|id| running.binary_search(id).is_err());
        ids
    }

    /// Preempts the newest running groups until `need` blocks are free in each pool. False when
    /// group `i` itself had to be preempted.
    fn make_room(
        &mut self,
        i: usize,
        need: Need,
        alloc: &mut BlockAllocator,
        out: &mut SchedulerOutput,
    ) -> bool {
        while !alloc.fits(need, 0) {
            let newest = self.running.len() - 1;
            self.preempt(newest, alloc);
            out.preempted += 1;
            if newest == i {
                return false;
            }
        }
        true
    }

    /// Allocates the blocks of group `i`'s plan and adds its chunks to the batch. Counting and
    /// allocating agree, so this succeeds; if they ever did not, the group is preempted (and
    /// false returned) rather than run with a short block table.
    fn apply(
        &mut self,
        i: usize,
        plan: &[Planned],
        alloc: &mut BlockAllocator,
        out: &mut SchedulerOutput,
    ) -> bool {
        let block_size = self.config.block_size;
        let first_chunk = out.chunks.len();
        let group = &mut self.running[i];
        for p in plan {
            let range = (p.start, p.start + p.len);
            let table = group.table_mut(p.target);
            if table
                .prepare_write(range, block_size, alloc, &mut out.copies)
                .is_err()
            {
                tracing::error!(request = group.id, "block count and allocation disagree");
                debug_assert!(false, "block count and allocation disagree");
                out.chunks.truncate(first_chunk);
                self.preempt(i, alloc);
                out.preempted += 1;
                return false;
            }
            out.chunks.push(ScheduledChunk {
                group: i,
                target: p.target,
                start: p.start,
                len: p.len,
                want_logits: p.want_logits,
                all_logits: p.all_logits,
            });
        }
        true
    }

    /// Frees group `i`'s blocks and puts it back at the front of the waiting queue.
    fn preempt(&mut self, i: usize, alloc: &mut BlockAllocator) {
        let mut group = self.running.remove(i);
        tracing::debug!(request = group.id, "preempted; will recompute");
        group.reset_for_recompute(alloc);
        self.waiting.push_front(group);
    }
}

/// Adds the ids of `lora` to the sorted set `ids`.
fn add_loras(ids: &mut Vec<u32>, lora: &[crate::api::LoraRef]) {
    for l in lora {
        if let Err(at) = ids.binary_search(&l.id) {
            ids.insert(at, l.id);
        }
    }
}

/// Whether running groups using the adapters `ids` can be joined by one using `lora` within
/// `max` distinct adapters (0 = no limit).
fn fits_loras(ids: &[u32], lora: &[crate::api::LoraRef], max: usize) -> bool {
    if max == 0 {
        return true;
    }
    let mut new: Vec<u32> = lora
        .iter()
        .map(|l| l.id)
        .filter(|id| ids.binary_search(id).is_err())
        .collect();
    new.sort_unstable();
    new.dedup();
    ids.len() + new.len() <= max
}

#[cfg(test)]
mod tests;
