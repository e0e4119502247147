//! Dev-only helpers: a deterministic fake model for engine tests, a tiny-GGUF writer for
//! reader and model tests, and a tiny llama GGUF (with a tokenizer) for whole-server tests.

pub mod fake_model;
pub mod gguf_writer;
pub mod tiny_llama;
