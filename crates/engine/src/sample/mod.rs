//! The sampler: one raw logits row in, one token and its log-probability out.
//!
//! The pipeline, in this order (one file per step):
//!
//! 1. `logprob`: `log_softmax` of the RAW row at the chosen token (what `Event::Token` reports),
//!    computed from the row as the model returned it.
//! 2. Sanitize: NaN becomes `-inf` in a working copy of the row.
//! 3. Processors that can change the argmax (none yet: logit bias, bad words, repetition /
//!    frequency / presence penalties, min_tokens and grammar masks go here, in that order).
//! 4. `greedy`: `temperature == 0` → argmax of the row, ties to the lowest id. Greedy rows stop here.
//! 5. `temperature`: divide by the temperature.
//! 6. `top_k`: keep the k largest logits.
//! 7. `top_p`: keep the nucleus of mass p (min_p / typical_p would follow here).
//! 8. `categorical`: a draw from `softmax(row)` with the choice's own seeded `rng`.
//!
//! Steps 3 and 5–7 are [`LogitsProcessor`]s in one ordered list; a processor that is argmax
//! invariant is skipped for greedy rows. New processors are new files added to
//! [`Sampler::default`] at their place in this list.

mod categorical;
mod greedy;
mod logprob;
mod processor;
pub(crate) mod rng;
mod temperature;
mod top_k;
mod top_p;

pub(crate) use processor::{LogitsProcessor, RowContext};
pub(crate) use rng::Rng;

use crate::model::TokenId;

/// A sampled token with the log-probability of the raw distribution at it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampled {
    pub(crate) token: TokenId,
    pub(crate) logprob: f32,
}

/// The ordered pipeline (see the module docs), with a scratch row reused across calls.
pub(crate) struct Sampler {
    processors: Vec<Box<dyn LogitsProcessor>>,
    scratch: Vec<f32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.processors.iter().map(|p| p.name()))
            .finish()
    }
}

impl Default for Sampler {
    fn default() -> Sampler {
        Sampler::new(vec![
            Box::new(temperature::Temperature),
            Box::new(top_k::TopK),
            Box::new(top_p::TopP),
        ])
    }
}

impl Sampler {
    /// A sampler running `processors` in the given order.
    pub(crate) fn new(processors: Vec<Box<dyn LogitsProcessor>>) -> Sampler {
        Sampler {
            processors,
            scratch: Vec::new(),
        }
    }

    /// Samples one token from the raw logits `row`.
    pub(crate) fn sample(&mut self, row: &[f32], ctx: &RowContext<'_>, rng: &mut Rng) -> Sampled {
        let greedy = ctx.params.temperature <= 0.0;
        self.scratch.clear();
        self.scratch.extend(
            row.iter()
                .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x }),
        );
        for p in &self.processors {
            if !(greedy && p.is_argmax_invariant()) {
                p.apply(&mut self.scratch, ctx);
            }
        }
        let token = if greedy {
            greedy::argmax(&self.scratch)
        } else {
            categorical::draw(&self.scratch, rng)
        };
        Sampled {
            token,
            logprob: logprob::log_softmax_at(row, token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SamplingParams;

    fn sample(row: &[f32], params: SamplingParams, seed: u64) -> Vec<Sampled> {
        let mut sampler = Sampler::default();
        let mut rng = Rng::new(seed);
        let ctx = RowContext { params: &params };
        (0..16)
            .map(|_| sampler.sample(row, &ctx, &mut rng))
            .collect()
    }

    #[test]
    fn default_order_is_documented_order() {
        assert_eq!(
            format!("{:?}", Sampler::default()),
            r#"["temperature", "top_k", "top_p"]"#
        );
    }

    #[test]
    fn greedy_ignores_filters_and_rng() {
        let row = [0.1f32, 0.4, 0.2, 0.4];
        let params = SamplingParams {
            temperature: 0.0,
            top_k: 3,
            top_p: 0.1,
            ..Default::default()
        };
        let out = sample(&row, params, 1);
        assert!(out.iter().all(|s| s.token == 1));
        let want = logprob::log_softmax_at(&row, 1);
        assert!(out.iter().all(|s| s.logprob == want));
    }

    #[test]
    fn logprob_is_of_the_raw_row_not_the_filtered_one() {
        let row = [0.0f32, 1.0, 2.0, 3.0];
        let params = SamplingParams {
            temperature: 0.5,
            top_k: 1,
            ..Default::default()
        };
        let out = sample(&row, params, 3);
        assert!(out.iter().all(|s| s.token == 3));
        let raw = logprob::log_softmax_at(&row, 3);
        assert!(out.iter().all(|s| s.logprob == raw));
        assert!(raw < -0.1, "top_k must not make the reported probability 1");
    }

    #[test]
    fn seeded_draws_replay_and_differ_across_seeds() {
        let row = [0.3f32, 0.1, 0.5, 0.2, 0.4, 0.0];
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let a = sample(&row, params.clone(), 42);
        assert_eq!(a, sample(&row, params.clone(), 42));
        assert_ne!(a, sample(&row, params, 43));
    }

    #[test]
    fn filters_restrict_the_draw() {
        let row = [0.3f32, 0.1, 0.5, 0.2, 0.4, 0.0];
        let params = SamplingParams {
            temperature: 2.0,
            top_k: 2,
            ..Default::default()
        };
        assert!(sample(&row, params, 9)
            .iter()
            .all(|s| s.token == 2 || s.token == 4));
    }

    #[test]
    fn nan_logits_are_never_sampled() {
        let row = [f32::NAN, 0.0, f32::NAN, 0.0];
        let params = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        assert!(sample(&row, params, 5)
            .iter()
            .all(|s| s.token == 1 || s.token == 3));
        let params = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert!(sample(&row, params, 5).iter().all(|s| s.token == 1));
    }
}
