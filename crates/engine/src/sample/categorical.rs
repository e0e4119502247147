//! The seeded categorical draw: the last step of the pipeline for non-greedy rows.

use super::greedy::argmax;
use super::rng::Rng;
use crate::model::TokenId;

/// Draws a token with probability `softmax(row)`, using one `f64` from `rng`. The cumulative sum
/// runs in token-id order in f64, so the same row and RNG state always give the same token.
/// A row with no finite logit (or an infinite one) falls back to [`argmax`].
pub(crate) fn draw(row: &[f32], rng: &mut Rng) -> TokenId {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let u = rng.next_f64();
    if !max.is_finite() {
        return argmax(row);
    }
    let max = f64::from(max);
    let weight = |x: f32| (f64::from(x) - max).exp();
    let total: f64 = row.iter().map(|&x| weight(x)).sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = None;
    for (i, &x) in row.iter().enumerate() {
        let w = weight(x);
        if w > 0.0 {
            acc += w;
            last = Some(i);
            if acc > target {
                return i as TokenId;
            }
        }
    }
    // Rounding left `target` at (or a hair above) the total: take the last possible token.
    last.map_or_else(|| argmax(row), |i| i as TokenId)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEG: f32 = f32::NEG_INFINITY;

    #[test]
    fn fixed_seed_gives_a_fixed_token() {
        let row = [0.1f32, 0.2, 0.3, 0.4];
        let first: Vec<TokenId> = {
            let mut rng = Rng::new(42);
            (0..8).map(|_| draw(&row, &mut rng)).collect()
        };
        let again: Vec<TokenId> = {
            let mut rng = Rng::new(42);
            (0..8).map(|_| draw(&row, &mut rng)).collect()
        };
        assert_eq!(first, again);
        // The draw is "first cumulative weight above u * total": check against the RNG by hand.
        let mut rng = Rng::new(42);
        let u = rng.next_f64();
        let w: Vec<f64> = row.iter().map(|&x| (f64::from(x) - 0.4).exp()).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let want = w.iter().position(|x| {
            acc += x;
            acc > u * total
        });
        assert_eq!(Some(first[0] as usize), want);
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let probs = [0.1f64, 0.2, 0.3, 0.4];
        let row: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        let mut rng = Rng::new(7);
        let mut seen = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            seen[draw(&row, &mut rng) as usize] += 1;
        }
        for (count, p) in seen.iter().zip(probs) {
            let freq = *count as f64 / n as f64;
            assert!((freq - p).abs() < 0.02, "{seen:?}");
        }
    }

    #[test]
    fn masked_tokens_are_never_drawn() {
        let row = [NEG, 0.0, NEG, 0.0];
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let t = draw(&row, &mut rng);
            assert!(t == 1 || t == 3);
        }
    }

    #[test]
    fn degenerate_rows_fall_back_to_argmax() {
        let mut rng = Rng::new(1);
        assert_eq!(draw(&[NEG, NEG], &mut rng), 0);
        assert_eq!(draw(&[0.0, f32::INFINITY, 1.0], &mut rng), 1);
    }
}
