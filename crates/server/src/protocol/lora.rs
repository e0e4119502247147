//! vLLM's runtime LoRA routes (on with `--allow-runtime-lora-updating`):
//! `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` and
//! `POST /v1/unload_lora_adapter {"lora_name"}`; both answer plain text on success.

use serde::Deserialize;

/// `{"lora_name", "lora_path"}`: serve the adapter at `lora_path` (a llama.cpp GGUF adapter or
/// a PEFT folder) as `lora_name`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct LoadLoraRequest {
    pub lora_name: Option<String>,
    pub lora_path: Option<String>,
}

/// `{"lora_name"}`: stop serving the adapter (requests running with it finish first).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct UnloadLoraRequest {
    pub lora_name: Option<String>,
    /// vLLM accepts it; ignored.
    pub lora_int_id: Option<i64>,
}
