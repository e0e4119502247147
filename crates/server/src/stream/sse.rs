//! The two SSE dialects (legacy: `token_sampled` … `complete`, no `[DONE]`; current: OpenAI
//! chunks with `token`, then `[DONE]`): outputs → `data: <one-line JSON>\n\n` events.

use super::generation::{ChoiceResult, Output};
use crate::json::sse_event;
use crate::protocol::{
    ChunkChoice, ChunkError, CompletionChunk, LegacyChoice, LegacyComplete, LegacyError,
    LegacyTokenSampled, LogprobsWire,
};

/// The end marker of the current dialect.
pub const DONE: &str = "data: [DONE]\n\n";

/// Identity shared by every chunk of one current-dialect stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// Which dialect to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseDialect {
    Legacy,
    Current {
        meta: StreamMeta,
        include_usage: bool,
    },
}

impl SseDialect {
    /// The bytes for one output (`None`: nothing to send for it).
    pub fn render(&self, out: &Output) -> Option<String> {
        match self {
            SseDialect::Legacy => legacy_event(out),
            SseDialect::Current {
                meta,
                include_usage,
            } => Some(current_event(out, meta, *include_usage)),
        }
    }
}

fn legacy_choice(c: &ChoiceResult) -> LegacyChoice {
    LegacyChoice {
        index: c.index,
        seed: c.seed,
        text: c.text.clone(),
        tokens: c.tokens.clone(),
        finish_reason: c.finish_reason,
        logprobs: c.logprobs.clone(),
        logits: c.logits.clone(),
    }
}

/// Legacy: `token_sampled` per token, one `complete` at the end (no `[DONE]`), or an `error`.
pub fn legacy_event(out: &Output) -> Option<String> {
    match out {
        Output::Token {
            index,
            token,
            text,
            logprobs,
            logits,
        } => {
            let (logprob, logprobs) = match logprobs {
                Some(LogprobsWire::Floats(v)) => (v.first().copied(), None),
                other => (None, other.as_ref()),
            };
            Some(sse_event(&LegacyTokenSampled {
                event: "token_sampled",
                index: *index,
                text,
                token: *token,
                logprob,
                logprobs,
                logits: logits.as_deref(),
            }))
        }
        Output::ChoiceDone { .. } | Output::Echo { .. } => None,
        Output::Done { choices, usage } => {
            let choices: Vec<LegacyChoice> = choices.iter().map(legacy_choice).collect();
            Some(sse_event(&LegacyComplete {
                event: "complete",
                choices: &choices,
                usage: *usage,
            }))
        }
        Output::Failed(e) => Some(sse_event(&LegacyError {
            event: "error",
            error: &e.detail(),
        })),
    }
}

