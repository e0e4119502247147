//! Beam search over one group: its `num_beams` choices are the beams.
//!
//! Each step every live beam's logits row gives its candidates (the best `2k` extensions by the
//! kind's ranking key); once every live beam has its candidates, the `2k` best over all beams
//! are walked in order: an end-of-generation token finishes a hypothesis (only among the first
//! `k`), any other token makes a new beam, until `k` beams are found. New beams fork their
//! parent's block table (shared blocks; the scheduler's copy-on-write copies a shared partial
//! block when the new token is written), constraint and history; the old beams are released.
//! Nothing is sent until the search ends: then the best hypothesis becomes choice 0.
//!
//! Scores: the logits processors act on the raw row (with `pre_normalization`, on its
//! log-softmax), then a log-softmax (skipped with `no_post_normalization`) gives the step's
//! log-probabilities `lp`; a beam's score `φ` is the sum of its `lp`. Finished hypotheses are
//! ranked by `φ / length^length_penalty`, length counting the final EOS. Ranking keys:
//! DETERMINISTIC `φ + lp`; NAIVE_SAMPLING `φ + lp + Gumbel` (a draw without replacement
//! proportional to `exp(φ + lp)`, candidates then ordered by `φ + lp`); STOCHASTIC the
//! extension's Gumbel truncated at its parent's perturbed score (Kool et al. 2019, eq. 11).

use super::{Sequence, SequenceGroup};
use crate::api::{BeamKind, BeamParams, EngineError, Event, FinishReason, TokenExtra};
use crate::constraint::OutputConstraint;
use crate::kv::BlockAllocator;
use crate::model::TokenId;
use crate::sample::{logprob, rng::SplitMix64, Rng, RowContext, Sampler};

/// What was reported for one output token: its raw log-probability and extras.
type Report = (f32, Option<Box<TokenExtra>>);

/// One extension of one beam.
#[derive(Debug, Clone)]
struct Cand {
    parent: usize,
    token: TokenId,
    /// `φ + lp`: the extended sequence's score.
    score: f64,
    /// The ranking key (see the module docs).
    key: f64,
    report: Report,
}

#[derive(Debug)]
struct Hyp {
    tokens: Vec<TokenId>,
    reports: Vec<Report>,
    /// Length-normalized score.
    score: f64,
    reason: FinishReason,
}

/// The search's state beside the group's choices (index = choice = beam).
#[derive(Debug)]
pub(crate) struct BeamState {
    params: BeamParams,
    seed: u64,
    round: u64,
    /// `φ` per beam.
    scores: Vec<f64>,
    /// The perturbed score `G` per beam (STOCHASTIC).
    perturbed: Vec<f64>,
    /// Reports per beam, aligned with its `generated`.
    reports: Vec<Vec<Report>>,
    /// Candidates computed this round, per beam.
    pending: Vec<Option<Vec<Cand>>>,
    /// The best `k` finished hypotheses.
    finished: Vec<Hyp>,
    /// Output tokens of the chosen hypothesis, once done.
    pub(crate) output_len: usize,
}

impl BeamState {
    pub(crate) fn new(params: BeamParams, seed: u64) -> BeamState {
        let k = params.num_beams;
        BeamState {
            params,
            seed,
            round: 0,
            scores: vec![0.0; k],
            perturbed: vec![0.0; k],
            reports: vec![Vec::new(); k],
            pending: vec![None; k],
            finished: Vec::new(),
            output_len: 0,
        }
    }

    /// Preemption: the rows will be computed again.
    pub(crate) fn clear_pending(&mut self) {
        self.pending.iter_mut().for_each(|p| *p = None);
    }

    fn normalized(&self, score: f64, len: usize) -> f64 {
        score / (len.max(1) as f64).powf(f64::from(self.params.length_penalty))
    }

    /// Keeps the best `k` hypotheses.
    fn add(&mut self, hyp: Hyp) {
        let k = self.params.num_beams;
        if self.finished.len() < k {
            self.finished.push(hyp);
        } else if let Some(worst) = self.worst() {
            if hyp.score > self.finished[worst].score {
                self.finished[worst] = hyp;
            }
        }
    }

