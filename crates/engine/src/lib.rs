//! The serving engine: one thread owning scheduler, KV block accounting, sampler and model.
//! No HTTP, no JSON. See ARCHITECTURE.md.

pub mod api;
pub mod handle;
pub mod model;

pub use api::*;
pub use handle::{EngineHandle, RequestStream};
pub use model::{ModelError, ModelExecutor, SeqStep, TokenId};
