//! The sampler: one raw logits row in, one token and its log-probability out.
//!
//! The pipeline, in this order (one file per step):
//!
//! 1. Forced output (`forced_tokens`): the token is given; no processor runs.
//! 2. `logprob`: `log_softmax` of the RAW row at the chosen token (what `Event::Token` reports;
//!    skipped, NaN, when `token_logprobs` is off), computed from the row as the model returned
//!    it; likewise the top log-probabilities and the raw row itself when asked for (`TokenExtra`).
//! 3. Sanitize: NaN becomes `-inf` in a working copy of the row.
//! 4. Processors that can change the argmax, on the raw scale: `grammar` (structured output:
//!    the constraint's mask, computed during the forward pass), `bad_words`, `min_tokens` (EOS
//!    and stop sequences masked until the minimum length), `repetition`, `frequency`,
//!    `presence`, `no_repeat_ngram`, `logit_bias`.
//! 5. `greedy`: `temperature == 0` → argmax of the row, ties to the lowest id. Greedy rows stop here.
//! 6. `temperature`: divide by the temperature.
//! 7. `top_k`: keep the k largest logits.
//! 8. `top_p`: keep the nucleus of mass p.
//! 9. `min_p`: keep tokens at least `min_p` × as likely as the top one.
//! 10. `categorical`: a draw from `softmax(row)` with the choice's own seeded `rng`.
//!
//! Steps 4 and 6–9 are [`LogitsProcessor`]s in one ordered list; a processor that is argmax
//! invariant is skipped for greedy rows. New processors are new files added to
//! [`Sampler::default`] at their place in this list.

mod bad_words;
mod categorical;
mod counts;
mod frequency;
mod grammar;
pub(crate) mod greedy;
mod logit_bias;
pub(crate) mod logprob;
mod min_p;
mod min_tokens;
mod no_repeat_ngram;
mod presence;
mod processor;
mod repetition;
pub(crate) mod rng;
mod temperature;
mod top_k;
mod top_p;

pub(crate) use processor::{LogitsProcessor, RowContext};
pub(crate) use rng::Rng;

use crate::api::TokenExtra;
use crate::model::TokenId;

/// A sampled token with the log-probability of the raw distribution at it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sampled {
    pub(crate) token: TokenId,
    pub(crate) logprob: f32,
    pub(crate) extra: Option<Box<TokenExtra>>,
}

impl Sampled {
    #[cfg(test)]
    pub(crate) fn plain(token: TokenId, logprob: f32) -> Sampled {
        Sampled {
            token,
            logprob,
            extra: None,
        }
    }
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
            Box::new(grammar::GrammarMask),
            Box::new(bad_words::BadWords),
            Box::new(min_tokens::MinTokens),
            Box::new(repetition::RepetitionPenalty),
            Box::new(frequency::FrequencyPenalty),
            Box::new(presence::PresencePenalty),
            Box::new(no_repeat_ngram::NoRepeatNgram),
            Box::new(logit_bias::LogitBias),
            Box::new(temperature::Temperature),
            Box::new(top_k::TopK),
            Box::new(top_p::TopP),
            Box::new(min_p::MinP),
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

    /// Samples one token from the raw logits `row` (or takes the forced one).
    pub(crate) fn sample(&mut self, row: &[f32], ctx: &RowContext<'_>, rng: &mut Rng) -> Sampled {
        let forced = ctx.params.forced_tokens.get(ctx.generated.len()).copied();
        let token = match forced {
            Some(t) => t,
            None => self.choose(row, ctx, rng),
        };
        let params = ctx.params;
        let extra_wanted = params.top_logprobs > 0 || params.output_logits;
        if !params.token_logprobs && !extra_wanted {
            return Sampled {
                token,
                logprob: f32::NAN,
                extra: None,
            };
        }
        // One normalizer pass over the vocabulary serves the token's and the top log-probs.
        let norm = logprob::normalizer(row);
        let extra = extra_wanted.then(|| {
            Box::new(TokenExtra {
                top_logprobs: logprob::top_logprobs(row, params.top_logprobs, norm),
                logits: params.output_logits.then(|| row.to_vec()),
            })
        });
        Sampled {
            token,
            logprob: logprob::logprob_at(row, token, norm),
            extra,
        }
    }

    /// The row after every processor (NaN → `-inf` first), as beam search scores it; the
    /// temperature-like warpers are skipped for greedy parameters, as in [`Self::sample`].
    pub(crate) fn process(&mut self, row: &[f32], ctx: &RowContext<'_>) -> &[f32] {
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
        &self.scratch
    }

    /// The log-probability of `token` in the raw `row`, with the `top` most likely tokens
    /// when `top > 0` (prompt scoring).
    pub(crate) fn score(row: &[f32], token: TokenId, top: usize) -> (f32, Option<Box<TokenExtra>>) {
        let norm = logprob::normalizer(row);
        let extra = (top > 0).then(|| {
            Box::new(TokenExtra {
                top_logprobs: logprob::top_logprobs(row, top, norm),
                logits: None,
            })
        });
        (logprob::logprob_at(row, token, norm), extra)
    }

    fn choose(&mut self, row: &[f32], ctx: &RowContext<'_>, rng: &mut Rng) -> TokenId {
        let processed = self.process(row, ctx);
        if ctx.params.temperature <= 0.0 {
            greedy::argmax(processed)
        } else {
            categorical::draw(processed, rng)
        }
    }
}

#[cfg(test)]
mod tests;
