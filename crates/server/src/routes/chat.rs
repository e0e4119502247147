//! `POST /v1/chat/completions`: the chat wire shape of the generation pipeline
//! (`generate.rs`). Messages are rendered with the model's chat template (or `--chat-template`)
//! and read as a completions request; the answer is one `chat.completion` body or
//! `chat.completion.chunk` events. Generation ends at the model's end-of-turn token
//! (`<|im_end|>` and the rest of its end-of-generation set).

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::generate::{SseWriter, WireShape};
use crate::error::{ApiError, Flavor, ValidationError};
use crate::protocol::{ChatChoice, ChatCompletionResponse, ChatMessageOut, RenderedPrompt, Usage};
use crate::state::AppState;
use crate::stream::{chat_logprobs, ChatStream, ChoiceResult, StreamMeta};
use crate::util::random_u64;
use crate::validate::{
    chat_request, parse_chat_body, validate, LogprobMode, ResponseMode, ValidRequest,
};

/// The chat wire shape.
#[derive(Debug, Clone, Copy)]
pub struct Chat;

/// Chat `top_logprobs` when the request asked for `logprobs` (chat requests carry it as the
/// completions `logprobs: k`).
fn top_logprobs(valid: &ValidRequest) -> Option<usize> {
    match valid.logprobs {
        LogprobMode::Top(k) => Some(k),
        LogprobMode::None | LogprobMode::Floats => None,
    }
}

impl Chat {
    /// Chat fields, template, then the completions rules; also the rendered conversation.
    fn validate_rendered(
        &self,
        state: &AppState,
        body: &[u8],
    ) -> Result<(ValidRequest, String), ApiError> {
        let chat = parse_chat_body(body, state.served_names())?;
        let serving = state.serving().ok_or(ApiError::NotReady)?;
        let template = serving.chat.as_ref().map_err(|e| {
            ApiError::Invalid(ValidationError::new("messages", e.clone()), Flavor::OpenAi)
        })?;
        let tok = &serving.tokenizer;
        // The template's text is what gets tokenized: keep it for the render endpoint.
        let rendered = std::cell::RefCell::new(String::new());
        let encode = |text: &str, bos: bool| {
            text.clone_into(&mut rendered.borrow_mut());
            tok.encode(text, bos)
        };
        let parsed = chat_request(chat, template, &encode, tok.bos_text())?;
        let valid = serving
            .with_model_info(|info| validate(parsed, info, random_u64))
            .map_err(prompt_is_messages)?;
        Ok((valid, rendered.into_inner()))
    }
}

impl WireShape for Chat {
    /// Chat fields, template, then the completions rules.
    fn validate(
        &self,
        state: &AppState,
        _: &HeaderMap,
        body: &[u8],
    ) -> Result<ValidRequest, ApiError> {
        self.validate_rendered(state, body).map(|(valid, _)| valid)
    }

    /// `POST /v1/chat/completions/render`: the conversation's token ids and text.
    fn render(&self, state: &AppState, _: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
        let (valid, text) = self.validate_rendered(state, body)?;
        let token_ids = valid
            .requests
            .first()
            .map(|r| r.prompt.clone())
            .unwrap_or_default();
        Ok(Json(RenderedPrompt {
            request_id: self.response_id(),
            model: valid.model,
            token_ids,
            prompt: Some(text),
        })
        .into_response())
    }

    fn response_id(&self) -> String {
        format!(
            "chatcmpl-{:032x}",
            u128::from(random_u64()) << 64 | u128::from(random_u64())
        )
    }

    fn body(
        &self,
        valid: &ValidRequest,
        meta: StreamMeta,
        choices: Vec<ChoiceResult>,
        usage: Usage,
    ) -> Response {
        let top = top_logprobs(valid);
        let choices = choices
            .into_iter()
            .map(|c| ChatChoice {
                index: c.index,
                logprobs: top.and_then(|k| chat_logprobs(c.logprobs.as_ref(), k)),
                message: ChatMessageOut {
                    role: "assistant",
                    content: c.text,
                },
                finish_reason: c.finish_reason,
            })
            .collect();
        Json(ChatCompletionResponse {
            id: meta.id,
            object: "chat.completion",
            created: meta.created,
            model: meta.model,
            choices,
            usage,
        })
        .into_response()
    }

    fn writer(&self, valid: &ValidRequest, meta: StreamMeta) -> SseWriter {
        let chat = ChatStream {
            meta,
            include_usage: matches!(
                valid.mode,
                ResponseMode::Current {
                    include_usage: true
                }
            ),
            choices: valid.requests.len() * valid.n,
            logprobs: top_logprobs(valid),
        };
        SseWriter {
            preamble: chat.preamble(),
            render: Box::new(move |out| chat.render(out)),
        }
    }
}

/// Errors about the completions `prompt` concern the chat `messages` it was rendered from.
fn prompt_is_messages(e: ApiError) -> ApiError {
    match e {
        ApiError::Invalid(mut v, flavor) if v.param.as_deref() == Some("prompt") => {
            v.param = Some("messages".into());
            v.message = v.message.replace("`prompt`", "the rendered `messages`");
            ApiError::Invalid(v, flavor)
        }
        other => other,
    }
}
