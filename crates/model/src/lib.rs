//! cordial-model: weights and math. GGUF reader, block formats and int8 kernels, the CPU backend
//! (thread pool, scratch buffers), and one file per architecture. Knows nothing of requests or
//! scheduling: the engine owns block accounting, the model owns the KV bytes.

pub mod fetch;
pub mod gguf;
pub mod quant;
