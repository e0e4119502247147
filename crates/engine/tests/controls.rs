//! Decoding controls seen through the engine over the fake model: minimum length, stop
//! sequences, bad words, penalties, forced output, top log-probabilities and logits, early
//! stop of one choice, timeouts.

mod common;

use std::time::{Duration, Instant};

use common::{collect, greedy, prompt, sampled, Engine};
use cordial_engine::{EngineConfig, EngineError, Event, FinishReason, TokenId};
use cordial_testkit::fake_model::{FakeEos, FakeModelConfig};

fn engine(model: FakeModelConfig) -> Engine {
    Engine::start(model, EngineConfig::default())
}

/// `log_softmax(row)[t]` in f64.
fn reference_logprob(row: &[f32], t: TokenId) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[t as usize] as f64 - max - z.ln()
}

#[tokio::test]
async fn min_tokens_holds_eos_back_until_reached() {
    let p = prompt(5, 1, 64);
    let model = FakeModelConfig {
        eos: Some(FakeEos {
            token: 63,
            from_len: p.len() + 2,
        }),
        ..FakeModelConfig::default()
    };
    let e = engine(model);
    for (min, want) in [(0, 2), (1, 2), (5, 5), (9, 9)] {
        let mut req = sampled(p.clone(), 20, vec![min as u64]);
        req.params.eos_tokens = vec![63];
        req.params.min_new_tokens = min;
        let out = e.run(req).await;
        assert_eq!(out.single().len(), want, "min_new_tokens {min}");
        assert_eq!(out.reasons[0], Some(FinishReason::Stop));
        assert!(!out.tokens[0].contains(&63));
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn stop_sequences_end_the_choice_and_are_not_output() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(6, 2, 64);
    let reference = e.model.greedy_reference(&p, 12, &[]);
    let mut req = greedy(p.clone(), 12);
    req.params.stop_sequences = vec![vec![60, 61, 62], reference[4..6].to_vec()];
    let out = e.run(req.clone()).await;
    assert_eq!(out.single(), &reference[..4]);
    assert_eq!(out.reasons[0], Some(FinishReason::Stop));
    assert!(matches!(
        out.end,
        Event::Finished {
            completion_tokens: 4,
            ..
        }
    ));
    // min_new_tokens above the match: the completing token is masked and generation goes on.
    req.params.min_new_tokens = 6;
    let out = e.run(req).await;
    assert!(out.single().len() >= 6);
    assert_ne!(out.single()[4..6], reference[4..6]);
    e.wait_all_free().await;
}

#[tokio::test]
async fn bad_sequences_never_complete() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(4, 3, 64);
    let reference = e.model.greedy_reference(&p, 16, &[]);
    let mut req = greedy(p, 16);
    let (single, pair) = (reference[2], reference[5..7].to_vec());
    req.params.bad_sequences = vec![vec![single], pair.clone()];
    let out = e.run(req).await;
    let got = out.single();
    assert_eq!(got.len(), 16);
    assert_eq!(&got[..2], &reference[..2], "same path before the first ban");
    assert!(!got.contains(&single));
    assert!(!got.windows(2).any(|w| w == pair.as_slice()));
}

/// Whether some n-gram occurs twice in `tokens`.
fn repeats(tokens: &[TokenId], n: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    !tokens.windows(n).all(|w| seen.insert(w.to_vec()))
}

#[tokio::test]
async fn no_repeat_ngram_bans_repeated_trigrams() {
    // Eight tokens: 512 trigrams, so 60 random tokens repeat one (checked below).
    let e = engine(FakeModelConfig {
        vocab_size: 8,
        ..FakeModelConfig::default()
    });
    let p: Vec<TokenId> = vec![1, 2, 3, 4, 5, 6];
    let mut all = p.clone();
    all.extend_from_slice(e.run(greedy(p.clone(), 60)).await.single());
    assert!(
        repeats(&all, 3),
        "the unconstrained output must repeat for this test"
    );
    let mut req = greedy(p.clone(), 60);
    req.params.no_repeat_ngram = 3;
    let mut all = p.clone();
    all.extend_from_slice(e.run(req).await.single());
    assert_eq!(all.len(), 66);
    assert!(!repeats(&all, 3), "{all:?}");
}

