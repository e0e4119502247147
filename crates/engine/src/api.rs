//! The engine's public request/event types: what the server submits and what it gets back.
//! Plain Rust types, no JSON. (Fields may be added; existing ones keep their meaning.)

use std::time::Instant;

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
    /// EOS and `stop_sequences` cannot end a choice before it has this many output tokens
    /// (their completing tokens are masked until then).
    pub min_new_tokens: usize,
    /// Token sequences that end a choice when the output ends with one of them; treated like
    /// EOS: the matched tokens are not output (they are held back while a match is possible).
    pub stop_sequences: Vec<Vec<TokenId>>,
    /// Token sequences that can never be completed: when the output ends with all but the last
    /// token of one, that last token is masked.
    pub bad_sequences: Vec<Vec<TokenId>>,
    /// Multiplicative penalty on every token of prompt + output (1.0 = off; Keskar et al.).
    pub repetition_penalty: f32,
    /// Subtracted once per occurrence of the token in the output (0 = off; OpenAI).
    pub frequency_penalty: f32,
    /// Subtracted once if the token occurs in the output (0 = off; OpenAI).
    pub presence_penalty: f32,
    /// No n-gram of this size occurs twice in prompt + output (0 or 1 = off).
    pub no_repeat_ngram: usize,
    /// Keeps tokens whose probability is at least `min_p` × the top probability (0 = off).
    pub min_p: f32,
    /// When non-empty, the output is exactly these tokens (no sampling, no stop checks); the
    /// choice then ends with `Length`.
    pub forced_tokens: Vec<TokenId>,
    /// Report this many most likely tokens (of the raw distribution) with each token (0 = none).
    pub top_logprobs: usize,
    /// Report each token's raw logits row.
    pub output_logits: bool,
    /// Compute each sampled token's log-probability in the raw distribution (`Event::Token`'s
    /// `logprob`: one pass over the vocabulary per token). When false the event carries NaN;
    /// the server turns it off when the request neither reports nor ranks by log-probabilities.
    pub token_logprobs: bool,
    /// Added to the raw logits of these tokens before sampling (OpenAI `logit_bias`; the
    /// reported log-probabilities stay those of the raw row).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Report the log-probability of every prompt token after the first given the tokens before
    /// it (with `top_logprobs` alternatives): `Event::PromptToken`s, before any `Token`. Such a
    /// request is never served from the prefix cache (its rows must be computed).
    pub prompt_logprobs: bool,
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
            min_new_tokens: 0,
            stop_sequences: Vec::new(),
            bad_sequences: Vec::new(),
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            no_repeat_ngram: 0,
            min_p: 0.0,
            forced_tokens: Vec::new(),
            top_logprobs: 0,
            output_logits: false,
            token_logprobs: true,
            logit_bias: Vec::new(),
            prompt_logprobs: false,
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
    /// Not finished by then: the request ends with `EngineError::Timeout` and frees its blocks.
    pub deadline: Option<Instant>,
    /// Input embeddings (hidden-size vectors) replacing the token embeddings at these prompt
    /// positions. A request with any is never served from, nor added to, the prefix cache.
    pub prompt_embeddings: Vec<(usize, Vec<f32>)>,
    /// Structured output: every choice's tokens follow a constraint made by this factory
    /// (see [`crate::constraint`]).
    pub constraint: Option<crate::constraint::SharedConstraint>,
    /// Beam search: `num_beams` hypotheses explored together; the request then has one choice
    /// (the best hypothesis), `seeds` has one entry, and its events come when it is done.
    pub beam: Option<BeamParams>,
    /// LoRA adapters every choice runs with, in this order (empty: the base model). They enter
    /// the prompt's prefix-cache keys (`kv::prefix`): names as vLLM's block-hash extra keys,
    /// content digests and scales as the key's salt.
    pub lora: Vec<LoraRef>,
}

/// A LoRA adapter a request runs with: the model executor's id for it, its served name, the
/// user's scale, and the SHA-256 of the adapter's content. The engine never sees weights: it
/// passes the reference to the model in [`crate::SeqStep::lora`], counts distinct ids per step
/// ([`EngineConfig::max_loras`]) and keys the prefix cache by the digest and scale (an adapter
/// reloaded under the same name with other content never hits stale blocks); the name goes
/// into the block hashes the KV events carry (vLLM's extra key `(lora_name,)`), the id into
/// their `lora_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRef {
    pub id: u32,
    pub name: std::sync::Arc<str>,
    pub scale: f32,
    pub digest: [u8; 32],
}

/// Which beam search (`beam_search_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeamKind {
    /// Hugging Face `beam_search`: the top-scoring extensions.
    Deterministic,
    /// Hugging Face `beam_sample`: extensions drawn (without replacement) from the processed
    /// distribution over all beams' extensions.
    NaiveSampling,
    /// Kool, van Hoof & Welling 2019: Gumbel-top-k over sequences, each extension perturbed by
    /// a Gumbel truncated at its parent's perturbed score.
    Stochastic,
}

