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
