//! Compiling `response_format` specs into grammars, with limits and a cache.

use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cordial_tokenizer::Tokenizer;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::TokEnv;
use llguidance::{CancellationHandle, Matcher, ParserFactory};
use serde_json::{Map, Value};

use crate::keys::QuoteTokens;
use crate::matcher::Grammar;
use crate::schema::{prepare, Prepared};
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
    /// The cache key: kind and compact text.
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
    /// A keyword the grammar cannot enforce (never silently dropped).
    #[error("`{keyword}` at {at} cannot be enforced: {reason}")]
    Unsupported {
        keyword: String,
        at: String,
        reason: String,
    },
    #[error("compiling did not finish within {limit:?}{busy}; simplify the schema")]
    TooSlow { limit: Duration, busy: &'static str },
}

/// Limits on what a request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct GrammarLimits {
    /// Longest schema (as compact JSON) or regex, in bytes.
    pub max_spec_bytes: usize,
    /// Longest a request waits for its grammar (compile plus first mask, and any wait for a
    /// compile thread); beyond it the request is refused while the compile goes on, bounded by
    /// llguidance's own limits, on its thread.
    pub max_compile_time: Duration,
    /// Compiles running at once (each on its own thread); more wait, within the time limit.
    pub max_concurrent_compiles: usize,
    /// Compiled grammars kept for reuse.
    pub cache_entries: usize,
}

impl Default for GrammarLimits {
    fn default() -> Self {
        GrammarLimits {
            // 4 MiB schemas prepare and compile in under a second here (the largest of
            // JSONSchemaBench, 0.9 MB, in 0.13 s); what llguidance's limits (below) stop, stops
            // sooner.
            max_spec_bytes: 4 << 20,
            max_compile_time: Duration::from_secs(5),
            max_concurrent_compiles: 2,
            cache_entries: 128,
        }
    }
}

/// llguidance's own bounds on one grammar: they end a runaway compile (and mask) with an error
/// however the schema is built. Its defaults, written out.
fn parser_limits() -> ParserLimits {
    ParserLimits {
        // Lexer regexes built at compile time (~50k/ms).
        initial_lexer_fuel: 1_000_000,
        // Per mask: lexer work (~14k/ms) and Earley items (~20k/ms).
        step_lexer_fuel: 200_000,
        step_max_items: 50_000,
        max_items_in_row: 2000,
        max_lexer_states: 250_000,
        // Grammar symbols (a few MB of JSON schema).
        max_grammar_size: 500_000,
        precompute_large_lexemes: true,
        verbose_errors: false,
    }
}

/// Compiles specs for one model's vocabulary; cheap to share (`Arc`), safe from any thread.
pub struct GrammarCompiler {
    inner: Arc<Inner>,
}

struct Inner {
    factory: ParserFactory,
    env: TokEnv,
    quotes: Arc<QuoteTokens>,
    eos: u32,
    limits: GrammarLimits,
    cache: Mutex<VecDeque<(String, Arc<Grammar>)>>,
    /// Compile threads running (finished or abandoned ones leave).
    running: Mutex<usize>,
    freed: Condvar,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

/// Gives a compile thread's slot back however the thread ends.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        *running -= 1;
        self.0.freed.notify_one();
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
        let trie = env.tok_trie();
        let eos = trie.eos_token();
        let quotes = Arc::new(QuoteTokens::new(
            (0..trie.vocab_size() as u32).map(|id| (id, trie.token(id).to_vec())),
        ));
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GrammarError::Invalid(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = parser_limits();
        Ok(GrammarCompiler {
            inner: Arc::new(Inner {
                factory,
                env,
                quotes,
                eos,
                limits,
                cache: Mutex::new(VecDeque::new()),
                running: Mutex::new(0),
                freed: Condvar::new(),
            }),
        })
    }

