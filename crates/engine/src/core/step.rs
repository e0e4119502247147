//! One engine step: schedule → execute → sample → update → emit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use super::{masks, EngineCore};
use crate::api::{EngineError, Event, FinishReason};
use crate::constraint::TokenMask;
use crate::model::{ModelError, SeqStep};
use crate::sample::{RowContext, Sampler};
use crate::sched::ScheduledChunk;
use crate::seq::{SequenceGroup, Target};

/// The logits rows a group received this step: which stream each samples for, and where; and
/// the rows that score prompt positions (`(position, row)`, `prompt_logprobs`).
struct GroupRows {
    group: usize,
    rows: Vec<(Target, usize)>,
    prompt_rows: Vec<(usize, usize)>,
}

impl EngineCore {
    pub(super) fn step(&mut self) {
        self.expire(Instant::now());
        let out = self.scheduler.schedule(&mut self.blocks);
        self.shared.left_waiting(out.admitted);
        self.shared.rejoined_waiting(out.preempted);
        self.shared
            .prefix_queried(out.prefix_query_tokens, out.prefix_hit_tokens);
        self.publish();
        if out.chunks.is_empty() {
            return;
        }
        for &(src, dst) in &out.copies.main {
            self.model.copy_block(src, dst);
        }
        for &(src, dst) in &out.copies.window {
            self.model.copy_window_block(src, dst);
        }
        let vocab = self.shape.vocab_size;
        let mut jobs = masks::take_jobs(&mut self.scheduler.running, &out.chunks, vocab);
        let result = std::thread::scope(|s| {
            let worker = (!jobs.is_empty()).then(|| s.spawn(|| masks::compute(&mut jobs)));
            let result = self.execute(&out.chunks);
            if let Some(worker) = worker {
                // `compute` catches panics per job; a failed mask is recomputed when sampled.
                let _ = worker.join();
            }
            result
        });
        masks::put_back(&mut self.scheduler.running, jobs);
        self.steps += 1;
        match result {
            Ok(()) => self.update(&out.chunks),
            Err(err) => self.fail_batch(&out.chunks, &err),
        }
        self.scheduler.remove_done(&mut self.blocks);
    }

    /// Runs one forward over the scheduled chunks and checks the logits it returned.
    fn execute(&mut self, chunks: &[ScheduledChunk]) -> Result<(), ModelError> {
        let running = &self.scheduler.running;
        let seqs: Vec<SeqStep<'_>> = chunks
            .iter()
            .map(|c| {
                let group = &running[c.group];
                SeqStep {
                    tokens: group.tokens(c.target, c.start, c.len),
                    start_pos: c.start,
                    block_table: group.table(c.target).ids(),
                    window_table: group.table(c.target).window_ids(),
                    want_logits: c.want_logits,
                    all_logits: c.all_logits,
                    replace: &group.prompt_embeddings,
                    lora: &group.lora,
                }
            })
            .collect();
        self.logits.clear();
        self.model.forward(&seqs, &mut self.logits)?;
        let rows: usize = chunks.iter().map(ScheduledChunk::rows).sum();
        let vocab = self.shape.vocab_size;
        if self.logits.len() != rows * vocab {
            let got = self.logits.len();
            return Err(ModelError(format!(
                "forward returned {got} logits for {rows} rows of {vocab}"
            )));
        }
        Ok(())
    }

    /// The forward failed: every request in the batch ends with `Error(Model)`.
    fn fail_batch(&mut self, chunks: &[ScheduledChunk], err: &ModelError) {
        tracing::warn!(
            error = %err,
            chunks = chunks.len(),
            free_blocks = self.blocks.num_free(),
            "forward failed; failing the batch's requests"
        );
        for c in chunks {
            let group = &mut self.scheduler.running[c.group];
            if !group.done {
                group.fail(EngineError::Model(err.0.clone()));
            }
        }
    }

    /// Records the computed tokens (registering the prompt blocks they filled with the prefix
    /// cache), then samples, updates and emits group by group.
    fn update(&mut self, chunks: &[ScheduledChunk]) {
        let mut per_group: Vec<GroupRows> = Vec::new();
        let mut row = 0;
        for c in chunks {
            let group = &mut self.scheduler.running[c.group];
            group.mark_computed(c.target, c.start, c.len);
            if c.target == Target::Prompt {
                let range = (c.start, c.start + c.len);
                group.register_prompt_blocks(&mut self.blocks, self.shape.block_size, range);
            }
            // Window blocks the next token no longer sees go back to the window pool.
            if let Some(w) = self.blocks.window_mut() {
                let next = c.start + c.len;
                group
                    .table_mut(c.target)
                    .trim_window(next, self.shape.block_size, w);
            }
            if per_group.last().is_none_or(|g| g.group != c.group) {
                per_group.push(GroupRows {
                    group: c.group,
                    rows: Vec::new(),
                    prompt_rows: Vec::new(),
                });
            }
            let g = per_group.last_mut().expect("pushed above");
            if c.all_logits {
                // Row j holds the distribution of the token after position start + j.
                let (from, to) = (group.prompt_scored.max(c.start + 1), c.start + c.len + 1);
                g.prompt_rows
                    .extend((from..to.min(group.prompt.len())).map(|p| (p, row + p - 1 - c.start)));
            }
            if c.want_logits {
                g.rows.push((c.target, row + c.rows() - 1));
            }
            row += c.rows();
        }
        for g in &per_group {
            self.update_group(g);
        }
    }