    fn worst(&self) -> Option<usize> {
        (0..self.finished.len()).min_by(|&a, &b| {
            self.finished[a]
                .score
                .total_cmp(&self.finished[b].score)
                .then(b.cmp(&a))
        })
    }
}

/// The log-probabilities the beam scores use (see the module docs).
fn step_logprobs(
    row: &[f32],
    ctx: &RowContext<'_>,
    sampler: &mut Sampler,
    params: &BeamParams,
) -> Vec<f32> {
    let log_softmax = |r: &[f32]| -> Vec<f32> {
        let norm = logprob::normalizer(r);
        (0..r.len() as TokenId)
            .map(|t| logprob::logprob_at(r, t, norm))
            .collect()
    };
    if params.pre_normalization {
        let normalized = log_softmax(row);
        let processed = sampler.process(&normalized, ctx);
        if params.no_post_normalization {
            processed.to_vec()
        } else {
            log_softmax(processed)
        }
    } else {
        log_softmax(sampler.process(row, ctx))
    }
}

/// A standard Gumbel draw.
fn gumbel(rng: &mut Rng) -> f64 {
    let u = rng.next_f64().max(f64::MIN_POSITIVE);
    -(-u.ln()).ln()
}

/// `G` of an extension with perturbed score `g` when the largest perturbed extension of its
/// parent is `z` and the parent's `G` is `parent` (Kool et al. 2019, appendix B, stable form).
fn truncated(parent: f64, z: f64, g: f64) -> f64 {
    let v = parent - g + ln_1m_exp(g - z);
    parent - v.max(0.0) - (-v.abs()).exp().ln_1p()
}

/// `ln(1 - e^x)` for `x <= 0`.
fn ln_1m_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// The random stream of one beam's row in one round: a pure function of the request seed, the
/// round and the beam, so preemption does not change the result.
fn row_rng(seed: u64, round: u64, beam: usize) -> Rng {
    let mut mix = SplitMix64::new(seed ^ round.rotate_left(32) ^ (beam as u64).rotate_left(48));
    Rng::new(mix.next_u64())
}

impl SequenceGroup {
    /// Takes the logits row of beam `c` (or the prompt's row, which only beam 0 extends):
    /// records its candidates; once every live beam has them, runs the round. Events are
    /// pushed only when the search ends.
    pub(crate) fn beam_row(
        &mut self,
        c: Option<usize>,
        row: &[f32],
        sampler: &mut Sampler,
        alloc: &mut BlockAllocator,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let live: Vec<usize> = self.live().collect();
        let state = self.beam.as_mut().expect("a beam group");
        let beam = c.unwrap_or(0);
        let seq = &mut self.choices[beam];
        let mask = seq.mask.take();
        let ctx = RowContext {
            params: &self.params,
            prompt: &self.prompt,
            generated: &seq.generated,
            mask: mask.as_ref(),
        };
        let lp = step_logprobs(row, &ctx, sampler, &state.params);
        let cands = candidates(state, beam, row, &lp, self.params.top_logprobs);
        state.pending[beam] = Some(cands);
        if c.is_none() {
            // The prompt row: every beam is the same sequence; only beam 0 extends it.
            for &b in &live {
                state.pending[b].get_or_insert_with(Vec::new);
            }
        }
        if live.iter().all(|&b| state.pending[b].is_some()) {
            self.beam_round(alloc, out)?;
        }
        Ok(())
    }

