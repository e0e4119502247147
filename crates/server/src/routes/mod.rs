//! HTTP routes (axum 0.8). Completions on the three paths of decision 1; chat completions;
//! `/health`; `/v1/models`; `/v1/tokenize` and `/v1/detokenize` (decision 20); `/metrics`;
//! `/openapi.json`.
//!
//! Middleware, outermost first: `observe` (request id, log line, metrics), panic → 500,
//! `auth::require_key`, `limits::read_body` (read deadline, 413), then the handlers.

mod chat;
mod completions;
mod info;
mod openapi;
mod tokenize;

use std::any::Any;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest accepted request body (bigger: 413).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

pub use openapi::document as openapi_document;

/// The API's routes, without state or middleware (see [`with_layers`]).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/serverless/v1/completions", post(completions::completions))
        .route("/dedicated/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/v1/detokenize", post(tokenize::detokenize))
        .route("/health", get(info::health))
        .route("/v1/models", get(info::models))
        .route("/metrics", get(info::metrics))
        .route("/openapi.json", get(openapi::openapi))
}

/// The application: every route with the middleware stack.
pub fn router(state: AppState) -> Router {
    with_layers(routes(), state)
}

/// Wraps `routes` in the middleware stack (tests add routes of their own this way).
pub fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let panic_state = state.clone();
    let on_panic = move |panic: Box<dyn Any + Send + 'static>| -> Response {
        panic_state.metrics().panic_caught();
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        tracing::error!("a request handler panicked: {what}");
        ApiError::Internal("the request failed unexpectedly; the server goes on".into())
            .into_response()
    };
    routes
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), crate::limits::read_body))
        .layer(from_fn_with_state(state.clone(), crate::auth::require_key))
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(from_fn_with_state(state.clone(), crate::observe::observe))
        .with_state(state)
}
