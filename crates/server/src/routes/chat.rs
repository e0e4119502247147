//! `POST /v1/chat/completions`: messages rendered with the model's chat template, then the
//! completions path (validation, engine, detokenization) with chat-shaped answers: one
//! `chat.completion` body, or `chat.completion.chunk` events. Generation ends at the model's
//! end-of-turn token (`<|im_end|>` and the rest of its end-of-generation set).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::completions::{
    body_error, generation, mentions_format, sse_stream, submit_all, INLINE_BODY_BYTES,
};
use crate::error::{ApiError, Flavor};
use crate::protocol::{ChatChoice, ChatCompletionResponse, ChatMessageOut};
use crate::state::AppState;
use crate::stream::{chat_logprobs, collect, outputs, ChatStream, StreamMeta};
use crate::util::{random_u64, unix_now};
use crate::validate::{chat_request, parse_chat_body, validate, ResponseMode, ValidRequest};

pub async fn chat_completions(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match handle(&state, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let (valid, top) = if body.len() <= INLINE_BODY_BYTES && !mentions_format(&body) {
        check(state, &body)?
    } else {
        let state2 = state.clone();
        tokio::task::spawn_blocking(move || check(&state2, &body))
            .await
            .map_err(|e| ApiError::Internal(format!("validation failed: {e}")))??
    };
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    let streams = submit_all(&serving.engine, &valid)?;
    let choices = valid.requests.len() * valid.n;
    let outs = outputs(streams, generation(serving, &valid));
    let meta = StreamMeta {
        id: format!(
            "chatcmpl-{:032x}",
            u128::from(random_u64()) << 64 | u128::from(random_u64())
        ),
        created: unix_now(),
        model: valid.model,
    };
    match valid.mode {
        ResponseMode::Current { include_usage } => {
            let chat = ChatStream {
                meta,
                include_usage,
                choices,
                logprobs: top,
            };
            sse_stream(outs, chat.preamble(), move |out| chat.render(out)).await
        }
        ResponseMode::Json | ResponseMode::Legacy => {
            let (results, usage) = collect(outs).await?;
            let choices = results
                .into_iter()
                .map(|c| ChatChoice {
                    index: c.index,
                    logprobs: top.and_then(|k| chat_logprobs(c.logprobs.as_ref(), k)),
                    message: ChatMessageOut {
                        role: "assistant",
                        content: c.text,
                    },
                    finish_reason: c.finish_reason,
                })
                .collect();
            Ok(Json(ChatCompletionResponse {
                id: meta.id,
                object: "chat.completion",
                created: meta.created,
                model: meta.model,
                choices,
                usage,
            })
            .into_response())
        }
    }
}

/// Every check before any work starts: chat fields, template, then the completions rules.
fn check(state: &AppState, body: &[u8]) -> Result<(ValidRequest, Option<usize>), ApiError> {
    let chat = parse_chat_body(body, state.served_names())?;
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    let template = serving.chat.as_ref().map_err(|e| {
        ApiError::Invalid(
            crate::error::ValidationError::new("messages", e.clone()),
            Flavor::OpenAi,
        )
    })?;
    let tok = &serving.tokenizer;
    let encode = |text: &str, bos: bool| tok.encode(text, bos);
    let parsed = chat_request(chat, template, &encode, tok.bos_text(), serving.max_context)?;
    let top = parsed.logprobs;
    let valid = serving
        .with_model_info(|info| validate(parsed.parsed, info, random_u64))
        .map_err(prompt_is_messages)?;
    Ok((valid, top))
}

/// Errors about the completions `prompt` concern the chat `messages` it was rendered from.
fn prompt_is_messages(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid(mut v, flavor) if v.param.as_deref() == Some("prompt") => {
            v.param = Some("messages".into());
            v.message = v.message.replace("`prompt`", "the rendered `messages`");
            ApiError::Invalid(v, flavor)
        }
        other => other,
    }
}
