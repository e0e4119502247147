//! Frequency penalty (OpenAI semantics).

use super::counts::token_counts;
use super::processor::{LogitsProcessor, RowContext};

/// Subtracts `frequency_penalty` × (occurrences in the output) from each token's logit. Only
/// generated tokens count, not the prompt. Negative values encourage repetition; 0 is off.
#[derive(Debug, Default)]
pub(crate) struct FrequencyPenalty;

impl LogitsProcessor for FrequencyPenalty {
    fn name(&self) -> &'static str {
        "frequency_penalty"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let f = ctx.params.frequency_penalty;
        if f == 0.0 || !f.is_finite() {
            return;
        }
        for (t, n) in token_counts(ctx.generated.iter().copied()) {
            if let Some(x) = row.get_mut(t as usize) {
                *x -= f * n as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    fn apply(f: f32) -> [f32; 4] {
        let params = SamplingParams {
            frequency_penalty: f,
            ..Default::default()
        };
        let mut row = [1.0f32, 1.0, 1.0, f32::NEG_INFINITY];
        let ctx = RowContext {
            params: &params,
            prompt: &[2, 2, 2],
            generated: &[0, 1, 0, 3],
            mask: None,
        };
        FrequencyPenalty.apply(&mut row, &ctx);
        row
    }

    #[test]
    fn subtracts_per_occurrence_in_the_output_only() {
        assert_eq!(apply(0.5), [0.0, 0.5, 1.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn negative_penalty_rewards_and_zero_is_off() {
        assert_eq!(apply(-1.0), [3.0, 2.0, 1.0, f32::NEG_INFINITY]);
        assert_eq!(apply(0.0), [1.0, 1.0, 1.0, f32::NEG_INFINITY]);
    }
}
