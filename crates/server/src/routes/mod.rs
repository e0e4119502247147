//! HTTP routes (axum 0.8). Completions on three paths (`/v1`, `/serverless/v1`,
//! `/dedicated/v1`, as the Friendli SDKs call them); chat completions; vLLM's render endpoints
//! (`/v1/completions/render`, `/v1/chat/completions/render`); `/health`; `/v1/models`;
//! `/v1/tokenize` and `/v1/detokenize`; `/metrics`; `/openapi.json`; vLLM's runtime LoRA routes
//! (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`).
//!
//! Middleware, outermost first: `observe` (request id, log line, metrics), panic → 500, CORS
//! (only with `--allowed-origins`), `auth::require_key`, `limits::read_body` (read deadline,
//! 413), then the handlers.

mod chat;
mod completions;
mod generate;
mod info;
mod lora;
mod openapi;
mod tokenize;

use std::any::Any;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::state::AppState;

/// Largest accepted request body (bigger: 413).
pub const BODY_LIMIT: usize = 8 * 1024 * 1024;

pub use chat::Chat;
pub use completions::Completions;
pub use generate::{generation_route, render_route, SseWriter, WireShape};
pub use openapi::document as openapi_document;

/// The completions paths (the same handler on each).
pub const COMPLETIONS_PATHS: [&str; 3] = [
    "/v1/completions",
    "/serverless/v1/completions",
    "/dedicated/v1/completions",
];
pub const CHAT_PATH: &str = "/v1/chat/completions";
/// vLLM's render endpoints (the token ids a completion of the body would get), which llm-d's
/// router calls to tokenize exactly as the model server does.
pub const COMPLETIONS_RENDER_PATH: &str = "/v1/completions/render";
pub const CHAT_RENDER_PATH: &str = "/v1/chat/completions/render";
/// vLLM's runtime LoRA routes (`--allow-runtime-lora-updating`).
pub const LOAD_LORA_PATH: &str = "/v1/load_lora_adapter";
pub const UNLOAD_LORA_PATH: &str = "/v1/unload_lora_adapter";

/// Every path the API serves (metrics label requests by these; anything else is `other`).
pub const PATHS: [&str; 14] = [
    COMPLETIONS_PATHS[0],
    COMPLETIONS_PATHS[1],
    COMPLETIONS_PATHS[2],
    CHAT_PATH,
    COMPLETIONS_RENDER_PATH,
    CHAT_RENDER_PATH,
    "/v1/tokenize",
    "/v1/detokenize",
    "/health",
    "/v1/models",
    "/metrics",
    "/openapi.json",
    LOAD_LORA_PATH,
    UNLOAD_LORA_PATH,
];

/// The API's routes, without state or middleware (see [`with_layers`]). Generation routes go
/// through the one pipeline of `generate.rs`, each with its wire shape.
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for path in COMPLETIONS_PATHS {
        router = router.route(path, generation_route(Completions));
    }
    router
        .route(CHAT_PATH, generation_route(Chat))
        .route(COMPLETIONS_RENDER_PATH, render_route(Completions))
        .route(CHAT_RENDER_PATH, render_route(Chat))
        .route("/v1/tokenize", post(tokenize::tokenize))
        .route("/v1/detokenize", post(tokenize::detokenize))
        .route("/health", get(info::health))
        .route("/v1/models", get(info::models))
        .route("/metrics", get(info::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route(LOAD_LORA_PATH, post(lora::load))
        .route(UNLOAD_LORA_PATH, post(lora::unload))
}

/// `/metrics` alone, for `--metrics-port` (no other route, no middleware: the scrape is open
/// on the main port too).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(info::metrics))
        .with_state(state)
}

/// The application: every route with the middleware stack.
pub fn router(state: AppState) -> Router {
    with_layers(routes(), state)
}

/// `--allowed-origins`: CORS for those origins (`*`: any), or `None` when none are set.
/// Preflight requests are answered here, before the API-key check.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("invalid origin {o:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    let header = |h: &'static str| HeaderName::from_static(h);
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header(crate::observe::REQUEST_ID_HEADER),
                header(crate::auth::TEAM_HEADER),
                header(crate::validate::STREAM_FORMAT_HEADER),
            ])
            .expose_headers([
                header(crate::observe::REQUEST_ID_HEADER),
                header::RETRY_AFTER,
                header(crate::error::SHOULD_RETRY),
            ]),
    ))
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
    let routes = routes
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(from_fn_with_state(state.clone(), crate::limits::read_body))
        .layer(from_fn_with_state(state.clone(), crate::auth::require_key));
    // Origins were checked when the options were made (`cors` in main).
    let routes = match cors(&state.options().allowed_origins).ok().flatten() {
        Some(layer) => routes.layer(layer),
        None => routes,
    };
    routes
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(from_fn_with_state(state.clone(), crate::observe::observe))
        .with_state(state)
}
