//! `POST /v1/tokenize` (`{"model"?, "prompt"}` → `{"tokens"}`, tokenized as a completion's
//! prompt) and `POST /v1/detokenize` (`{"model"?, "tokens"}` → `{"text"}`).

use serde::{Deserialize, Serialize};

/// `{"model"?, "prompt"}`: the prompt is tokenized as for a completion (special tokens parsed,
/// BOS added when the model wants it).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    pub prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TokenizeResponse {
    pub tokens: Vec<u32>,
}

/// `{"model"?, "tokens"}`: ids in `[0, vocab)`; control tokens are skipped in the text, as in
/// completion output.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Option<Vec<i64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DetokenizeResponse {
    pub text: String,
}

/// One rendered prompt (`POST /v1/completions/render`: one per input, in order;
/// `POST /v1/chat/completions/render`: the conversation), as vLLM's render endpoints name it:
/// the token ids a completion of the same body would be given.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RenderedPrompt {
    /// `cmpl-…` or `chatcmpl-…` (no request is made).
    pub request_id: String,
    pub model: String,
    pub token_ids: Vec<u32>,
    /// Chat only: the conversation as the chat template rendered it (before tokenization).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
}
