//! Glue from `cordial-model` (pure compute over a paged KV cache) to the engine's
//! `ModelExecutor`, plus loading a GGUF file with its tokenizer. (Owned by the model engineer.)

use std::path::Path;
use std::sync::Arc;

use cordial_engine::ModelExecutor;
use cordial_tokenizer::Tokenizer;

/// How to load the model.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Compute threads (0 = number of cores).
    pub threads: usize,
    /// Total KV cache capacity in tokens.
    pub kv_cache_tokens: usize,
    /// Cap on the context length (None = the model's).
    pub max_model_len: Option<usize>,
}

/// A loaded model, ready to hand to the engine.
pub struct LoadedModel {
    pub executor: Box<dyn ModelExecutor>,
    pub tokenizer: Arc<Tokenizer>,
    /// Longest prompt + output.
    pub max_context: usize,
    pub vocab_size: usize,
    /// Width of an input embedding (for `embedding_to_replace`).
    pub hidden_size: usize,
    /// Architecture name from the GGUF (`llama`).
    pub architecture: String,
}

/// Loads a GGUF model file and its tokenizer.
pub fn load(path: &Path, opts: &RunnerOptions) -> anyhow::Result<LoadedModel> {
    let _ = (path, opts);
    todo!("model engineer")
}
