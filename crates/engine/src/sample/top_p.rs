//! Top-p (nucleus): keeps the smallest set of most likely tokens whose mass reaches `top_p`.

use super::processor::{LogitsProcessor, RowContext};

/// Keeps the most likely tokens, in order of decreasing logit (ties: lowest id first), until
/// their probability mass reaches `top_p`; masks the rest. At least one token is always kept;
/// `top_p >= 1` is off.
///
/// Sorting a 50k-token row for every sampled token is the cost vLLM and llama.cpp pay; here only
/// the candidates above a threshold are sorted, and the threshold is lowered (by halving the
/// probability bound) until the candidates alone hold `top_p` of the mass. The kept set is the
/// same as with a full sort, since the nucleus only ever takes tokens from the top.
#[derive(Debug, Default)]
pub(crate) struct TopP;

impl LogitsProcessor for TopP {
    fn name(&self) -> &'static str {
        "top_p"
    }

    fn is_argmax_invariant(&self) -> bool {
        true
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let top_p = f64::from(ctx.params.top_p);
        if top_p >= 1.0 || top_p.is_nan() {
            return;
        }
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if !max.is_finite() {
            return;
        }
        let max = f64::from(max);
        let weight = |x: f32| (f64::from(x) - max).exp();
        let total: f64 = row.iter().map(|&x| weight(x)).sum();
        let (mut candidates, mut bound) = (Vec::new(), 0.5f64);
        loop {
            candidates.clear();
            candidates.extend((0..row.len()).filter(|&i| weight(row[i]) >= bound));
            let mass: f64 = candidates.iter().map(|&i| weight(row[i])).sum();
            if mass >= top_p * total || bound < 1e-300 {
                break;
            }
            bound *= 0.5f64.powi(8);
        }
        candidates.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut keep = vec![false; row.len()];
        let mut acc = 0.0;
        for &i in &candidates {
            keep[i] = true;
            acc += weight(row[i]);
            if acc >= top_p * total {
                break;
            }
        }
        for (x, kept) in row.iter_mut().zip(keep) {
            if !kept {
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

    fn apply(row: &mut [f32], top_p: f32) {
        let params = SamplingParams {
            top_p,
            ..Default::default()
        };
        TopP.apply(row, &RowContext::bare(&params));
    }

    /// Logits whose softmax is exactly `probs`.
    fn logits(probs: &[f64]) -> Vec<f32> {
        probs.iter().map(|p| p.ln() as f32).collect()
    }

    #[test]
    fn keeps_the_smallest_prefix_reaching_p() {
        let mut row = logits(&[0.1, 0.5, 0.15, 0.25]);
        apply(&mut row, 0.7);
        let kept: Vec<bool> = row.iter().map(|x| x.is_finite()).collect();
        assert_eq!(kept, [false, true, false, true]);
        let mut row = logits(&[0.1, 0.5, 0.15, 0.25]);
        apply(&mut row, 0.8);
        let kept: Vec<bool> = row.iter().map(|x| x.is_finite()).collect();
        assert_eq!(kept, [false, true, true, true]);
    }

    #[test]
    fn one_and_above_is_off() {
        let orig = logits(&[0.1, 0.5, 0.15, 0.25]);
        let mut row = orig.clone();
        apply(&mut row, 1.0);
        assert_eq!(row, orig);
    }

    #[test]
    fn tiny_p_keeps_the_argmax_and_ties_prefer_low_ids() {
        let mut row = [0.3f32, 0.9, 0.9, 0.1];
        apply(&mut row, 1e-6);
        assert_eq!(row, [NEG, 0.9, NEG, NEG]);
        let mut row = [0.3f32, 0.9, 0.9, 0.1];
        apply(&mut row, 0.0);
        assert_eq!(row, [NEG, 0.9, NEG, NEG]);
    }

    #[test]
    fn long_flat_tail_is_handled_by_lowering_the_bound() {
        // One strong token and 10 000 weak ones holding most of the mass together.
        let mut row = vec![-10.0f32; 10_001];
        row[7] = 0.0;
        apply(&mut row, 0.9);
        let kept = row.iter().filter(|x| x.is_finite()).count();
        // The strong token holds about 0.688 of the mass; the rest of 0.9 takes about 6 800 of
        // the weak ones, far below the first probability bound (0.5).
        let strong = 1.0 / (1.0 + 10_000.0 * (-10.0f64).exp());
        let per_weak = (-10.0f64).exp() * strong;
        let want = 1 + ((0.9 - strong) / per_weak).ceil() as usize;
        assert_eq!(kept, want);
        assert!(row[7].is_finite());
    }

    #[test]
    fn masked_entries_stay_masked() {
        let mut row = [NEG, 1.0, NEG, 0.0];
        apply(&mut row, 0.5);
        assert_eq!(row, [NEG, 1.0, NEG, NEG]);
    }
}
