//! Structured-output masks, computed on a helper thread while the forward pass runs.
//!
//! A constrained choice's next mask depends only on the tokens it has already consumed, so it
//! is known before the step's logits are. The constraints of the choices that sample this step
//! are moved out of their sequences, their masks computed beside the forward pass, and moved
//! back before sampling; unconstrained rows never wait for them.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::constraint::{OutputConstraint, TokenMask};
use crate::sched::ScheduledChunk;
use crate::seq::SequenceGroup;

pub(super) struct MaskJob {
    group: usize,
    choice: usize,
    constraint: Box<dyn OutputConstraint>,
    mask: TokenMask,
    result: Result<(), String>,
}

/// Moves out the constraints of the constrained choices that sample in this step.
pub(super) fn take_jobs(
    running: &mut [SequenceGroup],
    chunks: &[ScheduledChunk],
    vocab: usize,
) -> Vec<MaskJob> {
    let mut jobs = Vec::new();
    for c in chunks.iter().filter(|c| c.want_logits) {
        let group = &mut running[c.group];
        for i in group.sampling_choices(c.target) {
            let seq = &mut group.choices[i];
            if let Some(constraint) = seq.constraint.take() {
                let mask = seq.mask.take().unwrap_or_else(|| TokenMask::new(vocab));
                jobs.push(MaskJob {
                    group: c.group,
                    choice: i,
                    constraint,
                    mask,
                    result: Ok(()),
                });
            }
        }
    }
    jobs
}

/// Computes every job's mask; a panic fails only its job.
pub(super) fn compute(jobs: &mut [MaskJob]) {
    for job in jobs {
        job.result = compute_one(job.constraint.as_mut(), &mut job.mask);
    }
}

/// One mask, with panics turned into errors.
pub(crate) fn compute_one(
    constraint: &mut dyn OutputConstraint,
    mask: &mut TokenMask,
) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| constraint.compute_mask(mask)))
        .unwrap_or_else(|_| Err("the grammar engine panicked while computing a mask".into()))
}

/// Moves the constraints back with their fresh masks; a failed mask is left out, so the
/// sampler computes it again and reports the error with its request.
pub(super) fn put_back(running: &mut [SequenceGroup], jobs: Vec<MaskJob>) {
    for job in jobs {
        let seq = &mut running[job.group].choices[job.choice];
        seq.constraint = Some(job.constraint);
        seq.mask = job.result.is_ok().then_some(job.mask);
    }
}
