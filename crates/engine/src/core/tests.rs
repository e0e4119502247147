//! Engine-thread isolation tests with an in-crate stub model (the testkit's fake model links
//! against the library build of this crate, so in-crate tests use their own).

use std::time::Duration;

use crate::api::{EngineConfig, EngineError, EngineRequest, Event, SamplingParams};
use crate::handle::{EngineHandle, RequestStream};
use crate::model::{ModelError, ModelExecutor, SeqStep};
use crate::sample::{LogitsProcessor, RowContext, Sampler};

/// Logits favour `(last position + 1) % vocab`; checks every block id it is given.
struct StubModel {
    panic_in_forward_on_token: Option<u32>,
}

impl ModelExecutor for StubModel {
    fn vocab_size(&self) -> usize {
        8
    }
    fn max_context(&self) -> usize {
        64
    }
    fn block_size(&self) -> usize {
        4
    }
    fn num_blocks(&self) -> usize {
        16
    }
    fn forward(&mut self, seqs: &[SeqStep<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        logits.clear();
        for s in seqs {
            assert!(s.block_table.iter().all(|&b| b < 16));
            assert!(s.block_table.len() * 4 >= s.start_pos + s.tokens.len());
            if self
                .panic_in_forward_on_token
                .is_some_and(|t| s.tokens.contains(&t))
            {
                panic!("stub model panics on purpose");
            }
            for end in s.start_pos + s.tokens.len() + 1 - s.rows()..=s.start_pos + s.tokens.len() {
                let next = end % 8;
                logits.extend((0..8).map(|i| if i == next { 1.0 } else { 0.0 }));
            }
        }
        Ok(())
    }
    fn copy_block(&mut self, _src: u32, _dst: u32) {}
}

/// Panics on rows of requests with `top_k == 13`.
struct PanicOnTopK13;

impl LogitsProcessor for PanicOnTopK13 {
    fn name(&self) -> &'static str {
        "panic_on_top_k_13"
    }
    fn is_argmax_invariant(&self) -> bool {
        false
    }
    fn apply(&self, _row: &mut [f32], ctx: &RowContext<'_>) {
        assert_ne!(ctx.params.top_k, 13, "processor panics on purpose");
    }
}

fn request(top_k: usize, prompt: Vec<u32>) -> EngineRequest {
    let params = SamplingParams {
        temperature: 0.0,
        top_k,
        max_new_tokens: 4,
        ..Default::default()
    };
    EngineRequest {
        prompt,
        params,
        seeds: vec![0],
        deadline: None,
        prompt_embeddings: Vec::new(),
        constraint: None,
        beam: None,
        lora: Vec::new(),
    }
}

async fn last_event(mut stream: RequestStream) -> (Vec<Event>, Event) {
    let mut events = Vec::new();
    let collect = async {
        while let Some(e) = stream.recv().await {
            events.push(e);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), collect)
        .await
        .expect("request hung");
    let last = events.pop().expect("at least one event");
    (events, last)
}

async fn wait_until_all_blocks_free(engine: &EngineHandle) {
    for _ in 0..1000 {
        let s = engine.stats();
        if s.free_blocks == s.total_blocks && s.running_seqs == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("blocks not freed: {:?}", engine.stats());
}

#[tokio::test]
async fn a_panicking_processor_fails_only_its_request() {
    let model = Box::new(StubModel {
        panic_in_forward_on_token: None,
    });
    let sampler = Sampler::new(vec![Box::new(PanicOnTopK13)]);
    let engine = EngineHandle::spawn_with_sampler(model, EngineConfig::default(), sampler);
    let bad = engine.submit(request(13, vec![1, 2, 3])).unwrap();
    let good = engine.submit(request(0, vec![1, 2, 3])).unwrap();
    let (_, bad_last) = last_event(bad).await;
    let (good_events, good_last) = last_event(good).await;
    match bad_last {
        Event::Error(EngineError::Model(msg)) => assert!(msg.contains("on purpose"), "{msg}"),
        other => panic!("expected a model error, got {other:?}"),
    }
    assert_eq!(
        good_last,
        Event::Finished {
            prompt_tokens: 3,
            completion_tokens: 4
        }
    );
    let tokens: Vec<u32> = good_events
        .iter()
        .filter_map(|e| {
            if let Event::Token { token, .. } = e {
                Some(*token)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(tokens, vec![3, 4, 5, 6]);
    assert!(engine.is_running());
    wait_until_all_blocks_free(&engine).await;
    // Still serving.
    let (_, last) = last_event(engine.submit(request(0, vec![5])).unwrap()).await;
    assert!(matches!(last, Event::Finished { .. }));
}

#[tokio::test]
async fn a_panicking_step_fails_the_batch_and_the_engine_recovers() {
    let model = Box::new(StubModel {
        panic_in_forward_on_token: Some(7),
    });
    let engine = EngineHandle::spawn(model, EngineConfig::default());
    let (_, last) = last_event(engine.submit(request(0, vec![7, 1])).unwrap()).await;
    assert_eq!(
        last,
        Event::Error(EngineError::Model("internal engine error".to_string()))
    );
    wait_until_all_blocks_free(&engine).await;
    let (_, last) = last_event(engine.submit(request(0, vec![1, 2])).unwrap()).await;
    assert_eq!(
        last,
        Event::Finished {
            prompt_tokens: 2,
            completion_tokens: 4
        }
    );
    assert!(engine.is_running());
}
