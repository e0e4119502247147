//! Non-streamed response (the contract's §4.2 superset), the error body and `/v1/models`.

use serde::Serialize;

/// `finish_reason` values: Friendli clients accept only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReasonWire {
    Stop,
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: Option<FinishReasonWire>,
    /// Always `null` until logprobs are implemented.
    pub logprobs: Option<()>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionResponse {
    pub id: String,
    /// Always `"text_completion"`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    pub usage: Usage,
}

/// `{"error": {...}}`, the body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCard {
    pub id: String,
    /// Always `"model"`.
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Longest prompt + output, once the model is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<usize>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthBody {
    /// `"ok"` or `"loading"`.
    pub status: &'static str,
}
