//! Temperature: divides the logits by `temperature` (greedy rows never get here).

use super::processor::{LogitsProcessor, RowContext};

/// Scales a row by `1 / temperature`. A no-op at temperature 1 (and at 0 or below, which the
/// sampler handles as greedy before this step).
#[derive(Debug, Default)]
pub(crate) struct Temperature;

impl LogitsProcessor for Temperature {
    fn name(&self) -> &'static str {
        "temperature"
    }

    fn is_argmax_invariant(&self) -> bool {
        true
    }

    fn apply(&self, row: &mut [f32], ctx: &RowContext<'_>) {
        let t = ctx.params.temperature;
        if t <= 0.0 || t == 1.0 || !t.is_finite() {
            return;
        }
        let inv = 1.0 / t;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;
    use crate::sample::categorical::draw;
    use crate::sample::rng::Rng;

    fn apply(row: &mut [f32], temperature: f32) {
        let params = SamplingParams {
            temperature,
            ..Default::default()
        };
        Temperature.apply(row, &RowContext::bare(&params));
    }

    #[test]
    fn divides_by_the_temperature() {
        let mut row = [1.0f32, -2.0, 4.0, f32::NEG_INFINITY];
        apply(&mut row, 0.5);
        assert_eq!(row, [2.0, -4.0, 8.0, f32::NEG_INFINITY]);
        apply(&mut row, 1.0);
        assert_eq!(row, [2.0, -4.0, 8.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn low_temperature_concentrates_the_draw() {
        // At T = 0.005 the 0.1 gap between the top two logits becomes 20 nats: every draw of
        // this fixed seed lands on the max.
        let mut row = [0.1f32, 0.2, 0.3, 0.4];
        apply(&mut row, 0.005);
        let mut rng = Rng::new(42);
        assert!((0..100).all(|_| draw(&row, &mut rng) == 3));
    }

    #[test]
    fn high_temperature_flattens_the_draw() {
        let mut row = [0.1f32, 0.2, 0.3, 0.4];
        apply(&mut row, 100.0);
        let mut rng = Rng::new(42);
        let mut seen = [0usize; 4];
        for _ in 0..400 {
            seen[draw(&row, &mut rng) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "{seen:?}");
    }
}
