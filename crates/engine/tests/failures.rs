//! Failures: model errors, invalid requests, shutdown.

mod common;

use std::time::Duration;

use common::{collect, greedy, prompt, Engine};
use cordial_engine::{EngineConfig, EngineError, EngineRequest, Event, SubmitError};
use cordial_testkit::fake_model::FakeModelConfig;

#[tokio::test]
async fn a_model_error_fails_the_step_and_the_engine_keeps_serving() {
    let model = FakeModelConfig {
        fail_at_forward: Some(2),
        gated: true,
        ..Default::default()
    };
    let e = Engine::start(model, EngineConfig::default());
    let a = e.submit(greedy(prompt(5, 1, 64), 10));
    e.parked_at(0);
    let b = e.submit(greedy(prompt(6, 2, 64), 10));
    e.gate.open(); // step 1: A decodes, B prefills; step 2 fails
    for s in [a, b] {
        let out = collect(s, 1).await;
        assert_eq!(
            out.end,
            Event::Error(EngineError::Model("injected failure at forward 2".into()))
        );
    }
    e.wait_all_free().await;
    let p = prompt(7, 3, 64);
    assert_eq!(
        e.run(greedy(p.clone(), 5)).await.single(),
        e.model.greedy_reference(&p, 5, &[])
    );
}

#[tokio::test]
async fn a_poisoned_request_fails_alone_when_its_batch_is_its_own() {
    let model = FakeModelConfig {
        fail_on_token: Some(63),
        ..Default::default()
    };
    let e = Engine::start(model, EngineConfig::default());
    let mut bad = prompt(5, 1, 64);
    bad[2] = 63;
    let out = e.run(greedy(bad, 4)).await;
    assert_eq!(
        out.end,
        Event::Error(EngineError::Model("injected failure on token 63".into()))
    );
    assert!(e.run(greedy(prompt(5, 1, 64), 4)).await.is_finished());
    e.wait_all_free().await;
}

#[tokio::test]
async fn invalid_requests_are_refused_at_submit() {
    let e = Engine::start(
        FakeModelConfig {
            max_context: 32,
            ..Default::default()
        },
        EngineConfig::default(),
    );
    let cases: Vec<EngineRequest> = vec![
        greedy(vec![], 4),
        EngineRequest {
            seeds: vec![],
            ..greedy(vec![1], 4)
        },
        greedy(vec![1, 64], 4),
        greedy(prompt(32, 1, 64), 4),
        {
            let mut r = greedy(vec![1], 4);
            r.params.temperature = -1.0;
            r
        },
    ];
    for req in cases {
        assert!(matches!(e.handle.submit(req), Err(SubmitError::Invalid(_))));
    }
    assert_eq!(e.handle.stats().waiting_requests, 0);
}

#[tokio::test]
async fn shutdown_ends_running_and_waiting_requests() {
    let model = FakeModelConfig {
        num_blocks: 8,
        gated: true,
        ..Default::default()
    };
    let e = Engine::start(model, EngineConfig::default());
    let running = e.submit(greedy(prompt(20, 1, 64), 12));
    e.parked_at(0);
    let waiting = e.submit(greedy(prompt(12, 2, 64), 4));
    e.handle.shutdown();
    assert_eq!(
        e.handle.submit(greedy(vec![1], 1)).err(),
        Some(SubmitError::NotRunning)
    );
    e.gate.open();
    for (s, n) in [(running, 1), (waiting, 1)] {
        assert_eq!(
            collect(s, n).await.end,
            Event::Error(EngineError::ShuttingDown)
        );
    }
    e.wait_stats("engine stopped", |_| !e.handle.is_running())
        .await;
    assert_eq!(e.handle.stats().free_blocks, 8);
    // Only the step that was under way ran.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(e.fake().forward_calls, 1);
}
