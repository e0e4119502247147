//! Structured output for cordial: `response_format` specs (JSON Schema, regex) compiled with
//! llguidance over the model's own vocabulary into [`cordial_engine::ConstraintFactory`]s.
//!
//! [`GrammarCompiler`] is built once per model (the vocabulary trie) and compiles specs at
//! validation time, off the engine thread, with a size and time limit and a cache keyed by
//! (kind, canonical spec). Each choice then gets its own llguidance `Matcher`
//! ([`GrammarConstraint`]); the engine asks it for masks during the forward pass.

mod compile;
mod matcher;
mod vocab;

pub use compile::{GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec};
pub use matcher::{Grammar, GrammarConstraint};
