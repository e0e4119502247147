//! Request limits outside validation: the body read deadline and size limit (before any
//! handler runs), and `--default-timeout` for requests that set no `timeout_microseconds`.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::error::ApiError;
use crate::routes::BODY_LIMIT;
use crate::state::AppState;
use crate::validate::ValidRequest;

/// Middleware: a body must arrive whole within `body_read_timeout` (else 408) and within
/// [`BODY_LIMIT`] bytes (else 413), so a slow or endless upload cannot hold a connection.
pub async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    // An over-long body is read up to the limit, not refused on its declared length: a client
    // still sending when the answer comes would often see a reset instead of the 413.
    let read_timeout = state.options().body_read_timeout;
    let (parts, body) = req.into_parts();
    let collected = tokio::time::timeout(read_timeout, Limited::new(body, BODY_LIMIT).collect());
    match collected.await {
        Err(_) => ApiError::RequestTimeout {
            secs: read_timeout.as_secs(),
        }
        .into_response(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }.into_response()
        }
        Ok(Err(e)) => {
            ApiError::BadRequest(format!("cannot read the request body: {e}")).into_response()
        }
        Ok(Ok(body)) => {
            let req = Request::from_parts(parts, Body::from(body.to_bytes()));
            next.run(req).await
        }
    }
}

/// Gives every engine request without a deadline `arrived + default`.
pub fn apply_default_timeout(
    valid: &mut ValidRequest,
    default: Option<Duration>,
    arrived: Instant,
) {
    let Some(default) = default else { return };
    for r in &mut valid.requests {
        if r.deadline.is_none() {
            r.deadline = arrived.checked_add(default);
        }
    }
}
