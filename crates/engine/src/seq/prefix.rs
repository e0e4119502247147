//! Prefix caching for one group's prompt: reusing cached full blocks when the group is admitted,
//! and registering the full prompt blocks it computes (see `kv::prefix`).
//!
//! Only full blocks lying entirely before the prompt's last token are reused, so at least that
//! token is computed (its logits are sampled) and no reused block is ever written: the prompt's
//! remaining tokens, and later the choices' tokens, go to blocks after the reused ones.
//!
//! With a window pool, a prompt block is cached in both pools under the same key (its
//! window-pool block stays cached after the sequence's window has passed it, until evicted). A
//! hit of `k` blocks needs the main blocks `0..k` and the window blocks the first computed
//! token reads (from its window start to `k`); the run is shortened until both are cached.

use super::SequenceGroup;
use crate::kv::{chain_hashes, BlockAllocator, BlockKey, NO_BLOCK};

impl SequenceGroup {
    /// Computes the chain hashes of the prompt's full blocks, once.
    fn ensure_chain(&mut self, block_size: usize, alloc: &BlockAllocator) {
        if self.block_hashes.is_empty() && self.prompt.len() >= block_size {
            self.block_hashes = chain_hashes(
                &self.prompt,
                block_size,
                alloc.root_hash(),
                &self.chain_seed,
            );
        }
    }

    /// At admission, before any prompt token is computed: takes the longest run of cached blocks
    /// the prompt starts with (one more user each) and marks their tokens computed. Returns the
    /// prompt tokens reused (0 when caching is off or nothing matched).
    pub(crate) fn attach_cached_prefix(
        &mut self,
        alloc: &mut BlockAllocator,
        block_size: usize,
    ) -> usize {
        let fresh =
            !self.forked && self.prompt_computed == 0 && self.prompt_blocks.ids().is_empty();
        // Replaced embeddings change K/V without changing the token ids: never share those.
        if !alloc.prefix_caching()
            || !fresh
            || block_size == 0
            || !self.prompt_embeddings.is_empty()
            || self.needs_prompt_rows(self.prompt.len())
        {
            return 0;
        }
        self.ensure_chain(block_size, alloc);
        let reusable = self.prompt.len().saturating_sub(1) / block_size;
        let key = |i: usize| BlockKey::of_block(&self.block_hashes, &self.chain_seed, i);
        // The cached run of main blocks the prompt starts with; with a window pool, only as
        // far as the window blocks the next token reads (from its window start on) are
        // cached too.
        let mut run = (0..reusable)
            .take_while(|&i| alloc.main().lookup(&key(i)).is_some())
            .count();
        if let Some(w) = alloc.window() {
            while run > 0 {
                let first = w.first_block(run * block_size, block_size);
                if (first..run).all(|i| w.pool.lookup(&key(i)).is_some()) {
                    break;
                }
                run -= 1;
            }
        }
        for i in 0..run {
            let k = key(i);
            let block = alloc.main().lookup(&k).expect("looked up above");
            alloc.main_mut().acquire_cached(block);
            let window = alloc.window_mut().map(|w| {
                if i < w.first_block(run * block_size, block_size) {
                    return NO_BLOCK;
                }
                let block = w.pool.lookup(&k).expect("looked up above");
                w.pool.acquire_cached(block);
                block
            });
            self.prompt_blocks.push_acquired(block, window);
        }
        let hit = run * block_size;
        self.prompt_computed = hit;
        self.cached_tokens = hit;
        hit
    }

    /// Undoes [`Self::attach_cached_prefix`] when the group is not admitted after all: a
    /// waiting group holds no blocks.
    pub(crate) fn detach_cached_prefix(&mut self, alloc: &mut BlockAllocator) {
        debug_assert!(!self.forked && self.prompt_computed == self.cached_tokens);
        self.prompt_blocks.release(alloc);
        self.prompt_computed = 0;
        self.cached_tokens = 0;
    }

    /// After a forward wrote prompt positions `start..end` (before the fork): registers the
    /// prompt blocks that this made full, so later prompts can reuse them. Each run of
    /// consecutive blocks newly registered is recorded as one `BlockStored` event (a block
    /// whose contents another block already caches is not registered, and ends a run).
    pub(crate) fn register_prompt_blocks(
        &mut self,
        alloc: &mut BlockAllocator,
        block_size: usize,
        (start, end): (usize, usize),
    ) {
        if !alloc.prefix_caching() || block_size == 0 || !self.prompt_embeddings.is_empty() {
            return;
        }
        self.ensure_chain(block_size, alloc);
        let blocks = start / block_size..end / block_size;
        let mut run_start = blocks.start;
        for i in blocks.clone() {
            let block = self.prompt_blocks.ids()[i];
            let key = BlockKey::of_block(&self.block_hashes, &self.chain_seed, i);
            let window = self.prompt_blocks.window_ids().get(i).copied();
            if let (Some(w), Some(wb)) = (alloc.window_mut(), window) {
                if wb != NO_BLOCK {
                    w.pool.register(wb, key);
                }
            }
            if !alloc.main_mut().register(block, key) {
                self.record_run(alloc, block_size, run_start..i);
                run_start = i + 1;
            }
        }
        self.record_run(alloc, block_size, run_start..blocks.end);
    }