    /// Forks a group whose prompt just completed, samples its rows (isolated: a panic fails
    /// only this request), frees the blocks of finished choices and emits the events.
    fn update_group(&mut self, g: &GroupRows) {
        let group = &mut self.scheduler.running[g.group];
        if group.done {
            return;
        }
        if group.expired(Instant::now()) {
            group.fail(EngineError::Timeout);
            return;
        }
        if !group.forked && group.prompt_computed == group.prompt.len() {
            group.fork(&mut self.blocks);
        }
        let (logits, sampler, shape) = (&self.logits, &mut self.sampler, self.shape);
        let row = |r: usize| &logits[r * shape.vocab_size..(r + 1) * shape.vocab_size];
        let blocks = &mut self.blocks;
        let sampled = catch_unwind(AssertUnwindSafe(|| {
            let mut events = score_prompt(group, &g.prompt_rows, row);
            if group.params.max_new_tokens == 0 {
                // Prompt scoring only (`echo` with `max_tokens: 0`): nothing is sampled.
                if group.forked {
                    group.finish_all(FinishReason::Length, &mut events);
                }
                return Ok(events);
            }
            let rows = g.rows.iter().map(|&(target, r)| (target, row(r)));
            let more = if group.beam.is_some() {
                beam_rows(group, rows, sampler, blocks)
            } else {
                sample_rows(group, rows, sampler, shape.max_context)
            }?;
            events.extend(more);
            Ok(events)
        }));
        let mut events = match sampled {
            Ok(Ok(events)) => events,
            Ok(Err(err)) => {
                tracing::warn!(request = group.id, error = %err, "constrained sampling failed");
                group.fail(err);
                return;
            }
            Err(panic) => {
                let what = panic_message(panic.as_ref());
                tracing::error!(request = group.id, panic = what, "sampling panicked");
                group.fail(EngineError::Model(format!(
                    "internal error while sampling: {what}"
                )));
                return;
            }
        };
        for seq in &mut group.choices {
            if seq.finish.is_some() {
                seq.blocks.release(&mut self.blocks);
            }
        }
        group.finish_if_done(&mut events);
        group.send_all(events);
    }
}

/// `PromptToken` events for the prompt positions scored by `rows` (`(position, row)`).
fn score_prompt<'a>(
    group: &mut SequenceGroup,
    rows: &[(usize, usize)],
    row: impl Fn(usize) -> &'a [f32],
) -> Vec<Event> {
    let mut events = Vec::with_capacity(rows.len());
    for &(position, r) in rows {
        let token = group.prompt[position];
        let (logprob, extra) = Sampler::score(row(r), token, group.params.top_logprobs);
        events.push(Event::PromptToken {
            position,
            token,
            logprob,
            extra,
        });
        group.prompt_scored = position + 1;
    }
    events
}

/// Samples every row of one group. A prompt row (the last prompt token's logits) serves every
/// live choice that has no token yet, each with its own RNG.
fn sample_rows<'a>(
    group: &mut SequenceGroup,
    rows: impl Iterator<Item = (Target, &'a [f32])>,
    sampler: &mut Sampler,
    max_context: usize,
) -> Result<Vec<Event>, EngineError> {
    let mut events = Vec::new();
    for (target, row) in rows {
        for c in group.sampling_choices(target) {
            let seq = &mut group.choices[c];
            let mask = match seq.constraint.as_mut() {
                Some(constraint) => Some(match seq.mask.take() {
                    Some(mask) => mask,
                    None => {
                        let mut mask = TokenMask::new(row.len());
                        masks::compute_one(constraint.as_mut(), &mut mask)
                            .map_err(EngineError::Constraint)?;
                        mask
                    }
                }),
                None => None,
            };
            let ctx = RowContext {
                params: &group.params,
                prompt: &group.prompt,
                generated: &seq.generated,
                mask: mask.as_ref(),
            };
            let sampled = sampler.sample(row, &ctx, &mut seq.rng);
            let token = sampled.token;
            if let Some(mask) = &mask {
                let allowed = if group.params.eos_tokens.contains(&token) {
                    mask.end_allowed
                } else {
                    mask.is_allowed(token)
                };
                if !allowed {
                    return Err(EngineError::Constraint(
                        "no token allowed by `response_format` is left after the other \
                         controls (bad words, stop tokens, penalties)"
                            .into(),
                    ));
                }
            }
            group.accept(c, sampled, max_context, &mut events);
            group.constrain(c, token, &mut events)?;
        }
    }
    Ok(events)
}

/// Feeds every row of a beam group to its search (see `seq/beam.rs`).
fn beam_rows<'a>(
    group: &mut SequenceGroup,
    rows: impl Iterator<Item = (Target, &'a [f32])>,
    sampler: &mut Sampler,
    blocks: &mut crate::kv::BlockAllocator,
) -> Result<Vec<Event>, EngineError> {
    let mut events = Vec::new();
    for (target, row) in rows {
        let beam = match target {
            Target::Prompt => None,
            Target::Choice(c) => Some(c),
        };
        group.beam_row(beam, row, sampler, blocks, &mut events)?;
    }
    Ok(events)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("panic")
}
