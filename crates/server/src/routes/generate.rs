//! The one pipeline of every generation route (completions, chat, and any later one):
//! read the body → validate (parse, rules, tokenization; on a blocking thread when the body is
//! big or may name a grammar) → the server's default deadline → submit → observe (panics
//! isolated; TTFT, inter-token gaps and token counts) → collect one body, or stream SSE events.
//!
//! A route only chooses its wire shape ([`WireShape`]): how a body becomes a [`ValidRequest`]
//! and how the outputs are written. A client disconnect drops the handler future (non-stream)
//! or the body stream (stream), which drops the engine `RequestStream`s and so aborts the
//! requests.

use std::convert::Infallible;
use std::future::ready;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, MethodRouter};
use cordial_engine::{EngineHandle, RequestStream};
use futures::{stream, Stream, StreamExt};

use super::BODY_LIMIT;
use crate::error::ApiError;
use crate::limits::apply_default_timeout;
use crate::observe::{guard_panics, tap, RequestRecord};
use crate::protocol::{RenderedPrompt, Usage};
use crate::state::{AppState, Serving};
use crate::stream::{
    best_of, collect, outputs, ChoiceResult, Generation, Output, StreamMeta, TextControls,
};
use crate::util::unix_now;
use crate::validate::{ResponseMode, ValidRequest};

/// What a generation route decides: how its body is read and how its answer is written.
/// Everything between is the pipeline's.
pub trait WireShape: Clone + Send + Sync + 'static {
    /// Reads and validates a body; every 4xx is decided here. May run on a blocking thread.
    fn validate(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ValidRequest, ApiError>;
    /// A fresh response id (`cmpl-…`, `chatcmpl-…`).
    fn response_id(&self) -> String;
    /// The render endpoint's answer (`…/render`): what [`Self::validate`] made of the body —
    /// the token ids a completion would be given — without generating. May run on a blocking
    /// thread. By default (`/v1/completions/render`): one `RenderedPrompt` per input.
    fn render(
        &self,
        state: &AppState,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Response, ApiError> {
        let valid = self.validate(state, headers, body)?;
        let rendered: Vec<RenderedPrompt> = valid
            .requests
            .iter()
            .map(|r| RenderedPrompt {
                request_id: self.response_id(),
                model: valid.model.clone(),
                token_ids: r.prompt.clone(),
                prompt: None,
            })
            .collect();
        Ok(axum::Json(rendered).into_response())
    }
    /// The non-streamed answer (`choices`: the kept ones when `best_of` ranked them).
    fn body(
        &self,
        valid: &ValidRequest,
        meta: StreamMeta,
        choices: Vec<ChoiceResult>,
        usage: Usage,
    ) -> Response;
    /// How a streamed answer is written.
    fn writer(&self, valid: &ValidRequest, meta: StreamMeta) -> SseWriter;
}

/// Writes one output as SSE event text (`None`: nothing to send for it).
pub type Render = Box<dyn FnMut(&Output) -> Option<String> + Send>;

/// The events of one stream: `preamble` first (when not empty), then what `render` makes of
/// each output.
pub struct SseWriter {
    pub preamble: String,
    pub render: Render,
}

/// A `POST` route serving `shape` through the pipeline.
pub fn generation_route<S: WireShape>(shape: S) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              record: Option<Extension<Arc<RequestRecord>>>,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| {
            let shape = shape.clone();
            async move {
                let record = record.map(|Extension(r)| r);
                generate(shape, &state, record, headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
        },
    )
}

/// A `POST` route answering `shape`'s render endpoint: the same body reading and validation as
/// the generation route (every 4xx the same), no generation.
pub fn render_route<S: WireShape>(shape: S) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              headers: HeaderMap,
              body: Result<Bytes, BytesRejection>| {
            let shape = shape.clone();
            async move {
                render(shape, state, headers, body)
                    .await
                    .unwrap_or_else(IntoResponse::into_response)
            }
        },
    )
}

