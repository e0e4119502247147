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
/// the longest sequence served; then each LoRA adapter with its `root` (files) and `parent`
/// (the base's primary name), as vLLM lists them.
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let max_model_len = state.serving().map(|s| s.max_context);
    let card = |id: String, root: Option<String>, parent: Option<String>| ModelCard {
        id,
        object: "model",
        created: state.created(),
        owned_by: "cordial",
        max_model_len,
        root,
        parent,
    };
    let mut data: Vec<ModelCard> = state
        .served_names()
        .iter()
        .map(|name| card(name.clone(), None, None))
        .collect();
    if let Some(registry) = state.serving().and_then(|s| s.lora.as_deref()) {
        let parent = state.served_names().first().cloned();
        data.extend(registry.loaded().iter().map(|a| {
            card(
                a.name.clone(),
                Some(a.path.display().to_string()),
                parent.clone(),
            )
        }));
    }
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
            cache_dtype: s.kv_cache_dtype.name(),
            prefix_caching: s.engine.prefix_caching(),
        });
    let model_name = &state.served_names()[0];
    metrics
        .vllm
        .render(&mut body, model_name, metrics.tokens(), view);
    if let (Some(registry), Some(s)) = (state.serving().and_then(|s| s.lora.as_deref()), &stats) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let (running, waiting) = (
            registry.names(&s.running_loras),
            registry.names(&s.waiting_loras),
        );
        metrics.vllm.render_lora_info(
            &mut body,
            registry.settings.max_loras,
            &running,
            &waiting,
            now,
        );
        registry.render_metrics(&mut body);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