/// Beam search parameters (validated by the server).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BeamParams {
    /// 1..=31.
    pub num_beams: usize,
    pub kind: BeamKind,
    /// Finished hypotheses are ranked by `sum logprob / length^length_penalty` (length counts
    /// the generated tokens, the final EOS included).
    pub length_penalty: f32,
    /// Stop as soon as `num_beams` hypotheses are finished; otherwise go on while a running
    /// beam could still beat the worst kept hypothesis (Hugging Face's heuristic).
    pub early_stopping: bool,
    /// Log-softmax before the logits processors (then again after, unless
    /// `no_post_normalization`).
    pub pre_normalization: bool,
    pub no_post_normalization: bool,
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
    /// `logprob` is `log_softmax` of the raw logits row at `token`.
    Token {
        choice: usize,
        token: TokenId,
        logprob: f32,
        /// Present when the request asked for top log-probabilities or logits.
        extra: Option<Box<TokenExtra>>,
    },
    /// With `prompt_logprobs`: prompt token `position` (≥ 1) and its log-probability given the
    /// prompt before it, once per position, in order, before the first `Token`.
    PromptToken {
        position: usize,
        token: TokenId,
        logprob: f32,
        /// Present when the request asked for top log-probabilities.
        extra: Option<Box<TokenExtra>>,
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

/// What a token reports beyond its log-probability, when asked for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenExtra {
    /// The `top_logprobs` most likely tokens of the raw row, most likely first (ties: lowest id).
    pub top_logprobs: Vec<(TokenId, f32)>,
    /// The raw logits row the token was chosen from (`output_logits`).
    pub logits: Option<Vec<f32>>,
}

/// The KV cache's size, so that callers can check a request fits before submitting it (the
/// engine fails one that cannot with [`EngineError::TooLarge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvCapacity {
    /// Tokens per block.
    pub block_size: usize,
    pub blocks: usize,
}

impl KvCapacity {
    /// Tokens the whole cache holds.
    pub fn tokens(&self) -> usize {
        self.block_size.saturating_mul(self.blocks)
    }

    /// Blocks a request holds at most when it runs alone to its full length: the prompt's full
    /// blocks once (its choices share them), plus each choice's own blocks. A sequence never
    /// holds more than `max_context - 1` tokens (the last one sampled is never written).
    pub fn blocks_needed(
        &self,
        prompt_len: usize,
        max_new_tokens: usize,
        choices: usize,
        max_context: usize,
    ) -> usize {
        let bs = self.block_size.max(1);
        let kv_tokens = prompt_len
            .saturating_add(max_new_tokens.max(1) - 1)
            .min(max_context.saturating_sub(1))
            .max(prompt_len);
        let shared = prompt_len / bs;
        let own = kv_tokens.div_ceil(bs) - shared;
        shared.saturating_add(choices.saturating_mul(own))
    }

    /// The most new tokens per choice for which [`KvCapacity::blocks_needed`] stays within the
    /// cache (ignoring the context limit); 0 when not even one fits.
    pub fn max_new_tokens(&self, prompt_len: usize, choices: usize) -> usize {
        let bs = self.block_size.max(1);
        let shared = prompt_len / bs;
        let Some(left) = self.blocks.checked_sub(shared) else {
            return 0;
        };
        // Each choice may hold `own` blocks: its tokens end at `(shared + own) * bs`.
        let own = left / choices.max(1);
        let cached = (shared + own) * bs;
        if cached < prompt_len {
            return 0;
        }
        cached - prompt_len + 1
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("the model failed: {0}")]
    Model(String),
    #[error("the request needs {needed} KV blocks but the cache has only {total}")]
    TooLarge { needed: usize, total: usize },
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The output constraint (structured output) failed: no allowed token was left after the
    /// other controls, or the grammar engine reported an error.
    #[error("the output constraint failed: {0}")]
    Constraint(String),
    /// The request's `deadline` passed before it finished.
    #[error("the request did not finish within its timeout")]
    Timeout,
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
    /// Automatic prefix caching: full KV blocks of prompts are kept (while their memory is not
    /// needed) and reused by later prompts that start with the same tokens, which then skip
    /// computing them. The output is the same either way.
    pub enable_prefix_caching: bool,
    /// Most distinct LoRA adapters (ids) among the running requests, so in one step; a waiting
    /// request whose adapters would exceed it is admitted only when running ones free a slot
    /// (later requests that fit may go first). 0 = no limit.
    pub max_loras: usize,
    /// The seed of the prefix cache's block hashes (vLLM's `PYTHONHASHSEED`; see
    /// [`crate::block_hash`]): replicas with the same seed name equal blocks alike.
    pub prefix_hash_seed: String,
    /// Where the prefix cache's changes go (`KvEventBatch`es, one per engine step that changed
    /// it), or `None` (the default): no events are recorded. The engine never waits on it: a
    /// batch that does not fit is dropped and counted (`EngineStats::kv_event_batches_dropped`);
    /// its sequence number is skipped, so consumers see the gap.
    pub kv_events: Option<KvEventSender>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_waiting: 256,
            max_prefill_tokens: 512,
            enable_prefix_caching: true,
            max_loras: 0,
            prefix_hash_seed: crate::block_hash::DEFAULT_HASH_SEED.to_owned(),
            kv_events: None,
        }
    }
}