async fn render<S: WireShape>(
    shape: S,
    state: AppState,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    if body.len() <= INLINE_BODY_BYTES && !mentions_format(&body) {
        return shape.render(&state, &headers, &body);
    }
    tokio::task::spawn_blocking(move || shape.render(&state, &headers, &body))
        .await
        .map_err(|e| ApiError::Internal(format!("validation failed: {e}")))?
}

/// Bodies up to this size are validated on the async worker itself, unless they may ask for
/// structured output (a grammar to compile).
const INLINE_BODY_BYTES: usize = 64 * 1024;

fn mentions_format(body: &[u8]) -> bool {
    const KEY: &[u8] = b"response_format";
    body.windows(KEY.len()).any(|w| w == KEY)
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

async fn generate<S: WireShape>(
    shape: S,
    state: &AppState,
    record: Option<Arc<RequestRecord>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = record
        .as_ref()
        .map_or_else(Instant::now, |r| Instant::now() - r.elapsed());
    let body = body.map_err(body_error)?;
    let mut valid = if body.len() <= INLINE_BODY_BYTES && !mentions_format(&body) {
        shape.validate(state, &headers, &body)?
    } else {
        // Parsing and tokenizing a big body, or compiling a grammar, would stall an async
        // worker that streams tokens.
        let (state2, shape2) = (state.clone(), shape.clone());
        tokio::task::spawn_blocking(move || shape2.validate(&state2, &headers, &body))
            .await
            .map_err(|e| ApiError::Internal(format!("validation failed: {e}")))??
    };
    apply_default_timeout(&mut valid, state.options().default_timeout, arrived);
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    let streams = submit_all(&serving.engine, &valid)?;
    let counter = state.clone();
    let outs = guard_panics(outputs(streams, generation(serving, &valid)), move || {
        counter.metrics().panic_caught()
    });
    let outs = tap(outs, record, valid.requests.len() * valid.n);
    let meta = StreamMeta {
        id: shape.response_id(),
        created: unix_now(),
        model: valid.model.clone(),
    };
    if valid.mode == ResponseMode::Json {
        let (choices, usage) = collect(outs).await?;
        let choices = best_of(choices, valid.n, valid.keep);
        return Ok(shape.body(&valid, meta, choices, usage));
    }
    let writer = shape.writer(&valid, meta);
    sse_response(outs, writer, state.clone()).await
}

fn generation(serving: &Serving, valid: &ValidRequest) -> Generation {
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
fn submit_all(engine: &EngineHandle, valid: &ValidRequest) -> Result<Vec<RequestStream>, ApiError> {
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
    writer: SseWriter,
    state: AppState,
) -> Result<Response, ApiError> {
    let mut outs = Box::pin(outs);
    let first = outs
        .next()
        .await
        .ok_or_else(|| ApiError::Internal("the request ended without output".into()))?;
    if let Output::Failed(e) = first {
        return Err(e);
    }
    let SseWriter {
        preamble,
        mut render,
    } = writer;
    let preamble = (!preamble.is_empty()).then_some(preamble);
    let rendered = stream::once(ready(first))
        .chain(outs)
        .scan(false, move |failed, out| {
            if *failed {
                return ready(None);
            }
            let event = match catch_unwind(AssertUnwindSafe(|| render(&out))) {
                Ok(event) => event,
                Err(_) => {
                    // The stream ends with the dialect's error event, as when producing the
                    // outputs panics (`guard_panics`).
                    *failed = true;
                    state.metrics().panic_caught();
                    tracing::error!("a completion panicked while writing its stream");
                    let failure = Output::Failed(ApiError::Internal(
                        "the request failed unexpectedly; the server goes on".into(),
                    ));
                    catch_unwind(AssertUnwindSafe(|| render(&failure)))
                        .ok()
                        .flatten()
                }
            };
            ready(Some(event))
        })
        .filter_map(ready);
    let events = stream::iter(preamble)
        .chain(rendered)
        .map(|s| Ok::<_, Infallible>(Bytes::from(s)));
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(events))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
