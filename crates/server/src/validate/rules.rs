//! The validation rules, as data: each row names the field it reports (`param`) and a check.
//! Rows run in order and the first failure is the answer. Adding a field = adding rows here.
//!
//! Two tables:
//! - `RULES`: ranges and invalid combinations (docs/api.md lists them), including those of
//!   fields the engine does not implement yet, so that they stay when it does. A field sent at
//!   its default/no-op value never causes a conflict.
//! - `UNSUPPORTED`: fields the server knows but cannot honour yet. Each is rejected when SET
//!   (non-null and not at its default/no-op value) — never silently ignored. Implementing a field
//!   = deleting its row and mapping it in `build.rs`.

use crate::protocol::{CompletionRequest, ResponseFormat, Seed, Stop, TokenInput};

/// What rules may look at besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub vocab_size: usize,
    /// The longest prompt + output served: the model's context, `--max-model-len` and the KV
    /// cache's size, whichever is least.
    pub max_context: usize,
    /// The KV cache: a request must fit it whole (prompt once, plus each choice's output).
    pub kv: cordial_engine::KvCapacity,
    /// Width of an input embedding (`embedding_to_replace` holds one per replaced index).
    pub hidden_size: usize,
}

/// Largest `n` (and largest number of choices over a prompt batch).
pub const MAX_N: i64 = 128;
/// Largest OpenAI `logprobs`.
pub const MAX_LOGPROBS: i64 = 20;

pub type Check = fn(&CompletionRequest, &Limits) -> Option<String>;

pub struct Rule {
    pub param: &'static str,
    /// `Some(message)` when the request breaks the rule.
    pub check: Check,
}

pub struct Unsupported {
    pub param: &'static str,
    pub is_set: fn(&CompletionRequest) -> bool,
    /// Overrides the message "`<param>` is not supported yet".
    pub message: Option<&'static str>,
}

/// An error message when `cond` holds.
fn fail(cond: bool, msg: impl FnOnce() -> String) -> Option<String> {
    cond.then(msg)
}

fn beam(r: &CompletionRequest) -> bool {
    r.num_beams.is_some()
}

/// Beam search with the DETERMINISTIC type (the default), which forbids sampling arguments.
fn deterministic_beam(r: &CompletionRequest) -> bool {
    beam(r)
        && r.beam_search_type
            .as_deref()
            .is_none_or(|t| t == "DETERMINISTIC")
}

fn stop_set(r: &CompletionRequest) -> bool {
    match &r.stop {
        Some(Stop::One(s)) => !s.is_empty(),
        Some(Stop::Many(v)) => !v.is_empty(),
        None => false,
    }
}

fn min_tokens_set(r: &CompletionRequest) -> bool {
    r.min_tokens.is_some_and(|m| m != 0)
}

fn non_text_format(r: &CompletionRequest) -> bool {
    r.response_format.as_ref().is_some_and(|f| f.kind != "text")
}

fn out_of(range: std::ops::RangeInclusive<f64>, v: Option<f64>) -> bool {
    v.is_some_and(|x| !range.contains(&x))
}

fn bad_ids<'a>(ids: impl IntoIterator<Item = &'a i64>, l: &Limits) -> Option<i64> {
    ids.into_iter()
        .copied()
        .find(|&t| t < 0 || t as u64 >= l.vocab_size as u64)
}

fn id_message(field: &str, bad: Option<i64>, l: &Limits) -> Option<String> {
    bad.map(|t| {
        format!(
            "`{field}` contains token id {t}, outside the vocabulary [0, {})",
            l.vocab_size
        )
    })
}

fn response_format_error(f: &ResponseFormat) -> Option<String> {
    match f.kind.as_str() {
        "text" | "json_object" => None,
        "regex" if f.schema.is_none() => {
            Some("`response_format` of type `regex` needs a `schema` (the pattern)".into())
        }
        "regex" => None,
        "json_schema" if f.json_schema.as_ref().and_then(|j| j.get("schema")).is_none() => {
            Some("`response_format` of type `json_schema` needs `json_schema.schema`".into())
        }
        "json_schema" => None,
        other => Some(format!(
            "`response_format.type` must be one of text, json_object, json_schema, regex (got `{other}`)"
        )),
    }
}

