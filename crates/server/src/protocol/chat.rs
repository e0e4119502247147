//! `POST /v1/chat/completions` wire types: the chat-only request fields (the rest of a chat
//! request is read as a completions request, less the fields tagged `NotChat`), the response
//! and the stream chunks.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::fields::wire_fields;
use super::response::{FinishReasonWire, Usage};

wire_fields! {
    /// The fields a chat request has beyond (or instead of) a completions request; the rest of
    /// the body is read as a completions request.
    #[derive(Debug, Default, Clone, Deserialize, utoipa::ToSchema)]
    #[serde(default)]
    pub struct ChatFields {
        /// The conversation, rendered with the model's chat template.
        #[schema(schema_with = messages_schema)]
        pub messages: Option<Vec<Map<String, Value>>>,
        /// Chat `logprobs` is a switch; `top_logprobs` is the number of alternatives.
        pub logprobs: Option<bool>,
        #[schema(minimum = 0, maximum = 20)]
        pub top_logprobs: Option<i64>,
        /// OpenAI's newer name for `max_tokens`.
        #[schema(minimum = 1)]
        pub max_completion_tokens: Option<i64>,
        /// vLLM extension (default true): end the prompt with the assistant turn's header.
        pub add_generation_prompt: Option<bool>,
        /// vLLM extension: extra variables for the chat template.
        #[schema(value_type = Option<Object>)]
        pub chat_template_kwargs: Option<Map<String, Value>>,
    }
}

/// Roles a message may have.
pub const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// `messages`: kept as JSON objects (templates may read any key), described here.
fn messages_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let part = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("type", string().enum_values(Some(["text"])))
        .property("text", string())
        .required("type")
        .required("text");
    let content = OneOfBuilder::new()
        .item(string())
        .item(ArrayBuilder::new().items(part));
    let message = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("role", string().enum_values(Some(ROLES.iter().copied())))
        .property("content", content)
        .property("name", string())
        .required("role")
        .required("content");
    ArrayBuilder::new()
        .items(message)
        .min_items(Some(1))
        .description(Some(
            "The conversation, rendered with the model's chat template.",
        ))
        .build()
}

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

/// `message` of a chat choice.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatMessageOut {
    /// Always `"assistant"`.
    pub role: &'static str,
    pub content: String,
}

/// One token of chat `logprobs.content`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// `choices[i].logprobs` of a chat response or chunk.
#[derive(Debug, Clone, PartialEq, Default, Serialize, utoipa::ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReasonWire>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChatChunkChoice<'a> {
    pub index: usize,
    pub delta: ChatDelta<'a>,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<FinishReasonWire>,
}

/// One `chat.completion.chunk` event.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
