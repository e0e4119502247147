//! What one group asks for in a step, and how many free blocks that takes.

use super::budget::TokenBudget;
use crate::kv::{BlockAllocator, BlockNeed, Need};
use crate::seq::{SequenceGroup, Target};

/// One write of a group in a step: `len` tokens of `target` from position `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub(crate) target: Target,
    pub(crate) start: usize,
    pub(crate) len: usize,
    /// The chunk reaches the sequence's last token, whose logits are sampled.
    pub(crate) want_logits: bool,
    /// Every token's logits row is wanted (prompt log-probabilities).
    pub(crate) all_logits: bool,
}

/// The group's work this step. Before the fork: the next prompt chunk (budgeted). After it: for
/// each live choice either a decode (its one pending token; not budgeted) or, after a
/// preemption, the next chunk of its generated tokens to recompute (budgeted).
pub(crate) fn plan_group(group: &SequenceGroup, budget: &mut TokenBudget) -> Vec<Planned> {
    if !group.forked {
        let start = group.prompt_computed;
        let len = budget.take(group.prompt.len() - start);
        if len == 0 {
            return Vec::new();
        }
        let ends_prompt = start + len == group.prompt.len();
        let want_logits = ends_prompt && group.needs_prompt_logits();
        return vec![Planned {
            target: Target::Prompt,
            start,
            len,
            want_logits,
            all_logits: group.needs_prompt_rows(start + len),
        }];
    }
    let mut plan = Vec::new();
    for c in group.live() {
        let (start, pending) = group.pending(c);
        debug_assert!(
            pending > 0,
            "a live choice always has its last sampled token pending"
        );
        let len = if pending == 1 {
            1
        } else {
            budget.take(pending)
        };
        if len > 0 {
            plan.push(Planned {
                target: Target::Choice(c),
                start,
                len,
                want_logits: len == pending,
                all_logits: false,
            });
        }
    }
    plan
}

/// Free blocks that carrying out `plan` takes (new blocks plus copy-on-write copies), per pool.
pub(crate) fn blocks_needed(
    group: &SequenceGroup,
    plan: &[Planned],
    block_size: usize,
    alloc: &BlockAllocator,
) -> Need {
    let mut need = BlockNeed::default();
    for p in plan {
        need.add_write(
            group.table(p.target),
            (p.start, p.start + p.len),
            block_size,
            alloc,
        );
    }
    need.need()
}