#[tokio::test]
async fn penalties_push_toward_new_tokens() {
    let e = engine(FakeModelConfig {
        vocab_size: 16,
        ..FakeModelConfig::default()
    });
    let p = prompt(6, 4, 16);
    let plain = e.run(greedy(p.clone(), 12)).await;
    let distinct = |t: &[TokenId]| t.iter().collect::<std::collections::HashSet<_>>().len();
    assert!(
        distinct(plain.single()) < 12,
        "the fake model repeats at 16 tokens"
    );
    for params in [(2.0, 0.0, 1.0), (0.0, 2.0, 1.0), (0.0, 0.0, 1000.0)] {
        let mut req = greedy(p.clone(), 12);
        (
            req.params.presence_penalty,
            req.params.frequency_penalty,
            req.params.repetition_penalty,
        ) = params;
        let out = e.run(req).await;
        // Each penalty alone at its strongest: no output token repeats.
        assert_eq!(distinct(out.single()), 12, "{params:?}: {:?}", out.single());
    }
}

#[tokio::test]
async fn forced_output_reports_the_logprobs_of_its_tokens() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(5, 5, 64);
    // Forcing the greedy path gives exactly the greedy run's logprobs.
    let free = e.run(greedy(p.clone(), 8)).await;
    let mut req = sampled(p.clone(), 8, vec![3, 4]);
    req.params.forced_tokens = free.single().to_vec();
    let forced = e.run(req).await;
    assert_eq!(forced.tokens, vec![free.tokens[0].clone(); 2]);
    assert_eq!(forced.logprobs[0], free.logprobs[0]);
    assert_eq!(forced.reasons, vec![Some(FinishReason::Length); 2]);
    // Any tokens, EOS included, are output as given, with the raw distribution's logprobs.
    let want: Vec<TokenId> = vec![7, 63, 7, 0];
    let mut req = greedy(p.clone(), 4);
    req.params.eos_tokens = vec![63];
    req.params.forced_tokens = want.clone();
    req.params.bad_sequences = vec![vec![7]];
    let out = e.run(req).await;
    assert_eq!(out.single(), want.as_slice());
    let mut history = p;
    for (&t, &lp) in want.iter().zip(&out.logprobs[0]) {
        let row = e.model.logits(&history);
        assert!((lp as f64 - reference_logprob(&row, t)).abs() < 1e-5);
        history.push(t);
    }
}

#[tokio::test]
async fn top_logprobs_and_logits_are_of_the_raw_rows() {
    let e = engine(FakeModelConfig::default());
    let p = prompt(5, 6, 64);
    let mut req = sampled(p.clone(), 6, vec![8]);
    req.params.top_logprobs = 3;
    req.params.output_logits = true;
    req.params.presence_penalty = 1.5;
    let out = e.run(req).await;
    let mut history = p;
    for (&t, extra) in out.tokens[0].iter().zip(&out.extras[0]) {
        let row = e.model.logits(&history);
        let extra = extra.as_ref().expect("asked for");
        assert_eq!(extra.logits.as_deref(), Some(row.as_slice()));
        let mut order: Vec<TokenId> = (0..64).collect();
        order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
        let ids: Vec<TokenId> = extra.top_logprobs.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, order[..3]);
        for &(id, lp) in &extra.top_logprobs {
            assert!((lp as f64 - reference_logprob(&row, id)).abs() < 1e-5);
        }
        history.push(t);
    }
    let plain = e.run(greedy(prompt(5, 6, 64), 3)).await;
    assert!(plain.extras[0].iter().all(Option::is_none));
}

