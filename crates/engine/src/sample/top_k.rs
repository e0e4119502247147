//! Top-k: keeps the `top_k` largest logits and masks the rest.

use super::processor::{LogitsProcessor, RowContext};

/// Keeps exactly `top_k` tokens (0 = off): the largest logits, with ties at the cut going to
/// the lowest ids, so the kept set never depends on sort stability.
#[derive(Debug, Default)]
pub(crate) struct TopK;

impl LogitsProcessor for TopK {
    fn name(&self) -> &'static str {
        "top_k"
    }

    fn is_argmax_invariant(&self) -> bool {
        true
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let k = ctx.params.top_k;
        if k == 0 || k >= row.len() {
            return;
        }
        let mut values = row.to_vec();
        let (_, kth, _) = values.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let threshold = *kth;
        let mut ties_left = k - row.iter().filter(|&&x| x > threshold).count();
        for x in row.iter_mut() {
            if *x > threshold {
                continue;
            }
            if *x == threshold && ties_left > 0 {
                ties_left -= 1;
            } else {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    fn apply(row: &mut [f32], top_k: usize) {
        let params = SamplingParams {
            top_k,
            ..Default::default()
        };
        TopK.apply(row, &RowContext::bare(&params));
    }

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn keeps_the_k_largest() {
        let mut row = [0.1f32, 0.4, 0.2, 0.3];
        apply(&mut row, 2);
        assert_eq!(row, [NEG, 0.4, NEG, 0.3]);
    }

    #[test]
    fn ties_at_the_cut_keep_the_lowest_ids() {
        let mut row = [0.5f32, 0.9, 0.5, 0.5, 0.1];
        apply(&mut row, 3);
        assert_eq!(row, [0.5, 0.9, 0.5, NEG, NEG]);
    }

    #[test]
    fn off_and_larger_than_vocab_are_no_ops() {
        let orig = [0.1f32, 0.4, 0.2, 0.3];
        let mut row = orig;
        apply(&mut row, 0);
        assert_eq!(row, orig);
        apply(&mut row, 4);
        assert_eq!(row, orig);
        apply(&mut row, 100);
        assert_eq!(row, orig);
    }

    #[test]
    fn top_1_keeps_only_the_argmax() {
        let mut row = [0.1f32, 0.4, 0.4, NEG];
        apply(&mut row, 1);
        assert_eq!(row, [NEG, 0.4, NEG, NEG]);
    }
}
