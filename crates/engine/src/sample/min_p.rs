//! Min-p: keeps the tokens at least `min_p` times as likely as the most likely one.

use super::processor::{LogitsProcessor, RowContext};

/// Masks every token whose probability is below `min_p` × the top probability, i.e. whose
/// logit is below `max + ln(min_p)` (after temperature, like vLLM and Hugging Face). The top
/// token always stays; 0 is off.
#[derive(Debug, Default)]
pub(crate) struct MinP;

impl LogitsProcessor for MinP {
    fn name(&self) -> &'static str {
        "min_p"
    }

    fn is_argmax_invariant(&self) -> bool {
        true
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let p = ctx.params.min_p;
        if p.is_nan() || p <= 0.0 {
            return;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return;
        }
        let threshold = f64::from(max) + f64::from(p.min(1.0)).ln();
        for x in row.iter_mut() {
            if f64::from(*x) < threshold {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    const NEG: f32 = f32::NEG_INFINITY;

    fn apply(row: &mut [f32], min_p: f32) {
        let params = SamplingParams {
            min_p,
            ..Default::default()
        };
        MinP.apply(row, &RowContext::bare(&params));
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn keeps_tokens_above_the_scaled_top_probability() {
        let mut row = logits(&[0.5, 0.3, 0.15, 0.05]);
        apply(&mut row, 0.5);
        // 0.5 × 0.5 = 0.25: keeps 0.5 and 0.3.
        let kept: Vec<bool> = row.iter().map(|x| x.is_finite()).collect();
        assert_eq!(kept, [true, true, false, false]);
    }

    #[test]
    fn one_keeps_only_the_top_and_ties() {
        let mut row = [1.0f32, 2.0, 2.0, 0.0];
        apply(&mut row, 1.0);
        assert_eq!(row, [NEG, 2.0, 2.0, NEG]);
    }

    #[test]
    fn zero_is_off() {
        let mut row = [1.0f32, -30.0, NEG];
        apply(&mut row, 0.0);
        assert_eq!(row, [1.0, -30.0, NEG]);
    }
}