fn seed_len_error(r: &CompletionRequest) -> Option<String> {
    let n = r.n.unwrap_or(1);
    match &r.seed {
        Some(Seed::Many(v)) if v.is_empty() => Some("`seed` must not be an empty list".into()),
        Some(Seed::Many(v)) if v.len() != 1 && v.len() as i64 != n => Some(format!(
            "`seed` has {} values but n is {n}: give one seed, or one per choice",
            v.len()
        )),
        _ => None,
    }
}

/// `logit_bias` as `(token id, bias)` pairs; `None` when an entry is not an id and a number.
pub(crate) fn logit_bias_entries(r: &CompletionRequest) -> Option<Vec<(i64, f64)>> {
    use crate::protocol::LogitBias;
    let parse = |k: &serde_json::Value, b: &serde_json::Value| -> Option<(i64, f64)> {
        let id = k
            .as_i64()
            .or_else(|| k.as_str().and_then(|s| s.parse().ok()))?;
        Some((id, b.as_f64()?))
    };
    match r.logit_bias.as_ref() {
        None => Some(Vec::new()),
        Some(LogitBias::Map(m)) => m
            .iter()
            .map(|(k, b)| parse(&k.as_str().into(), b))
            .collect(),
        Some(LogitBias::Pairs(v)) => v.iter().map(|p| parse(p.first()?, p.get(1)?)).collect(),
    }
}

/// Most `logit_bias` entries in one request.
pub const MAX_LOGIT_BIAS: usize = 1024;

fn logit_bias_error(r: &CompletionRequest, l: &Limits) -> Option<String> {
    let Some(entries) = logit_bias_entries(r) else {
        return Some("`logit_bias` must map token ids to numbers".into());
    };
    if entries.len() > MAX_LOGIT_BIAS {
        return Some(format!(
            "`logit_bias` may hold at most {MAX_LOGIT_BIAS} entries"
        ));
    }
    if let Some(t) = bad_ids(entries.iter().map(|(id, _)| id), l) {
        return id_message("logit_bias", Some(t), l);
    }
    let bad = entries.iter().any(|(_, b)| !(-100.0..=100.0).contains(b));
    fail(bad, || {
        "`logit_bias` values must be between -100 and 100".into()
    })
}

pub(crate) fn token_input_ids(t: &TokenInput) -> Vec<i64> {
    match t {
        TokenInput::One(v) => v.clone(),
        TokenInput::Batch(b) => b.concat(),
    }
}

