//! Structured output for cordial: `response_format` specs (JSON Schema, regex) compiled with
//! llguidance over the model's own vocabulary into [`cordial_engine::ConstraintFactory`]s.
//!
//! [`GrammarCompiler`] is built once per model (the vocabulary trie) and compiles specs at
//! validation time, off the engine thread, with a size and time limit and a cache keyed by
//! (kind, canonical spec). Each choice then gets its own llguidance `Matcher`
//! ([`GrammarConstraint`]); the engine asks it for masks during the forward pass.

mod compile;
mod keys;
mod matcher;
mod schema;
mod vocab;

pub use compile::{GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec};

/// The schema llguidance compiles for a request's JSON Schema (closed objects, narrowing
/// keywords rewritten, unknown formats dropped, the JSON options in `x-guidance`): for
/// inspection and tests.
pub fn prepared_schema(schema: &serde_json::Value) -> Result<serde_json::Value, GrammarError> {
    compile::for_llguidance(schema, false).map(|p| p.schema)
}
pub use matcher::{Grammar, GrammarConstraint};
