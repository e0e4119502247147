//! Per-request observability: `X-Request-Id` (accepted or generated, always echoed), one log
//! line per request when its response ends (sent, failed or abandoned by the client) with id,
//! status, team, tokens and timings, and the request metrics.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use futures::{Stream, StreamExt};
use http_body::{Frame, SizeHint};

use crate::metrics::route_label;
use crate::state::AppState;
use crate::stream::Output;
use crate::util::random_u64;
use crate::vllm_metrics::Finished;

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The status logged and counted for a request whose client left before any response.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Longest accepted client request id.
const MAX_REQUEST_ID_LEN: usize = 128;

/// What is known about one request; logged once, when the last reference goes.
pub struct RequestRecord {
    pub id: String,
    method: Method,
    path: String,
    start: Instant,
    state: AppState,
    status: AtomicU16,
    /// The response body was sent to its end.
    complete: AtomicBool,
    inner: Mutex<RecordInner>,
}

#[derive(Default)]
struct RecordInner {
    team: Option<String>,
    /// Whether `team` is from an authenticated request (only those label metrics).
    team_trusted: bool,
    usage: Option<(usize, usize)>,
    ttft: Option<Duration>,
}

impl RequestRecord {
    fn lock(&self) -> std::sync::MutexGuard<'_, RecordInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_team(&self, team: Option<String>, trusted: bool) {
        let mut inner = self.lock();
        inner.team = team;
        inner.team_trusted = trusted;
    }

    /// Elapsed since the request arrived.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let inner = self.lock();
        // No response was formed: the client went away while the handler ran (nginx's 499).
        let status = match self.status.load(Ordering::Relaxed) {
            0 => CLIENT_CLOSED_REQUEST,
            s => s,
        };
        let complete = self.complete.load(Ordering::Relaxed);
        let elapsed = self.start.elapsed();
        let team = inner.team.as_deref().unwrap_or("");
        let label = if inner.team_trusted && !team.is_empty() {
            team
        } else {
            "none"
        };
        let (prompt, completion) = inner.usage.unwrap_or((0, 0));
        let metrics = self.state.metrics();
        metrics.request_finished(route_label(&self.path), status, label, elapsed);
        if !complete {
            metrics.disconnected();
        }
        tracing::info!(
            target: "cordial::request",
            request_id = %self.id,
            method = %self.method,
            path = %self.path,
            status,
            team,
            prompt_tokens = prompt,
            completion_tokens = completion,
            ttft_ms = inner.ttft.map(|d| d.as_secs_f64() * 1e3),
            duration_ms = elapsed.as_secs_f64() * 1e3,
            complete,
            "request"
        );
    }
}

/// The client's id when it is 1 to 128 visible ASCII characters, else a fresh one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(
            || format!("{:016x}{:016x}", random_u64(), random_u64()),
            str::to_owned,
        )
}

/// Middleware (outermost): the record, the id header, and the log line when the body ends.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    let record = Arc::new(RequestRecord {
        id: id.clone(),
        method: req.method().clone(),
        path: req.uri().path().to_owned(),
        start: Instant::now(),
        state: state.clone(),
        status: AtomicU16::new(0),
        complete: AtomicBool::new(false),
        inner: Mutex::new(RecordInner::default()),
    });
    state.metrics().request_started();
    req.extensions_mut().insert(Arc::clone(&record));
    let mut resp = next.run(req).await;
    record
        .status
        .store(resp.status().as_u16(), Ordering::Relaxed);
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(RecordedBody { body, record }))
}

/// A response body that marks its record complete at its end and releases it when dropped.
struct RecordedBody {
    body: Body,
    record: Arc<RequestRecord>,
}

