//! Tests of the whole pipeline (each processor has its own unit tests in its file).

use super::*;
use crate::api::SamplingParams;

fn sample(row: &[f32], params: SamplingParams, seed: u64) -> Vec<Sampled> {
    let mut sampler = Sampler::default();
    let mut rng = Rng::new(seed);
    let ctx = RowContext::bare(&params);
    (0..16)
        .map(|_| sampler.sample(row, &ctx, &mut rng))
        .collect()
}

#[test]
fn default_order_is_documented_order() {
    assert_eq!(
        format!("{:?}", Sampler::default()),
        r#"["grammar", "bad_words", "min_tokens", "repetition_penalty", "frequency_penalty", "presence_penalty", "no_repeat_ngram", "logit_bias", "temperature", "top_k", "top_p", "min_p"]"#
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

#[test]
fn forced_tokens_are_taken_as_given_with_raw_logprobs() {
    let row = [0.0f32, 5.0, 1.0];
    let params = SamplingParams {
        temperature: 0.0,
        forced_tokens: vec![2, 0],
        bad_sequences: vec![vec![2]],
        ..Default::default()
    };
    let mut sampler = Sampler::default();
    let mut rng = Rng::new(1);
    let ctx = RowContext {
        params: &params,
        prompt: &[1],
        generated: &[],
        mask: None,
    };
    let s = sampler.sample(&row, &ctx, &mut rng);
    assert_eq!((s.token, s.logprob), (2, logprob::log_softmax_at(&row, 2)));
    let ctx = RowContext {
        generated: &[2],
        mask: None,
        ..ctx
    };
    assert_eq!(sampler.sample(&row, &ctx, &mut rng).token, 0);
    // Past the forced tokens, sampling resumes (the engine ends the choice before that).
    let ctx = RowContext {
        generated: &[2, 0],
        mask: None,
        ..ctx
    };
    assert_eq!(sampler.sample(&row, &ctx, &mut rng).token, 1);
}

#[test]
fn extras_are_of_the_raw_row() {
    let row = [0.0f32, 5.0, 1.0, f32::NAN];
    let params = SamplingParams {
        temperature: 0.0,
        top_logprobs: 2,
        output_logits: true,
        repetition_penalty: 100.0,
        ..Default::default()
    };
    let ctx = RowContext {
        params: &params,
        prompt: &[1],
        generated: &[],
        mask: None,
    };
    let s = Sampler::default().sample(&row, &ctx, &mut Rng::new(0));
    assert_eq!(s.token, 2, "the penalty moved the argmax");
    let extra = s.extra.expect("asked for");
    let top: Vec<TokenId> = extra.top_logprobs.iter().map(|&(t, _)| t).collect();
    assert_eq!(top, [1, 2], "top log-probabilities ignore the penalty");
    let logits = extra.logits.expect("asked for");
    assert_eq!(&logits[..3], &row[..3]);
    assert!(logits[3].is_nan());
    let plain = SamplingParams::default();
    let s = Sampler::default().sample(&row, &RowContext::bare(&plain), &mut Rng::new(0));
    assert!(s.extra.is_none());
}

#[test]
fn penalties_apply_before_temperature_and_filters() {
    // Token 0 leads; presence penalty 2 moves it below token 1; top_k 1 then keeps token 1 only.
    let row = [3.0f32, 2.0, -1.0];
    let params = SamplingParams {
        temperature: 0.7,
        top_k: 1,
        presence_penalty: 2.0,
        ..Default::default()
    };
    let ctx = RowContext {
        params: &params,
        prompt: &[],
        generated: &[0],
        mask: None,
    };
    let mut sampler = Sampler::default();
    let mut rng = Rng::new(3);
    assert!((0..16).all(|_| sampler.sample(&row, &ctx, &mut rng).token == 1));
}

#[test]
fn min_p_restricts_sampled_rows() {
    let row = [0.0f32, 3.0, 2.9, -5.0];
    let params = SamplingParams {
        temperature: 1.0,
        min_p: 0.5,
        ..Default::default()
    };
    let mut sampler = Sampler::default();
    let mut rng = Rng::new(11);
    let seen: std::collections::BTreeSet<TokenId> = (0..200)
        .map(|_| {
            sampler
                .sample(&row, &RowContext::bare(&params), &mut rng)
                .token
        })
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn token_logprob_is_skipped_only_when_nothing_needs_it() {
    let row = [0.5f32, 2.0, -1.0, 1.5];
    let off = SamplingParams {
        temperature: 0.7,
        token_logprobs: false,
        ..Default::default()
    };
    let on = SamplingParams {
        token_logprobs: true,
        ..off.clone()
    };
    let (skipped, computed) = (sample(&row, off.clone(), 9), sample(&row, on, 9));
    // The same tokens either way; only the log-probability is left out.
    let tokens = |v: &[Sampled]| v.iter().map(|s| s.token).collect::<Vec<_>>();
    assert_eq!(tokens(&skipped), tokens(&computed));
    assert!(skipped
        .iter()
        .all(|s| s.logprob.is_nan() && s.extra.is_none()));
    assert!(computed
        .iter()
        .all(|s| s.logprob == logprob::log_softmax_at(&row, s.token)));
    // Asking for alternatives brings the token's log-probability back.
    let top = SamplingParams {
        top_logprobs: 2,
        ..off
    };
    let out = sample(&row, top, 9);
    assert!(out
        .iter()
        .all(|s| s.logprob == logprob::log_softmax_at(&row, s.token) && s.extra.is_some()));
}
