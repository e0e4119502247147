//! Phase 2 of validation: a typed request that passed the rules → engine requests. Tokenizes the
//! input, checks token ids, the context length and the KV cache, resolves the default length and
//! the seeds. One engine request per input (prompt batch row); its choices are that row's `n`.

use cordial_engine::{BeamKind, BeamParams, EngineRequest, SamplingParams, TokenId};
use cordial_grammar::GrammarCompiler;

use super::controls;
use super::rules::{Limits, MAX_N};
use crate::error::{Flavor, ValidationError};
use crate::protocol::{CompletionRequest, Prompt, Seed, TokenInput};

/// OpenAI's default `max_tokens`.
pub const OPENAI_DEFAULT_MAX_TOKENS: usize = 16;

/// What validation needs from the loaded model.
pub struct ModelInfo<'a> {
    pub limits: Limits,
    /// The model's end-of-generation set (what llama.cpp treats as end of generation).
    pub eos_tokens: &'a [TokenId],
    /// Text → ids, special tokens parsed; with `true`, BOS added as the model wants (prompts),
    /// with `false` never (phrases such as `bad_words`).
    pub encode: &'a (dyn Fn(&str, bool) -> Vec<TokenId> + Sync),
    /// Compiles `response_format` grammars over this model's vocabulary (`None`: structured
    /// output is refused).
    pub grammar: Option<&'a GrammarCompiler>,
}

/// One input of the request with the name of the field it came from.
pub(crate) struct Inputs {
    pub param: &'static str,
    pub rows: Vec<Vec<TokenId>>,
}

fn err(param: &str, msg: String) -> ValidationError {
    ValidationError::new(param, msg)
}

fn checked_ids(
    param: &'static str,
    ids: &[i64],
    vocab: usize,
) -> Result<Vec<TokenId>, ValidationError> {
    ids.iter()
        .map(|&t| {
            if t >= 0 && (t as u64) < vocab as u64 {
                Ok(t as TokenId)
            } else {
                Err(err(
                    param,
                    format!("`{param}` contains token id {t}, outside the vocabulary [0, {vocab})"),
                ))
            }
        })
        .collect()
}

/// The token rows of the request (the rules already made sure exactly one of `prompt` and
/// `tokens` is there).
pub(crate) fn inputs(
    req: &CompletionRequest,
    model: &ModelInfo,
) -> Result<Inputs, ValidationError> {
    check_choice_count(req)?;
    let vocab = model.limits.vocab_size;
    let (param, rows) = match (&req.prompt, &req.tokens) {
        (Some(Prompt::Text(s)), _) => ("prompt", vec![(model.encode)(s, true)]),
        (Some(Prompt::Texts(v)), _) => (
            "prompt",
            v.iter().map(|s| (model.encode)(s, true)).collect(),
        ),
        (Some(Prompt::Tokens(ids)), _) => ("prompt", vec![checked_ids("prompt", ids, vocab)?]),
        (Some(Prompt::TokenBatch(b)), _) => (
            "prompt",
            b.iter()
                .map(|ids| checked_ids("prompt", ids, vocab))
                .collect::<Result<_, _>>()?,
        ),
        (None, Some(TokenInput::One(ids))) => ("tokens", vec![checked_ids("tokens", ids, vocab)?]),
        (None, Some(TokenInput::Batch(b))) => (
            "tokens",
            b.iter()
                .map(|ids| checked_ids("tokens", ids, vocab))
                .collect::<Result<_, _>>()?,
        ),
        (None, None) => {
            return Err(err(
                "prompt",
                "either `prompt` or `tokens` is required".into(),
            ))
        }
    };
    if rows.is_empty() {
        return Err(err(param, format!("`{param}` must not be an empty list")));
    }
    if rows.iter().any(Vec::is_empty) {
        return Err(err(
            param,
            format!("`{param}` must contain at least one token"),
        ));
    }
    Ok(Inputs { param, rows })
}

/// Choices generated per input: `best_of` when given (the best `n` of them are returned),
/// else `n`.
pub(crate) fn engine_choices(req: &CompletionRequest) -> usize {
    req.best_of.unwrap_or(1).max(req.n.unwrap_or(1)).max(1) as usize
}

