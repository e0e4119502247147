//! KV blocks: aborts free them, admission waits for them, the queue bound, requests too large
//! for the cache, prompt sharing across `n` choices, preemption and recompute.

mod common;

use common::{collect, greedy, prompt, sampled, Engine};
use cordial_engine::{EngineConfig, EngineError, Event, FinishReason, SubmitError};
use cordial_testkit::fake_model::FakeModelConfig;

fn model(num_blocks: usize, gated: bool) -> FakeModelConfig {
    FakeModelConfig {
        num_blocks,
        gated,
        ..Default::default()
    }
}

#[tokio::test]
async fn dropping_a_stream_mid_generation_frees_every_block() {
    let e = Engine::start(model(64, true), EngineConfig::default());
    let mut a = e.submit(greedy(prompt(10, 1, 64), 200));
    let b = e.submit(greedy(prompt(7, 2, 64), 8));
    e.parked_at(0);
    e.gate.allow(3);
    // A has produced tokens; drop it mid-generation.
    assert!(matches!(
        a.recv().await,
        Some(Event::Token { choice: 0, .. })
    ));
    drop(a);
    e.gate.open();
    assert!(collect(b, 1).await.is_finished());
    e.wait_all_free().await;
    assert!(
        e.fake().forward_calls < 100,
        "A was aborted, not run to 200 tokens"
    );
}

#[tokio::test]
async fn dropping_a_waiting_request_removes_it_from_the_queue() {
    // 8 blocks of 4: the first request holds them all, so the second waits.
    let e = Engine::start(model(8, true), EngineConfig::default());
    let a = e.submit(greedy(prompt(20, 1, 64), 12));
    e.parked_at(0);
    let waiting = e.submit(greedy(prompt(12, 2, 64), 4));
    e.step_to(1);
    assert_eq!(e.handle.stats().waiting_requests, 1);
    drop(waiting);
    e.step_to(2);
    assert_eq!(e.handle.stats().waiting_requests, 0);
    e.gate.open();
    assert!(collect(a, 1).await.is_finished());
    e.wait_all_free().await;
}

/// Three requests needing 5 blocks each over an 8-block cache: never all three run together,
/// each waits its turn, and every output is the one it would have alone.
#[tokio::test]
async fn requests_wait_for_blocks_then_complete() {
    let e = Engine::start(model(8, false), EngineConfig::default());
    let prompts: Vec<_> = (0..3).map(|s| prompt(10, s, 64)).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p.clone(), 10)))
        .collect();
    for (stream, p) in streams.into_iter().zip(&prompts) {
        assert_eq!(
            collect(stream, 1).await.single(),
            e.model.greedy_reference(p, 10, &[])
        );
    }
    assert!(e.fake().seqs_per_step.iter().all(|&n| n <= 2));
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let config = EngineConfig {
        max_waiting: 2,
        ..Default::default()
    };
    let e = Engine::start(model(64, true), config);
    let a = e.submit(greedy(prompt(4, 1, 64), 3));
    e.parked_at(0); // A admitted: nothing waits
    let b = e.submit(greedy(prompt(4, 2, 64), 3));
    let c = e.submit(greedy(prompt(4, 3, 64), 3));
    let refused = e.handle.submit(greedy(prompt(4, 4, 64), 3));
    assert_eq!(refused.err(), Some(SubmitError::QueueFull { waiting: 2 }));
    e.gate.open();
    for s in [a, b, c] {
        assert!(collect(s, 1).await.is_finished());
    }
    e.wait_all_free().await;
    assert!(e.run(greedy(prompt(4, 4, 64), 3)).await.is_finished());
}

