//! Chat completions: the model's own chat template (`tokenizer.chat_template` in the GGUF,
//! Jinja) rendered with minijinja into the prompt that `/v1/chat/completions` completes.

mod pyjson;
mod strftime;
pub mod template;

pub use template::{ChatTemplate, TemplateError};
