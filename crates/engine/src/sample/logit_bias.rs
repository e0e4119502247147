//! Logit bias (OpenAI `logit_bias`): a fixed amount added to chosen tokens' logits.

use super::processor::{LogitsProcessor, RowContext};

/// Adds each `(token, bias)` of `logit_bias` to that token's logit (a bias of -100 all but bans
/// a token, +100 all but forces it, as in OpenAI's API). Ids outside the row are ignored.
#[derive(Debug, Default)]
pub(crate) struct LogitBias;

impl LogitsProcessor for LogitBias {
    fn name(&self) -> &'static str {
        "logit_bias"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        for &(t, bias) in &ctx.params.logit_bias {
            if let Some(x) = row.get_mut(t as usize) {
                *x += bias;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    #[test]
    fn adds_the_bias_and_ignores_ids_outside_the_row() {
        let params = SamplingParams {
            logit_bias: vec![(1, 2.5), (3, -100.0), (99, 1.0)],
            ..Default::default()
        };
        let mut row = vec![0.0, 1.0, 2.0, 3.0];
        LogitBias.apply(&mut row, &RowContext::bare(&params));
        assert_eq!(row, [0.0, 3.5, 2.0, -97.0]);
    }
}
