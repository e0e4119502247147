//! cordial-server: the only crate that knows HTTP, JSON and the Friendli/OpenAI protocols.
//!
//! Request path: `routes` → `validate` (every 4xx) → `EngineHandle::submit` → `stream`
//! (detokenize, then JSON or one of two SSE dialects); `error` maps every failure to HTTP.

pub mod auth;
pub mod chat;
pub mod error;
pub mod json;
pub mod kv_events;
pub mod limits;
pub mod metrics;
pub mod observe;
pub mod protocol;
pub mod routes;
pub mod runner;
pub mod serve;
pub mod startup;
pub mod state;
pub mod stream;
pub mod util;
pub mod validate;
pub mod vllm_metrics;

pub use routes::router;
pub use state::{AppState, ServerOptions, Serving};
