//! cordial-model: weights and math. GGUF reader, block formats and int8 kernels, the CPU backend
//! (thread pool, scratch buffers), and one file per architecture. Knows nothing of requests or
//! scheduling: the engine owns block accounting, the model owns the KV bytes.

// Numeric kernels index several arrays in lockstep; iterator chains would hide that.
#![allow(clippy::needless_range_loop)]

pub mod arch;
pub mod backend;
pub mod bench;
pub mod fetch;
pub mod gguf;
pub mod hf;
pub mod kv;
pub mod lora;
pub mod quant;
pub mod safetensors;

pub use arch::{Batch, Model, ModelConfig, ModelError, Scratch, SeqInput};
pub use backend::cpu::{BackendError, Compute, Isa};
pub use backend::lora::LoraUse;
pub use backend::pool::{raise_thread_nice, ThreadPool};
pub use kv::{KvCache, KvDtype, KV_BLOCK, NO_BLOCK};
pub use lora::{LoraAdapter, LoraBase, LoraError};