    /// Selects the next beams from every beam's candidates (see the module docs).
    fn beam_round(
        &mut self,
        alloc: &mut BlockAllocator,
        out: &mut Vec<Event>,
    ) -> Result<(), EngineError> {
        let state = self.beam.as_mut().expect("a beam group");
        let k = state.params.num_beams;
        let mut all: Vec<Cand> = state
            .pending
            .iter_mut()
            .filter_map(Option::take)
            .flatten()
            .collect();
        all.sort_by(|a, b| {
            b.key
                .total_cmp(&a.key)
                .then(a.parent.cmp(&b.parent))
                .then(a.token.cmp(&b.token))
        });
        all.truncate(2 * k);
        if state.params.kind == BeamKind::NaiveSampling {
            all.sort_by(|a, b| b.score.total_cmp(&a.score));
        }
        state.round += 1;
        let eos = &self.params.eos_tokens;
        let mut next: Vec<Cand> = Vec::new();
        for (rank, cand) in all.into_iter().enumerate() {
            if !self.params.ignore_eos && eos.contains(&cand.token) {
                if rank < k {
                    let parent = &self.choices[cand.parent];
                    let len = parent.generated.len() + 1;
                    let hyp = Hyp {
                        tokens: parent.generated.clone(),
                        reports: state.reports[cand.parent].clone(),
                        score: state.normalized(cand.score, len),
                        reason: FinishReason::Stop,
                    };
                    state.add(hyp);
                }
                continue;
            }
            next.push(cand);
            if next.len() == k {
                break;
            }
        }
        // The new beams, forked from their parents.
        let old = std::mem::take(&mut self.choices);
        let old_reports = std::mem::take(&mut state.reports);
        let mut scores = Vec::with_capacity(next.len());
        let mut perturbed = Vec::with_capacity(next.len());
        for cand in &next {
            let parent = &old[cand.parent];
            let mut generated = parent.generated.clone();
            generated.push(cand.token);
            let mut reports = old_reports[cand.parent].clone();
            reports.push(cand.report.clone());
            let constraint = match &parent.constraint {
                Some(c) => Some(advance(c.as_ref(), cand.token)?),
                None => None,
            };
            self.choices.push(Sequence {
                generated,
                num_computed: parent.num_computed,
                blocks: parent.blocks.fork(alloc),
                rng: Rng::new(0),
                finish: None,
                held: Vec::new(),
                constraint,
                mask: None,
            });
            state.reports.push(reports);
            scores.push(cand.score);
            perturbed.push(cand.key);
        }
        for mut seq in old {
            seq.blocks.release(alloc);
        }
        state.scores = scores;
        state.perturbed = perturbed;
        state.pending = vec![None; self.choices.len()];
        self.beam_check_end(out);
        Ok(())
    }

    /// Ends the search when it is done, at the length limit, when every beam ends with a stop
    /// sequence or a complete constraint, or when no beam is left; then emits the best
    /// hypothesis as choice 0.
    fn beam_check_end(&mut self, out: &mut Vec<Event>) {
        let state = self.beam.as_mut().expect("a beam group");
        let k = state.params.num_beams;
        let len = self.choices.first().map_or(0, |s| s.generated.len());
        let at_limit = len >= self.params.max_new_tokens;
        let stop_len = |s: &Sequence| {
            self.params
                .stop_sequences
                .iter()
                .filter(|q| !q.is_empty() && s.generated.ends_with(q))
                .map(Vec::len)
                .max()
        };
        let complete = |s: &Sequence| s.constraint.as_ref().is_some_and(|c| c.is_complete());
        let all_stopped = !self.choices.is_empty()
            && self
                .choices
                .iter()
                .all(|s| stop_len(s).is_some() || complete(s));
        let best_running = (0..self.choices.len())
            .map(|b| state.normalized(state.scores[b], len))
            .fold(f64::NEG_INFINITY, f64::max);
        let done = state.finished.len() >= k
            && (state.params.early_stopping
                || state
                    .worst()
                    .is_some_and(|w| state.finished[w].score >= best_running));
        if !(done || at_limit || all_stopped || self.choices.is_empty()) {
            return;
        }
        if !done {
            // The running beams are hypotheses too (Hugging Face's finalize).
            for (b, seq) in self.choices.iter().enumerate() {
                let (mut tokens, mut reports) = (seq.generated.clone(), state.reports[b].clone());
                let reason = match stop_len(seq) {
                    Some(n) => {
                        tokens.truncate(tokens.len() - n);
                        reports.truncate(reports.len() - n);
                        FinishReason::Stop
                    }
                    None if complete(seq) => FinishReason::Stop,
                    None => FinishReason::Length,
                };
                let score = state.normalized(state.scores[b], seq.generated.len());
                state.add(Hyp {
                    tokens,
                    reports,
                    score,
                    reason,
                });
            }
        }
        for seq in &mut self.choices {
            seq.finish = Some(FinishReason::Stop);
        }
        let best = (0..state.finished.len()).max_by(|&a, &b| {
            state.finished[a]
                .score
                .total_cmp(&state.finished[b].score)
                .then(b.cmp(&a))
        });
        let (tokens, reports, reason) = match best {
            Some(i) => {
                let h = state.finished.swap_remove(i);
                (h.tokens, h.reports, h.reason)
            }
            None => (Vec::new(), Vec::new(), FinishReason::Length),
        };
        state.output_len = tokens.len();
        for (token, (logprob, extra)) in tokens.into_iter().zip(reports) {
            out.push(Event::Token {
                choice: 0,
                token,
                logprob,
                extra,
            });
        }
        out.push(Event::ChoiceFinished { choice: 0, reason });
    }
}