impl http_body::Body for RecordedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.record.complete.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.body.is_end_stream();
        if end {
            self.record.complete.store(true, Ordering::Relaxed);
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Turns a panic while producing a completion's outputs (detokenization, stop phrases, logprob
/// rendering) into a final `Failed(Internal)`: a 500 before the first byte, an error event
/// after it, instead of a dropped connection. The request's engine streams are dropped with
/// the panicked stream, which aborts them. `on_panic` runs once when it happens.
pub fn guard_panics(
    outs: impl Stream<Item = Output> + Send + 'static,
    on_panic: impl FnOnce() + Send + 'static,
) -> impl Stream<Item = Output> + Send + 'static {
    let mut failed = false;
    let mut on_panic = Some(on_panic);
    std::panic::AssertUnwindSafe(outs)
        .catch_unwind()
        .map(move |r| {
            r.unwrap_or_else(|_| {
                tracing::error!("a completion panicked while producing its output");
                if let Some(f) = on_panic.take() {
                    f();
                }
                Output::Failed(crate::error::ApiError::Internal(
                    "the request failed unexpectedly; the server goes on".into(),
                ))
            })
        })
        .take_while(move |out| {
            let go = !failed;
            failed |= matches!(out, Output::Failed(_));
            std::future::ready(go)
        })
}

/// Watches a completion's outputs: time to first token, inter-token gaps (per choice), the
/// token counts of the usage, and vLLM's per-choice series (first token, end and why: a choice
/// not ended when the stream ends or is dropped counts as `error` after a failure, else
/// `abort`). `choices`: how many choices the request generates.
pub fn tap(
    outs: impl Stream<Item = Output> + Send + 'static,
    record: Option<Arc<RequestRecord>>,
    choices: usize,
) -> impl Stream<Item = Output> + Send + 'static {
    let mut last: Vec<Option<Instant>> = Vec::new();
    let mut ends = record.as_ref().map(|r| ChoiceEnds {
        record: Arc::clone(r),
        ended: vec![false; choices],
        failed: false,
    });
    outs.inspect(move |out| {
        let Some(record) = &record else { return };
        let metrics = record.state.metrics();
        match out {
            Output::Token { index, .. } => {
                let now = Instant::now();
                if last.iter().all(Option::is_none) {
                    let ttft = now - record.start;
                    metrics.ttft.observe(ttft);
                    record.lock().ttft = Some(ttft);
                }
                if last.len() <= *index {
                    last.resize(index + 1, None);
                }
                match last[*index].replace(now) {
                    Some(prev) => metrics.inter_token.observe(now - prev),
                    None => metrics.vllm.first_token(now - record.start),
                }
            }
            Output::ChoiceDone { index, reason } => {
                if let Some(ends) = &mut ends {
                    ends.end(*index, Finished::from(*reason));
                }
            }
            Output::Done { usage, .. } => {
                metrics.add_tokens(usage.prompt_tokens, usage.completion_tokens);
                record.lock().usage = Some((usage.prompt_tokens, usage.completion_tokens));
            }
            Output::Failed(_) => {
                if let Some(ends) = &mut ends {
                    ends.failed = true;
                }
            }
            Output::Echo { .. } => {}
        }
    })
}

/// Which choices of a request ended; the rest are counted when the output stream goes.
struct ChoiceEnds {
    record: Arc<RequestRecord>,
    ended: Vec<bool>,
    failed: bool,
}

impl ChoiceEnds {
    fn end(&mut self, index: usize, why: Finished) {
        if let Some(ended) = self.ended.get_mut(index).filter(|e| !**e) {
            *ended = true;
            let metrics = self.record.state.metrics();
            metrics
                .vllm
                .choice_finished(why, self.record.start.elapsed());
        }
    }
}

impl Drop for ChoiceEnds {
    fn drop(&mut self) {
        let why = if self.failed {
            Finished::Error
        } else {
            Finished::Abort
        };
        for i in 0..self.ended.len() {
            self.end(i, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_output_stream_ends_with_one_failure() {
        let outs = futures::stream::iter(0..5).map(|i| {
            assert!(i < 2, "injected");
            Output::ChoiceDone {
                index: i,
                reason: crate::protocol::FinishReasonWire::Stop,
            }
        });
        let panics = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&panics);
        let guarded = guard_panics(outs, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let got: Vec<Output> = futures::executor::block_on(guarded.collect());
        assert_eq!(got.len(), 3);
        assert_eq!(panics.load(Ordering::Relaxed), 1);
        assert!(matches!(
            got[2],
            Output::Failed(crate::error::ApiError::Internal(_))
        ));
    }

    #[test]
    fn request_ids_are_accepted_or_generated() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
        let long = "x".repeat(MAX_REQUEST_ID_LEN + 1);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(request_id(&h).len(), 32);
    }
}
