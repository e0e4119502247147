//! Sampling seen through the engine: seeded replay, logprobs of the raw logits, filters, EOS
//! and length limits.

mod common;

use common::{greedy, prompt, sampled, Engine};
use cordial_engine::{EngineConfig, EngineRequest, Event, FinishReason, SamplingParams};
use cordial_testkit::fake_model::{FakeEos, FakeModelConfig};

fn engine(model: FakeModelConfig) -> Engine {
    Engine::start(model, EngineConfig::default())
}

/// `log_softmax(row)[t]` in f64.
fn reference_logprob(row: &[f32], t: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[t as usize] as f64 - max - z.ln()
}

#[tokio::test]
async fn seeded_sampling_replays_exactly_and_seeds_differ() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(7, 1, 64);
    let first = e.run(sampled(p.clone(), 24, vec![42])).await;
    let again = e.run(sampled(p.clone(), 24, vec![42])).await;
    let other = e.run(sampled(p.clone(), 24, vec![43])).await;
    assert!(first.is_finished());
    assert_eq!(first, again);
    assert_ne!(first.tokens, other.tokens);
    // A fresh engine replays it too (no state carried between engines).
    let fresh = engine(FakeModelConfig::default());
    assert_eq!(fresh.run(sampled(p, 24, vec![42])).await, first);
}

#[tokio::test]
async fn logprobs_are_of_the_raw_logits_and_filters_hold() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(5, 2, 64);
    let params = SamplingParams {
        temperature: 0.7,
        top_k: 5,
        top_p: 0.9,
        max_new_tokens: 30,
        ..Default::default()
    };
    let out = e
        .run(EngineRequest {
            prompt: p.clone(),
            params,
            seeds: vec![9],
            deadline: None,
            prompt_embeddings: Vec::new(),
            constraint: None,
            beam: None,
            lora: Vec::new(),
        })
        .await;
    let mut history = p;
    for (&t, &lp) in out.tokens[0].iter().zip(&out.logprobs[0]) {
        let row = e.model.logits(&history);
        assert!((lp as f64 - reference_logprob(&row, t)).abs() < 1e-5);
        let higher = row.iter().filter(|&&x| x > row[t as usize]).count();
        assert!(higher < 5, "token {t} is outside the top 5");
        history.push(t);
    }
    assert_eq!(out.tokens[0].len(), 30);
}

#[tokio::test]
async fn top_k_one_samples_the_greedy_output() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(6, 3, 64);
    let params = SamplingParams {
        temperature: 1.3,
        top_k: 1,
        max_new_tokens: 12,
        ..Default::default()
    };
    let out = e
        .run(EngineRequest {
            prompt: p.clone(),
            params,
            seeds: vec![1],
            deadline: None,
            prompt_embeddings: Vec::new(),
            constraint: None,
            beam: None,
            lora: Vec::new(),
        })
        .await;
    assert_eq!(out.single(), e.model.greedy_reference(&p, 12, &[]));
}

#[tokio::test]
async fn eos_ends_the_choice_with_stop_and_is_not_a_token() {
    let p = prompt(6, 4, 64);
    let model = FakeModelConfig {
        eos: Some(FakeEos {
            token: 0,
            from_len: 9,
        }),
        ..Default::default()
    };
    let e = engine(model);
    let mut req = sampled(p.clone(), 20, vec![1, 2]);
    req.params.eos_tokens = vec![0];
    let out = e.run(req.clone()).await;
    assert_eq!(out.reasons, vec![Some(FinishReason::Stop); 2]);
    assert!(out.tokens.iter().all(|t| t.len() == 3 && !t.contains(&0)));
    assert_eq!(
        out.end,
        Event::Finished {
            prompt_tokens: 6,
            completion_tokens: 6
        }
    );
    // With ignore_eos the EOS token is an ordinary token, counted, up to the length limit.
    req.params.ignore_eos = true;
    let out = e.run(req).await;
    assert_eq!(out.reasons, vec![Some(FinishReason::Length); 2]);
    assert!(out.tokens.iter().all(|t| t.len() == 20 && t[3] == 0));
}

#[tokio::test]
async fn the_context_limit_ends_with_length() {
    let model = FakeModelConfig {
        max_context: 20,
        ..Default::default()
    };
    let e = engine(model);
    let p = prompt(15, 5, 64);
    let out = e.run(greedy(p.clone(), 100)).await;
    assert_eq!(out.single().len(), 5);
    assert_eq!(out.reasons, vec![Some(FinishReason::Length)]);
    assert_eq!(out.single(), e.model.greedy_reference(&p, 100, &[]));
}

#[tokio::test]
async fn zero_new_tokens_finishes_at_once() {
    let e = engine(FakeModelConfig::default());
    let out = e.run(sampled(prompt(4, 6, 64), 0, vec![1, 2])).await;
    assert_eq!(out.reasons, vec![Some(FinishReason::Length); 2]);
    assert_eq!(
        out.end,
        Event::Finished {
            prompt_tokens: 4,
            completion_tokens: 0
        }
    );
    assert_eq!(e.fake().forward_calls, 0);
}
