//! `POST /v1/chat/completions` wire types: the chat-only request fields (the rest of a chat
//! request is read as a completions request), the response and the stream chunks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::response::{FinishReasonWire, Usage};

/// The fields a chat request has beyond (or instead of) a completions request.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ChatFields {
    pub messages: Option<Vec<Map<String, Value>>>,
    /// Chat `logprobs` is a switch; `top_logprobs` (0–20) is the number of alternatives.
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// OpenAI's newer name for `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// vLLM extension (default true): end the prompt with the assistant turn's header.
    pub add_generation_prompt: Option<bool>,
    /// vLLM extension: extra variables for the chat template.
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

/// Chat-only keys, taken out before the rest is read as a completions request.
pub const CHAT_KEYS: &[&str] = &[
    "messages",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
    "add_generation_prompt",
    "chat_template_kwargs",
];

/// Keys of OpenAI's chat API (or vLLM's) that this server does not implement: rejected when set
/// (non-null and not empty/false).
pub const CHAT_UNSUPPORTED: &[&str] = &[
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
    "continue_final_message",
];

/// Completions keys that have no meaning in a chat request: rejected when set.
pub const NOT_CHAT_KEYS: &[&str] = &[
    "prompt",
    "tokens",
    "echo",
    "suffix",
    "best_of",
    "include_output_logprobs",
    "include_output_logits",
    "forced_output_tokens",
    "token_index_to_replace",
    "embedding_to_replace",
];

/// `message` of a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatMessageOut {
    /// Always `"assistant"`.
    pub role: &'static str,
    pub content: String,
}

/// One token of chat `logprobs.content`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// `choices[i].logprobs` of a chat response or chunk.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReasonWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `"chat.completion"`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

/// `delta` of a chat chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunkChoice<'a> {
    pub index: usize,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReasonWire>,
}

/// One `chat.completion.chunk` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatChunk<'a> {
    pub id: &'a str,
    /// Always `"chat.completion.chunk"`.
    pub object: &'static str,
    pub created: u64,
    pub model: &'a str,
    pub choices: Vec<ChatChunkChoice<'a>>,
    /// `null` except in the final usage chunk.
    pub usage: Option<Usage>,
}