#[rustfmt::skip]
pub const RULES: &[Rule] = &[
    // Exactly one input.
    Rule { param: "prompt", check: |r, _| fail(r.prompt.is_none() && r.tokens.is_none(),
        || "either `prompt` or `tokens` is required".into()) },
    Rule { param: "tokens", check: |r, _| fail(r.prompt.is_some() && r.tokens.is_some(),
        || "only one of `prompt` and `tokens` is allowed".into()) },
    // Beam search: `num_beams` present (1 included) means beam search; a valid
    // `beam_search_type` without it is ignored, an unknown one is refused.
    Rule { param: "num_beams", check: |r, _| fail(r.num_beams.is_some_and(|b| !(1..=31).contains(&b)),
        || "`num_beams` must be between 1 and 31".into()) },
    Rule { param: "beam_search_type", check: |r, _| {
        let t = r.beam_search_type.as_deref();
        fail(t.is_some_and(|t| !matches!(t, "DETERMINISTIC" | "NAIVE_SAMPLING" | "STOCHASTIC")),
            || "`beam_search_type` must be DETERMINISTIC, NAIVE_SAMPLING or STOCHASTIC".into())
    } },
    Rule { param: "stream", check: |r, _| fail(beam(r) && r.stream == Some(true),
        || "`stream` is not supported with beam search (`num_beams`)".into()) },
    Rule { param: "n", check: |r, _| fail(beam(r) && r.n.is_some_and(|n| n > 1),
        || "`n` > 1 is not supported with beam search (`num_beams`)".into()) },
    Rule { param: "stop", check: |r, _| fail(beam(r) && stop_set(r),
        || "`stop` is not supported with beam search; use `stop_tokens`".into()) },
    Rule { param: "length_penalty", check: |r, _| fail(!beam(r) && r.length_penalty.is_some_and(|p| p != 1.0),
        || "`length_penalty` is only allowed with beam search (`num_beams`)".into()) },
    Rule { param: "early_stopping", check: |r, _| fail(!beam(r) && r.early_stopping == Some(true),
        || "`early_stopping` is only allowed with beam search (`num_beams`)".into()) },
    Rule { param: "top_k", check: |r, _| fail(deterministic_beam(r) && r.top_k.is_some_and(|k| k != 0),
        || "`top_k` is not allowed with DETERMINISTIC beam search".into()) },
    Rule { param: "top_p", check: |r, _| fail(deterministic_beam(r) && r.top_p.is_some_and(|p| p != 1.0),
        || "`top_p` is not allowed with DETERMINISTIC beam search".into()) },
    Rule { param: "temperature", check: |r, _| fail(deterministic_beam(r) && r.temperature.is_some_and(|t| t != 1.0),
        || "`temperature` is not allowed with DETERMINISTIC beam search".into()) },
    Rule { param: "min_p", check: |r, _| fail(deterministic_beam(r) && r.min_p.is_some_and(|p| p != 0.0),
        || "`min_p` is not allowed with DETERMINISTIC beam search".into()) },
    Rule { param: "length_penalty", check: |r, _| fail(r.length_penalty.is_some_and(|p| !p.is_finite() || p.abs() > 100.0),
        || "`length_penalty` must be a finite number in [-100, 100]".into()) },
    Rule { param: "include_output_logits", check: |r, _| fail(beam(r) && r.include_output_logits == Some(true),
        || "`include_output_logits` is not supported with beam search (`num_beams`)".into()) },
    Rule { param: "echo", check: |r, _| fail(beam(r) && r.echo == Some(true),
        || "`echo` is not supported with beam search (`num_beams`)".into()) },
    Rule { param: "best_of", check: |r, _| fail(beam(r) && r.best_of.is_some_and(|b| b > 1),
        || "`best_of` is not supported with beam search (`num_beams`)".into()) },
    Rule { param: "forced_output_tokens", check: |r, _| fail(beam(r) && r.forced_output_tokens.is_some(),
        || "`forced_output_tokens` fixes the output; it cannot be combined with beam search (`num_beams`)".into()) },
    Rule { param: "beam_compat_no_post_normalization", check: |r, _| fail(
        r.beam_compat_no_post_normalization == Some(true) && r.beam_compat_pre_normalization != Some(true),
        || "`beam_compat_no_post_normalization` requires `beam_compat_pre_normalization: true`".into()) },
    // Lengths.
    Rule { param: "max_tokens", check: |r, _| fail(r.max_tokens.is_some_and(|m| m < 0)
        || (r.max_tokens == Some(0) && r.echo != Some(true)),
        || "`max_tokens` must be at least 1 (0 is allowed only with `echo: true`)".into()) },
    Rule { param: "echo", check: |r, _| fail(r.echo == Some(true) && r.include_output_logprobs == Some(true),
        || "`echo` cannot be combined with `include_output_logprobs`; use `logprobs` for prompt log-probabilities".into()) },
    Rule { param: "max_total_tokens", check: |r, _| fail(r.max_total_tokens.is_some_and(|m| m < 1),
        || "`max_total_tokens` must be at least 1".into()) },
    Rule { param: "max_total_tokens", check: |r, l| fail(r.max_tokens.is_some()
        && r.max_total_tokens.is_some_and(|m| m != l.max_context as i64),
        || "only one of `max_tokens` and `max_total_tokens` is allowed".into()) },
    Rule { param: "min_tokens", check: |r, _| fail(r.min_tokens.is_some_and(|m| m < 0),
        || "`min_tokens` must be at least 0".into()) },
    Rule { param: "min_total_tokens", check: |r, _| fail(r.min_total_tokens.is_some_and(|m| m < 0),
        || "`min_total_tokens` must be at least 0".into()) },
    Rule { param: "min_total_tokens", check: |r, _| fail(min_tokens_set(r) && r.min_total_tokens.is_some(),
        || "only one of `min_tokens` and `min_total_tokens` is allowed".into()) },
    Rule { param: "min_tokens", check: |r, _| fail(matches!((r.min_tokens, r.max_tokens), (Some(a), Some(b)) if a > b),
        || "`min_tokens` must not exceed `max_tokens`".into()) },
    Rule { param: "min_tokens", check: |r, _| fail(min_tokens_set(r) && non_text_format(r),
        || "`min_tokens` is not supported together with `response_format`".into()) },
    Rule { param: "timeout_microseconds", check: |r, _| fail(r.timeout_microseconds.is_some_and(|t| t <= 0),
        || "`timeout_microseconds` must be positive".into()) },
    // Choices and seeds.
    Rule { param: "n", check: |r, _| fail(r.n.is_some_and(|n| !(1..=MAX_N).contains(&n)),
        || format!("`n` must be between 1 and {MAX_N}")) },
    Rule { param: "seed", check: |r, _| seed_len_error(r) },
    Rule { param: "best_of", check: |r, _| fail(r.best_of.is_some_and(|b| b < r.n.unwrap_or(1)),
        || "`best_of` must be at least `n`".into()) },
    Rule { param: "best_of", check: |r, _| fail(r.best_of.is_some_and(|b| b > 1) && r.stream == Some(true),
        || "`best_of` is not supported with `stream`".into()) },
    Rule { param: "best_of", check: |r, _| fail(r.best_of.is_some_and(|b| b > MAX_N),
        || format!("`best_of` must be at most {MAX_N}")) },
    Rule { param: "seed", check: |r, _| fail(matches!(r.seed, Some(Seed::Many(ref v)) if v.len() > 1)
        && r.best_of.is_some_and(|b| b > r.n.unwrap_or(1)),
        || "a list of seeds cannot be combined with `best_of` > n; give one seed".into()) },
    // Sampling ranges.
    Rule { param: "temperature", check: |r, _| fail(r.temperature.is_some_and(|t| t < 0.0),
        || "`temperature` must be at least 0 (0 = greedy)".into()) },
    Rule { param: "top_k", check: |r, l| fail(r.top_k.is_some_and(|k| k < 0 || k as u64 > l.vocab_size as u64),
        || format!("`top_k` must be between 0 and the vocabulary size {}", l.vocab_size)) },
    Rule { param: "top_p", check: |r, _| fail(r.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)),
        || "`top_p` must be in (0, 1]".into()) },
    Rule { param: "min_p", check: |r, _| fail(out_of(0.0..=1.0, r.min_p), || "`min_p` must be in [0, 1]".into()) },
    Rule { param: "xtc_threshold", check: |r, _| fail(out_of(0.0..=1.0, r.xtc_threshold),
        || "`xtc_threshold` must be in [0, 1]".into()) },
    Rule { param: "xtc_probability", check: |r, _| fail(out_of(0.0..=1.0, r.xtc_probability),
        || "`xtc_probability` must be in [0, 1]".into()) },
    Rule { param: "frequency_penalty", check: |r, _| fail(out_of(-2.0..=2.0, r.frequency_penalty),
        || "`frequency_penalty` must be between -2 and 2".into()) },
    Rule { param: "presence_penalty", check: |r, _| fail(out_of(-2.0..=2.0, r.presence_penalty),
        || "`presence_penalty` must be between -2 and 2".into()) },
    Rule { param: "repetition_penalty", check: |r, _| fail(r.repetition_penalty.is_some_and(|p| p < 1.0),
        || "`repetition_penalty` must be at least 1.0 (1.0 = no penalty)".into()) },
    Rule { param: "no_repeat_ngram", check: |r, _| fail(r.no_repeat_ngram.is_some_and(|n| n < 1),
        || "`no_repeat_ngram` must be at least 1 (1 = off)".into()) },
    // Encoder-decoder-only fields on a decoder-only model.
    Rule { param: "encoder_no_repeat_ngram", check: |r, _| fail(r.encoder_no_repeat_ngram.is_some_and(|n| n != 1),
        || "`encoder_no_repeat_ngram` is for encoder-decoder models; this model is decoder-only".into()) },
    Rule { param: "encoder_repetition_penalty", check: |r, _| fail(r.encoder_repetition_penalty.is_some_and(|p| p != 1.0),
        || "`encoder_repetition_penalty` is for encoder-decoder models; this model is decoder-only".into()) },
    // Token ids and other shapes.
    Rule { param: "stop_tokens", check: |r, l| id_message("stop_tokens",
        bad_ids(r.stop_tokens.iter().flatten().flat_map(|s| &s.tokens), l), l) },
    Rule { param: "bad_word_tokens", check: |r, l| id_message("bad_word_tokens",
        bad_ids(r.bad_word_tokens.iter().flatten().flat_map(|s| &s.tokens), l), l) },
    Rule { param: "eos_token", check: |r, l| id_message("eos_token", bad_ids(r.eos_token.iter().flatten(), l), l) },
    Rule { param: "forced_output_tokens", check: |r, l| id_message("forced_output_tokens",
        bad_ids(&r.forced_output_tokens.as_ref().map(token_input_ids).unwrap_or_default(), l), l) },
    Rule { param: "logit_bias", check: logit_bias_error },
    Rule { param: "embedding_to_replace", check: |r, _| fail(
        r.token_index_to_replace.is_some() != r.embedding_to_replace.is_some(),
        || "`token_index_to_replace` and `embedding_to_replace` must be given together".into()) },
    Rule { param: "token_index_to_replace", check: |r, _| replace_index_error(r.token_index_to_replace.as_deref()) },
    Rule { param: "embedding_to_replace", check: |r, l| {
        let (idx, emb) = (r.token_index_to_replace.as_ref()?, r.embedding_to_replace.as_ref()?);
        if emb.len() != idx.len() * l.hidden_size {
            return Some(format!(
                "`embedding_to_replace` must hold {} floats ({} indices × hidden size {}), got {}",
                idx.len() * l.hidden_size, idx.len(), l.hidden_size, emb.len()));
        }
        fail(emb.iter().any(|v| !v.is_finite() || v.abs() > f32::MAX as f64),
            || "`embedding_to_replace` values must be finite 32-bit floats".into())
    } },
    Rule { param: "response_format", check: |r, _| r.response_format.as_ref().and_then(response_format_error) },
    Rule { param: "logprobs", check: |r, _| fail(r.logprobs.is_some_and(|k| !(0..=MAX_LOGPROBS).contains(&k)),
        || format!("`logprobs` must be between 0 and {MAX_LOGPROBS}")) },
    Rule { param: "logprobs", check: |r, _| fail(r.logprobs.is_some() && r.include_output_logprobs == Some(true),
        || "`logprobs` and `include_output_logprobs` cannot be used together".into()) },
    // Stopping and banning.
    Rule { param: "stop", check: |r, _| fail(stop_phrases(r).iter().any(|s| s.is_empty()),
        || "`stop` phrases must not be empty".into()) },
    Rule { param: "stop", check: |r, _| fail(stop_phrases(r).len() > MAX_STOP,
        || format!("`stop` may hold at most {MAX_STOP} phrases")) },
    Rule { param: "stop_tokens", check: |r, _| fail(r.stop_tokens.iter().flatten().any(|s| s.tokens.is_empty()),
        || "each `stop_tokens` entry needs at least one token".into()) },
    Rule { param: "bad_words", check: |r, _| fail(r.bad_words.iter().flatten().any(|s| s.trim_start_matches(' ').is_empty()),
        || "`bad_words` phrases must not be empty".into()) },
    Rule { param: "bad_word_tokens", check: |r, _| fail(r.bad_word_tokens.iter().flatten().any(|s| s.tokens.is_empty()),
        || "each `bad_word_tokens` entry needs at least one token".into()) },
    Rule { param: "eos_token", check: |r, _| fail(r.eos_token.is_some() && r.ignore_eos == Some(true),
        || "`eos_token` cannot be combined with `ignore_eos: true`".into()) },
    // The grammar decides where the output ends.
    Rule { param: "ignore_eos", check: |r, _| fail(r.ignore_eos == Some(true) && non_text_format(r),
        || "`ignore_eos: true` cannot be combined with `response_format` (the format decides where the output ends)".into()) },
    // A forced output is not sampled, so nothing may stop, ban or lengthen it.
    Rule { param: "forced_output_tokens", check: |r, _| forced_conflict(r).map(|f| format!(
        "`forced_output_tokens` fixes the output; it cannot be combined with `{f}`")) },
];

