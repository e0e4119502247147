//! Shared server state: the served names, and the model + engine once loaded (the server answers
//! `/health` with 503 while the model loads in the background).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cordial_engine::EngineHandle;
use cordial_grammar::GrammarCompiler;
use cordial_tokenizer::{TokenId, Tokenizer};

use crate::auth::ApiKeys;
use crate::chat::ChatTemplate;
use crate::lora::LoraRegistry;
use crate::metrics::Metrics;
use crate::validate::ModelNames;

use crate::validate::{Limits, ModelInfo};

/// Operator settings the routes and middleware apply.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Accepted API keys; empty = open server.
    pub api_keys: ApiKeys,
    /// Deadline of a completion that sets no `timeout_microseconds` (none = no limit).
    pub default_timeout: Option<Duration>,
    /// A request body must arrive whole within this time (else 408).
    pub body_read_timeout: Duration,
    /// Origins browsers may call the API from (CORS); `*` = any; empty = CORS off.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            api_keys: ApiKeys::default(),
            default_timeout: None,
            body_read_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
        }
    }
}

/// A loaded model and its running engine.
pub struct Serving {
    pub engine: EngineHandle,
    pub tokenizer: Arc<Tokenizer>,
    /// Longest prompt + output.
    pub max_context: usize,
    /// Width of the model's logits (token ids must be below it and below the tokenizer's).
    pub vocab_size: usize,
    /// Width of an input embedding.
    pub hidden_size: usize,
    /// Structured output (`response_format`) over this model's vocabulary.
    pub grammar: Option<Arc<GrammarCompiler>>,
    /// The model's chat template, or why `/v1/chat/completions` cannot serve it.
    pub chat: Result<Arc<ChatTemplate>, String>,
    /// The LoRA adapters served (`None`: `--enable-lora` is off).
    pub lora: Option<Arc<LoraRegistry>>,
    /// The KV cache's element type (`--kv-cache-dtype`).
    pub kv_cache_dtype: cordial_model::KvDtype,
}

/// The chat template, compiled (see [`Serving::chat`]): `custom` (`--chat-template`) when
/// given, else the tokenizer's model's own.
pub fn chat_template(
    tokenizer: &Tokenizer,
    custom: Option<&str>,
) -> Result<Arc<ChatTemplate>, String> {
    let source = custom.or(tokenizer.chat_template()).ok_or(
        "this model has no chat template (`tokenizer.chat_template`); use /v1/completions, \
         or start the server with --chat-template",
    )?;
    let bos = tokenizer.bos_text().unwrap_or("");
    let eos = tokenizer.eos_text().unwrap_or("");
    ChatTemplate::new(source, bos, eos)
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

impl Serving {
    /// Runs `f` with what validation needs from this model.
    pub fn with_model_info<R>(&self, f: impl FnOnce(&ModelInfo) -> R) -> R {
        let tok = Arc::clone(&self.tokenizer);
        let encode = move |text: &str, bos: bool| -> Vec<TokenId> { tok.encode(text, bos) };
        let info = ModelInfo {
            limits: Limits {
                vocab_size: self.vocab_size.min(self.tokenizer.vocab_size()),
                max_context: self.max_context,
                hidden_size: self.hidden_size,
                kv: self.engine.kv_capacity(),
            },
            eos_tokens: self.tokenizer.eog_tokens(),
            encode: &encode,
            grammar: self.grammar.as_deref(),
            lora: self.lora.as_deref(),
        };
        f(&info)
    }
}

struct Inner {
    served: Vec<String>,
    created: u64,
    serving: OnceLock<Serving>,
    options: ServerOptions,
    metrics: Metrics,
    /// `/openapi.json`, rendered on first use.
    openapi: OnceLock<String>,
}

/// Cheap to clone; one per server.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl AppState {
    /// `served`: the accepted model names, primary first (at least one).
    pub fn new(served: Vec<String>) -> AppState {
        AppState::with_options(served, ServerOptions::default())
    }

    pub fn with_options(served: Vec<String>, options: ServerOptions) -> AppState {
        assert!(!served.is_empty(), "at least one served model name");
        AppState(Arc::new(Inner {
            served,
            created: crate::util::unix_now(),
            serving: OnceLock::new(),
            options,
            metrics: Metrics::default(),
            openapi: OnceLock::new(),
        }))
    }

    pub fn options(&self) -> &ServerOptions {
        &self.0.options
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// The rendered `/openapi.json` (set once by its route).
    pub fn openapi_json(&self) -> &OnceLock<String> {
        &self.0.openapi
    }

    /// Marks the model loaded. Fails (giving it back) when already set.
    pub fn set_serving(&self, serving: Serving) -> Result<(), Serving> {
        self.0.serving.set(serving)
    }

    /// The model and engine, once loaded.
    pub fn serving(&self) -> Option<&Serving> {
        self.0.serving.get()
    }

    pub fn served_names(&self) -> &[String] {
        &self.0.served
    }

    /// What a request's `model` may name: the served names and, once loaded with
    /// `--enable-lora`, the adapters.
    pub fn model_names(&self) -> Names<'_> {
        Names {
            served: &self.0.served,
            lora: self.serving().and_then(|s| s.lora.as_deref()),
        }
    }

    /// When the server started (unix seconds).
    pub fn created(&self) -> u64 {
        self.0.created
    }
}

/// The names a request may use in `model` ([`AppState::model_names`]).
pub struct Names<'a> {
    served: &'a [String],
    lora: Option<&'a LoraRegistry>,
}

impl ModelNames for Names<'_> {
    fn base_names(&self) -> &[String] {
        self.served
    }

    fn adapter(&self, name: &str) -> Option<cordial_engine::LoraRef> {
        let a = self.lora?.resolve(name)?;
        Some(a.lora_ref(a.scale))
    }
}