    /// The compiled grammar for `spec`, from the cache or compiled now (and then cached).
    /// Compiling runs on a thread of its own (a large stack, panics caught); the caller waits
    /// at most `max_compile_time`.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Arc<Grammar>, GrammarError> {
        let limits = self.inner.limits;
        let len = spec.text_len();
        if len > limits.max_spec_bytes {
            let what = match spec {
                GrammarSpec::JsonSchema(_) => "schema",
                GrammarSpec::Regex(_) => "regex",
            };
            return Err(GrammarError::TooLarge {
                what,
                len,
                limit: limits.max_spec_bytes,
            });
        }
        let key = spec.key();
        if let Some(hit) = self.lookup(&key) {
            return Ok(hit);
        }
        let deadline = Instant::now() + limits.max_compile_time;
        let slot = self.take_slot(deadline)?;
        let (tx, rx) = mpsc::sync_channel(1);
        let cancel: Arc<Mutex<Option<CancellationHandle>>> = Arc::default();
        let (inner, spec2, cancel2) = (self.inner.clone(), spec.clone(), cancel.clone());
        std::thread::Builder::new()
            .name("cordial-grammar".into())
            // Deep schemas recurse in our preparation and in llguidance's compiler.
            .stack_size(64 << 20)
            .spawn(move || {
                let _slot = slot;
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    inner.compile_new(&spec2, &cancel2)
                }))
                .unwrap_or_else(|_| {
                    Err(GrammarError::Invalid(
                        "the grammar compiler failed on this schema".into(),
                    ))
                });
                let _ = tx.send(r);
            })
            .map_err(|e| GrammarError::Invalid(format!("cannot start a compile thread: {e}")))?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let grammar = match rx.recv_timeout(wait) {
            Ok(r) => Arc::new(r?),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The first mask can be cancelled; the compile before it ends at llguidance's
                // limits, and its result is dropped.
                if let Some(c) = cancel.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    c.cancel();
                }
                return Err(GrammarError::TooSlow {
                    limit: limits.max_compile_time,
                    busy: "",
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(GrammarError::Invalid(
                    "the grammar compiler failed on this schema".into(),
                ))
            }
        };
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.push_front((key, grammar.clone()));
        cache.truncate(limits.cache_entries);
        Ok(grammar)
    }

    /// Number of compiled grammars cached.
    pub fn cached(&self) -> usize {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Compile threads running now (including ones whose requests gave up waiting).
    pub fn running(&self) -> usize {
        *self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take_slot(&self, deadline: Instant) -> Result<Slot, GrammarError> {
        let inner = &self.inner;
        let mut running = inner.running.lock().unwrap_or_else(|p| p.into_inner());
        while *running >= inner.limits.max_concurrent_compiles.max(1) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(GrammarError::TooSlow {
                    limit: inner.limits.max_compile_time,
                    busy: " (other schemas were compiling)",
                });
            }
            running = inner
                .freed
                .wait_timeout(running, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *running += 1;
        Ok(Slot(inner.clone()))
    }

    fn lookup(&self, key: &str) -> Option<Arc<Grammar>> {
        let mut cache = self.inner.cache.lock().unwrap_or_else(|p| p.into_inner());
        let at = cache.iter().position(|(k, _)| k == key)?;
        let entry = cache.remove(at)?;
        let grammar = entry.1.clone();
        cache.push_front(entry);
        Some(grammar)
    }
}

impl Inner {
    fn compile_new(
        &self,
        spec: &GrammarSpec,
        cancel: &Mutex<Option<CancellationHandle>>,
    ) -> Result<Grammar, GrammarError> {
        let parse = |grammar| {
            self.factory
                .create_parser(grammar)
                .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))
        };
        let parser = match spec {
            GrammarSpec::JsonSchema(schema) => {
                let exact = for_llguidance(schema, false)?;
                match parse(TopLevelGrammar::from_json_schema(exact.schema)) {
                    // Open copies of recursive subschemas can meet in a merge, which
                    // llguidance refuses: retry with the narrower preparation.
                    Err(GrammarError::Invalid(e)) if e.contains("circular references") => {
                        let narrower = for_llguidance(schema, true)?;
                        parse(TopLevelGrammar::from_json_schema(narrower.schema))?
                    }
                    r => r?,
                }
            }
            GrammarSpec::Regex(rx) => parse(TopLevelGrammar::from_regex(strip_anchors(rx)))?,
        };
        let mut matcher = Matcher::new(Ok(parser)).into_cancellable();
        *cancel.lock().unwrap_or_else(|p| p.into_inner()) = matcher.cancellation_handle();
        // The first mask builds the lexer: errors that only show then are still a 422.
        matcher
            .compute_mask()
            .map_err(|e| GrammarError::Invalid(clean(&e.to_string())))?;
        let keys = match spec {
            GrammarSpec::JsonSchema(_) => Some(self.quotes.clone()),
            GrammarSpec::Regex(_) => None,
        };
        Ok(Grammar::new(matcher, self.eos, self.env.clone(), keys))
    }
}

