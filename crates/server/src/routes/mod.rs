//! HTTP routes (axum 0.8). Completions on the three paths of decision 1; chat completions;
//! `/health`;
//! `/v1/models`.

mod chat;
mod completions;
mod info;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Largest accepted request body (bigger: 413).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The application: every route, with the body limit set explicitly.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/completions", post(completions::completions))
        .route("/serverless/v1/completions", post(completions::completions))
        .route("/dedicated/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/health", get(info::health))
        .route("/v1/models", get(info::models))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}
