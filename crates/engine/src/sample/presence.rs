//! Presence penalty (OpenAI semantics).

use super::counts::token_counts;
use super::processor::{LogitsProcessor, RowContext};

/// Subtracts `presence_penalty` once from the logit of every token present in the output
/// (the prompt does not count). Negative values encourage repetition; 0 is off.
#[derive(Debug, Default)]
pub(crate) struct PresencePenalty;

impl LogitsProcessor for PresencePenalty {
    fn name(&self) -> &'static str {
        "presence_penalty"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let p = ctx.params.presence_penalty;
        if p == 0.0 || !p.is_finite() {
            return;
        }
        for (t, _) in token_counts(ctx.generated.iter().copied()) {
            if let Some(x) = row.get_mut(t as usize) {
                *x -= p;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    fn apply(p: f32) -> [f32; 3] {
        let params = SamplingParams {
            presence_penalty: p,
            ..Default::default()
        };
        let mut row = [1.0f32, 1.0, 1.0];
        let ctx = RowContext {
            params: &params,
            prompt: &[2],
            generated: &[0, 0, 0, 1],
            mask: None,
        };
        PresencePenalty.apply(&mut row, &ctx);
        row
    }

    #[test]
    fn subtracts_once_per_present_token() {
        assert_eq!(apply(0.25), [0.75, 0.75, 1.0]);
        assert_eq!(apply(-2.0), [3.0, 3.0, 1.0]);
        assert_eq!(apply(0.0), [1.0, 1.0, 1.0]);
    }
}