    /// Records prompt blocks `run` (all registered now) as one `BlockStored`.
    fn record_run(
        &self,
        alloc: &mut BlockAllocator,
        block_size: usize,
        run: std::ops::Range<usize>,
    ) {
        if run.is_empty() {
            return;
        }
        let parent = run.start.checked_sub(1).map(|p| &self.block_hashes[p]);
        let tokens = &self.prompt[run.start * block_size..run.end * block_size];
        // vLLM's BlockStored names one adapter (`lora_id`, `lora_name`): the first.
        let lora = self.lora.first().map(|l| (l.id, &*l.name));
        alloc.record_stored(&self.block_hashes[run], parent, tokens, block_size, lora);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::*;
    use crate::api::{EngineRequest, SamplingParams};

    const BS: usize = 4;

    fn group(prompt: Vec<u32>) -> SequenceGroup {
        let req = EngineRequest {
            prompt,
            params: SamplingParams::default(),
            seeds: vec![1, 2],
            deadline: None,
            prompt_embeddings: Vec::new(),
            constraint: None,
            beam: None,
            lora: Vec::new(),
        };
        SequenceGroup::new(1, req, tokio::sync::mpsc::unbounded_channel().0)
    }

    /// Computes `g`'s whole prompt (as the engine's step would) and forks it.
    fn compute_prompt(g: &mut SequenceGroup, alloc: &mut BlockAllocator) {
        let (start, end) = (g.prompt_computed, g.prompt.len());
        g.prompt_blocks
            .prepare_write(
                (start, end),
                BS,
                alloc,
                &mut crate::kv::BlockCopies::default(),
            )
            .unwrap();
        g.mark_computed(Target::Prompt, start, end - start);
        g.register_prompt_blocks(alloc, BS, (start, end));
        g.fork(alloc);
    }

    #[test]
    fn a_repeated_prompt_reuses_its_full_blocks_but_not_the_last_token() {
        let mut alloc = BlockAllocator::new(16);
        let p: Vec<u32> = (1..=12).collect(); // 3 full blocks
        let mut a = group(p.clone());
        assert_eq!(a.attach_cached_prefix(&mut alloc, BS), 0);
        compute_prompt(&mut a, &mut alloc);
        let a_blocks = a.choices[0].blocks.ids().to_vec();
        // While `a` runs, `b` shares its first two blocks; the third holds the last token.
        let mut b = group(p.clone());
        assert_eq!(b.attach_cached_prefix(&mut alloc, BS), 8);
        assert_eq!(b.prompt_blocks.ids(), &a_blocks[..2]);
        assert_eq!(alloc.main().ref_count(a_blocks[0]), 3); // two choices of `a`, and `b`
        b.detach_cached_prefix(&mut alloc);
        assert_eq!(
            (b.prompt_computed, alloc.main().ref_count(a_blocks[0])),
            (0, 2)
        );
        a.release_blocks(&mut alloc);
        assert_eq!((alloc.num_free(), alloc.num_cached_free()), (16, 3));
        // A longer prompt with the same start reuses all three after `a` is gone.
        let mut c = group((1..=14).collect());
        assert_eq!(c.attach_cached_prefix(&mut alloc, BS), 12);
        compute_prompt(&mut c, &mut alloc);
        c.release_blocks(&mut alloc);
        assert_eq!(alloc.num_free(), 16);
    }

    #[test]
    fn a_different_first_block_hits_nothing_and_caching_off_registers_nothing() {
        let mut alloc = BlockAllocator::new(16);
        let mut a = group((1..=9).collect());
        compute_prompt(&mut a, &mut alloc);
        let mut other: Vec<u32> = (1..=9).collect();
        other[0] = 50;
        assert_eq!(group(other).attach_cached_prefix(&mut alloc, BS), 0);

        let mut off = BlockAllocator::with_prefix_caching(16, false);
        let mut a = group((1..=9).collect());
        compute_prompt(&mut a, &mut off);
        a.release_blocks(&mut off);
        assert_eq!(off.num_cached_free(), 0);
        assert_eq!(
            group((1..=9).collect()).attach_cached_prefix(&mut off, BS),
            0
        );
    }
}