/// A forked constraint past `token`.
fn advance(
    c: &dyn OutputConstraint,
    token: TokenId,
) -> Result<Box<dyn OutputConstraint>, EngineError> {
    let mut forked = c.fork();
    forked.consume(token).map_err(|e| {
        EngineError::Constraint(format!("token {token} broke the output constraint: {e}"))
    })?;
    Ok(forked)
}

/// The best `2k` extensions of `beam` by the kind's key.
fn candidates(state: &BeamState, beam: usize, row: &[f32], lp: &[f32], top: usize) -> Vec<Cand> {
    let k = state.params.num_beams;
    let phi = state.scores[beam];
    let mut rng = row_rng(state.seed, state.round, beam);
    let live = (0..lp.len()).filter(|&t| lp[t] > f32::NEG_INFINITY);
    let mut keyed: Vec<(f64, usize)> = match state.params.kind {
        BeamKind::Deterministic => live.map(|t| (phi + f64::from(lp[t]), t)).collect(),
        BeamKind::NaiveSampling => live
            .map(|t| (phi + f64::from(lp[t]) + gumbel(&mut rng), t))
            .collect(),
        BeamKind::Stochastic => {
            let g: Vec<(f64, usize)> = live
                .map(|t| (phi + f64::from(lp[t]) + gumbel(&mut rng), t))
                .collect();
            let z = g.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
            let parent = state.perturbed[beam];
            g.into_iter()
                .map(|(gt, t)| (truncated(parent, z, gt), t))
                .collect()
        }
    };
    let n = (2 * k).min(keyed.len());
    if n == 0 {
        return Vec::new();
    }
    keyed.select_nth_unstable_by(n - 1, |a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    keyed.truncate(n);
    let norm = logprob::normalizer(row);
    keyed
        .into_iter()
        .map(|(key, t)| {
            let token = t as TokenId;
            let extra = (top > 0).then(|| {
                Box::new(TokenExtra {
                    top_logprobs: logprob::top_logprobs(row, top, norm),
                    logits: None,
                })
            });
            Cand {
                parent: beam,
                token,
                score: phi + f64::from(lp[t]),
                key,
                report: (logprob::logprob_at(row, token, norm), extra),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_gumbels_stay_below_the_parent_and_the_max_reaches_it() {
        let parent = -1.3;
        let gs = [0.5, -0.2, 2.0, -3.0];
        let z = 2.0;
        let t: Vec<f64> = gs.iter().map(|&g| truncated(parent, z, g)).collect();
        assert!(t.iter().all(|&x| x <= parent + 1e-12));
        assert!(
            (t[2] - parent).abs() < 1e-9,
            "the max maps to the parent's G"
        );
        // Order is kept.
        assert!(t[2] > t[0] && t[0] > t[1] && t[1] > t[3]);
    }

    #[test]
    fn ln_1m_exp_matches_the_direct_formula() {
        for x in [-1e-6, -0.1, -0.69, -0.7, -3.0, -40.0] {
            let direct = (1.0 - f64::exp(x)).ln();
            assert!(
                (ln_1m_exp(x) - direct).abs() < 1e-6 * direct.abs().max(1.0),
                "{x}"
            );
        }
    }
}
