//! Repetition penalty (Keskar et al., 2019, as Hugging Face applies it).

use super::counts::token_counts;
use super::processor::{LogitsProcessor, RowContext};

/// For every distinct token of prompt + output: a positive logit is divided by
/// `repetition_penalty`, a negative one multiplied by it (so both move toward less likely).
/// 1.0 is off.
#[derive(Debug, Default)]
pub(crate) struct RepetitionPenalty;

impl LogitsProcessor for RepetitionPenalty {
    fn name(&self) -> &'static str {
        "repetition_penalty"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let p = ctx.params.repetition_penalty;
        if p == 1.0 || !p.is_finite() || p <= 0.0 {
            return;
        }
        for (t, _) in token_counts(ctx.history()) {
            if let Some(x) = row.get_mut(t as usize) {
                *x = if *x > 0.0 { *x / p } else { *x * p };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    #[test]
    fn divides_positive_and_multiplies_negative_logits_once_per_token() {
        let params = SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut row = [4.0f32, -1.0, 3.0, 0.0, 1.0];
        // Token 0 three times (prompt and output), 1 in the prompt, 3 in the output.
        let ctx = RowContext {
            params: &params,
            prompt: &[0, 1, 0],
            generated: &[3, 0],
            mask: None,
        };
        RepetitionPenalty.apply(&mut row, &ctx);
        assert_eq!(row, [2.0, -2.0, 3.0, 0.0, 1.0]);
    }

    #[test]
    fn changes_the_argmax() {
        let params = SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let mut row = [3.0f32, 2.5];
        let ctx = RowContext {
            params: &params,
            prompt: &[],
            generated: &[0],
            mask: None,
        };
        RepetitionPenalty.apply(&mut row, &ctx);
        assert_eq!(crate::sample::greedy::argmax(&row), 1);
    }

    #[test]
    fn one_is_off() {
        let params = SamplingParams::default();
        let mut row = [4.0f32, -1.0];
        let ctx = RowContext {
            params: &params,
            prompt: &[0, 1],
            generated: &[],
            mask: None,
        };
        RepetitionPenalty.apply(&mut row, &ctx);
        assert_eq!(row, [4.0, -1.0]);
    }
}
