//! `GET /health` and `GET /v1/models`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::error::ApiError;
use crate::protocol::{HealthBody, ModelCard, ModelList};
use crate::state::AppState;
use crate::vllm_metrics::EngineView;

/// 200 once the model is loaded and the engine runs; 503 (with `Retry-After`) before.
pub async fn health(State(state): State<AppState>) -> Response {
    match state.serving() {
        Some(s) if s.engine.is_running() => Json(HealthBody { status: "ok" }).into_response(),
        Some(_) => ApiError::ShuttingDown.into_response(),
        None => ApiError::NotReady.into_response(),
    }
}

/// The served names (`--served-model-name`, else the model file's stem), primary first, with
/// the longest sequence served.
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let max_model_len = state.serving().map(|s| s.max_context);
    let data = state
        .served_names()
        .iter()
        .map(|name| ModelCard {
            id: name.clone(),
            object: "model",
            created: state.created(),
            owned_by: "cordial",
            max_model_len,
        })
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

/// Prometheus text exposition: `cordial_*` (`metrics.rs`), then `vllm:*` (`vllm_metrics.rs`).
/// Reads atomics only.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.serving().map(|s| s.engine.stats());
    let metrics = state.metrics();
    let mut body = metrics.render(stats.as_ref());
    let view = state
        .serving()
        .zip(stats.as_ref())
        .map(|(s, stats)| EngineView {
            stats,
            kv: s.engine.kv_capacity(),
            prefix_caching: s.engine.prefix_caching(),
        });
    let model_name = &state.served_names()[0];
    metrics
        .vllm
        .render(&mut body, model_name, metrics.tokens(), view);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
