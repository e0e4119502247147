//! No repeated n-grams (Hugging Face `no_repeat_ngram_size`, Friendli `no_repeat_ngram`).

use super::processor::{mask, LogitsProcessor, RowContext};
use crate::model::TokenId;

/// With size n ≥ 2: every n-gram may occur once in prompt + output, so the tokens that would
/// complete an n-gram already present (one whose first n - 1 tokens equal the last n - 1 of the
/// history) are masked. 0 and 1 are off (a 1-gram cannot be prevented).
#[derive(Debug, Default)]
pub(crate) struct NoRepeatNgram;

impl LogitsProcessor for NoRepeatNgram {
    fn name(&self) -> &'static str {
        "no_repeat_ngram"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let n = ctx.params.no_repeat_ngram;
        if n < 2 {
            return;
        }
        let history: Vec<TokenId> = ctx.history().collect();
        if history.len() < n {
            return;
        }
        let prefix = &history[history.len() - (n - 1)..];
        for w in history.windows(n) {
            if &w[..n - 1] == prefix {
                mask(row, w[n - 1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    const NEG: f32 = f32::NEG_INFINITY;

    fn apply(n: usize, prompt: &[TokenId], generated: &[TokenId]) -> Vec<f32> {
        let params = SamplingParams {
            no_repeat_ngram: n,
            ..Default::default()
        };
        let mut row = vec![0.0f32, 1.0, 2.0, 3.0, 4.0];
        let ctx = RowContext {
            params: &params,
            prompt,
            generated,
            mask: None,
        };
        NoRepeatNgram.apply(&mut row, &ctx);
        row
    }

    #[test]
    fn bans_tokens_completing_a_seen_bigram() {
        // History 1 2 3 1: the bigram (1, 2) exists, so 2 is banned after the final 1.
        assert_eq!(apply(2, &[1, 2], &[3, 1]), [0.0, 1.0, NEG, 3.0, 4.0]);
        // Every continuation of 1 seen so far is banned.
        assert_eq!(apply(2, &[1, 2, 1, 4], &[1]), [0.0, 1.0, NEG, 3.0, NEG]);
    }

    #[test]
    fn trigrams_need_the_two_token_prefix() {
        // History 1 2 3 4 1 2: (1, 2, 3) exists → 3 banned; (2, 3) alone would not matter.
        assert_eq!(apply(3, &[1, 2, 3, 4], &[1, 2]), [0.0, 1.0, 2.0, NEG, 4.0]);
        assert_eq!(apply(3, &[1, 2, 3, 4], &[0, 2]), [0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn off_and_short_histories() {
        assert_eq!(apply(1, &[1, 1], &[1]), [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(apply(0, &[1, 1], &[1]), [0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(apply(4, &[1, 2], &[1]), [0.0, 1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn a_repeated_token_run_bans_itself() {
        // History 3 3: the bigram (3, 3) exists, so 3 cannot follow 3 again.
        assert_eq!(apply(2, &[3], &[3]), [0.0, 1.0, 2.0, NEG, 4.0]);
    }
}
