//! Helpers shared by the engine scenario tests: start an engine over the fake model, collect a
//! request's events while checking the event protocol, wait for stats, build requests.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cordial_engine::{
    EngineConfig, EngineHandle, EngineRequest, EngineStats, Event, FinishReason, RequestStream,
    SamplingParams, TokenExtra, TokenId,
};
use cordial_testkit::fake_model::{FakeModel, FakeModelConfig, FakeStats, StepGate};

/// How long any single wait may take before the test fails instead of hanging.
pub const TIMEOUT: Duration = Duration::from_secs(20);

pub struct Engine {
    pub handle: EngineHandle,
    pub model: FakeModelConfig,
    pub fake: Arc<Mutex<FakeStats>>,
    pub gate: StepGate,
}

impl Engine {
    pub fn start(model: FakeModelConfig, config: EngineConfig) -> Engine {
        let fake_model = FakeModel::new(model.clone());
        let (fake, gate) = (fake_model.stats(), fake_model.gate());
        let handle = EngineHandle::spawn(Box::new(fake_model), config);
        Engine {
            handle,
            model,
            fake,
            gate,
        }
    }

    pub fn submit(&self, req: EngineRequest) -> RequestStream {
        self.handle.submit(req).expect("submit refused")
    }

    /// Submits and collects one request.
    pub async fn run(&self, req: EngineRequest) -> Outcome {
        let n = req.seeds.len();
        collect(self.submit(req), n).await
    }

    pub fn fake(&self) -> FakeStats {
        self.fake.lock().unwrap().clone()
    }

    /// Waits until the engine's forward call `index` waits at the gate.
    pub fn parked_at(&self, index: u64) {
        assert_eq!(
            self.gate.wait_parked(TIMEOUT),
            Some(index),
            "engine not parked where expected"
        );
    }

    /// Lets one forward run and waits until the next one parks.
    pub fn step_to(&self, index: u64) {
        self.gate.allow(1);
        self.parked_at(index);
    }

    /// Polls the stats until `pred` holds.
    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&EngineStats) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !pred(&self.handle.stats()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {:?}",
                self.handle.stats()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until nothing runs or waits and every block is free again.
    pub async fn wait_all_free(&self) {
        self.wait_stats("all blocks free", |s| {
            s.free_blocks == s.total_blocks
                && s.free_window_blocks == s.total_window_blocks
                && s.running_seqs == 0
                && s.waiting_requests == 0
        })
        .await;
    }
}

/// One `PromptToken` event: `(position, token, logprob, top logprobs)`.
pub type PromptScore = (usize, TokenId, f32, Vec<(TokenId, f32)>);

/// Everything one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<Vec<TokenId>>,
    pub logprobs: Vec<Vec<f32>>,
    /// Each token's `extra` (top log-probabilities, logits), when asked for.
    pub extras: Vec<Vec<Option<Box<TokenExtra>>>>,
    pub reasons: Vec<Option<FinishReason>>,
    /// `PromptToken` events.
    pub prompt: Vec<PromptScore>,
    /// The final event (`Finished` or `Error`).
    pub end: Event,
}

impl Outcome {
    pub fn is_finished(&self) -> bool {
        matches!(self.end, Event::Finished { .. })
    }

    /// The tokens of a one-choice request.
    pub fn single(&self) -> &[TokenId] {
        assert!(self.is_finished(), "request failed: {:?}", self.end);
        &self.tokens[0]
    }
}

/// Collects every event of an `n`-choice request and checks the protocol: tokens of a choice
/// only before its one `ChoiceFinished`; exactly one final event, last; `Finished` only after
/// every choice finished, with `completion_tokens` = the tokens reported.
pub async fn collect(mut stream: RequestStream, n: usize) -> Outcome {
    let mut out = Outcome {
        tokens: vec![Vec::new(); n],
        logprobs: vec![Vec::new(); n],
        extras: vec![Vec::new(); n],
        reasons: vec![None; n],
        prompt: Vec::new(),
        end: Event::Error(cordial_engine::EngineError::ShuttingDown),
    };
    let mut ended = false;
    let all = async {
        while let Some(event) = stream.recv().await {
            assert!(!ended, "event after the final event: {event:?}");
            match event {
                Event::PromptToken {
                    position,
                    token,
                    logprob,
                    extra,
                } => {
                    assert!(
                        out.tokens.iter().all(Vec::is_empty)
                            && out.reasons.iter().all(Option::is_none),
                        "prompt scores come first"
                    );
                    let expected = out.prompt.last().map_or(1, |p| p.0 + 1);
                    assert_eq!(position, expected, "prompt positions in order, once");
                    let top = extra.map(|e| e.top_logprobs).unwrap_or_default();
                    out.prompt.push((position, token, logprob, top));
                }
                Event::Token {
                    choice,
                    token,
                    logprob,
                    extra,
                } => {
                    assert!(out.reasons[choice].is_none(), "token after ChoiceFinished");
                    out.tokens[choice].push(token);
                    out.logprobs[choice].push(logprob);
                    out.extras[choice].push(extra);
                }
                Event::ChoiceFinished { choice, reason } => {
                    assert!(
                        out.reasons[choice].is_none(),
                        "choice {choice} finished twice"
                    );
                    out.reasons[choice] = Some(reason);
                }
                Event::Finished {
                    completion_tokens, ..
                } => {
                    assert!(
                        out.reasons.iter().all(Option::is_some),
                        "Finished before choices"
                    );
                    let total: usize = out.tokens.iter().map(Vec::len).sum();
                    assert_eq!(completion_tokens, total);
                    out.end = event;
                    ended = true;
                }
                Event::Error(_) => {
                    out.end = event;
                    ended = true;
                }
            }
        }
    };
    tokio::time::timeout(TIMEOUT, all)
        .await
        .expect("request hung");
    assert!(ended, "stream ended without a final event");
    assert!(
        stream.recv().await.is_none(),
        "recv after the final event must give None"
    );
    out
}

/// `len` prompt tokens in `1..vocab`, different for each `salt`.
pub fn prompt(len: usize, salt: u32, vocab: usize) -> Vec<TokenId> {
    (0..len as u32)
        .map(|i| 1 + (i * 7 + salt * 13) % (vocab as u32 - 1))
        .collect()
}

pub fn greedy(prompt: Vec<TokenId>, max_new_tokens: usize) -> EngineRequest {
    let params = SamplingParams {
        temperature: 0.0,
        max_new_tokens,
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

pub fn sampled(prompt: Vec<TokenId>, max_new_tokens: usize, seeds: Vec<u64>) -> EngineRequest {
    let params = SamplingParams {
        temperature: 0.9,
        max_new_tokens,
        ..Default::default()
    };
    EngineRequest {
        prompt,
        params,
        seeds,
        deadline: None,
        prompt_embeddings: Vec::new(),
        constraint: None,
        beam: None,
        lora: Vec::new(),
    }
}