/// Inputs × n must stay within `MAX_N` choices (checked before any tokenization).
fn check_choice_count(req: &CompletionRequest) -> Result<(), ValidationError> {
    let (param, rows) = match (&req.prompt, &req.tokens) {
        (Some(Prompt::Texts(v)), _) => ("prompt", v.len()),
        (Some(Prompt::TokenBatch(b)), _) => ("prompt", b.len()),
        (None, Some(TokenInput::Batch(b))) => ("tokens", b.len()),
        _ => return Ok(()),
    };
    let n = engine_choices(req);
    if rows.saturating_mul(n) > MAX_N as usize {
        let msg = format!(
            "{rows} inputs × n (or best_of) = {n} is more than {MAX_N} choices in one request"
        );
        return Err(err(param, msg));
    }
    Ok(())
}

fn context_error(param: &str, msg: String) -> ValidationError {
    err(param, msg).with_code("context_length_exceeded")
}

/// Which `max_tokens` a request that sets no length gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthDefault {
    /// OpenAI completions: 16 tokens.
    OpenAi,
    /// Friendli completions and chat: the rest of the context.
    Context,
}

impl LengthDefault {
    pub fn of(flavor: Flavor) -> LengthDefault {
        match flavor {
            Flavor::OpenAi => LengthDefault::OpenAi,
            Flavor::Friendli => LengthDefault::Context,
        }
    }
}

/// The field that sets how many choices a request generates.
pub(crate) fn choices_param(req: &CompletionRequest) -> &'static str {
    if req.num_beams.is_some() {
        "num_beams"
    } else if req.best_of.unwrap_or(1) > req.n.unwrap_or(1) {
        "best_of"
    } else {
        "n"
    }
}

/// Sequences a request runs at once: its beams, or its choices.
pub(crate) fn sequences(req: &CompletionRequest) -> usize {
    req.num_beams
        .map_or_else(|| engine_choices(req), |b| b.max(1) as usize)
}

/// The error for `max_new` tokens per choice that the KV cache cannot hold with `req`'s
/// choices (`param`: the field that asked for them).
pub(crate) fn kv_error(
    req: &CompletionRequest,
    param: &str,
    prompt_len: usize,
    max_new: usize,
    limits: &Limits,
) -> ValidationError {
    let (kv, seqs) = (limits.kv, sequences(req));
    let needed = kv.blocks_needed(prompt_len, max_new, seqs, limits.max_context);
    let fit = kv.max_new_tokens(prompt_len, seqs);
    let asks = if seqs > 1 {
        format!(
            "{seqs} sequences (`{}`) of up to {max_new} new tokens",
            choices_param(req)
        )
    } else {
        format!("up to {max_new} new tokens")
    };
    context_error(
        param,
        format!(
            "the KV cache holds {} tokens ({} blocks of {}); the {prompt_len}-token input with {asks} needs {needed} blocks; at most {fit} new tokens fit: lower `max_tokens` or `{}`",
            kv.tokens(),
            kv.blocks,
            kv.block_size,
            choices_param(req)
        ),
    )
}

/// How many tokens to generate after a prompt of `prompt_len` tokens: within the context
/// (prompt + output) and within the KV cache with all the request's choices. Without a length
/// the default applies (16 for OpenAI completions, else the rest of the context), lowered to
/// what the KV cache holds; an explicit length that does not fit is an error naming it.
pub(crate) fn max_new_tokens(
    req: &CompletionRequest,
    prompt_len: usize,
    input_param: &str,
    limits: &Limits,
    default: LengthDefault,
) -> Result<usize, ValidationError> {
    let ctx = limits.max_context;
    if prompt_len >= ctx {
        return Err(context_error(
            input_param,
            format!("the input has {prompt_len} tokens; this model's maximum context length is {ctx} tokens, prompt and output together"),
        ));
    }
    let fit = limits.kv.max_new_tokens(prompt_len, sequences(req));
    let fitting = |param: &str, m: usize| {
        if m > fit {
            Err(kv_error(req, param, prompt_len, m, limits))
        } else {
            Ok(m)
        }
    };
    if let Some(m) = req.max_tokens {
        let m = m as usize;
        if prompt_len + m > ctx {
            return Err(context_error(
                "max_tokens",
                format!("this model's maximum context length is {ctx} tokens; the input has {prompt_len} tokens and `max_tokens` asks for {m} more"),
            ));
        }
        return fitting("max_tokens", m);
    }
    if let Some(t) = req.max_total_tokens {
        let t = t as usize;
        if t > ctx {
            return Err(context_error(
                "max_total_tokens",
                format!("`max_total_tokens` ({t}) exceeds this model's maximum context length of {ctx} tokens"),
            ));
        }
        if t <= prompt_len {
            return Err(context_error(
                "max_total_tokens",
                format!("`max_total_tokens` ({t}) must exceed the input's {prompt_len} tokens"),
            ));
        }
        return fitting("max_total_tokens", t - prompt_len);
    }
    let wanted = match default {
        LengthDefault::OpenAi => OPENAI_DEFAULT_MAX_TOKENS.min(ctx - prompt_len),
        LengthDefault::Context => ctx - prompt_len,
    };
    if fit == 0 {
        return Err(kv_error(req, choices_param(req), prompt_len, 1, limits));
    }
    Ok(wanted.min(fit))
}

