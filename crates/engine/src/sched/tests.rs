//! Scheduler decisions on hand-built groups (the engine's update step is simulated).

use super::*;
use crate::api::{EngineRequest, SamplingParams};

const BS: usize = 4;

fn scheduler(max_num_seqs: usize, max_prefill_tokens: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        max_num_seqs,
        max_prefill_tokens,
        block_size: BS,
        max_loras: 0,
    })
}

fn group(id: RequestId, prompt: usize, n: usize) -> SequenceGroup {
    let req = EngineRequest {
        prompt: vec![1; prompt],
        params: SamplingParams {
            max_new_tokens: 100,
            ..Default::default()
        },
        seeds: (0..n as u64).collect(),
        deadline: None,
        prompt_embeddings: Vec::new(),
        constraint: None,
        beam: None,
        lora: Vec::new(),
    };
    SequenceGroup::new(id, req, tokio::sync::mpsc::unbounded_channel().0)
}

/// What the engine does after a successful forward, with token 5 as every sample.
fn update(s: &mut Scheduler, out: &SchedulerOutput, alloc: &mut BlockAllocator) {
    for c in &out.chunks {
        let g = &mut s.running[c.group];
        g.mark_computed(c.target, c.start, c.len);
        if !g.forked && g.prompt_computed == g.prompt.len() {
            g.fork(alloc);
        }
        if c.want_logits {
            let targets: Vec<usize> = match c.target {
                Target::Prompt => g.live().collect(),
                Target::Choice(i) => vec![i],
            };
            for i in targets {
                g.choices[i].generated.push(5);
            }
        }
    }
}

fn lens(out: &SchedulerOutput) -> Vec<(usize, usize, bool)> {
    out.chunks
        .iter()
        .map(|c| (c.group, c.len, c.want_logits))
        .collect()
}

#[test]
fn long_prompt_is_prefilled_in_chunks_while_others_decode() {
    let mut alloc = BlockAllocator::new(64);
    let mut s = scheduler(8, 4);
    s.push_waiting(group(1, 3, 1));
    let out = s.schedule(&mut alloc);
    assert_eq!(lens(&out), vec![(0, 3, true)]);
    update(&mut s, &out, &mut alloc);
    s.push_waiting(group(2, 10, 1));
    let mut steps = Vec::new();
    for _ in 0..3 {
        let out = s.schedule(&mut alloc);
        steps.push(lens(&out));
        update(&mut s, &out, &mut alloc);
    }
    // Group 0 decodes every step; group 1's prompt goes in 4 + 4 + 2 tokens.
    assert_eq!(
        steps,
        vec![
            vec![(0, 1, true), (1, 4, false)],
            vec![(0, 1, true), (1, 4, false)],
            vec![(0, 1, true), (1, 2, true)],
        ]
    );
}

#[test]
fn n_choices_share_the_prompt_then_decode_each() {
    let mut alloc = BlockAllocator::new(64);
    let mut s = scheduler(8, 64);
    s.push_waiting(group(1, 6, 3));
    let out = s.schedule(&mut alloc);
    assert_eq!(lens(&out), vec![(0, 6, true)]);
    assert_eq!(alloc.num_free(), 62);
    update(&mut s, &out, &mut alloc);
    let out = s.schedule(&mut alloc);
    assert_eq!(lens(&out), vec![(0, 1, true); 3]);
    // Two of the three holders of the half-full block copy it; the last writes in place.
    assert_eq!(out.copies.main.len(), 2);
    assert_eq!(alloc.num_free(), 60);
}

#[test]
fn admission_is_fifo_and_capped_by_max_num_seqs() {
    let mut alloc = BlockAllocator::new(64);
    let mut s = scheduler(3, 64);
    s.push_waiting(group(1, 2, 2));
    s.push_waiting(group(2, 2, 2));
    s.push_waiting(group(3, 2, 1));
    let out = s.schedule(&mut alloc);
    // Group 2 would make 4 sequences; group 3 may not jump the queue.
    assert_eq!((out.admitted, s.running.len(), s.waiting.len()), (1, 1, 2));
    s.abort(1, &mut alloc);
    let out = s.schedule(&mut alloc);
    assert_eq!(out.admitted, 2);
    assert_eq!(s.running_seqs(), 3);
}

#[test]
fn short_blocks_preempt_the_newest_group() {
    // 6 blocks: two groups with 8-token prompts take 2 blocks each (+2 reserve at admission).
    let mut alloc = BlockAllocator::new(6);
    let mut s = scheduler(8, 64);
    s.push_waiting(group(1, 8, 1));
    s.push_waiting(group(2, 8, 1));
    let out = s.schedule(&mut alloc);
    assert_eq!(out.admitted, 2);
    update(&mut s, &out, &mut alloc);
    assert_eq!(alloc.num_free(), 2);
    // Both now decode into a third block each: 2 free, fits. Then 4 more tokens each: 0 free.
    for _ in 0..4 {
        let out = s.schedule(&mut alloc);
        assert_eq!(out.preempted, 0);
        update(&mut s, &out, &mut alloc);
    }
    assert_eq!(alloc.num_free(), 0);
    let out = s.schedule(&mut alloc);
    assert_eq!(out.preempted, 1);
    assert_eq!(s.running.len(), 1);
    assert_eq!(s.running[0].id, 1);
    assert_eq!(s.waiting.front().map(|g| g.id), Some(2));
    assert!(!s.waiting[0].forked && s.waiting[0].choices[0].generated.len() == 5);
    assert_eq!(lens(&out), vec![(0, 1, true)]);
    assert_eq!(alloc.num_free(), 2); // 3 freed by group 2, 1 taken by group 1
}

#[test]
fn the_newest_group_preempts_itself() {
    let mut alloc = BlockAllocator::new(4);
    let mut s = scheduler(8, 64);
    s.push_waiting(group(1, 4, 1));
    let out = s.schedule(&mut alloc);
    update(&mut s, &out, &mut alloc);
    // Steal every free block so that the only group cannot grow.
    let stolen: Vec<_> = std::iter::from_fn(|| alloc.main_mut().allocate()).collect();
    assert_eq!(stolen.len(), 3);
    let out = s.schedule(&mut alloc);
    assert_eq!((out.preempted, out.chunks.len()), (1, 0));
    assert!(s.running.is_empty());
    for b in stolen {
        alloc.main_mut().release(b);
    }
    // It comes back: the prompt is recomputed (no logits needed), then its pending token decodes.
    let out = s.schedule(&mut alloc);
    assert_eq!(lens(&out), vec![(0, 4, false)]);
    update(&mut s, &out, &mut alloc);
    let out = s.schedule(&mut alloc);
    assert_eq!(lens(&out), vec![(0, 1, true)]);
    assert_eq!(out.chunks[0].start, 4);
}
