//! Phase 3, decoding controls: the request's sampling, stopping, banning and reporting fields
//! → the engine's `SamplingParams`, and the lengths of each input.

use std::time::{Duration, Instant};

use cordial_engine::{SamplingParams, TokenId};

use super::build::{kv_error, max_new_tokens, sequences, LengthDefault, ModelInfo};
use super::rules::Limits;
use crate::error::ValidationError;
use crate::protocol::{CompletionRequest, TokenInput};

/// Most raw logits (rows × vocabulary, over all choices) one request may ask for with
/// `include_output_logits`: 2^22 floats, about 40 MB of JSON. Above it: 422.
pub const MAX_OUTPUT_LOGITS: usize = 1 << 22;

/// What `choices[i].logprobs` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogprobMode {
    /// `null`.
    None,
    /// `include_output_logprobs`: one float per token.
    Floats,
    /// OpenAI `logprobs: k`: the OpenAI object with k alternatives per token.
    Top(usize),
}

impl LogprobMode {
    pub fn of(req: &CompletionRequest) -> LogprobMode {
        match (req.logprobs, req.include_output_logprobs) {
            (Some(k), _) => LogprobMode::Top(k.max(0) as usize),
            (None, Some(true)) => LogprobMode::Floats,
            _ => LogprobMode::None,
        }
    }
}

fn ids(seq: &[i64]) -> Vec<TokenId> {
    // Ranges were checked by the rules.
    seq.iter().map(|&t| t as TokenId).collect()
}

/// `w` and `w` with the other leading-space convention (" very" ↔ "very"), since a BPE
/// tokenizer gives the two different tokens.
fn bad_word_variants(w: &str) -> [String; 2] {
    match w.strip_prefix(' ') {
        Some(bare) => [w.to_owned(), bare.to_owned()],
        None => [w.to_owned(), format!(" {w}")],
    }
}

/// `bad_word_tokens` plus every `bad_words` phrase tokenized (without BOS) both ways.
fn bad_sequences(req: &CompletionRequest, model: &ModelInfo) -> Vec<Vec<TokenId>> {
    let mut out: Vec<Vec<TokenId>> = Vec::new();
    let given = req.bad_word_tokens.iter().flatten().map(|s| ids(&s.tokens));
    let words = req
        .bad_words
        .iter()
        .flatten()
        .flat_map(|w| bad_word_variants(w));
    let tokenized = words.map(|w| (model.encode)(&w, false));
    for seq in given.chain(tokenized) {
        if !seq.is_empty() && !out.contains(&seq) {
            out.push(seq);
        }
    }
    out
}

/// The parameters shared by every input of the request (lengths are set per input).
pub(crate) fn base_params(req: &CompletionRequest, model: &ModelInfo) -> SamplingParams {
    let eos_tokens = match &req.eos_token {
        Some(list) => ids(list),
        None => model.eos_tokens.to_vec(),
    };
    let mode = LogprobMode::of(req);
    let top_logprobs = match mode {
        LogprobMode::Top(k) => k,
        _ => 0,
    };
    // `best_of` ranks an input's choices by their cumulative log-probability.
    let ranked = req.best_of.unwrap_or(1) > req.n.unwrap_or(1);
    SamplingParams {
        temperature: req.temperature.unwrap_or(1.0) as f32,
        top_k: req.top_k.unwrap_or(0) as usize,
        top_p: req.top_p.unwrap_or(1.0) as f32,
        max_new_tokens: 0,
        eos_tokens,
        ignore_eos: req.ignore_eos.unwrap_or(false),
        min_new_tokens: 0,
        stop_sequences: req
            .stop_tokens
            .iter()
            .flatten()
            .map(|s| ids(&s.tokens))
            .collect(),
        bad_sequences: bad_sequences(req, model),
        repetition_penalty: req.repetition_penalty.unwrap_or(1.0) as f32,
        frequency_penalty: req.frequency_penalty.unwrap_or(0.0) as f32,
        presence_penalty: req.presence_penalty.unwrap_or(0.0) as f32,
        no_repeat_ngram: req.no_repeat_ngram.unwrap_or(1).max(0) as usize,
        min_p: req.min_p.unwrap_or(0.0) as f32,
        forced_tokens: Vec::new(),
        top_logprobs,
        output_logits: req.include_output_logits == Some(true),
        token_logprobs: !matches!(mode, LogprobMode::None) || ranked,
        // Ranges were checked by the rules.
        logit_bias: super::rules::logit_bias_entries(req)
            .unwrap_or_default()
            .into_iter()
            .map(|(t, b)| (t as TokenId, b as f32))
            .collect(),
        prompt_logprobs: req.echo == Some(true) && req.logprobs.is_some(),
    }
}