/// Most `stop` phrases in one request.
pub const MAX_STOP: usize = 64;

/// The `stop` phrases (a bare string is one phrase).
pub fn stop_phrases(r: &CompletionRequest) -> Vec<String> {
    match &r.stop {
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
        None => Vec::new(),
    }
}

/// Whether `forced_output_tokens` is set (a non-empty list, or a batch).
pub fn forced_set(r: &CompletionRequest) -> bool {
    r.forced_output_tokens
        .as_ref()
        .is_some_and(|t| !token_input_ids(t).is_empty() || matches!(t, TokenInput::Batch(_)))
}

/// The first field set alongside `forced_output_tokens` that would change its output.
fn forced_conflict(r: &CompletionRequest) -> Option<&'static str> {
    if !forced_set(r) {
        return None;
    }
    let set = [
        ("stop", stop_set(r)),
        ("stop_tokens", non_empty(&r.stop_tokens)),
        ("bad_words", non_empty(&r.bad_words)),
        ("bad_word_tokens", non_empty(&r.bad_word_tokens)),
        ("min_tokens", min_tokens_set(r)),
        ("min_total_tokens", r.min_total_tokens.is_some()),
        ("response_format", non_text_format(r)),
    ];
    set.into_iter().find(|(_, on)| *on).map(|(f, _)| f)
}

