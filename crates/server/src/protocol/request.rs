//! The completions request: every field of FriendliAI's `POST /v1/completions`, the keys the
//! Friendli SDKs add, and the OpenAI/vLLM fields clients send. Field names are written once
//! (`fields.rs`): the tagged list of keys comes with the struct.
//!
//! Every field is optional: JSON `null` deserializes to `None`, exactly like a missing key.
//! Unknown keys are ignored. Integers stay `i64` here so that range checks (negative ids,
//! `max_tokens: 0`) are validation errors with clear messages rather than type errors.

use serde::Deserialize;
use serde_json::Value;

use super::fields::wire_fields;

// Every field is an `Option`: a missing key is `None` without `#[serde(default)]` (which would
// make the schema derive serialize a default request). Value ranges that the rules enforce on
// one field alone are `schema` attributes, so `/openapi.json` states them (a unit test in
// `routes/openapi.rs` checks each against the rules).
wire_fields! {
    /// A completions request: exactly one of `prompt` and `tokens`; `null` means absent.
    #[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
    pub struct CompletionRequest {
        // --- input and routing ---
        pub model: Option<String>,
        [NotChat]
        pub prompt: Option<Prompt>,
        [NotChat]
        pub tokens: Option<TokenInput>,
        // --- streaming ---
        pub stream: Option<bool>,
        [OpenAi]
        pub stream_options: Option<StreamOptions>,
        // --- length ---
        #[schema(exclusive_minimum = 0)]
        [Legacy]
        pub timeout_microseconds: Option<i64>,
        #[schema(minimum = 1)]
        pub max_tokens: Option<i64>,
        #[schema(minimum = 1)]
        pub max_total_tokens: Option<i64>,
        #[schema(minimum = 0)]
        pub min_tokens: Option<i64>,
        #[schema(minimum = 0)]
        pub min_total_tokens: Option<i64>,
        // --- choices and beam search ---
        #[schema(minimum = 1, maximum = 128)]
        pub n: Option<i64>,
        #[schema(minimum = 1, maximum = 31)]
        [Legacy]
        pub num_beams: Option<i64>,
        [Legacy]
        pub length_penalty: Option<f64>,
        [Legacy]
        pub early_stopping: Option<bool>,
        [Legacy]
        pub beam_search_type: Option<String>,
        [Legacy]
        pub beam_compat_pre_normalization: Option<bool>,
        [Legacy]
        pub beam_compat_no_post_normalization: Option<bool>,
        // --- penalties ---
        #[schema(minimum = 1)]
        pub no_repeat_ngram: Option<i64>,
        pub encoder_no_repeat_ngram: Option<i64>,
        #[schema(minimum = 1.0)]
        pub repetition_penalty: Option<f64>,
        pub encoder_repetition_penalty: Option<f64>,
        #[schema(minimum = -2.0, maximum = 2.0)]
        pub frequency_penalty: Option<f64>,
        #[schema(minimum = -2.0, maximum = 2.0)]
        pub presence_penalty: Option<f64>,
        // --- sampling ---
        #[schema(minimum = 0.0)]
        pub temperature: Option<f64>,
        #[schema(minimum = 0)]
        pub top_k: Option<i64>,
        #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
        pub top_p: Option<f64>,
        #[schema(minimum = 0.0, maximum = 1.0)]
        pub min_p: Option<f64>,
        pub xtc_threshold: Option<f64>,
        pub xtc_probability: Option<f64>,
        pub seed: Option<Seed>,
        [OpenAi]
        pub logit_bias: Option<LogitBias>,
        /// vLLM / llama.cpp extension: EOS is an ordinary token.
        pub ignore_eos: Option<bool>,
        // --- stopping ---
        pub stop: Option<Stop>,
        pub stop_tokens: Option<Vec<TokenSequence>>,
        pub eos_token: Option<Vec<i64>>,
        pub bad_words: Option<Vec<String>>,
        pub bad_word_tokens: Option<Vec<TokenSequence>>,
        // --- outputs ---
        [Legacy, NotChat]
        pub include_output_logits: Option<bool>,
        [Legacy, NotChat]
        pub include_output_logprobs: Option<bool>,
        [NotChat]
        pub forced_output_tokens: Option<TokenInput>,
        pub response_format: Option<ResponseFormat>,
        /// OpenAI: number of most likely tokens to report per position.
        #[schema(minimum = 0, maximum = 20)]
        [OpenAi]
        pub logprobs: Option<i64>,
        [OpenAi, NotChat]
        pub echo: Option<bool>,
        #[schema(minimum = 1, maximum = 128)]
        [OpenAi, NotChat]
        pub best_of: Option<i64>,
        [OpenAi, NotChat]
        pub suffix: Option<String>,
        /// OpenAI: ignored by the server (accepted with any JSON value).
        [OpenAi]
        pub user: Option<Value>,
        // --- embedding replacement ---
        [NotChat]
        pub token_index_to_replace: Option<Vec<i64>>,
        [NotChat]
        pub embedding_to_replace: Option<Vec<f64>>,
        // --- friendli-client keys (gRPC-era) ---
        [Legacy]
        pub soft_prompts: Option<Vec<Value>>,
        [Legacy]
        pub position_ids: Option<Vec<i64>>,
        [Legacy]
        pub generation_offset: Option<i64>,
    }
}

