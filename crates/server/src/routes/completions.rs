//! `POST /v1/completions` (and its aliases): the completions wire shape of the generation
//! pipeline (`generate.rs`). One engine request per input; the answer is one JSON body, or an
//! SSE stream in the request's dialect (legacy Friendli events or OpenAI-shaped chunks).

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::generate::{SseWriter, WireShape};
use crate::error::ApiError;
use crate::protocol::{CompletionChoice, CompletionResponse, Usage};
use crate::state::AppState;
use crate::stream::{ChoiceResult, SseDialect, StreamMeta};
use crate::util::{completion_id, random_u64};
use crate::validate::{parse_request, validate, ResponseMode, ValidRequest};

/// The completions wire shape.
#[derive(Debug, Clone, Copy)]
pub struct Completions;

impl WireShape for Completions {
    /// Parse, model name, readiness, rules, tokenization.
    fn validate(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ValidRequest, ApiError> {
        let parsed = parse_request(body, headers, state.served_names())?;
        let serving = state.serving().ok_or(ApiError::NotReady)?;
        serving.with_model_info(|info| validate(parsed, info, random_u64))
    }

    fn response_id(&self) -> String {
        completion_id()
    }

    fn body(
        &self,
        _: &ValidRequest,
        meta: StreamMeta,
        choices: Vec<ChoiceResult>,
        usage: Usage,
    ) -> Response {
        let choices = choices
            .into_iter()
            .map(|c| CompletionChoice {
                index: c.index,
                seed: c.seed,
                text: c.text,
                tokens: c.tokens,
                finish_reason: c.finish_reason,
                logprobs: c.logprobs,
                logits: c.logits,
            })
            .collect();
        Json(CompletionResponse {
            id: meta.id,
            object: "text_completion",
            created: meta.created,
            model: meta.model,
            choices,
            usage,
        })
        .into_response()
    }

    fn writer(&self, valid: &ValidRequest, meta: StreamMeta) -> SseWriter {
        let dialect = match valid.mode {
            ResponseMode::Legacy => SseDialect::Legacy,
            ResponseMode::Current { include_usage } => SseDialect::Current {
                meta,
                include_usage,
            },
            // Never streamed (`body` answers it).
            ResponseMode::Json => SseDialect::Current {
                meta,
                include_usage: false,
            },
        };
        SseWriter {
            preamble: String::new(),
            render: Box::new(move |out| dialect.render(out)),
        }
    }
}