/// One seed per choice: a single seed `s` gives `s + j` (mod 2^64) to choice `j`; a list gives
/// one per choice; none: a random base.
pub(crate) fn choice_seeds(
    seed: Option<&Seed>,
    n: usize,
    random: impl FnOnce() -> u64,
) -> Vec<u64> {
    let base = match seed {
        Some(Seed::Many(list)) if list.len() == n && n > 1 => return list.clone(),
        Some(Seed::One(s)) => *s,
        Some(Seed::Many(list)) => list[0],
        None => random(),
    };
    (0..n as u64).map(|j| base.wrapping_add(j)).collect()
}

/// Beam search settings when `num_beams` is present (`num_beams: 1` included).
fn beam_params(req: &CompletionRequest) -> Option<BeamParams> {
    let num_beams = req.num_beams? as usize;
    let kind = match req.beam_search_type.as_deref() {
        Some("NAIVE_SAMPLING") => BeamKind::NaiveSampling,
        Some("STOCHASTIC") => BeamKind::Stochastic,
        _ => BeamKind::Deterministic,
    };
    Some(BeamParams {
        num_beams,
        kind,
        length_penalty: req.length_penalty.unwrap_or(1.0) as f32,
        early_stopping: req.early_stopping.unwrap_or(false),
        pre_normalization: req.beam_compat_pre_normalization.unwrap_or(false),
        no_post_normalization: req.beam_compat_no_post_normalization.unwrap_or(false),
    })
}

/// The engine requests, one per input row.
pub(crate) fn engine_requests(
    req: &CompletionRequest,
    inputs: Inputs,
    model: &ModelInfo,
    default: LengthDefault,
    random: impl FnOnce() -> u64,
) -> Result<Vec<EngineRequest>, ValidationError> {
    let n = engine_choices(req);
    let seeds = choice_seeds(req.seed.as_ref(), n, random);
    let base = controls::base_params(req, model);
    let deadline = controls::deadline(req);
    let forced = controls::forced_rows(req, inputs.rows.len())?;
    let constraint = super::format::constraint(req.response_format.as_ref(), model.grammar)?;
    let requests: Vec<EngineRequest> = inputs
        .rows
        .into_iter()
        .zip(forced)
        .map(|(prompt, forced)| {
            let (max_new, min_new) = controls::lengths(
                req,
                prompt.len(),
                &forced,
                inputs.param,
                &model.limits,
                default,
            )?;
            let params = SamplingParams {
                max_new_tokens: max_new,
                min_new_tokens: min_new,
                forced_tokens: forced,
                ..base.clone()
            };
            let prompt_embeddings = replacements(req, prompt.len(), &model.limits, inputs.param)?;
            Ok(EngineRequest {
                prompt,
                params,
                seeds: seeds.clone(),
                deadline,
                prompt_embeddings,
                constraint: constraint.clone(),
                beam: beam_params(req),
            })
        })
        .collect::<Result<_, ValidationError>>()?;
    if base.output_logits {
        let rows = requests.iter().map(|r| r.params.max_new_tokens * n).sum();
        controls::check_logits_size(rows, model.limits.vocab_size)?;
    }
    Ok(requests)
}

/// `token_index_to_replace` + `embedding_to_replace` (already checked for sizes and values by the
/// rules) as (position, vector) pairs for an input of `len` tokens.
fn replacements(
    req: &CompletionRequest,
    len: usize,
    limits: &Limits,
    input_param: &str,
) -> Result<Vec<(usize, Vec<f32>)>, ValidationError> {
    let (Some(idx), Some(emb)) = (&req.token_index_to_replace, &req.embedding_to_replace) else {
        return Ok(Vec::new());
    };
    let h = limits.hidden_size;
    idx.iter()
        .enumerate()
        .map(|(k, &i)| {
            let i = i as usize;
            if i >= len {
                return Err(ValidationError::new(
                    "token_index_to_replace",
                    format!("index {i} is outside the input (`{input_param}` has {len} tokens)"),
                ));
            }
            Ok((
                i,
                emb[k * h..(k + 1) * h].iter().map(|v| *v as f32).collect(),
            ))
        })
        .collect()
}
