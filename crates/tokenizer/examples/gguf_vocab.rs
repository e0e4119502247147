//! Prints the `tokenizer.*` metadata of a GGUF file (the default model when no path is given):
//! `cargo run -p cordial-tokenizer --example gguf_vocab -- [MODEL.gguf]`.

use cordial_model::gguf::{GgufFile, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => p.into(),
        None => cordial_model::fetch::ensure_default_model()?,
    };
    let gguf = GgufFile::open(&path)?;
    for (key, value) in &gguf.metadata {
        if !key.starts_with("tokenizer.") {
            continue;
        }
        match value {
            Value::Array(items) => println!(
                "{key}: array of {} ({})",
                items.len(),
                items.first().map_or("-", |v| v.type_name())
            ),
            Value::String(s) if s.len() > 200 => println!("{key}: string of {} bytes", s.len()),
            other => println!("{key}: {other:?}"),
        }
    }
    let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
    let types = gguf.get_i64_array("tokenizer.ggml.token_type")?;
    for (id, (text, ty)) in tokens.iter().zip(&types).enumerate() {
        if *ty != 1 {
            println!("token {id} type {ty}: {text:?}");
        }
    }
    Ok(())
}
