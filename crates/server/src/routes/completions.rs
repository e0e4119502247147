//! `POST /v1/completions` (and its aliases): validate, submit one engine request per input,
//! answer with one JSON body or an SSE stream in the request's dialect.
//!
//! A client disconnect drops the handler future (non-stream) or the body stream (stream), which
//! drops the engine `RequestStream`s and so aborts the requests.

use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cordial_engine::{EngineHandle, RequestStream};
use futures::{stream, Stream, StreamExt};

use super::BODY_LIMIT;
use crate::error::ApiError;
use crate::limits::apply_default_timeout;
use crate::observe::{guard_panics, tap, RequestRecord};
use crate::protocol::{CompletionChoice, CompletionResponse};
use crate::state::{AppState, Serving};
use crate::stream::{
    best_of, collect, outputs, Generation, Output, SseDialect, StreamMeta, TextControls,
};
use crate::util::{completion_id, random_u64, unix_now};
use crate::validate::{parse_request, validate, ResponseMode, ValidRequest};

pub async fn completions(
    State(state): State<AppState>,
    record: Option<Extension<Arc<RequestRecord>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let record = record.map(|Extension(r)| r);
    match handle(&state, record, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

pub(super) fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit: BODY_LIMIT }
    } else {
        ApiError::BadRequest(format!(
            "cannot read the request body: {}",
            rejection.body_text()
        ))
    }
}

async fn handle(
    state: &AppState,
    record: Option<Arc<RequestRecord>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = record
        .as_ref()
        .map_or_else(Instant::now, |r| Instant::now() - r.elapsed());
    let body = body.map_err(body_error)?;
    let mut valid = if body.len() <= INLINE_BODY_BYTES && !mentions_format(&body) {
        check(state, headers, &body)?
    } else {
        // Parsing and tokenizing a big body, or compiling a grammar, would stall an async
        // worker that streams tokens.
        let (state2, headers) = (state.clone(), headers.clone());
        tokio::task::spawn_blocking(move || check(&state2, &headers, &body))
            .await
            .map_err(|e| ApiError::Internal(format!("validation failed: {e}")))??
    };
    apply_default_timeout(&mut valid, state.options().default_timeout, arrived);
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    let streams = submit_all(&serving.engine, &valid)?;
    let outs = tap(
        guard_panics(outputs(streams, generation(serving, &valid))),
        record,
    );
    let meta = StreamMeta {
        id: completion_id(),
        created: unix_now(),
        model: valid.model,
    };
    match valid.mode {
        ResponseMode::Json => {
            let (choices, usage) = collect(outs).await?;
            let choices = best_of(choices, valid.n, valid.keep)
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
            let body = CompletionResponse {
                id: meta.id,
                object: "text_completion",
                created: meta.created,
                model: meta.model,
                choices,
                usage,
            };
            Ok(Json(body).into_response())
        }
        ResponseMode::Legacy => sse_response(outs, SseDialect::Legacy).await,
        ResponseMode::Current { include_usage } => {
            sse_response(
                outs,
                SseDialect::Current {
                    meta,
                    include_usage,
                },
            )
            .await
        }
    }
}

/// Bodies up to this size are validated on the async worker itself, unless they may ask for
/// structured output (a grammar to compile).
pub(super) const INLINE_BODY_BYTES: usize = 64 * 1024;

pub(super) fn mentions_format(body: &[u8]) -> bool {
    const KEY: &[u8] = b"response_format";
    body.windows(KEY.len()).any(|w| w == KEY)
}

/// Every check before any work starts: parse, model name, readiness, rules, tokenization.
fn check(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<ValidRequest, ApiError> {
    let parsed = parse_request(body, headers, state.served_names())?;
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    serving.with_model_info(|info| validate(parsed, info, random_u64))
}

pub(super) fn generation(serving: &Serving, valid: &ValidRequest) -> Generation {
    let seeds: Vec<Vec<u64>> = valid.requests.iter().map(|r| r.seeds.clone()).collect();
    let controls = TextControls {
        stop: valid.stop.clone(),
        min_tokens: valid
            .requests
            .iter()
            .map(|r| r.params.min_new_tokens)
            .collect(),
        logprobs: Some(valid.logprobs),
        logits: valid.logits,
        echo: valid
            .echo
            .then(|| valid.requests.iter().map(|r| r.prompt.clone()).collect()),
    };
    let tt = serving.tokenizer.clone();
    Generation::with_controls(tt, valid.n, &seeds, valid.flavor, controls)
}

/// Submits every input; on a refusal the streams already obtained are dropped (aborted).
pub(super) fn submit_all(
    engine: &EngineHandle,
    valid: &ValidRequest,
) -> Result<Vec<RequestStream>, ApiError> {
    valid
        .requests
        .iter()
        .map(|r| {
            engine
                .submit(r.clone())
                .map_err(|e| ApiError::from_submit(e, valid.flavor))
        })
        .collect()
}

/// Waits for the first output, so that a failure before any token is a plain error response;
/// then streams every output as SSE, one event per chunk (flushed as produced).
async fn sse_response(
    outs: impl Stream<Item = Output> + Send + 'static,
    dialect: SseDialect,
) -> Result<Response, ApiError> {
    sse_stream(outs, String::new(), move |out| dialect.render(out)).await
}

/// [`sse_response`] for any writer of outputs; `preamble` is sent before the first event.
pub(super) async fn sse_stream(
    outs: impl Stream<Item = Output> + Send + 'static,
    preamble: String,
    render: impl Fn(&Output) -> Option<String> + Send + 'static,
) -> Result<Response, ApiError> {
    let mut outs = Box::pin(outs);
    let first = outs
        .next()
        .await
        .ok_or_else(|| ApiError::Internal("the request ended without output".into()))?;
    if let Output::Failed(e) = first {
        return Err(e);
    }
    let preamble = (!preamble.is_empty()).then(|| Ok::<_, Infallible>(Bytes::from(preamble)));
    let events =
        stream::iter(preamble).chain(stream::once(ready(first)).chain(outs).filter_map(
            move |out| ready(render(&out).map(|s| Ok::<_, Infallible>(Bytes::from(s)))),
        ));
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(resp)
}
