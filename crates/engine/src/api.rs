//! The engine's public request/event types: what the server submits and what it gets back.
//! Plain Rust types, no JSON. (Fields may be added; existing ones keep their meaning.)

use crate::model::TokenId;

/// Sampling and stopping parameters of one request (already validated by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// Maximum number of generated tokens per choice (already clamped to the context).
    pub max_new_tokens: usize,
    /// Tokens that end a choice (the model's end-of-generation set, or the request's `eos_token`).
    /// Excluded from the output tokens.
    pub eos_tokens: Vec<TokenId>,
    /// EOS is an ordinary token (vLLM/llama.cpp `ignore_eos`).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            max_new_tokens: 16,
            eos_tokens: Vec::new(),
            ignore_eos: false,
        }
    }
}

/// One request: a prompt and `seeds.len()` choices (n) sampled from it.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    pub prompt: Vec<TokenId>,
    pub params: SamplingParams,
    /// One seed per choice (n = seeds.len() ≥ 1). Replaying a seed reproduces its choice exactly.
    pub seeds: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS (or a stop condition).
    Stop,
    /// `max_new_tokens` or the context limit.
    Length,
}

/// Events of one request, in order. Every request ends with exactly one `Finished` or `Error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A generated token of choice `choice` (EOS tokens are not reported unless `ignore_eos`).
    Token {
        choice: usize,
        token: TokenId,
        logprob: f32,
    },
    /// Choice `choice` is done.
    ChoiceFinished { choice: usize, reason: FinishReason },
    /// All choices are done; the last event.
    Finished {
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The request failed; the last event.
    Error(EngineError),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the model failed: {0}")]
    Model(String),
    #[error("the request needs {needed} KV blocks but the cache has only {total}")]
    TooLarge { needed: usize, total: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// Why `submit` refused a request before queueing it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The waiting queue is full: answer 503 with `Retry-After`.
    #[error("the server is overloaded: {waiting} requests are waiting")]
    QueueFull { waiting: usize },
    #[error("the engine is not running")]
    NotRunning,
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences decoded together in one step.
    pub max_num_seqs: usize,
    /// Most requests waiting for admission; more → `SubmitError::QueueFull`.
    pub max_waiting: usize,
    /// Most prompt tokens prefilled in one step (chunked prefill budget).
    pub max_prefill_tokens: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_waiting: 256,
            max_prefill_tokens: 512,
        }
    }
}

/// A snapshot of engine state (for tests, `/health`, metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub total_blocks: usize,
    pub free_blocks: usize,
    pub running_seqs: usize,
    pub waiting_requests: usize,
    pub steps: u64,
    /// Requests preempted so far (blocks ran out; recomputed later).
    pub preemptions: u64,
}
