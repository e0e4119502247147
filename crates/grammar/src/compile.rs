//! Compiling `response_format` specs into grammars, with limits and a cache.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cordial_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::matcher::Grammar;
use crate::vocab::token_env;

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// A JSON value matching this JSON Schema.
    JsonSchema(Value),
    /// Text that the whole of matches this regular expression.
    Regex(String),
}

impl GrammarSpec {
    /// The cache key: kind and canonical text (object keys sorted by `serde_json`).
    fn key(&self) -> String {
        match self {
            GrammarSpec::JsonSchema(v) => format!("json:{v}"),
            GrammarSpec::Regex(r) => format!("regex:{r}"),
        }
    }

    fn text_len(&self) -> usize {
        match self {
            GrammarSpec::JsonSchema(v) => v.to_string().len(),
            GrammarSpec::Regex(r) => r.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GrammarError {
    #[error("the {what} is {len} bytes; the limit is {limit}")]
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("compiling took {0:?}, over the limit of {1:?}; simplify the schema")]
    TooSlow(Duration, Duration),
}

/// Limits on what a request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct GrammarLimits {
    /// Longest schema (as compact JSON) or regex, in bytes.
    pub max_spec_bytes: usize,
    /// Longest compile (plus first mask) accepted; beyond it the request is refused.
    pub max_compile_time: Duration,
    /// Compiled grammars kept for reuse.
    pub cache_entries: usize,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        GrammarLimits {
            max_spec_bytes: 64 * 1024,
            max_compile_time: Duration::from_secs(5),
            cache_entries: 128,
        }
    }
}

/// Compiles specs for one model's vocabulary; cheap to share (`Arc`), safe from any thread.
pub struct GrammarCompiler {
    factory: ParserFactory,
    eos: u32,
    limits: GrammarLimits,
    cache: Mutex<VecDeque<(String, Arc<Grammar>)>>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    /// Builds the vocabulary trie (about 0.2 s for a 49k vocabulary).
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        logits_width: usize,
        limits: GrammarLimits,
    ) -> Result<GrammarCompiler, GrammarError> {
        let env = token_env(tokenizer, logits_width);
        let eos = env.tok_trie().eos_token();
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        factory.quiet();
        Ok(GrammarCompiler {
            factory,
            eos,
            limits,
            cache: Mutex::new(VecDeque::new()),
        })
    }

    /// The compiled grammar for `spec`, from the cache or compiled now (and then cached).
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Arc<Grammar>, GrammarError> {
        let len = spec.text_len();
        if len > self.limits.max_spec_bytes {
            let what = match spec {
                GrammarSpec::JsonSchema(_) => "schema",
                GrammarSpec::Regex(_) => "regex",
            };
            return Err(GrammarError::TooLarge {
                what,
                len,
                limit: self.limits.max_spec_bytes,
            });
        }
        let key = spec.key();
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        let grammar = Arc::new(self.compile_new(spec)?);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_front((key, grammar.clone()));
        cache.truncate(self.limits.cache_entries);
        Ok(grammar)
    }

    /// Number of compiled grammars cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn lookup(&self, key: &str) -> Option<Arc<Grammar>> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let at = cache.iter().position(|(k, _)| k == key)?;
        let entry = cache.remove(at)?;
        let grammar = entry.1.clone();
        cache.push_front(entry);
        Some(grammar)
    }

    fn compile_new(&self, spec: &GrammarSpec) -> Result<Grammar, GrammarError> {
        let started = Instant::now();
        let grammar = match spec {
            GrammarSpec::JsonSchema(schema) => {
                TopLevelGrammar::from_json_schema(with_json_defaults(schema)?)
            }
            GrammarSpec::Regex(rx) => TopLevelGrammar::from_regex(strip_anchors(rx)),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))?;
        let mut matcher = Matcher::new(Ok(parser));
        // The first mask builds the lexer: errors that only show then are still a 422.
        matcher
            .compute_mask()
            .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))?;
        let took = started.elapsed();
        if took > self.limits.max_compile_time {
            return Err(GrammarError::TooSlow(took, self.limits.max_compile_time));
        }
        Ok(Grammar::new(matcher, self.eos))
    }
}

/// JSON output in the compact-with-spaces form models write (`{"a": 1, "b": [2, 3]}`), with
/// no free whitespace, so that the grammar is complete (and the choice ends) at the closing
/// bracket. A schema's own `x-guidance` options win.
fn with_json_defaults(schema: &Value) -> Result<Value, GrammarError> {
    let Value::Object(map) = schema else {
        return match schema {
            Value::Bool(_) => Ok(schema.clone()),
            _ => Err(GrammarError::Invalid(
                "a JSON schema must be an object or a boolean".into(),
            )),
        };
    };
    let mut map = map.clone();
    map.entry("x-guidance").or_insert_with(|| {
        serde_json::json!({
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
        })
    });
    Ok(Value::Object(map))
}

/// `^` at the start and `$` at the end of a pattern mean the whole output, which a grammar
/// always means: they are dropped.
fn strip_anchors(rx: &str) -> &str {
    let rx = rx.strip_prefix('^').unwrap_or(rx);
    match rx.strip_suffix('$') {
        Some(head) if head.chars().rev().take_while(|&c| c == '\\').count() % 2 == 0 => head,
        _ => rx,
    }
}

/// llguidance errors can carry a long dump of the parser state; keep the first line.
fn clean(message: &str) -> String {
    let first = message.lines().next().unwrap_or(message).trim();
    let mut s: String = first.chars().take(500).collect();
    if s.len() < first.len() {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_at_the_ends_are_dropped_escaped_dollar_kept() {
        assert_eq!(strip_anchors("^[0-9]+$"), "[0-9]+");
        assert_eq!(strip_anchors("a$"), "a");
        assert_eq!(strip_anchors(r"a\$"), r"a\$");
        assert_eq!(strip_anchors(r"a\\$"), r"a\\");
        assert_eq!(strip_anchors("^"), "");
        assert_eq!(strip_anchors("ab"), "ab");
    }

    #[test]
    fn json_defaults_keep_the_schema_and_its_own_options() {
        let v = with_json_defaults(&serde_json::json!({"type": "object"})).unwrap();
        assert_eq!(v["type"], "object");
        assert_eq!(v["x-guidance"]["whitespace_flexible"], false);
        let own = serde_json::json!({"type": "object", "x-guidance": {"lenient": true}});
        assert_eq!(with_json_defaults(&own).unwrap(), own);
        assert!(with_json_defaults(&serde_json::json!(3)).is_err());
        assert_eq!(
            with_json_defaults(&serde_json::json!(true)).unwrap(),
            serde_json::json!(true)
        );
    }
}
