//! Non-streamed response (one body every client accepts: OpenAI's fields plus Friendli's `seed`
//! and `tokens` per choice), the error body and `/v1/models`.

use serde::Serialize;

/// `finish_reason` values: Friendli clients accept only these two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FinishReasonWire {
    Stop,
    Length,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, utoipa::ToSchema)]
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

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: Option<FinishReasonWire>,
    /// `include_output_logprobs`: floats aligned with `tokens`; `logprobs: k`: OpenAI's object;
    /// otherwise `null`.
    pub logprobs: Option<LogprobsWire>,
    /// `include_output_logits`: one raw logits row per token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logits: Option<Vec<Vec<f32>>>,
}

/// `choices[i].logprobs`, for a whole choice or for one streamed token: its shape follows the
/// field that asked (`include_output_logprobs`: floats; `logprobs: k`: OpenAI's object).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LogprobsWire {
    /// One log-probability per token (Friendli `include_output_logprobs`).
    Floats(Vec<f32>),
    /// OpenAI's `logprobs: k` object.
    OpenAi(OpenAiLogprobs),
}

/// OpenAI's completion logprobs: parallel lists, one entry per token.
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
pub struct OpenAiLogprobs {
    pub tokens: Vec<String>,
    /// `null` for the first token of an echoed prompt (nothing precedes it).
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<TopLogprobs>>,
    /// Character offset of each token's text in the choice's text.
    pub text_offset: Vec<usize>,
    /// Each token's raw bytes (chat `logprobs.content[i].bytes`; not part of this object).
    #[serde(skip)]
    pub token_bytes: Vec<Vec<u8>>,
}

/// `{token text: logprob}` in decreasing probability (a JSON object; the first of equal texts
/// wins). The second list holds each entry's raw bytes (for chat logprobs; not serialized).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TopLogprobs(pub Vec<(String, f32)>, pub Vec<Vec<u8>>);

impl Serialize for TopLogprobs {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (i, (text, lp)) in self.0.iter().enumerate() {
            if !self.0[..i].iter().any(|(t, _)| t == text) {
                map.serialize_entry(text, lp)?;
            }
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    /// Always `"list"`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HealthBody {
    /// `"ok"` or `"loading"`.
    pub status: &'static str,
}
