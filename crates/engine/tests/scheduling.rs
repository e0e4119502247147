//! Iteration-level scheduling: requests join and leave between steps, chunked prefill, batch
//! independence, the `max_num_seqs` cap.

mod common;

use common::{collect, greedy, prompt, sampled, Engine};
use cordial_engine::EngineConfig;
use cordial_testkit::fake_model::FakeModelConfig;

fn gated() -> FakeModelConfig {
    FakeModelConfig {
        gated: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn requests_join_and_leave_mid_batch() {
    let e = Engine::start(gated(), EngineConfig::default());
    let v = e.model.vocab_size;
    let (pa, pb, pc) = (prompt(5, 1, v), prompt(3, 2, v), prompt(6, 3, v));
    let a = e.submit(greedy(pa.clone(), 12));
    e.parked_at(0); // A's prefill
    e.step_to(1); // A's first decode
    let b = e.submit(greedy(pb.clone(), 3));
    e.step_to(2); // B joins: A decode + B prefill
    e.gate.allow(3);
    e.parked_at(5); // B left after step 4
    let c = e.submit(greedy(pc.clone(), 2));
    e.gate.open();
    let (a, b, c) = (
        collect(a, 1).await,
        collect(b, 1).await,
        collect(c, 1).await,
    );
    assert_eq!(a.single(), e.model.greedy_reference(&pa, 12, &[]));
    assert_eq!(b.single(), e.model.greedy_reference(&pb, 3, &[]));
    assert_eq!(c.single(), e.model.greedy_reference(&pc, 2, &[]));
    // A runs 12 steps; B is in steps 2-4, C in steps 6-7.
    assert_eq!(
        e.fake().seqs_per_step,
        vec![1, 1, 2, 2, 2, 1, 2, 2, 1, 1, 1, 1]
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn greedy_output_does_not_depend_on_the_batch() {
    let model = gated();
    let p = prompt(9, 4, model.vocab_size);
    let alone = Engine::start(model.clone(), EngineConfig::default());
    alone.gate.open();
    let solo = alone.run(greedy(p.clone(), 20)).await;
    assert_eq!(solo.single(), model.greedy_reference(&p, 20, &[]));

    let e = Engine::start(model.clone(), EngineConfig::default());
    let others: Vec<_> = (5..9)
        .map(|s| e.submit(sampled(prompt(3 + s as usize, s, 64), 15, vec![s.into()])))
        .collect();
    let target = e.submit(greedy(p.clone(), 20));
    e.gate.open();
    let together = collect(target, 1).await;
    for o in others {
        assert!(collect(o, 1).await.is_finished());
    }
    assert_eq!(together, solo, "tokens and logprobs must match bit for bit");
    assert!(
        e.fake().seqs_per_step.iter().any(|&n| n >= 4),
        "requests did share batches"
    );
}

/// A long prompt prefilled in chunks of 8 while another request decodes gives the same output
/// as prefilling it at once, greedy and sampled. (Prefix caching is off: the two requests share
/// their prompt, so the second would reuse the first one's blocks; `prefix_cache.rs` tests that.)
#[tokio::test]
async fn chunked_prefill_matches_unchunked_and_does_not_stall_decodes() {
    let model = gated();
    let long = prompt(40, 5, model.vocab_size);
    let short = prompt(4, 6, model.vocab_size);
    let mut results = Vec::new();
    for budget in [8, 512] {
        let config = EngineConfig {
            max_prefill_tokens: budget,
            enable_prefix_caching: false,
            ..Default::default()
        };
        let e = Engine::start(model.clone(), config);
        let running = e.submit(greedy(short.clone(), 20));
        e.parked_at(0);
        e.step_to(1);
        let g = e.submit(greedy(long.clone(), 6));
        let s = e.submit(sampled(long.clone(), 6, vec![77]));
        e.gate.open();
        let (g, s) = (collect(g, 1).await, collect(s, 1).await);
        assert!(collect(running, 1).await.is_finished());
        assert_eq!(g.single(), model.greedy_reference(&long, 6, &[]));
        let tokens = e.fake().tokens_per_step;
        if budget == 8 {
            // Each step: the running decode plus 8 prompt tokens; once the first long prompt is
            // in (5 steps), it decodes too while the second one is prefilled.
            assert_eq!(tokens[2..12], [9, 9, 9, 9, 9, 10, 10, 10, 10, 10]);
            assert_eq!(
                e.fake().seqs_per_step[2..12],
                [2, 2, 2, 2, 2, 3, 3, 3, 3, 3]
            );
        } else {
            assert_eq!(tokens[2], 81);
        }
        results.push((g, s));
    }
    assert_eq!(results[0], results[1]);
}

#[tokio::test]
async fn max_num_seqs_caps_the_batch() {
    let config = EngineConfig {
        max_num_seqs: 2,
        ..Default::default()
    };
    let e = Engine::start(gated(), config);
    let prompts: Vec<_> = (0..5).map(|s| prompt(5, s, 64)).collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p.clone(), 6)))
        .collect();
    e.gate.open();
    for (stream, p) in streams.into_iter().zip(&prompts) {
        assert_eq!(
            collect(stream, 1).await.single(),
            e.model.greedy_reference(p, 6, &[])
        );
    }
    let seqs = e.fake().seqs_per_step;
    assert_eq!(seqs.iter().max(), Some(&2), "{seqs:?}");
    e.wait_all_free().await;
}

#[tokio::test]
async fn stats_report_steps_and_running_sequences() {
    let e = Engine::start(gated(), EngineConfig::default());
    let s0 = e.handle.stats();
    assert_eq!((s0.total_blocks, s0.free_blocks, s0.steps), (64, 64, 0));
    let a = e.submit(sampled(prompt(6, 1, 64), 4, vec![1, 2, 3]));
    e.parked_at(0);
    e.step_to(1);
    let s = e.handle.stats();
    assert_eq!((s.running_seqs, s.steps, s.waiting_requests), (3, 1, 0));
    assert!(s.free_blocks < s.total_blocks);
    e.gate.open();
    assert!(collect(a, 3).await.is_finished());
    e.wait_all_free().await;
    assert_eq!(e.handle.stats().steps, 4);
}
