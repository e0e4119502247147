//! Sequences: [`Sequence`] is one choice, [`SequenceGroup`] one request with its `n` choices.
//!
//! A group's life: its prompt is prefilled ONCE into `prompt_blocks` (maybe over several steps);
//! the step that computes the last prompt token samples every choice's first token from that one
//! logits row, and the prompt blocks are then forked to each choice (shared by reference count).
//! From then on each choice feeds its own tokens through its own block table; the shared,
//! partially filled last prompt block is copied when a choice first writes into it.
//!
//! Preemption drops every block and rewinds the group to "prompt not computed", keeping the
//! generated tokens and each choice's RNG: on resume the prompt is prefilled once again, forked,
//! and each choice prefills its generated tokens before it samples the next one. So the events a
//! client already has are never repeated or changed.
//!
//! Prefix caching (`prefix.rs`): at admission the prompt's leading full blocks that are cached
//! are taken instead of computed (`prompt_computed` starts after them), and every full prompt
//! block the group computes is registered for later prompts. A preempted group's registered
//! blocks stay cached-free, so its recompute often starts with a hit.

use tokio::sync::mpsc::UnboundedSender;

use crate::api::{EngineError, EngineRequest, Event, FinishReason, SamplingParams};
use crate::constraint::{OutputConstraint, TokenMask};
use crate::kv::{BlockAllocator, BlockTable};
use crate::model::TokenId;
use crate::sample::{Rng, Sampled};
use accept::{accept, finish};

mod accept;
mod beam;
mod prefix;

/// The engine's id of a request (unique per handle).
pub(crate) type RequestId = u64;

/// Which token stream of a group a forward chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// The shared prompt, before the fork.
    Prompt,
    /// Choice `i`, after the fork.
    Choice(usize),
}

/// One choice of a request.
#[derive(Debug)]
pub(crate) struct Sequence {
    pub(crate) generated: Vec<TokenId>,
    /// Tokens (prompt + generated) whose K/V are in `blocks`; meaningful after the fork.
    pub(crate) num_computed: usize,
    pub(crate) blocks: BlockTable,
    pub(crate) rng: Rng,
    pub(crate) finish: Option<FinishReason>,
    /// Token events of the last generated tokens, not sent yet because they may be the start of
    /// a stop sequence (whose tokens are never output).
    held: Vec<Event>,
    /// Structured output: the choice's constraint, fed every output token.
    pub(crate) constraint: Option<Box<dyn OutputConstraint>>,
    /// The constraint's mask for the next sample, computed during the step's forward pass.
    pub(crate) mask: Option<TokenMask>,
}

/// One request: the prompt, its `n` choices and the channel its events go to.
#[derive(Debug)]
pub(crate) struct SequenceGroup {
    pub(crate) id: RequestId,
    pub(crate) prompt: Vec<TokenId>,
    pub(crate) params: SamplingParams,
    pub(crate) choices: Vec<Sequence>,
    /// Blocks of the prompt before the fork, shared by all choices.
    pub(crate) prompt_blocks: BlockTable,
    /// Prompt tokens in `prompt_blocks` (before the fork).
    pub(crate) prompt_computed: usize,
    pub(crate) forked: bool,
    /// Chain hashes of the prompt's full blocks (prefix caching), computed on first use.
    block_hashes: Vec<crate::block_hash::BlockHash>,
    /// Prompt tokens reused from the prefix cache at the last admission (not computed).
    pub(crate) cached_tokens: usize,
    /// When the request times out (`EngineError::Timeout`).
    pub(crate) deadline: Option<std::time::Instant>,
    /// Input embeddings replacing prompt positions (see `EngineRequest::prompt_embeddings`).
    pub(crate) prompt_embeddings: Vec<(usize, Vec<f32>)>,
    /// Beam search: the choices are the beams (see `beam.rs`).
    pub(crate) beam: Option<beam::BeamState>,
    /// LoRA adapters of every choice (see `EngineRequest::lora`).
    pub(crate) lora: Vec<crate::api::LoraRef>,
    /// What keys the prompt's prefix-cache blocks besides the tokens (the adapters).
    pub(crate) chain_seed: crate::kv::ChainSeed,
    /// Prompt positions whose `PromptToken` event was sent, plus one (position 0 has none);
    /// kept across preemption so that a recompute never repeats them.
    pub(crate) prompt_scored: usize,
    /// The final event was sent, or the client is gone: the group leaves at the end of the step.
    pub(crate) done: bool,
    events: UnboundedSender<Event>,
}

