//! Structured output: masks every token the choice's constraint does not allow next, and the
//! end-of-generation tokens unless the constraint accepts the output as complete.

use super::processor::{LogitsProcessor, RowContext};

#[derive(Debug, Default)]
pub(crate) struct GrammarMask;

impl LogitsProcessor for GrammarMask {
    fn name(&self) -> &'static str {
        "grammar"
    }

    fn is_argmax_invariant(&self) -> bool {
        false
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        if let Some(mask) = ctx.mask {
            mask.apply(row, &ctx.params.eos_tokens);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;
    use crate::constraint::TokenMask;

    #[test]
    fn only_allowed_tokens_and_the_end_when_complete_survive() {
        let params = SamplingParams {
            eos_tokens: vec![0],
            ..Default::default()
        };
        let mut mask = TokenMask::new(6);
        mask.allow(2);
        mask.allow(4);
        let ctx = RowContext {
            mask: Some(&mask),
            ..RowContext::bare(&params)
        };
        let mut row = vec![9.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        GrammarMask.apply(&mut row, &ctx);
        let inf = f32::NEG_INFINITY;
        assert_eq!(row, vec![inf, inf, 2.0, inf, 4.0, inf]);
        mask.end_allowed = true;
        let ctx = RowContext {
            mask: Some(&mask),
            ..RowContext::bare(&params)
        };
        let mut row = vec![9.0, 1.0, 2.0, 3.0, 4.0, 5.0];
        GrammarMask.apply(&mut row, &ctx);
        assert_eq!(row, vec![9.0, inf, 2.0, inf, 4.0, inf]);
        // No mask: untouched.
        let mut row = vec![9.0, 1.0];
        GrammarMask.apply(&mut row, &RowContext::bare(&params));
        assert_eq!(row, vec![9.0, 1.0]);
    }
}