fn non_empty<T>(v: &Option<Vec<T>>) -> bool {
    v.as_ref().is_some_and(|v| !v.is_empty())
}

#[rustfmt::skip]
pub const UNSUPPORTED: &[Unsupported] = &[
    Unsupported { param: "xtc_threshold", is_set: |r| r.xtc_threshold.is_some_and(|p| p != 0.0), message: None },
    Unsupported { param: "xtc_probability", is_set: |r| r.xtc_probability.is_some_and(|p| p != 0.0), message: None },
    Unsupported { param: "suffix", is_set: |r| r.suffix.as_ref().is_some_and(|s| !s.is_empty()),
        message: Some("`suffix` (fill-in-the-middle insertion) is not supported by this server") },
    Unsupported { param: "soft_prompts", is_set: |r| r.soft_prompts.is_some(), message: None },
    Unsupported { param: "position_ids", is_set: |r| r.position_ids.is_some(), message: None },
    Unsupported { param: "generation_offset", is_set: |r| r.generation_offset.is_some(), message: None },
    Unsupported { param: "stream_options.continuous_usage_stats", is_set: |r| r.stream_options.as_ref()
        .is_some_and(|o| o.continuous_usage_stats == Some(true)), message: None },
];

/// `token_index_to_replace`: non-negative and distinct (the upper bound, the input's length, is
/// checked per input when it is tokenized).
fn replace_index_error(idx: Option<&[i64]>) -> Option<String> {
    let idx = idx?;
    if let Some(i) = idx.iter().find(|i| **i < 0) {
        return Some(format!(
            "`token_index_to_replace` entries must be non-negative, got {i}"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    idx.iter()
        .find(|i| !seen.insert(**i))
        .map(|i| format!("`token_index_to_replace` lists index {i} twice"))
}
