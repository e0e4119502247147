//! cordial-server: the only crate that knows HTTP, JSON and the Friendli/OpenAI protocols.

pub mod error;
pub mod json;
pub mod protocol;
pub mod runner;
pub mod stream;
pub mod validate;