#[tokio::test]
async fn a_request_that_can_never_fit_is_too_large() {
    // 4 blocks of 4 tokens = 16 tokens of cache.
    let e = Engine::start(model(4, false), EngineConfig::default());
    let out = e.run(greedy(prompt(10, 1, 64), 20)).await;
    assert_eq!(
        out.end,
        Event::Error(EngineError::TooLarge {
            needed: 8,
            total: 4
        })
    );
    // Fits once (3 blocks) but not as 3 choices: 2 shared + 3 × 1.
    let out = e.run(sampled(prompt(8, 1, 64), 4, vec![1, 2, 3])).await;
    assert_eq!(
        out.end,
        Event::Error(EngineError::TooLarge {
            needed: 5,
            total: 4
        })
    );
    assert!(e.run(greedy(prompt(10, 1, 64), 6)).await.is_finished());
    e.wait_all_free().await;
}

#[tokio::test]
async fn kv_capacity_tells_what_fits_before_submitting() {
    // 4 blocks of 4 tokens; what `max_new_tokens` allows runs, one more is too large.
    let e = Engine::start(model(4, false), EngineConfig::default());
    let kv = e.handle.kv_capacity();
    assert_eq!((kv.block_size, kv.blocks, kv.tokens()), (4, 4, 16));
    for (len, seeds) in [(10, vec![1]), (5, vec![1, 2]), (9, vec![1, 2])] {
        let fit = kv.max_new_tokens(len, seeds.len());
        let out = e.run(sampled(prompt(len, 5, 64), fit, seeds.clone())).await;
        assert!(out.is_finished(), "{len} {seeds:?} {fit}: {:?}", out.end);
        let out = e
            .run(sampled(prompt(len, 5, 64), fit + 1, seeds.clone()))
            .await;
        assert!(
            matches!(out.end, Event::Error(EngineError::TooLarge { .. })),
            "{len} {seeds:?} {}",
            fit + 1
        );
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn n_choices_prefill_the_prompt_once_and_share_its_blocks() {
    let e = Engine::start(model(64, true), EngineConfig::default());
    let p = prompt(10, 3, 64); // 2 full blocks + 2 tokens
    let seeds = vec![11, 12, 13];
    let stream = e.submit(sampled(p.clone(), 6, seeds.clone()));
    e.parked_at(0);
    e.step_to(1);
    // One prefill of 10 tokens; then 3 choices share the 2 full blocks, and the half-full
    // block was copied for 2 of them: 5 blocks instead of 3 × 3.
    let s = e.handle.stats();
    assert_eq!(e.fake().tokens_per_step, vec![10]);
    assert_eq!(s.total_blocks - s.free_blocks, 5);
    assert_eq!(e.fake().block_copies.len(), 2);
    e.gate.open();
    let together = collect(stream, 3).await;
    assert_eq!(
        together.end,
        Event::Finished {
            prompt_tokens: 10,
            completion_tokens: 18
        }
    );
    // Each choice is the single request with its seed, tokens and logprobs.
    for (i, seed) in seeds.into_iter().enumerate() {
        let alone = e.run(sampled(p.clone(), 6, vec![seed])).await;
        assert_eq!(alone.tokens[0], together.tokens[i]);
        assert_eq!(alone.logprobs[0], together.logprobs[i]);
    }
    assert_ne!(together.tokens[0], together.tokens[1]);
    e.wait_all_free().await;
}

/// Two requests that outgrow a 10-block cache together: the newer one is preempted, recomputed
/// later, and both outputs (sampled and greedy, one with n = 2) equal their solo runs.
#[tokio::test]
async fn preemption_and_resume_give_identical_output() {
    let solo = Engine::start(model(64, false), EngineConfig::default());
    let pa = prompt(8, 1, 64);
    let pb = prompt(6, 2, 64);
    let req_a = sampled(pa.clone(), 14, vec![5]);
    let req_b = sampled(pb.clone(), 10, vec![6, 7]);
    let want_a = solo.run(req_a.clone()).await;
    let want_b = solo.run(req_b.clone()).await;
    let want_g = solo.run(greedy(pa.clone(), 14)).await;

    for (first, second, want_first, want_second) in [
        (req_a.clone(), req_b.clone(), &want_a, &want_b),
        (greedy(pa, 14), req_b, &want_g, &want_b),
    ] {
        let e = Engine::start(model(10, true), EngineConfig::default());
        let a = e.submit(first);
        e.parked_at(0);
        let b = e.submit(second);
        e.gate.open();
        assert_eq!(&collect(a, 1).await, want_first);
        assert_eq!(&collect(b, 2).await, want_second);
        assert!(
            e.handle.stats().preemptions > 0,
            "the scenario must preempt"
        );
        e.wait_all_free().await;
    }
}

#[tokio::test]
async fn many_requests_over_a_small_cache_all_end_properly() {
    let e = Engine::start(
        model(12, false),
        EngineConfig {
            max_waiting: 64,
            ..Default::default()
        },
    );
    let mut streams = Vec::new();
    for s in 0..24u32 {
        let p = prompt(3 + (s as usize * 5) % 14, s, 64);
        let req = if s % 3 == 0 {
            greedy(p.clone(), 4 + s as usize % 9)
        } else {
            sampled(
                p.clone(),
                3 + s as usize % 7,
                (0..1 + u64::from(s % 3)).collect(),
            )
        };
        let n = req.seeds.len();
        streams.push((e.submit(req), n, p));
    }
    for (i, (stream, n, p)) in streams.into_iter().enumerate() {
        if i % 7 == 3 {
            drop(stream); // clients going away at random points
            continue;
        }
        let out = collect(stream, n).await;
        assert!(out.is_finished(), "{:?}", out.end);
        if i % 3 == 0 {
            assert_eq!(out.single(), e.model.greedy_reference(&p, 4 + i % 9, &[]));
        }
        assert!(out.reasons.iter().all(|r| *r == Some(FinishReason::Length)));
    }
    e.wait_all_free().await;
}

/// A request dropped during its chunked prefill (no event to fail on) is aborted by the
/// stream's Abort command and its blocks are freed.
#[tokio::test]
async fn dropping_a_stream_during_chunked_prefill_frees_its_blocks() {
    let config = EngineConfig {
        max_prefill_tokens: 4,
        ..Default::default()
    };
    let e = Engine::start(model(64, true), config);
    let long = e.submit(greedy(prompt(40, 1, 64), 4));
    e.parked_at(0);
    e.step_to(1);
    assert_eq!(e.handle.stats().free_blocks, 62); // two chunks of 4 tokens
    drop(long);
    e.gate.allow(1);
    // Step 1 ends, the abort is applied, and with nothing left to do no step 2 starts.
    e.wait_all_free().await;
    assert_eq!(e.fake().forward_calls, 2);
}

/// A choice that stops early gives its own blocks back while its sibling goes on.
#[tokio::test]
async fn a_finished_choice_frees_its_blocks_before_its_siblings_finish() {
    let p = prompt(8, 7, 64); // two full blocks: no copy-on-write in this test
    let free = Engine::start(model(64, false), EngineConfig::default());
    let plain = free.run(sampled(p.clone(), 30, vec![3, 4])).await;
    // An EOS that choice 0 samples early and choice 1 never does.
    let (k, eos) = (1..8)
        .map(|k| (k, plain.tokens[0][k]))
        .find(|&(k, t)| !plain.tokens[0][..k].contains(&t) && !plain.tokens[1].contains(&t))
        .expect("the seeds give a usable EOS token");
    let mut req = sampled(p, 30, vec![3, 4]);
    req.params.eos_tokens = vec![eos];

    let e = Engine::start(model(64, true), EngineConfig::default());
    let stream = e.submit(req);
    e.parked_at(0);
    e.gate.allow(24);
    e.parked_at(24);
    // Step 24 writes position 8 + 23 of choice 1 only: 32 tokens = 8 blocks in use.
    let s = e.handle.stats();
    assert_eq!(s.total_blocks - s.free_blocks, 8);
    assert_eq!(s.running_seqs, 1);
    e.gate.open();
    let out = collect(stream, 2).await;
    assert_eq!(out.tokens[0], plain.tokens[0][..k]);
    assert_eq!(
        out.reasons,
        vec![Some(FinishReason::Stop), Some(FinishReason::Length)]
    );
    assert_eq!(out.tokens[1], plain.tokens[1]);
    e.wait_all_free().await;
}
