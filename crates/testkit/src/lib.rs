//! Dev-only helpers: a deterministic fake model for engine tests and a tiny-GGUF writer for
//! reader and model tests.

pub mod fake_model;
pub mod gguf_writer;
