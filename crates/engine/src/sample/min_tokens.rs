//! Minimum length: what would end a choice is masked until it has `min_new_tokens` tokens.

use super::bad_words::completing_tokens;
use super::processor::{mask, LogitsProcessor, RowContext};

/// While the output is shorter than `min_new_tokens`, masks every EOS token (unless
/// `ignore_eos`) and the token that would complete a `stop_sequences` entry too early: a
/// matched stop sequence is removed from the output, so it may complete only when the output
/// without its other tokens still has `min_new_tokens` tokens (HF `min_new_tokens`, extended to
/// stop sequences). Forced outputs never get here.
#[derive(Debug, Default)]
pub(crate) struct MinTokens;

impl LogitsProcessor for MinTokens {
    fn name(&self) -> &'static str {
        "min_tokens"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let (min, len) = (ctx.params.min_new_tokens, ctx.generated.len());
        if len >= min {
            return;
        }
        if !ctx.params.ignore_eos {
            for &t in &ctx.params.eos_tokens {
                mask(row, t);
            }
        }
        completing_tokens(ctx.generated, &ctx.params.stop_sequences, |n, t| {
            // The output after the match loses the n - 1 tokens already generated.
            if len + 1 - n < min {
                mask(row, t);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;
    use crate::model::TokenId;

    const NEG: f32 = f32::NEG_INFINITY;

    fn apply(params: &SamplingParams, generated: &[TokenId]) -> Vec<f32> {
        let mut row = vec![0.0f32, 1.0, 2.0, 3.0];
        let ctx = RowContext {
            params,
            prompt: &[1, 2],
            generated,
            mask: None,
        };
        MinTokens.apply(&mut row, &ctx);
        row
    }

    fn params(min: usize) -> SamplingParams {
        SamplingParams {
            min_new_tokens: min,
            eos_tokens: vec![3],
            stop_sequences: vec![vec![1], vec![0, 2]],
            ..Default::default()
        }
    }

    #[test]
    fn eos_and_stop_tokens_are_masked_below_the_minimum() {
        assert_eq!(apply(&params(2), &[]), [0.0, NEG, 2.0, NEG]);
        assert_eq!(apply(&params(2), &[2]), [0.0, NEG, 2.0, NEG]);
        assert_eq!(apply(&params(2), &[2, 2]), [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(apply(&params(0), &[]), [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn a_multi_token_stop_sequence_counts_without_its_matched_tokens() {
        // Output [2, 0]: completing [0, 2] leaves 1 token, below 2.
        assert_eq!(apply(&params(3), &[2, 0]), [0.0, NEG, NEG, NEG]);
        // Output [2, 2, 0]: completing leaves [2, 2]; below 3 still (len 3 < min 4).
        assert_eq!(apply(&params(4), &[2, 2, 0]), [0.0, NEG, NEG, NEG]);
        // min 3, output [2, 2, 0] has 3 tokens: nothing to hold back.
        assert_eq!(apply(&params(3), &[2, 2, 0]), [0.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn ignore_eos_keeps_eos() {
        let mut p = params(2);
        p.ignore_eos = true;
        assert_eq!(apply(&p, &[]), [0.0, NEG, 2.0, 3.0]);
    }
}
