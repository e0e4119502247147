//! The chat shapes of the same outputs: OpenAI `chat.completion.chunk` events (a role chunk per
//! choice first, then `delta.content` per token, a finish chunk per choice, an optional usage
//! chunk, `[DONE]`), and chat `logprobs` built from the completions logprobs object.

use super::generation::Output;
use super::sse::{StreamMeta, DONE};
use crate::json::sse_event;
use crate::protocol::{
    ChatChunk, ChatChunkChoice, ChatDelta, ChatLogprobs, ChatTokenLogprob, ChatTopLogprob,
    ChunkError, LogprobsWire,
};

/// Chat `logprobs.content` from the completions logprobs of the same tokens (`top`
/// alternatives each). `None` for anything but OpenAI's object.
pub fn chat_logprobs(lp: Option<&LogprobsWire>, top: usize) -> Option<ChatLogprobs> {
    let Some(LogprobsWire::OpenAi(o)) = lp else {
        return None;
    };
    let bytes = |list: &[Vec<u8>], i: usize, text: &str| {
        list.get(i)
            .cloned()
            .unwrap_or_else(|| text.as_bytes().to_vec())
    };
    let content = o
        .tokens
        .iter()
        .zip(&o.token_logprobs)
        .zip(&o.top_logprobs)
        .enumerate()
        .map(|(i, ((token, lp), alts))| ChatTokenLogprob {
            token: token.clone(),
            logprob: lp.unwrap_or(f32::NAN),
            bytes: bytes(&o.token_bytes, i, token),
            top_logprobs: alts
                .iter()
                .flat_map(|a| {
                    a.0.iter()
                        .take(top)
                        .enumerate()
                        .map(move |(j, e)| (a, j, e))
                })
                .map(|(a, j, (t, lp))| ChatTopLogprob {
                    token: t.clone(),
                    logprob: *lp,
                    bytes: bytes(&a.1, j, t),
                })
                .collect(),
        })
        .collect();
    Some(ChatLogprobs { content })
}

/// How a chat stream is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatStream {
    pub meta: StreamMeta,
    pub include_usage: bool,
    /// Number of choices (one role chunk each, first).
    pub choices: usize,
    /// `Some(k)`: chunks carry chat logprobs with k alternatives.
    pub logprobs: Option<usize>,
}

impl ChatStream {
    fn chunk(
        &self,
        choices: Vec<ChatChunkChoice<'_>>,
        usage: Option<crate::protocol::Usage>,
    ) -> String {
        sse_event(&ChatChunk {
            id: &self.meta.id,
            object: "chat.completion.chunk",
            created: self.meta.created,
            model: &self.meta.model,
            choices,
            usage,
        })
    }

    /// The first events: `delta: {"role": "assistant", "content": ""}` for each choice.
    pub fn preamble(&self) -> String {
        (0..self.choices)
            .map(|index| {
                let delta = ChatDelta {
                    role: Some("assistant"),
                    content: Some(""),
                };
                let choice = ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![choice], None)
            })
            .collect()
    }

    /// The bytes for one output (`None`: nothing to send for it).
    pub fn render(&self, out: &Output) -> Option<String> {
        let one = |index, content, logprobs, finish_reason| {
            let delta = ChatDelta {
                role: None,
                content,
            };
            vec![ChatChunkChoice {
                index,
                delta,
                logprobs,
                finish_reason,
            }]
        };
        match out {
            Output::Token {
                index,
                text,
                logprobs,
                ..
            } => {
                let lp = self
                    .logprobs
                    .and_then(|k| chat_logprobs(logprobs.as_ref(), k));
                Some(self.chunk(one(*index, Some(text.as_str()), lp, None), None))
            }
            Output::Echo { .. } => None,
            Output::ChoiceDone { index, reason } => {
                Some(self.chunk(one(*index, None, None, Some(*reason)), None))
            }
            Output::Done { usage, .. } => {
                let usage_chunk = if self.include_usage {
                    self.chunk(Vec::new(), Some(*usage))
                } else {
                    String::new()
                };
                Some(usage_chunk + DONE)
            }
            Output::Failed(e) => Some(sse_event(&ChunkError { error: &e.detail() }) + DONE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{FinishReasonWire, OpenAiLogprobs, TopLogprobs, Usage};

    fn stream() -> ChatStream {
        ChatStream {
            meta: StreamMeta {
                id: "chatcmpl-1".into(),
                created: 7,
                model: "m".into(),
            },
            include_usage: true,
            choices: 2,
            logprobs: Some(1),
        }
    }

    #[test]
    fn chunks_in_openai_chat_shape() {
        let s = stream();
        let head =
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","#;
        assert_eq!(
            s.preamble(),
            format!(
                "{head}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n\
                 {head}\"choices\":[{{\"index\":1,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
        );
        let lp = LogprobsWire::OpenAi(OpenAiLogprobs {
            tokens: vec!["Hi".into()],
            token_logprobs: vec![Some(-0.5)],
            top_logprobs: vec![Some(TopLogprobs(
                vec![("Hi".into(), -0.5), ("Yo".into(), -1.0)],
                Vec::new(),
            ))],
            text_offset: vec![0],
            token_bytes: Vec::new(),
        });
        let token = Output::Token {
            index: 1,
            token: 5,
            text: "Hi".into(),
            logprobs: Some(lp),
            logits: None,
        };
        assert_eq!(
            s.render(&token).unwrap(),
            format!("{head}\"choices\":[{{\"index\":1,\"delta\":{{\"content\":\"Hi\"}},\"logprobs\":{{\"content\":[{{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105],\"top_logprobs\":[{{\"token\":\"Hi\",\"logprob\":-0.5,\"bytes\":[72,105]}}]}}]}},\"finish_reason\":null}}],\"usage\":null}}\n\n")
        );
        let done = Output::ChoiceDone {
            index: 0,
            reason: FinishReasonWire::Stop,
        };
        assert_eq!(
            s.render(&done).unwrap(),
            format!("{head}\"choices\":[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"stop\"}}],\"usage\":null}}\n\n")
        );
        let end = Output::Done {
            choices: Vec::new(),
            usage: Usage::new(3, 4),
        };
        assert_eq!(
            s.render(&end).unwrap(),
            format!("{head}\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}}}\n\ndata: [DONE]\n\n")
        );
    }
}
