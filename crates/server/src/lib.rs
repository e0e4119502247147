//! cordial-server: the only crate that knows HTTP, JSON and the Friendli/OpenAI protocols.

pub mod runner;