/// The schema llguidance compiles: the request's, prepared (`schema.rs`: closed objects,
/// narrowing keywords rewritten, unknown formats dropped), with the JSON options: output in the
/// compact-with-spaces form models write (`{"a": 1, "b": [2, 3]}`) with no free whitespace, so
/// that the grammar is complete (and the choice ends) at the closing bracket, and `oneOf`
/// compiled as `anyOf`. Options in the schema's own root `x-guidance` win, key by key.
pub(crate) fn for_llguidance(schema: &Value, fewer_copies: bool) -> Result<Prepared, GrammarError> {
    let (schema, own) = match schema {
        // `true` is any value: an empty schema, so that the options apply.
        Value::Bool(true) => (Value::Object(Map::new()), None),
        Value::Bool(false) => {
            return Err(GrammarError::Invalid(
                "the schema is `false`: no value is valid".into(),
            ))
        }
        Value::Object(map) => {
            let mut map = map.clone();
            let own = map.remove("x-guidance");
            (Value::Object(map), own)
        }
        _ => {
            return Err(GrammarError::Invalid(
                "a JSON schema must be an object or a boolean".into(),
            ))
        }
    };
    let mut prepared = prepare(&schema, fewer_copies)?;
    let mut options = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
        "coerce_one_of": true,
    });
    match own {
        None => {}
        Some(Value::Object(own)) => {
            if own.get("lenient").is_some_and(|l| l != &Value::Bool(false)) {
                // llguidance would then drop what it cannot compile without a word.
                return Err(GrammarError::Unsupported {
                    keyword: "x-guidance.lenient".into(),
                    at: "#".into(),
                    reason: "keywords are never ignored silently here".into(),
                });
            }
            if let Value::Object(o) = &mut options {
                o.extend(own);
            }
        }
        Some(_) => {
            return Err(GrammarError::Invalid(
                "`x-guidance` must be an object".into(),
            ))
        }
    }
    match &mut prepared.schema {
        Value::Object(m) => {
            m.insert("x-guidance".into(), options);
        }
        other => {
            // A boolean root (`true`): any value, with the options.
            let b = other.clone();
            *other = serde_json::json!({"anyOf": [b], "x-guidance": options});
        }
    }
    Ok(prepared)
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
    fn json_options_default_compact_and_the_schemas_own_win_key_by_key() {
        let v = for_llguidance(&serde_json::json!({"type": "object"}), false)
            .unwrap()
            .schema;
        assert_eq!(v["type"], "object");
        let o = &v["x-guidance"];
        assert_eq!(o["whitespace_flexible"], false);
        assert_eq!(o["item_separator"], ", ");
        assert_eq!(o["key_separator"], ": ");
        assert_eq!(o["coerce_one_of"], true);
        let own = serde_json::json!({"type": "object", "x-guidance": {"item_separator": ","}});
        let v = for_llguidance(&own, false).unwrap().schema;
        assert_eq!(v["x-guidance"]["item_separator"], ",");
        assert_eq!(v["x-guidance"]["key_separator"], ": ");
        assert!(for_llguidance(&serde_json::json!(3), false).is_err());
        assert!(for_llguidance(&serde_json::json!(false), false).is_err());
        let any = for_llguidance(&serde_json::json!(true), false)
            .unwrap()
            .schema;
        assert_eq!(any["x-guidance"]["whitespace_flexible"], false);
        let lenient = serde_json::json!({"x-guidance": {"lenient": true}});
        assert!(matches!(
            for_llguidance(&lenient, false),
            Err(GrammarError::Unsupported { .. })
        ));
    }
}