impl SequenceGroup {
    pub(crate) fn new(id: RequestId, req: EngineRequest, events: UnboundedSender<Event>) -> Self {
        let beam = req
            .beam
            .map(|b| beam::BeamState::new(b, req.seeds.first().copied().unwrap_or(0)));
        let seeds: Vec<u64> = match req.beam {
            Some(b) => (0..b.num_beams as u64).collect(),
            None => req.seeds.clone(),
        };
        let choices = seeds
            .iter()
            .map(|&seed| Sequence {
                generated: Vec::new(),
                num_computed: 0,
                blocks: BlockTable::default(),
                rng: Rng::new(seed),
                finish: None,
                held: Vec::new(),
                constraint: req.constraint.as_ref().map(|f| f.start()),
                mask: None,
            })
            .collect();
        SequenceGroup {
            id,
            prompt: req.prompt,
            params: req.params,
            choices,
            prompt_blocks: BlockTable::default(),
            prompt_computed: 0,
            forked: false,
            block_hashes: Vec::new(),
            cached_tokens: 0,
            deadline: req.deadline,
            prompt_embeddings: req.prompt_embeddings,
            beam,
            chain_seed: crate::kv::chain_seed(&req.lora),
            lora: req.lora,
            prompt_scored: 1,
            done: false,
            events,
        }
    }

