//! Dev-only helpers: a deterministic fake model for engine tests, a tiny-GGUF writer for
//! reader and model tests, a tiny llama GGUF (with a tokenizer) for whole-server tests, and
//! seeded LoRA adapters in both file forms (`lora_writer`), and the seeded random source they
//! share (`rng`).

pub mod fake_model;
pub mod gguf_writer;
pub mod lora_writer;
pub mod rng;
pub mod tiny_llama;