/// The forced output of each of `inputs` inputs: one list for all, or one row per input.
pub(crate) fn forced_rows(
    req: &CompletionRequest,
    inputs: usize,
) -> Result<Vec<Vec<TokenId>>, ValidationError> {
    let param = "forced_output_tokens";
    let rows = match &req.forced_output_tokens {
        None => return Ok(vec![Vec::new(); inputs]),
        Some(TokenInput::One(v)) => vec![ids(v); inputs],
        Some(TokenInput::Batch(b)) if b.len() == inputs => b.iter().map(|r| ids(r)).collect(),
        Some(TokenInput::Batch(b)) => {
            let msg = format!(
                "`{param}` has {} rows but the request has {inputs} inputs: give one list, or one row per input",
                b.len()
            );
            return Err(ValidationError::new(param, msg));
        }
    };
    if matches!(req.forced_output_tokens, Some(TokenInput::Batch(_)))
        && rows.iter().any(Vec::is_empty)
    {
        return Err(ValidationError::new(
            param,
            format!("`{param}` rows must not be empty"),
        ));
    }
    Ok(rows)
}

/// `(max_new_tokens, min_new_tokens)` of one input of `prompt_len` tokens whose forced output
/// is `forced` (empty: none).
pub(crate) fn lengths(
    req: &CompletionRequest,
    prompt_len: usize,
    forced: &[TokenId],
    input_param: &str,
    limits: &Limits,
    default: LengthDefault,
) -> Result<(usize, usize), ValidationError> {
    let max_new = max_new_tokens(req, prompt_len, input_param, limits, default)?;
    if !forced.is_empty() {
        let limited = req.max_tokens.is_some() || req.max_total_tokens.is_some();
        if forced.len() > max_new && (limited || prompt_len + forced.len() > limits.max_context) {
            let msg = format!(
                "`forced_output_tokens` has {} tokens; the request allows {max_new} after the {prompt_len}-token input",
                forced.len()
            );
            return Err(ValidationError::new("forced_output_tokens", msg));
        }
        if limits.kv.max_new_tokens(prompt_len, sequences(req)) < forced.len() {
            let param = "forced_output_tokens";
            return Err(kv_error(req, param, prompt_len, forced.len(), limits));
        }
        return Ok((forced.len(), 0));
    }
    let (param, min_new) = match (req.min_tokens, req.min_total_tokens) {
        (_, Some(t)) => ("min_total_tokens", (t as usize).saturating_sub(prompt_len)),
        (Some(m), None) => ("min_tokens", m as usize),
        (None, None) => ("min_tokens", 0),
    };
    if min_new > max_new {
        let msg = format!(
            "`{param}` asks for at least {min_new} generated tokens but at most {max_new} are allowed after the {prompt_len}-token input"
        );
        return Err(ValidationError::new(param, msg));
    }
    Ok((max_new, min_new))
}

/// `include_output_logits` is refused when the rows could exceed [`MAX_OUTPUT_LOGITS`].
pub(crate) fn check_logits_size(rows: usize, vocab: usize) -> Result<(), ValidationError> {
    let floats = rows.saturating_mul(vocab);
    if floats > MAX_OUTPUT_LOGITS {
        let msg = format!(
            "`include_output_logits` would return up to {rows} rows of {vocab} logits; the limit is {MAX_OUTPUT_LOGITS} values per request: lower `max_tokens` or `n`"
        );
        return Err(ValidationError::new("include_output_logits", msg));
    }
    Ok(())
}

/// When the request times out (`timeout_microseconds`, counted from now).
pub(crate) fn deadline(req: &CompletionRequest) -> Option<Instant> {
    let micros = u64::try_from(req.timeout_microseconds?).ok()?;
    Instant::now().checked_add(Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_words_come_in_both_space_conventions() {
        assert_eq!(bad_word_variants("very"), ["very", " very"]);
        assert_eq!(bad_word_variants(" very"), [" very", "very"]);
    }
}
