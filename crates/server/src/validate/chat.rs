//! Chat requests → the completions validation. A chat body is read in two phases:
//! 1. [`parse_chat_body`]: JSON, model name (404), the chat-only fields (types, roles, contents),
//!    and the keys a chat request may not carry;
//! 2. [`chat_request`]: messages rendered with the model's chat template, tokenized, and the
//!    rest of the body read as a completions request with `prompt` = those tokens. From there on
//!    a chat request goes through exactly the completions rules and building (`validate`).
//!
//! Chat requests are OpenAI-flavoured (validation errors are 400) and stream in the current
//! dialect only.

use serde_json::{Map, Value};

use super::build::LengthDefault;
use super::parse::{check_model, decode_fields, Dialect, ParsedRequest};
use super::rules::MAX_LOGPROBS;
use crate::chat::ChatTemplate;
use crate::error::{ApiError, Flavor, ValidationError};
use crate::protocol::{ChatFields, CompletionRequest, Tag, CHAT_UNSUPPORTED, ROLES};

/// A chat body after phase 1.
#[derive(Debug, Clone)]
pub struct ChatBody {
    pub model: String,
    /// Messages with their content as one string each (text parts joined by "\n").
    pub messages: Vec<Value>,
    pub fields: ChatFields,
    /// Everything else: read as a completions request in phase 2.
    pub rest: Map<String, Value>,
}

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(ValidationError::new(param, message), Flavor::OpenAi)
}

fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// A message's content as text: a string, or a list of `{"type": "text", "text": ...}` parts.
fn content_text(i: usize, content: Option<&Value>) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.get("type").and_then(Value::as_str), part.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(invalid(
                            &param,
                            format!("`{param}` text parts need a string `text`"),
                        ))
                    }
                    (kind, _) => {
                        let kind = kind.unwrap_or("(none)");
                        return Err(invalid(
                            &param,
                            format!("`{param}` has a part of type `{kind}`; only `text` parts are supported"),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        None | Some(Value::Null) => Err(invalid(&param, format!("`{param}` is required"))),
        Some(_) => Err(invalid(
            &param,
            format!("`{param}` must be a string or a list of text parts"),
        )),
    }
}

fn check_messages(messages: &[Map<String, Value>]) -> Result<Vec<Value>, ApiError> {
    if messages.is_empty() {
        return Err(invalid("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !ROLES.contains(&role) {
            return Err(invalid(
                &format!("messages[{i}].role"),
                format!("`messages[{i}].role` must be one of {}", ROLES.join(", ")),
            ));
        }
        if m.get("tool_calls").is_some_and(is_set) {
            let param = format!("messages[{i}].tool_calls");
            return Err(invalid(
                &param,
                format!("`{param}`: tool calls are not supported"),
            ));
        }
        let mut m = m.clone();
        m.insert("content".into(), content_text(i, m.get("content"))?.into());
        out.push(Value::Object(m));
    }
    Ok(out)
}

/// Phase 1 (see the module docs). `served` lists the accepted model names, primary first.
pub fn parse_chat_body(body: &[u8], served: &[String]) -> Result<ChatBody, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let model = check_model(&obj, served, Flavor::OpenAi)?;
    if let Some(k) =
        CompletionRequest::tagged(Tag::NotChat).find(|k| obj.get(*k).is_some_and(is_set))
    {
        return Err(invalid(k, format!("`{k}` is not a chat completions field")));
    }
    if let Some(k) = CHAT_UNSUPPORTED
        .iter()
        .find(|k| obj.get(**k).is_some_and(is_set))
    {
        return Err(invalid(k, format!("`{k}` is not supported by this server")));
    }
    let mut chat = Map::new();
    let not_chat = CompletionRequest::tagged(Tag::NotChat);
    let keys = ChatFields::field_names()
        .chain(CHAT_UNSUPPORTED.iter().copied())
        .chain(not_chat);
    for k in keys {
        if let Some(v) = obj.remove(k) {
            chat.insert(k.to_owned(), v);
        }
    }
    let fields = decode_chat_fields(chat)?;
    let messages = match &fields.messages {
        Some(m) => check_messages(m)?,
        None => return Err(invalid("messages", "`messages` is required")),
    };
    Ok(ChatBody {
        model,
        messages,
        fields,
        rest: obj,
    })
}

/// The chat fields, typed; a wrong type is a 400 naming the field.
fn decode_chat_fields(chat: Map<String, Value>) -> Result<ChatFields, ApiError> {
    for (k, v) in &chat {
        let single = Value::Object(Map::from_iter([(k.clone(), v.clone())]));
        if let Err(e) = serde_json::from_value::<ChatFields>(single) {
            return Err(invalid(k, format!("`{k}` has the wrong type: {e}")));
        }
    }
    serde_json::from_value(Value::Object(chat)).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// Phase 2 (see the module docs): `encode(text, add_bos)` is the model's tokenizer, `bos` its
/// BOS text (a template that writes it gets no second one).
pub fn chat_request(
    body: ChatBody,
    template: &ChatTemplate,
    encode: &dyn Fn(&str, bool) -> Vec<u32>,
    bos: Option<&str>,
) -> Result<ParsedRequest, ApiError> {
    let ChatBody {
        model,
        messages,
        fields,
        mut rest,
    } = body;
    let logprobs = chat_logprobs(&fields)?;
    let kwargs = fields.chat_template_kwargs.clone().unwrap_or_default();
    let add_generation_prompt = fields.add_generation_prompt.unwrap_or(true);
    let text = template
        .render(&Value::Array(messages), add_generation_prompt, &kwargs)
        .map_err(|e| invalid("messages", e.0))?;
    let add_bos = !bos.is_some_and(|b| !b.is_empty() && text.starts_with(b));
    let ids = encode(&text, add_bos);
    if ids.is_empty() {
        return Err(invalid(
            "messages",
            "the rendered conversation has no tokens",
        ));
    }
    match (fields.max_completion_tokens, rest.get("max_tokens")) {
        (Some(_), Some(v)) if !v.is_null() => {
            return Err(invalid(
                "max_completion_tokens",
                "give only one of `max_completion_tokens` and `max_tokens`",
            ))
        }
        (Some(m), _) => {
            rest.insert("max_tokens".into(), m.into());
        }
        _ => {}
    }
    rest.insert("prompt".into(), ids.into());
    rest.insert("logprobs".into(), logprobs.map_or(Value::Null, Value::from));
    let req = decode_fields(rest, Flavor::OpenAi)?;
    Ok(ParsedRequest {
        req,
        flavor: Flavor::OpenAi,
        dialect: Dialect::Current,
        // OpenAI's and vLLM's chat default: up to the context, not the completions' 16.
        length_default: LengthDefault::Context,
        model,
    })
}

/// Chat `logprobs` (bool) + `top_logprobs` (0–20) → the completions `logprobs: k`.
fn chat_logprobs(f: &ChatFields) -> Result<Option<usize>, ApiError> {
    if let Some(k) = f.top_logprobs {
        if !(0..=MAX_LOGPROBS).contains(&k) {
            return Err(invalid(
                "top_logprobs",
                format!("`top_logprobs` must be between 0 and {MAX_LOGPROBS}"),
            ));
        }
        if f.logprobs != Some(true) && k > 0 {
            return Err(invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
    }
    Ok((f.logprobs == Some(true)).then(|| f.top_logprobs.unwrap_or(0) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn served() -> Vec<String> {
        vec!["m".into()]
    }

    fn template() -> ChatTemplate {
        ChatTemplate::new(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
            "<s>",
            "</s>",
        )
        .unwrap()
    }

    /// One token per character.
    fn encode(text: &str, bos: bool) -> Vec<u32> {
        let mut v: Vec<u32> = if bos { vec![1] } else { vec![] };
        v.extend(text.chars().map(|c| c as u32 % 100 + 2));
        v
    }

    fn run(body: Value) -> Result<ParsedRequest, ApiError> {
        let b = parse_chat_body(body.to_string().as_bytes(), &served())?;
        chat_request(b, &template(), &encode, Some("<s>"))
    }

    fn param(e: ApiError) -> (u16, Option<String>) {
        (e.status().as_u16(), e.detail().param)
    }

    #[test]
    fn messages_become_the_prompt_and_chat_defaults_apply() {
        let p = run(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        let rendered = "<user>hi<assistant>";
        assert_eq!(
            p.req.prompt,
            Some(crate::protocol::Prompt::Tokens(
                encode(rendered, true).into_iter().map(i64::from).collect()
            ))
        );
        assert_eq!(p.req.max_tokens, None);
        assert_eq!(p.length_default, LengthDefault::Context);
        assert_eq!(p.flavor, Flavor::OpenAi);
        assert_eq!(p.req.logprobs, None);
        let p = run(
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
            {"type": "text", "text": "b"}]}], "add_generation_prompt": false,
            "max_completion_tokens": 3, "logprobs": true, "top_logprobs": 2}),
        )
        .unwrap();
        assert_eq!(p.req.max_tokens, Some(3));
        assert_eq!(p.req.logprobs, Some(2));
        let Some(crate::protocol::Prompt::Tokens(ids)) = p.req.prompt else {
            panic!()
        };
        assert_eq!(ids.len(), 1 + "<user>a\nb".len());
    }

    #[test]
    fn bad_chat_requests_are_400_naming_the_field() {
        let cases = [
            (json!({}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "prompt": "y"}),
                "prompt",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "echo": true}),
                "echo",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}),
                "top_logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "logprobs": 3}),
                "logprobs",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                "max_completion_tokens": 2}),
                "max_completion_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
                "temperature",
            ),
        ];
        for (body, field) in cases {
            let err = run(body.clone()).unwrap_err();
            assert_eq!(param(err), (400, Some(field.to_owned())), "{body}");
        }
        let err = run(json!({"model": "other", "messages": []})).unwrap_err();
        assert_eq!(err.status(), 404);
        // Unset-looking values of rejected keys are fine.
        assert!(run(
            json!({"messages": [{"role": "user", "content": "x"}], "tools": [],
            "echo": false, "prompt": null})
        )
        .is_ok());
    }

    #[test]
    fn a_template_that_writes_bos_gets_no_second_one() {
        let t =
            ChatTemplate::new("{{ bos_token }}{{ messages[0].content }}", "<s>", "</s>").unwrap();
        let b = parse_chat_body(
            br#"{"messages":[{"role":"user","content":"x"}]}"#,
            &served(),
        )
        .unwrap();
        let p = chat_request(b, &t, &encode, Some("<s>")).unwrap();
        let Some(crate::protocol::Prompt::Tokens(ids)) = p.req.prompt else {
            panic!()
        };
        assert_eq!(ids.len(), "<s>x".len(), "no BOS id added");
    }
}
