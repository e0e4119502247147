//! Bad words: token sequences that can never be completed.

use super::processor::{mask, LogitsProcessor, RowContext};
use crate::model::TokenId;

/// For each sequence in `seqs` whose all-but-last tokens end `tail` (a one-token sequence
/// always qualifies), calls `f` with the sequence's length and last token: the token that would
/// complete it now. Empty sequences are skipped.
pub(crate) fn completing_tokens(
    tail: &[TokenId],
    seqs: &[Vec<TokenId>],
    mut f: impl FnMut(usize, TokenId),
) {
    for seq in seqs {
        if let Some((&last, prefix)) = seq.split_last() {
            if tail.ends_with(prefix) {
                f(seq.len(), last);
            }
        }
    }
}

/// Masks the last token of every `bad_sequences` entry whose prefix ends the output (HF
/// `bad_words_ids`, Friendli `bad_words` / `bad_word_tokens`). The match is against the output
/// only: a bad phrase whose first tokens end the prompt is not a generated phrase.
#[derive(Debug, Default)]
pub(crate) struct BadWords;

impl LogitsProcessor for BadWords {
    fn name(&self) -> &'static str {
        "bad_words"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        completing_tokens(ctx.generated, &ctx.params.bad_sequences, |_, t| {
            mask(row, t)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    const NEG: f32 = f32::NEG_INFINITY;

    fn apply(generated: &[TokenId], bad: Vec<Vec<TokenId>>) -> Vec<f32> {
        let params = SamplingParams {
            bad_sequences: bad,
            ..Default::default()
        };
        let mut row = vec![0.5f32, 1.0, 2.0, 3.0, -1.0];
        let ctx = RowContext {
            params: &params,
            prompt: &[4, 1],
            generated,
            mask: None,
        };
        BadWords.apply(&mut row, &ctx);
        row
    }

    #[test]
    fn single_tokens_are_always_banned() {
        assert_eq!(apply(&[], vec![vec![3]]), [0.5, 1.0, 2.0, NEG, -1.0]);
        assert_eq!(
            apply(&[0, 2], vec![vec![3], vec![0]]),
            [NEG, 1.0, 2.0, NEG, -1.0]
        );
    }

    #[test]
    fn the_last_token_is_banned_only_after_the_prefix() {
        let bad = vec![vec![1, 2, 3]];
        assert_eq!(apply(&[0, 1, 2], bad.clone()), [0.5, 1.0, 2.0, NEG, -1.0]);
        assert_eq!(apply(&[1, 0, 2], bad.clone()), [0.5, 1.0, 2.0, 3.0, -1.0]);
        assert_eq!(apply(&[2], bad), [0.5, 1.0, 2.0, 3.0, -1.0]);
    }

    #[test]
    fn prompt_tokens_do_not_start_a_bad_phrase() {
        // The prompt ends with [4, 1]; nothing generated yet.
        assert_eq!(apply(&[], vec![vec![1, 2]]), [0.5, 1.0, 2.0, 3.0, -1.0]);
        assert_eq!(apply(&[1], vec![vec![1, 2]]), [0.5, 1.0, NEG, 3.0, -1.0]);
    }

    #[test]
    fn empty_and_out_of_vocabulary_sequences_are_harmless() {
        assert_eq!(
            apply(&[1], vec![vec![], vec![1, 99]]),
            [0.5, 1.0, 2.0, 3.0, -1.0]
        );
    }
}
