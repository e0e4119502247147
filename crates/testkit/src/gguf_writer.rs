//! Writes small GGUF files for tests.
