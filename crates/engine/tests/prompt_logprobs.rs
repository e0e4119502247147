//! Prompt log-probabilities (`prompt_logprobs`, OpenAI `echo` + `logprobs`) and `logit_bias`,
//! over the fake model whose logits hash the history it reads from its KV slots.

mod common;

use common::{collect, greedy, prompt, Engine};
use cordial_engine::{EngineConfig, Event, FinishReason, TokenId};
use cordial_testkit::fake_model::FakeModelConfig;

/// `log_softmax(row)[t]` in f64.
fn reference_logprob(row: &[f32], t: TokenId) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[t as usize] as f64 - max - z.ln()
}

fn scored(p: Vec<TokenId>, max_new_tokens: usize, top: usize) -> cordial_engine::EngineRequest {
    let mut req = greedy(p, max_new_tokens);
    req.params.prompt_logprobs = true;
    req.params.top_logprobs = top;
    req
}

/// Every position ≥ 1 is scored once, in order, with the model's distribution given the tokens
/// before it, whatever the prefill chunking, and `max_new_tokens: 0` samples nothing.
#[tokio::test]
async fn every_prompt_position_is_scored_against_its_prefix() {
    let model = FakeModelConfig::default();
    let p = prompt(37, 3, model.vocab_size);
    for max_prefill_tokens in [512, 5, 16] {
        let config = EngineConfig {
            max_prefill_tokens,
            ..EngineConfig::default()
        };
        let e = Engine::start(model.clone(), config);
        let out = e.run(scored(p.clone(), 0, 3)).await;
        assert!(out.is_finished(), "{:?}", out.end);
        assert_eq!(out.reasons, [Some(FinishReason::Length)]);
        assert!(out.tokens[0].is_empty());
        assert_eq!(
            out.prompt.len(),
            p.len() - 1,
            "chunks of {max_prefill_tokens}"
        );
        for (pos, token, lp, top) in &out.prompt {
            assert_eq!(*token, p[*pos]);
            let row = model.logits(&p[..*pos]);
            let want = reference_logprob(&row, p[*pos]);
            assert!(
                (*lp as f64 - want).abs() < 1e-4,
                "position {pos}: {lp} vs {want}"
            );
            assert_eq!(top.len(), 3);
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .unwrap()
                .0 as TokenId;
            assert_eq!(top[0].0, best);
        }
        e.wait_all_free().await;
    }
}

/// With generation on, the prompt scores come first and the generated tokens are those of the
/// same request without scoring; a prompt the prefix cache holds is still scored in full.
#[tokio::test]
async fn scoring_coexists_with_generation_and_the_prefix_cache() {
    let model = FakeModelConfig::default();
    let e = Engine::start(model.clone(), EngineConfig::default());
    let p = prompt(40, 5, model.vocab_size);
    let plain = e.run(greedy(p.clone(), 6)).await;
    let out = e.run(scored(p.clone(), 6, 0)).await;
    assert_eq!(out.single(), plain.single());
    assert_eq!(out.prompt.len(), p.len() - 1);
    assert!(out.prompt.iter().all(|(_, _, _, top)| top.is_empty()));
    let stats = e.handle.stats();
    assert_eq!(
        stats.prefix_cache_hit_tokens, 0,
        "a scored prompt is computed, not served from the cache"
    );
    // A one-token prompt has nothing to score.
    let out = e.run(scored(vec![4], 2, 1)).await;
    assert!(out.prompt.is_empty());
    assert_eq!(out.single().len(), 2);
    e.wait_all_free().await;
}

/// `logit_bias` changes the choice: a +100 bias forces a token, a -100 bias bans the argmax;
/// the reported log-probability stays that of the raw row.
#[tokio::test]
async fn logit_bias_forces_and_bans() {
    let model = FakeModelConfig::default();
    let e = Engine::start(model.clone(), EngineConfig::default());
    let p = prompt(9, 1, model.vocab_size);
    let plain = e.run(greedy(p.clone(), 4)).await;
    let mut req = greedy(p.clone(), 4);
    req.params.logit_bias = vec![(17, 100.0)];
    let forced = e.run(req).await;
    assert_eq!(forced.single(), [17, 17, 17, 17]);
    let row = model.logits(&p);
    let want = reference_logprob(&row, 17);
    assert!((forced.logprobs[0][0] as f64 - want).abs() < 1e-4);
    let mut req = greedy(p.clone(), 1);
    req.params.logit_bias = vec![(plain.single()[0], -100.0)];
    let banned = e.run(req).await;
    assert_ne!(banned.single()[0], plain.single()[0]);
    e.wait_all_free().await;
}

/// Prompt scoring survives a client that stops reading: dropping the stream aborts the request.
#[tokio::test]
async fn dropped_scoring_request_frees_its_blocks() {
    let e = Engine::start(FakeModelConfig::default(), EngineConfig::default());
    let stream = e.submit(scored(prompt(50, 2, 64), 0, 2));
    drop(stream);
    e.wait_all_free().await;
    let out = collect(e.submit(scored(prompt(20, 2, 64), 0, 0)), 1).await;
    assert!(matches!(
        out.end,
        Event::Finished {
            completion_tokens: 0,
            ..
        }
    ));
}

/// A scoring request that is preempted and recomputed reports each prompt position once and
/// the same scores and tokens as alone (the collector checks positions come once, in order).
#[tokio::test]
async fn preempted_scoring_request_reports_each_position_once() {
    let config = |num_blocks, gated| FakeModelConfig {
        num_blocks,
        gated,
        ..FakeModelConfig::default()
    };
    let pa = prompt(8, 1, 64);
    let pb = prompt(6, 2, 64);
    let solo = Engine::start(config(64, false), EngineConfig::default());
    let want_a = solo.run(greedy(pa.clone(), 14)).await;
    let b_req = || {
        let mut r = scored(pb.clone(), 10, 2);
        r.seeds = vec![6, 7];
        r
    };
    let want_b = solo.run(b_req()).await;
    let e = Engine::start(config(10, true), EngineConfig::default());
    let a = e.submit(greedy(pa, 14));
    e.parked_at(0);
    let b = e.submit(b_req());
    e.gate.open();
    assert_eq!(collect(a, 1).await, want_a);
    let got_b = collect(b, 2).await;
    assert!(
        e.handle.stats().preemptions > 0,
        "the scenario must preempt"
    );
    assert_eq!(got_b.prompt.len(), pb.len() - 1);
    assert_eq!(got_b, want_b);
    e.wait_all_free().await;
}
