//! Wire request → engine requests. Every 4xx is decided here, before any work starts:
//! 1. `parse`: JSON, object, flavor (400 vs 422), dialect, model name (404), field types;
//! 2. `rules`: the tables of ranges, invalid combinations and not-yet-supported fields;
//! 3. `build`: tokenization, token ids, context length, defaults, seeds.

mod build;
mod chat;
mod controls;
mod format;
mod parse;
mod rules;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_controls;

pub use build::{LengthDefault, ModelInfo, OPENAI_DEFAULT_MAX_TOKENS};
pub use chat::{chat_request, parse_chat_body, ChatBody};
pub use controls::{LogprobMode, MAX_OUTPUT_LOGITS};
pub use parse::{parse_request, Dialect, ParsedRequest, STREAM_FORMAT_HEADER};
pub use rules::{Limits, MAX_LOGPROBS, MAX_N};

use cordial_engine::EngineRequest;

use crate::error::{ApiError, Flavor, ValidationError};
use crate::protocol::CompletionRequest;

/// How a request wants its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseMode {
    /// One JSON body.
    Json,
    /// Legacy SSE (`token_sampled` … `complete`).
    Legacy,
    /// Current SSE (OpenAI chunks, `[DONE]`), with a usage chunk when `include_usage`.
    Current { include_usage: bool },
}

/// A fully validated request, ready to submit.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    /// The model name to report.
    pub model: String,
    pub flavor: Flavor,
    pub mode: ResponseMode,
    /// Choices generated per input (`best_of`, else `n`); choice index = input index × n + j.
    pub n: usize,
    /// Choices returned per input (`n`): the `keep` of each input's `n` with the highest
    /// cumulative log-probability when `best_of` > `n`.
    pub keep: usize,
    /// One per input (prompt batch row), in order.
    pub requests: Vec<EngineRequest>,
    /// Stop phrases, matched in each choice's text by the server and cut from it.
    pub stop: Vec<String>,
    /// What `choices[i].logprobs` reports.
    pub logprobs: LogprobMode,
    /// Whether `choices[i].logits` is reported.
    pub logits: bool,
    /// `echo`: each choice's text (and logprobs) start with its prompt's.
    pub echo: bool,
}

/// Runs the rule tables over a typed request: the first failing row is the error.
pub fn check_rules(req: &CompletionRequest, limits: &Limits) -> Result<(), ValidationError> {
    for rule in rules::RULES {
        if let Some(message) = (rule.check)(req, limits) {
            return Err(ValidationError::new(rule.param, message));
        }
    }
    for row in rules::UNSUPPORTED {
        if (row.is_set)(req) {
            let message = match row.message {
                Some(m) => m.to_owned(),
                None => format!("`{}` is not supported yet", row.param),
            };
            return Err(ValidationError::new(row.param, message));
        }
    }
    Ok(())
}

/// Phases 2 and 3 over a parsed request. `random` supplies the seed base when none is given.
pub fn validate(
    parsed: ParsedRequest,
    model: &ModelInfo,
    random: impl FnOnce() -> u64,
) -> Result<ValidRequest, ApiError> {
    let ParsedRequest {
        req,
        flavor,
        dialect,
        length_default,
        model: name,
    } = parsed;
    let invalid = |v| ApiError::Invalid(v, flavor);
    check_rules(&req, &model.limits).map_err(invalid)?;
    let inputs = build::inputs(&req, model).map_err(invalid)?;
    let requests =
        build::engine_requests(&req, inputs, model, length_default, random).map_err(invalid)?;
    let mode = match (req.stream.unwrap_or(false), dialect) {
        (false, _) => ResponseMode::Json,
        (true, Dialect::Legacy) => ResponseMode::Legacy,
        (true, Dialect::Current) => ResponseMode::Current {
            include_usage: req.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true),
        },
    };
    Ok(ValidRequest {
        model: name,
        flavor,
        mode,
        n: build::engine_choices(&req),
        keep: req.n.unwrap_or(1) as usize,
        requests,
        stop: rules::stop_phrases(&req),
        logprobs: LogprobMode::of(&req),
        logits: req.include_output_logits == Some(true),
        echo: req.echo == Some(true),
    })
}
