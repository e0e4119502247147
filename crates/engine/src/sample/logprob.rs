//! Log-probabilities of the raw distribution (before temperature and filters).

use crate::model::TokenId;

/// The normalizer of `log_softmax(row)`: the largest non-NaN logit and `ln Σ exp(x - max)` over
/// the non-NaN entries, in f64. `None` when the row has no finite maximum (all `-inf`, or an
/// infinite logit). Computed once per row and shared by every log-probability of that row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Normalizer {
    max: f64,
    ln_sum: f64,
}

pub(crate) fn normalizer(row: &[f32]) -> Option<Normalizer> {
    let max = row
        .iter()
        .copied()
        .filter(|x| !x.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let max = f64::from(max);
    let sum: f64 = row
        .iter()
        .filter(|x| !x.is_nan())
        .map(|&x| (f64::from(x) - max).exp())
        .sum();
    Some(Normalizer {
        max,
        ln_sum: sum.ln(),
    })
}

/// `log_softmax(row)[token]` given the row's [`normalizer`]. NaN entries count as `-inf`
/// (probability 0); a degenerate row gives 0 to its maximum and `-inf` elsewhere.
pub(crate) fn logprob_at(row: &[f32], token: TokenId, norm: Option<Normalizer>) -> f32 {
    let chosen = f64::from(row[token as usize]);
    match norm {
        Some(n) if !chosen.is_nan() => (chosen - n.max - n.ln_sum) as f32,
        _ => {
            let max = row
                .iter()
                .copied()
                .filter(|x| !x.is_nan())
                .fold(f32::NEG_INFINITY, f32::max);
            if chosen == f64::from(max) {
                0.0
            } else {
                f32::NEG_INFINITY
            }
        }
    }
}

/// `log_softmax(row)[token]` (one pass for the normalizer; use [`logprob_at`] to share it).
#[cfg(test)]
pub(crate) fn log_softmax_at(row: &[f32], token: TokenId) -> f32 {
    logprob_at(row, token, normalizer(row))
}

/// The `k` most likely tokens of `log_softmax(row)`, most likely first, ties to the lowest id
/// (NaN entries never appear), given the row's [`normalizer`].
pub(crate) fn top_logprobs(row: &[f32], k: usize, norm: Option<Normalizer>) -> Vec<(TokenId, f32)> {
    let k = k.min(row.len());
    if k == 0 {
        return Vec::new();
    }
    let mut ids: Vec<TokenId> = (0..row.len() as TokenId)
        .filter(|&i| !row[i as usize].is_nan())
        .collect();
    let order =
        |a: &TokenId, b: &TokenId| row[*b as usize].total_cmp(&row[*a as usize]).then(a.cmp(b));
    if ids.len() > k {
        ids.select_nth_unstable_by(k - 1, order);
        ids.truncate(k);
    }
    ids.sort_unstable_by(order);
    match norm {
        Some(n) => {
            let norm = n.max + n.ln_sum;
            ids.iter()
                .map(|&t| (t, (f64::from(row[t as usize]) - norm) as f32))
                .collect()
        }
        None => ids.iter().map(|&t| (t, logprob_at(row, t, None))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_sorted_and_match_log_softmax() {
        let row = [1.0f32, 4.0, f32::NAN, 3.0, 4.0, -2.0];
        let top = top_logprobs(&row, 3, normalizer(&row));
        let ids: Vec<TokenId> = top.iter().map(|&(t, _)| t).collect();
        assert_eq!(ids, [1, 4, 3], "ties go to the lowest id");
        for (t, lp) in top {
            assert!((lp - log_softmax_at(&row, t)).abs() < 1e-6);
        }
        assert!(top_logprobs(&row, 0, normalizer(&row)).is_empty());
        assert_eq!(
            top_logprobs(&row, 100, normalizer(&row)).len(),
            5,
            "NaN entries are left out"
        );
    }

    #[test]
    fn matches_a_hand_computed_softmax() {
        let row = [1.0f32, 2.0, 3.0, 4.0];
        let z: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
        for t in 0..4 {
            let want = (f64::from(row[t]).exp() / z).ln() as f32;
            assert!((log_softmax_at(&row, t as TokenId) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn uniform_row_and_masked_entries() {
        let row = [0.0f32; 4];
        assert!((log_softmax_at(&row, 3) - (0.25f32).ln()).abs() < 1e-6);
        let row = [0.0f32, f32::NEG_INFINITY, f32::NAN, 0.0];
        assert!((log_softmax_at(&row, 0) - (0.5f32).ln()).abs() < 1e-6);
        assert_eq!(log_softmax_at(&row, 1), f32::NEG_INFINITY);
    }

    #[test]
    fn large_logits_do_not_overflow() {
        let row = [1000.0f32, 999.0];
        let lp = log_softmax_at(&row, 0);
        assert!(lp.is_finite() && lp < 0.0 && lp > -1.0, "{lp}");
    }
}