    /// Indices of the choices still generating.
    pub(crate) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        self.choices
            .iter()
            .enumerate()
            .filter(|(_, s)| s.finish.is_none())
            .map(|(i, _)| i)
    }

    pub(crate) fn num_live(&self) -> usize {
        self.live().count()
    }

    /// The choices a logits row of `target` is sampled for: a prompt row serves every live
    /// choice that has no token yet; a choice's row serves that choice.
    pub(crate) fn sampling_choices(&self, target: Target) -> Vec<usize> {
        match target {
            Target::Prompt => self
                .live()
                .filter(|&c| self.choices[c].generated.is_empty())
                .collect(),
            Target::Choice(c) => vec![c],
        }
    }

    /// Whether the last prompt token's logits are needed: some live choice has no token yet.
    pub(crate) fn needs_prompt_logits(&self) -> bool {
        self.live().any(|i| self.choices[i].generated.is_empty())
    }

    /// Whether a prompt chunk ending at `end` has positions whose log-probabilities are still
    /// to be reported (`prompt_logprobs`), so that it needs every row of logits.
    pub(crate) fn needs_prompt_rows(&self, end: usize) -> bool {
        self.params.prompt_logprobs && end > self.prompt_scored
    }

    /// Whether the deadline has passed at `now`.
    pub(crate) fn expired(&self, now: std::time::Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    pub(crate) fn completion_tokens(&self) -> usize {
        match &self.beam {
            Some(b) => b.output_len,
            None => self.choices.iter().map(|s| s.generated.len()).sum(),
        }
    }

    /// Choices the client sees: one for beam search, else one per sequence.
    pub(crate) fn reported_choices(&self) -> usize {
        if self.beam.is_some() {
            1
        } else {
            self.choices.len()
        }
    }

    /// When no choice is live: pushes `Finished` and marks the group done. True if it did.
    pub(crate) fn finish_if_done(&mut self, out: &mut Vec<Event>) -> bool {
        if self.done || self.num_live() > 0 {
            return false;
        }
        out.push(Event::Finished {
            prompt_tokens: self.prompt.len(),
            completion_tokens: self.completion_tokens(),
        });
        self.done = true;
        true
    }

    /// Sends `events` in order; on a gone client, marks the group done (to be dropped).
    pub(crate) fn send_all(&mut self, events: Vec<Event>) {
        for event in events {
            if !self.send(event) {
                tracing::debug!(request = self.id, "client gone; aborting");
                self.done = true;
                break;
            }
        }
    }

    /// Sends one event; false when the client is gone (the request must be aborted).
    pub(crate) fn send(&self, event: Event) -> bool {
        self.events.send(event).is_ok()
    }

    /// Ends the request with `Error(err)` (its last event).
    pub(crate) fn fail(&mut self, err: crate::api::EngineError) {
        let _ = self.send(Event::Error(err));
        self.done = true;
    }

    /// Blocks a request of this shape holds at most when it runs alone to its full length
    /// ([`KvCapacity::blocks_needed`]). More than the cache has means it can never run
    /// (`EngineError::TooLarge`).
    pub(crate) fn max_blocks(&self, block_size: usize, max_context: usize) -> usize {
        let kv = crate::api::KvCapacity {
            block_size,
            blocks: 0,
        };
        kv.blocks_needed(
            self.prompt.len(),
            self.params.max_new_tokens,
            self.choices.len(),
            max_context,
        )
    }

    /// Window-pool blocks a request of this shape holds at most when it runs alone (window
    /// `window`, prefill chunks of at most `max_prefill` tokens): per choice the blocks its
    /// window and the token it writes span (the window's first block may be partial) plus a
    /// copy-on-write copy of a shared block, plus the blocks of one chunk. More than the
    /// window pool has means it can never run (`EngineError::TooLarge`).
    pub(crate) fn max_window_blocks(
        &self,
        block_size: usize,
        window: usize,
        max_prefill: usize,
    ) -> usize {
        let per_choice = (window.saturating_sub(1)).div_ceil(block_size) + 3;
        self.choices
            .len()
            .saturating_mul(per_choice)
            .saturating_add(max_prefill.div_ceil(block_size) + 1)
    }

    /// The tokens of `target` at positions `start..start + len`.
    pub(crate) fn tokens(&self, target: Target, start: usize, len: usize) -> &[TokenId] {
        match target {
            Target::Prompt => &self.prompt[start..start + len],
            Target::Choice(c) => {
                let from = start - self.prompt.len();
                &self.choices[c].generated[from..from + len]
            }
        }
    }

    pub(crate) fn table(&self, target: Target) -> &BlockTable {
        match target {
            Target::Prompt => &self.prompt_blocks,
            Target::Choice(c) => &self.choices[c].blocks,
        }
    }

    pub(crate) fn table_mut(&mut self, target: Target) -> &mut BlockTable {
        match target {
            Target::Prompt => &mut self.prompt_blocks,
            Target::Choice(c) => &mut self.choices[c].blocks,
        }
    }

    /// Tokens of choice `c` not yet in its blocks, and the position of the first.
    pub(crate) fn pending(&self, c: usize) -> (usize, usize) {
        let seq = &self.choices[c];
        let total = self.prompt.len() + seq.generated.len();
        (seq.num_computed, total - seq.num_computed)
    }

    /// Records that `len` tokens of `target` from `start` are now in its blocks.
    pub(crate) fn mark_computed(&mut self, target: Target, start: usize, len: usize) {
        match target {
            Target::Prompt => self.prompt_computed = start + len,
            Target::Choice(c) => self.choices[c].num_computed = start + len,
        }
    }

    /// After the prompt is fully computed: hands its blocks to every live choice (shared).
    pub(crate) fn fork(&mut self, alloc: &mut BlockAllocator) {
        debug_assert!(!self.forked && self.prompt_computed == self.prompt.len());
        let live: Vec<usize> = self.live().collect();
        if let Some((&last, rest)) = live.split_last() {
            for &c in rest {
                self.choices[c].blocks = self.prompt_blocks.fork(alloc);
            }
            self.choices[last].blocks = std::mem::take(&mut self.prompt_blocks);
        }
        self.prompt_blocks.release(alloc);
        for c in live {
            self.choices[c].num_computed = self.prompt.len();
        }
        self.forked = true;
    }

    /// Gives back every block the group holds.
    pub(crate) fn release_blocks(&mut self, alloc: &mut BlockAllocator) {
        self.prompt_blocks.release(alloc);
        for seq in &mut self.choices {
            seq.blocks.release(alloc);
        }
    }

    /// Preemption: drops every block; the group will recompute from the prompt on resume.
    pub(crate) fn reset_for_recompute(&mut self, alloc: &mut BlockAllocator) {
        self.release_blocks(alloc);
        self.prompt_computed = 0;
        self.cached_tokens = 0;
        self.forked = false;
        for seq in &mut self.choices {
            seq.num_computed = 0;
        }
        if let Some(b) = &mut self.beam {
            b.clear_pending();
        }
    }

    /// Applies a token sampled for choice `c` and pushes the events it causes (see
    /// [`accept`]); finished choices are then recorded.
    pub(crate) fn accept(
        &mut self,
        c: usize,
        s: Sampled,
        max_context: usize,
        out: &mut Vec<Event>,
    ) {
        accept(
            &self.params,
            self.prompt.len(),
            &mut self.choices[c],
            c,
            s,
            max_context,
            out,
        );
    }

    /// Feeds the token just accepted for choice `c` to its constraint (if the choice has one and
    /// goes on); a constraint that admits nothing more ends the choice with `Stop`.
    pub(crate) fn constrain(
        &mut self,
        c: usize,
        token: TokenId,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let seq = &mut self.choices[c];
        let Some(constraint) = seq.constraint.as_mut() else {
            return Ok(());
        };
        if seq.finish.is_some() {
            return Ok(());
        }
        constraint.consume(token).map_err(|e| {
            EngineError::Constraint(format!("token {token} broke the output constraint: {e}"))
        })?;
        if constraint.is_complete() {
            out.append(&mut seq.held);
            finish(seq, c, FinishReason::Stop, out);
        }
        Ok(())
    }

    /// Ends every live choice with `reason` (no token sampled).
    pub(crate) fn finish_all(&mut self, reason: FinishReason, out: &mut Vec<Event>) {
        for (c, seq) in self.choices.iter_mut().enumerate() {
            if seq.finish.is_none() {
                finish(seq, c, reason, out);
            }
        }
    }

    /// Ends live choice `c` early with `Stop` (the client matched a stop phrase): its held
    /// tokens are dropped. The caller frees its blocks. False when it had already finished.
    pub(crate) fn stop_choice(&mut self, c: usize, out: &mut Vec<Event>) -> bool {
        let Some(seq) = self.choices.get_mut(c) else {
            return false;
        };
        if seq.finish.is_some() {
            return false;
        }
        let held = std::mem::take(&mut seq.held).len();
        seq.generated.truncate(seq.generated.len() - held);
        finish(seq, c, FinishReason::Stop, out);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(prompt: usize, n: usize, max_new_tokens: usize) -> SequenceGroup {
        let req = EngineRequest {
            prompt: (0..prompt as TokenId).collect(),
            params: SamplingParams {
                max_new_tokens,
                eos_tokens: vec![7],
                ..Default::default()
            },
            seeds: (0..n as u64).collect(),
            deadline: None,
            prompt_embeddings: Vec::new(),
            constraint: None,
            beam: None,
            lora: Vec::new(),
        };
        SequenceGroup::new(1, req, tokio::sync::mpsc::unbounded_channel().0)
    }

    #[test]
    fn max_blocks_counts_the_shared_prompt_once() {
        // Prompt 10 (2 full blocks of 4 + 2 tokens), 5 new tokens → 14 tokens in the cache.
        assert_eq!(group(10, 1, 5).max_blocks(4, 100), 4);
        // n = 3: 2 shared + 3 × (4 - 2).
        assert_eq!(group(10, 3, 5).max_blocks(4, 100), 8);
        // The context limit caps it: at most 15 tokens ever in the cache.
        assert_eq!(group(10, 1, 1000).max_blocks(4, 16), 4);
        assert_eq!(group(8, 2, 1).max_blocks(4, 100), 2);
    }

    #[test]
    fn accept_handles_eos_and_limits() {
        let mut g = group(3, 2, 2);
        let mut ev = Vec::new();
        g.accept(0, Sampled::plain(7, -1.0), 100, &mut ev);
        assert_eq!(
            ev,
            vec![Event::ChoiceFinished {
                choice: 0,
                reason: FinishReason::Stop
            }]
        );
        assert!(g.choices[0].generated.is_empty());
        ev.clear();
        g.accept(1, Sampled::plain(5, -1.0), 100, &mut ev);
        g.accept(1, Sampled::plain(6, -2.0), 100, &mut ev);
        assert_eq!(ev.len(), 3);
        assert_eq!(
            ev[2],
            Event::ChoiceFinished {
                choice: 1,
                reason: FinishReason::Length
            }
        );
        assert_eq!(g.completion_tokens(), 2);
        assert_eq!(g.num_live(), 0);
    }

    #[test]
    fn ignore_eos_makes_eos_a_token_and_context_ends_with_length() {
        let mut g = group(3, 1, 10);
        g.params.ignore_eos = true;
        let mut ev = Vec::new();
        g.accept(0, Sampled::plain(7, -1.0), 5, &mut ev);
        assert_eq!(
            ev,
            vec![Event::Token {
                choice: 0,
                token: 7,
                logprob: -1.0,
                extra: None
            }]
        );
        g.accept(0, Sampled::plain(1, -1.0), 5, &mut ev);
        assert_eq!(
            ev[2],
            Event::ChoiceFinished {
                choice: 0,
                reason: FinishReason::Length
            }
        );
    }

    #[test]
    fn fork_shares_prompt_blocks_and_reset_frees_everything() {
        let mut alloc = BlockAllocator::new(8);
        let mut g = group(6, 3, 4);
        g.prompt_blocks
            .prepare_write(
                (0, 6),
                4,
                &mut alloc,
                &mut crate::kv::BlockCopies::default(),
            )
            .unwrap();
        g.mark_computed(Target::Prompt, 0, 6);
        g.fork(&mut alloc);
        assert_eq!(alloc.num_free(), 6);
        assert!(g
            .choices
            .iter()
            .all(|s| s.blocks.ids() == [0, 1] && s.num_computed == 6));
        assert_eq!(alloc.main().ref_count(1), 3);
        g.reset_for_recompute(&mut alloc);
        assert_eq!(alloc.num_free(), 8);
        assert!(!g.forked && g.prompt_computed == 0);
    }
}