/// The sending side of the KV-event channel (bounded; the engine only `try_send`s).
pub type KvEventSender = tokio::sync::mpsc::Sender<KvEventBatch>;

/// A change to the prefix cache, as vLLM's KV events describe it. Hashes are the blocks'
/// external hashes ([`crate::block_hash::external`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Full prompt blocks were computed and cached: a run of consecutive blocks of one prompt,
    /// `parent_block_hash` being the block before the first (none for a prompt's first block).
    BlockStored {
        block_hashes: Vec<u64>,
        parent_block_hash: Option<u64>,
        /// The blocks' tokens, `block_size` per hash.
        token_ids: Vec<TokenId>,
        block_size: usize,
        /// The LoRA adapter the blocks were computed with (its id and served name, also the
        /// hashes' extra key), `None` for the base model.
        lora_id: Option<u64>,
        lora_name: Option<String>,
    },
    /// Cached blocks were evicted (their memory reused).
    BlockRemoved { block_hashes: Vec<u64> },
    /// Every cached block was forgotten (the engine reset its cache after a failed step).
    AllBlocksCleared,
}

/// The prefix-cache changes of one engine step, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct KvEventBatch {
    /// 0, 1, 2, ... per engine start, one per batch made (a dropped batch leaves a gap).
    pub seq: u64,
    /// Seconds since the Unix epoch when the batch was made.
    pub ts: f64,
    pub events: Vec<KvEvent>,
}

/// A snapshot of engine state (for tests, `/health`, metrics).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub total_blocks: usize,
    /// Blocks not used by any sequence, including `cached_free_blocks` (which are handed out,
    /// least recently used first, once no other free block is left).
    pub free_blocks: usize,
    /// Free blocks that still hold a cached full prompt block (prefix caching).
    pub cached_free_blocks: usize,
    /// Blocks of the window pool (the sliding-window layers' K/V, for models that keep them
    /// apart; 0 otherwise) and how many of them are free.
    pub total_window_blocks: usize,
    pub free_window_blocks: usize,
    /// Positions per block.
    pub block_size: usize,
    /// KV bytes per position in the main pool (every layer, or the layers without a window)
    /// and in the window pool; 0 when the model does not say.
    pub kv_bytes_per_token: usize,
    pub kv_window_bytes_per_token: usize,
    pub running_seqs: usize,
    pub waiting_requests: usize,
    pub steps: u64,
    /// Requests preempted so far (blocks ran out; recomputed later).
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache so far: each admitted request's prompt
    /// length, counted again when a preempted request is admitted again. 0 with caching off.
    pub prefix_cache_queries_tokens: u64,
    /// Of `prefix_cache_queries_tokens`, the tokens whose KV was reused instead of computed
    /// (whole blocks; never a prompt's last token). Hit rate = hits / queries.
    pub prefix_cache_hit_tokens: u64,
    /// LoRA adapter ids used by running requests (sorted).
    pub running_loras: Vec<u32>,
    /// LoRA adapter ids used by waiting requests and not by running ones (sorted).
    pub waiting_loras: Vec<u32>,
    /// KV-event batches dropped because the channel to the publisher was full.
    pub kv_event_batches_dropped: u64,
}

#[cfg(test)]
mod tests {
    use super::KvCapacity;

    /// `max_new_tokens` is exactly the largest length `blocks_needed` lets in.
    #[test]
    fn kv_capacity_fit_is_the_largest_that_fits() {
        for block_size in 1..=5 {
            for blocks in 0..=12 {
                let kv = KvCapacity { block_size, blocks };
                for prompt in 1..=40 {
                    for choices in 1..=4 {
                        let fits = |m| kv.blocks_needed(prompt, m, choices, usize::MAX) <= blocks;
                        let fit = kv.max_new_tokens(prompt, choices);
                        let case =
                            format!("bs {block_size} blocks {blocks} p {prompt} c {choices}");
                        if fit == 0 {
                            assert!(!fits(1), "{case}");
                        } else {
                            assert!(fits(fit), "{case}: {fit}");
                            assert!(!fits(fit + 1), "{case}: {fit} + 1");
                        }
                    }
                }
            }
        }
    }
}