/// Current: a chunk per token (with `token`), a finish chunk per choice (`text: ""`), a usage
/// chunk when asked, then `[DONE]`; an error is `{"error":…}` then `[DONE]`.
pub fn current_event(out: &Output, meta: &StreamMeta, include_usage: bool) -> String {
    let chunk = |choices, usage| {
        sse_event(&CompletionChunk {
            id: &meta.id,
            object: "text_completion",
            created: meta.created,
            model: &meta.model,
            choices,
            usage,
        })
    };
    match out {
        Output::Token {
            index,
            token,
            text,
            logprobs,
            logits,
        } => chunk(
            vec![ChunkChoice {
                index: *index,
                text,
                token: Some(*token),
                finish_reason: None,
                logprobs: logprobs.as_ref(),
                logits: logits.as_deref(),
            }],
            None,
        ),
        Output::Echo {
            index,
            text,
            logprobs,
        } => chunk(
            vec![ChunkChoice {
                index: *index,
                text,
                token: None,
                finish_reason: None,
                logprobs: logprobs.as_ref(),
                logits: None,
            }],
            None,
        ),
        Output::ChoiceDone { index, reason } => chunk(
            vec![ChunkChoice {
                index: *index,
                text: "",
                token: None,
                finish_reason: Some(*reason),
                logprobs: None,
                logits: None,
            }],
            None,
        ),
        Output::Done { usage, .. } => {
            let usage_chunk = if include_usage {
                chunk(Vec::new(), Some(*usage))
            } else {
                String::new()
            };
            usage_chunk + DONE
        }
        Output::Failed(e) => sse_event(&ChunkError { error: &e.detail() }) + DONE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ApiError, Flavor, ValidationError};
    use crate::protocol::{FinishReasonWire, Usage};

    fn done() -> Output {
        Output::Done {
            choices: vec![ChoiceResult {
                index: 0,
                seed: 6410528593216713765,
                text: "This is\u{e9}".into(),
                tokens: vec![2028, 374, 9],
                finish_reason: Some(FinishReasonWire::Length),
                logprobs: None,
                logits: None,
                cum_logprob: 0.0,
            }],
            usage: Usage::new(8, 3),
        }
    }

    fn token(text: &str, token: u32) -> Output {
        Output::Token {
            index: 0,
            token,
            text: text.into(),
            logprobs: None,
            logits: None,
        }
    }

    fn meta() -> StreamMeta {
        StreamMeta {
            id: "cmpl-1".into(),
            created: 1733382157,
            model: "my-model".into(),
        }
    }

    #[test]
    fn legacy_exact_bytes() {
        let outs = [
            token("This", 2028),
            token(" is", 374),
            token("\u{e9}", 9),
            Output::ChoiceDone {
                index: 0,
                reason: FinishReasonWire::Length,
            },
            done(),
        ];
        let all: String = outs.iter().filter_map(legacy_event).collect();
        assert_eq!(
            all,
            concat!(
                "data: {\"event\":\"token_sampled\",\"index\":0,\"text\":\"This\",\"token\":2028}\n\n",
                "data: {\"event\":\"token_sampled\",\"index\":0,\"text\":\" is\",\"token\":374}\n\n",
                "data: {\"event\":\"token_sampled\",\"index\":0,\"text\":\"\\u00e9\",\"token\":9}\n\n",
                "data: {\"event\":\"complete\",\"choices\":[{\"index\":0,\"seed\":6410528593216713765,",
                "\"text\":\"This is\\u00e9\",\"tokens\":[2028,374,9],\"finish_reason\":\"length\"}],",
                "\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3,\"total_tokens\":11}}\n\n",
            )
        );
        assert!(!all.contains("[DONE]"));
    }

    #[test]
    fn current_exact_bytes_with_usage() {
        let d = SseDialect::Current {
            meta: meta(),
            include_usage: true,
        };
        let outs = [
            token(" such", 1778),
            Output::ChoiceDone {
                index: 0,
                reason: FinishReasonWire::Stop,
            },
            done(),
        ];
        let all: String = outs.iter().filter_map(|o| d.render(o)).collect();
        let head = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1733382157,\"model\":\"my-model\",";
        let expected = [
            format!("{head}\"choices\":[{{\"index\":0,\"text\":\" such\",\"token\":1778,\"finish_reason\":null,\"logprobs\":null}}],\"usage\":null}}\n\n"),
            format!("{head}\"choices\":[{{\"index\":0,\"text\":\"\",\"finish_reason\":\"stop\",\"logprobs\":null}}],\"usage\":null}}\n\n"),
            format!("{head}\"choices\":[],\"usage\":{{\"prompt_tokens\":8,\"completion_tokens\":3,\"total_tokens\":11}}}}\n\n"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat();
        assert_eq!(all, expected);
    }

    #[test]
    fn current_without_usage_ends_with_done_only() {
        assert_eq!(current_event(&done(), &meta(), false), "data: [DONE]\n\n");
    }

    #[test]
    fn mid_stream_errors() {
        let e = Output::Failed(ApiError::Internal("boom".into()));
        assert_eq!(
            legacy_event(&e).unwrap(),
            "data: {\"event\":\"error\",\"error\":{\"message\":\"internal error: boom\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n"
        );
        let v = ValidationError::new("max_tokens", "too long").with_code("context_length_exceeded");
        let e = Output::Failed(ApiError::Invalid(v, Flavor::OpenAi));
        assert_eq!(
            current_event(&e, &meta(), true),
            "data: {\"error\":{\"message\":\"too long\",\"type\":\"invalid_request_error\",\"param\":\"max_tokens\",\"code\":\"context_length_exceeded\"}}\n\ndata: [DONE]\n\n"
        );
    }
}
