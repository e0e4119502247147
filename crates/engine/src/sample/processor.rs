//! The logits-processor interface: one small transformation of one logits row.

use crate::api::SamplingParams;

/// What a processor may read about the row's sequence. Per-sequence state that later
/// processors need (generated-token counts for penalties, a grammar matcher, ...) is added here
/// as fields, filled by the engine from the sequence; processors themselves stay stateless so
/// one pipeline serves every row of a batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowContext<'a> {
    pub(crate) params: &'a SamplingParams,
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
