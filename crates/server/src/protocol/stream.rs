//! Stream events of both dialects (legacy Friendli events, current OpenAI-shaped chunks; see
//! docs/api.md). Each is sent as one `data: <json>` SSE event.

use serde::Serialize;

use super::response::{ErrorDetail, FinishReasonWire, LogprobsWire, Usage};

/// Legacy dialect: one per generated token.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LegacyTokenSampled<'a> {
    /// Always `"token_sampled"`.
    pub event: &'static str,
    pub index: usize,
    pub text: &'a str,
    pub token: u32,
    /// `include_output_logprobs`: this token's log-probability.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprob: Option<f32>,
    /// `logprobs: k`: OpenAI's object for this token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<&'a LogprobsWire>,
    /// `include_output_logits`: this token's raw logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<&'a [f32]>,
}

/// Legacy dialect: the last event, with the full results.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LegacyComplete<'a> {
    /// Always `"complete"`.
    pub event: &'static str,
    pub choices: &'a [LegacyChoice],
    pub usage: Usage,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LegacyChoice {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: Option<FinishReasonWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<Vec<f32>>>,
}

/// Legacy dialect: a failure after the stream started.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LegacyError<'a> {
    /// Always `"error"`.
    pub event: &'static str,
    pub error: &'a ErrorDetail,
}

/// Current dialect: an OpenAI `text_completion` chunk with Friendli's `token`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionChunk<'a> {
    pub id: &'a str,
    /// Always `"text_completion"`.
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    /// `null` except in the final usage chunk.
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChunkChoice<'a> {
    pub index: usize,
    pub text: &'a str,
    /// Absent in the finish chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u32>,
    pub finish_reason: Option<FinishReasonWire>,
    pub logprobs: Option<&'a LogprobsWire>,
    /// `include_output_logits`: this token's raw logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<&'a [f32]>,
}

/// Current dialect: a failure after the stream started (followed by `data: [DONE]`).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChunkError<'a> {
    pub error: &'a ErrorDetail,
}