/// `prompt`: a string, a batch of strings (OpenAI, current Friendli SDK), or OpenAI's token
/// forms (a list of ids, a batch of lists of ids).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenBatch(Vec<Vec<i64>>),
}

/// `tokens` / `forced_output_tokens`: a list of ids, or a batch of lists of ids.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum TokenInput {
    One(Vec<i64>),
    Batch(Vec<Vec<i64>>),
}

/// `stop`: one phrase (OpenAI) or a list of phrases.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `seed`: one seed or a list (one per choice). Each in `0..2^64`; negative 64-bit values are
/// taken modulo 2^64.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "Value")]
pub enum Seed {
    One(u64),
    Many(Vec<u64>),
}

/// OpenAI's `{"<token id>": bias}` or llama.cpp's `[[id, bias], ...]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LogitBias {
    Map(serde_json::Map<String, Value>),
    Pairs(Vec<Vec<Value>>),
}

/// `{"tokens": [ids]}` entries of `stop_tokens` and `bad_word_tokens`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct TokenSequence {
    pub tokens: Vec<i64>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// vLLM extension; accepted and ignored by clients that do not know it.
    pub continuous_usage_stats: Option<bool>,
}

/// `response_format`: the type stays a string so that an unknown type is a validation error
/// naming the allowed values.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub schema: Option<String>,
    pub json_schema: Option<Value>,
}

fn int_list(v: &Value) -> Option<Vec<i64>> {
    v.as_array()?.iter().map(Value::as_i64).collect()
}

fn int_batch(v: &Value) -> Option<Vec<Vec<i64>>> {
    v.as_array()?.iter().map(int_list).collect()
}

fn str_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|s| s.as_str().map(str::to_owned))
        .collect()
}

fn seed_value(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_i64().map(|i| i as u64))
}

impl TryFrom<Value> for Prompt {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        if let Value::String(s) = v {
            return Ok(Prompt::Text(s));
        }
        let first = v.as_array().and_then(|a| a.first());
        let parsed = match first {
            Some(Value::String(_)) => str_list(&v).map(Prompt::Texts),
            Some(Value::Array(_)) => int_batch(&v).map(Prompt::TokenBatch),
            _ => int_list(&v).map(Prompt::Tokens),
        };
        parsed.ok_or_else(|| {
            "expected a string, a list of strings, a list of token ids or a list of lists of \
             token ids"
                .to_owned()
        })
    }
}

impl TryFrom<Value> for TokenInput {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let parsed = match v.as_array().and_then(|a| a.first()) {
            Some(Value::Array(_)) => int_batch(&v).map(TokenInput::Batch),
            _ => int_list(&v).map(TokenInput::One),
        };
        parsed
            .ok_or_else(|| "expected a list of integer token ids (or a list of such lists)".into())
    }
}

impl TryFrom<Value> for Stop {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        match v {
            Value::String(s) => Ok(Stop::One(s)),
            other => str_list(&other)
                .map(Stop::Many)
                .ok_or_else(|| "expected a string or a list of strings".to_owned()),
        }
    }
}

impl TryFrom<Value> for Seed {
    type Error = String;
    fn try_from(v: Value) -> Result<Self, String> {
        let parsed = match &v {
            Value::Array(a) => a
                .iter()
                .map(seed_value)
                .collect::<Option<_>>()
                .map(Seed::Many),
            other => seed_value(other).map(Seed::One),
        };
        parsed.ok_or_else(|| {
            "expected an integer or a list of integers (each in 0..2^64, or a negative 64-bit \
             integer)"
                .to_owned()
        })
    }
}