#[tokio::test]
async fn stop_choice_ends_one_choice_and_frees_its_blocks() {
    let e = engine(FakeModelConfig {
        gated: true,
        ..FakeModelConfig::default()
    });
    let stream = e.submit(sampled(prompt(6, 7, 64), 50, vec![1, 2]));
    let control = stream.control();
    e.parked_at(0);
    e.step_to(1);
    control.stop_choice(0);
    control.stop_choice(0); // twice is harmless
    control.stop_choice(7); // an unknown choice too
    e.gate.open();
    let out = collect(stream, 2).await;
    assert!(out.is_finished());
    assert_eq!(
        out.reasons,
        [Some(FinishReason::Stop), Some(FinishReason::Length)]
    );
    assert!(out.tokens[0].len() < 5, "{:?}", out.tokens[0]);
    assert_eq!(out.tokens[1].len(), 50);
    e.wait_all_free().await;
}

#[tokio::test]
async fn stopping_every_choice_finishes_the_request() {
    let e = engine(FakeModelConfig {
        gated: true,
        ..FakeModelConfig::default()
    });
    let stream = e.submit(sampled(prompt(6, 8, 64), 50, vec![1, 2]));
    let control = stream.control();
    e.parked_at(0);
    e.step_to(1);
    control.stop_choice(1);
    control.stop_choice(0);
    e.gate.open();
    let out = collect(stream, 2).await;
    assert_eq!(out.reasons, [Some(FinishReason::Stop); 2]);
    assert!(out.tokens.iter().all(|t| t.len() < 5));
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_request_past_its_deadline_times_out_and_frees_its_blocks() {
    let config = EngineConfig {
        max_num_seqs: 1,
        ..EngineConfig::default()
    };
    let model = FakeModelConfig {
        gated: true,
        ..FakeModelConfig::default()
    };
    let e = Engine::start(model, config);
    let mut req = sampled(prompt(6, 9, 64), 50, vec![1]);
    req.deadline = Some(Instant::now() + Duration::from_millis(500));
    let stream = e.submit(req);
    // A request waiting behind it times out too, before it is ever admitted.
    let mut queued = sampled(prompt(6, 10, 64), 5, vec![1]);
    queued.deadline = Some(Instant::now() + Duration::from_millis(500));
    let queued = e.submit(queued);
    e.parked_at(0);
    e.step_to(1);
    std::thread::sleep(Duration::from_millis(600));
    e.gate.open();
    let out = collect(stream, 1).await;
    assert_eq!(out.end, Event::Error(EngineError::Timeout));
    assert!(out.tokens[0].len() <= 1);
    let out = collect(queued, 1).await;
    assert_eq!(out.end, Event::Error(EngineError::Timeout));
    e.wait_all_free().await;
    // Without a deadline nothing changes.
    let out = e.run(sampled(prompt(6, 9, 64), 5, vec![1])).await;
    assert!(out.is_finished());
}

#[tokio::test]
async fn a_choice_stopped_while_its_request_waits_never_runs() {
    let config = EngineConfig {
        max_num_seqs: 1,
        ..EngineConfig::default()
    };
    let model = FakeModelConfig {
        gated: true,
        ..FakeModelConfig::default()
    };
    let e = Engine::start(model, config);
    let first = e.submit(greedy(prompt(6, 11, 64), 3));
    let queued = e.submit(sampled(prompt(6, 12, 64), 4, vec![1, 2]));
    let control = queued.control();
    e.parked_at(0);
    control.stop_choice(0);
    e.gate.open();
    assert!(collect(first, 1).await.is_finished());
    let out = collect(queued, 2).await;
    assert_eq!(
        out.reasons,
        [Some(FinishReason::Stop), Some(FinishReason::Length)]
    );
    assert_eq!((out.tokens[0].len(), out.tokens[1].len()), (0, 4));
    assert!(matches!(
        out.end,
        Event::Finished {
            completion_tokens: 4,
            ..
        }
    ));
    e.wait_all_free().await;
}
