//! `POST /v1/load_lora_adapter` and `POST /v1/unload_lora_adapter` (vLLM's runtime LoRA
//! updates), served with `--allow-runtime-lora-updating`; otherwise 404 as in vLLM, whose
//! routes do not exist then. A file that cannot be served is 400 naming the problem; unloading
//! an adapter that running requests use lets them finish first (see `lora.rs`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::lora::{LoraRegistry, LoraRegistryError};
use crate::protocol::{LoadLoraRequest, UnloadLoraRequest};
use crate::state::AppState;

fn registry(state: &AppState) -> Result<std::sync::Arc<LoraRegistry>, ApiError> {
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    match &serving.lora {
        Some(r) if r.settings.allow_runtime_updating => Ok(r.clone()),
        _ => Err(ApiError::NotFound(
            "runtime LoRA updating is off (start the server with --allow-runtime-lora-updating)"
                .into(),
        )),
    }
}

fn body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(super::generate::body_error)?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid: {e}")))
}

fn registry_error(e: LoraRegistryError) -> ApiError {
    match e {
        LoraRegistryError::NotFound(_) => ApiError::NotFound(e.to_string()),
        _ => ApiError::BadRequest(e.to_string()),
    }
}

pub async fn load(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let registry = registry(&state)?;
    let req: LoadLoraRequest = body(raw)?;
    let (Some(name), Some(path)) = (req.lora_name, req.lora_path) else {
        return Err(ApiError::BadRequest(
            "both `lora_name` and `lora_path` must be provided".into(),
        ));
    };
    // Reading and checking the files is slow: not on an async worker.
    let n = name.clone();
    tokio::task::spawn_blocking(move || registry.register(&n, std::path::Path::new(&path), 1.0))
        .await
        .map_err(|e| ApiError::Internal(format!("loading the adapter failed: {e}")))?
        .map_err(registry_error)?;
    Ok(format!("Success: LoRA adapter '{name}' added successfully.").into_response())
}

pub async fn unload(
    State(state): State<AppState>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let registry = registry(&state)?;
    let req: UnloadLoraRequest = body(raw)?;
    let name = req
        .lora_name
        .ok_or_else(|| ApiError::BadRequest("`lora_name` must be provided".into()))?;
    registry.unload(&name).map_err(registry_error)?;
    Ok(format!("Success: LoRA adapter '{name}' removed successfully.").into_response())
}
