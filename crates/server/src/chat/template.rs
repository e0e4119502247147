//! The chat template, compiled once at load and rendered per request.
//!
//! The environment follows what Hugging Face `transformers` (and so vLLM) use to render these
//! templates: `trim_blocks` and `lstrip_blocks` on, loop controls, `raise_exception(msg)`, a
//! `tojson` that writes JSON as Python's `json.dumps` does (no HTML escaping, `", "` and `": "`
//! separators), `strftime_now(format)` (UTC), and Python string/dict/list methods (`.strip()`,
//! `.startswith()`, `.items()`, ...). The template sees `messages`, `add_generation_prompt`, `bos_token` and `eos_token`
//! (the texts of the model's BOS/EOS tokens, as llama.cpp and vLLM provide them), plus any
//! `chat_template_kwargs` of the request.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::{Map, Value as Json};

use super::pyjson;

const NAME: &str = "chat_template";

/// Why a template cannot be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// A compiled chat template with the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    // Output is never ASCII-escaped (Python's ensure_ascii=False, what `transformers` passes).
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(pyjson::dumps(&json, indent)))
}

impl ChatTemplate {
    /// Compiles `source`; `bos`/`eos` are the texts of the model's BOS/EOS tokens ("" if none).
    pub fn new(source: &str, bos: &str, eos: &str) -> Result<ChatTemplate, TemplateError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", super::strftime::strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| TemplateError(format!("the chat template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_owned(),
            eos: eos.to_owned(),
        })
    }

    /// Renders `messages` (a JSON list of message objects). `extra` (the request's
    /// `chat_template_kwargs`) adds variables; it cannot replace the four the server sets.
    pub fn render(
        &self,
        messages: &Json,
        add_generation_prompt: bool,
        extra: &Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let mut ctx = extra.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        ctx.insert("bos_token".into(), self.bos.clone().into());
        ctx.insert("eos_token".into(), self.eos.clone().into());
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| TemplateError(e.to_string()))?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| {
            let detail = match e.kind() {
                ErrorKind::InvalidOperation => e.detail().unwrap_or("").to_owned(),
                _ => e.to_string(),
            };
            TemplateError(format!(
                "the chat template failed on these messages: {detail}"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_with_generation_prompt_and_special_tokens() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        let msgs = json!([{"role": "user", "content": " hi "}]);
        assert_eq!(
            t.render(&msgs, true, &Map::new()).unwrap(),
            "<s><user>hi\n<assistant></s>"
        );
        assert_eq!(
            t.render(&msgs, false, &Map::new()).unwrap(),
            "<s><user>hi\n</s>"
        );
    }

    #[test]
    fn raise_exception_and_syntax_errors_are_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok",
            "",
            "",
        )
        .unwrap();
        let err = t
            .render(
                &json!([{"role": "assistant", "content": "x"}]),
                true,
                &Map::new(),
            )
            .unwrap_err();
        assert!(err.0.contains("first must be user"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }

    #[test]
    fn python_methods_tojson_and_kwargs() {
        let t = ChatTemplate::new(
            "{{ messages[0].content.strip().upper() }}|{{ messages | tojson }}|{{ flag }}",
            "",
            "",
        )
        .unwrap();
        let mut extra = Map::new();
        extra.insert("flag".into(), json!("on"));
        extra.insert("messages".into(), json!("ignored"));
        let out = t
            .render(&json!([{"role": "user", "content": " a<b "}]), true, &extra)
            .unwrap();
        assert_eq!(out, r#"A<B|[{"role": "user", "content": " a<b "}]|on"#);
        let t = ChatTemplate::new("{{ strftime_now('%Y') | length }}", "", "").unwrap();
        assert_eq!(t.render(&json!([]), true, &Map::new()).unwrap(), "4");
    }
}
