//! The logits-processor interface: one small transformation of one logits row.

use crate::api::SamplingParams;
use crate::constraint::TokenMask;
use crate::model::TokenId;

/// What a processor may read about the row's sequence: its parameters and its history (the
/// prompt and the tokens generated so far, held-back ones included). Processors stay stateless,
/// so one pipeline serves every row of a batch; what they derive from the history (counts,
/// n-grams) they compute from these slices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowContext<'a> {
    pub(crate) params: &'a SamplingParams,
    pub(crate) prompt: &'a [TokenId],
    pub(crate) generated: &'a [TokenId],
    /// Structured output: the tokens the choice's constraint allows next.
    pub(crate) mask: Option<&'a TokenMask>,
}

impl<'a> RowContext<'a> {
    /// A context with no history (tests of history-free processors).
    #[cfg(test)]
    pub(crate) fn bare(params: &'a SamplingParams) -> RowContext<'a> {
        RowContext {
            params,
            prompt: &[],
            generated: &[],
            mask: None,
        }
    }

    /// Prompt and output, in order.
    pub(crate) fn history(&self) -> impl Iterator<Item = TokenId> + '_ {
        self.prompt.iter().chain(self.generated).copied()
    }
}

/// One step of the sampling pipeline (see the order in [`super`]). Rows never contain NaN when
/// a processor sees them (the sampler turns NaN into `-inf` first); a masked token is `-inf`.
pub(crate) trait LogitsProcessor: Send {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// True when the processor never changes which token has the largest logit, so greedy rows
    /// can skip it (temperature, top-k, top-p; not penalties or bad words).
    fn is_argmax_invariant(&self) -> bool;

    /// Rewrites `row` in place.
    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>);
}

/// Masks `token` in `row` (ids outside the row are ignored: the engine validates ids, this is
/// only a guard).
pub(crate) fn mask(row: &mut [f32], token: TokenId) {
    if let Some(x) = row.get_mut(token as usize) {
        *x = f32::NEG_INFINITY;
    }
}
