//! Start-up steps of `cordial serve` that the binary's flags feed: fetching the default model
//! with its progress logged, reading `--chat-template`, and turning a loaded model into a
//! [`Serving`] (engine, grammar compiler, chat template) with its limits logged.

use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context};
use cordial_engine::{EngineConfig, EngineHandle};
use cordial_grammar::{GrammarCompiler, GrammarLimits};
use cordial_model::fetch::{default_model_path, ensure_default_model};

use crate::runner::{LoadedModel, BLOCK_SIZE};
use crate::state::{chat_template, Serving};

/// `--chat-template FILE|STRING`: the file's text when the argument names a file, else the
/// argument itself. An argument without template syntax that names no file is an error (a
/// mistyped path would otherwise become a template that prints it).
pub fn chat_template_source(arg: &str) -> anyhow::Result<String> {
    let path = Path::new(arg);
    if path.is_file() {
        return std::fs::read_to_string(path)
            .with_context(|| format!("reading the chat template {}", path.display()));
    }
    if !arg.contains("{{") && !arg.contains("{%") {
        bail!("--chat-template: `{arg}` is neither a file nor a template (no `{{{{` or `{{%`)");
    }
    Ok(arg.to_owned())
}

/// The default model's path, fetched when missing. With `json_logs` the fetch runs as
/// `cordial fetch-model` in a child process whose output (pip's progress included) is logged
/// line by line, so that stderr stays one JSON object per line; otherwise it goes to stderr
/// as it comes.
pub fn fetch_default_model(json_logs: bool) -> anyhow::Result<PathBuf> {
    let path = default_model_path()?;
    if path.is_file() || !json_logs {
        return Ok(ensure_default_model()?);
    }
    let exe = std::env::current_exe().context("finding the cordial binary")?;
    let mut child = Command::new(exe)
        .arg("fetch-model")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `cordial fetch-model`")?;
    let stdout = child.stdout.take().context("the child's stdout")?;
    let stderr = child.stderr.take().context("the child's stderr")?;
    let out = std::thread::spawn(move || log_lines(stdout));
    log_lines(stderr);
    let _ = out.join();
    let status = child.wait().context("waiting for `cordial fetch-model`")?;
    if !status.success() || !path.is_file() {
        bail!("fetching the default model failed ({status}); see the log lines above");
    }
    Ok(path)
}

/// Logs each line of a child's output (target `cordial::fetch`).
fn log_lines(r: impl Read) {
    let mut lines = TerminalLines::default();
    let log = |line: String| tracing::info!(target: "cordial::fetch", "{line}");
    for byte in BufReader::new(r).bytes() {
        let Ok(byte) = byte else { break };
        if let Some(line) = lines.push(byte) {
            log(line);
        }
    }
    if let Some(line) = lines.finish() {
        log(line);
    }
}

/// Output meant for a terminal → the lines it ends up showing: `\n` ends a line, a lone `\r`
/// starts it over (progress bars redraw that way), so only a bar's last state is kept. Empty
/// lines are dropped.
#[derive(Default)]
struct TerminalLines {
    line: Vec<u8>,
    /// A `\r` was read: the next byte other than `\n` starts the line over.
    carriage: bool,
}

impl TerminalLines {
    fn push(&mut self, byte: u8) -> Option<String> {
        match byte {
            b'\n' => {
                self.carriage = false;
                self.take()
            }
            b'\r' => {
                self.carriage = true;
                None
            }
            _ => {
                if std::mem::take(&mut self.carriage) {
                    self.line.clear();
                }
                self.line.push(byte);
                None
            }
        }
    }

    fn finish(&mut self) -> Option<String> {
        self.take()
    }

    fn take(&mut self) -> Option<String> {
        let line = String::from_utf8_lossy(&std::mem::take(&mut self.line))
            .trim()
            .to_owned();
        (!line.is_empty()).then_some(line)
    }
}

/// A loaded model, running: its engine, grammar compiler and chat template (`custom`: the
/// `--chat-template` source, else the model's own). Logs the limits that apply to requests.
pub fn serving(
    loaded: LoadedModel,
    config: EngineConfig,
    custom_template: Option<&str>,
) -> anyhow::Result<Serving> {
    let limits = loaded.limits;
    let flag = limits
        .flag
        .map_or_else(|| "unset".to_owned(), |m| m.to_string());
    tracing::info!(
        "sequences of up to {} tokens (prompt + output): model context {}, --max-model-len {flag}, \
         KV cache {} tokens ({} blocks of {BLOCK_SIZE})",
        loaded.max_context,
        limits.model,
        limits.kv_tokens,
        limits.kv_tokens / BLOCK_SIZE,
    );
    if limits.kv_bound() {
        let (what, len) = match limits.flag {
            Some(f) if f < limits.model => ("--max-model-len", f),
            _ => ("the model's context", limits.model),
        };
        tracing::warn!(
            "the KV cache (--kv-cache-tokens, {} tokens) is smaller than {what} ({len} tokens): \
             requests are limited to {} tokens; raise --kv-cache-tokens to serve longer ones",
            limits.kv_tokens,
            loaded.max_context
        );
    }
    let chat = chat_template(&loaded.tokenizer, custom_template);
    match (&chat, custom_template) {
        (Err(e), Some(_)) => bail!("--chat-template: {e}"),
        (Err(e), None) => tracing::warn!("chat completions unavailable: {e}"),
        (Ok(_), _) => {}
    }
    let engine = EngineHandle::spawn(loaded.executor, config);
    let started = std::time::Instant::now();
    let grammar = GrammarCompiler::new(
        loaded.tokenizer.clone(),
        loaded.vocab_size,
        GrammarLimits::default(),
    )
    .context("building the grammar vocabulary")?;
    tracing::info!(took = ?started.elapsed(), "structured output ready");
    Ok(Serving {
        chat,
        engine,
        tokenizer: loaded.tokenizer,
        max_context: loaded.max_context,
        vocab_size: loaded.vocab_size,
        hidden_size: loaded.hidden_size,
        grammar: Some(Arc::new(grammar)),
        lora: loaded.lora,
        kv_cache_dtype: loaded.kv.dtype,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> Vec<String> {
        let mut t = TerminalLines::default();
        let mut out: Vec<String> = bytes.iter().filter_map(|b| t.push(*b)).collect();
        out.extend(t.finish());
        out
    }

    #[test]
    fn progress_bars_keep_their_last_state() {
        let got = lines(b"Collecting x\r\n  10%\r  55%\r 100% done\nSaved ./x.whl\n\n\rtail");
        assert_eq!(
            got,
            ["Collecting x", "100% done", "Saved ./x.whl", "tail"],
            "{got:?}"
        );
    }

    #[test]
    fn chat_template_arguments() {
        let dir = cordial_testkit::gguf_writer::temp_path("chat-template");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.jinja");
        std::fs::write(&file, "{{ messages[0].content }}").unwrap();
        let src = chat_template_source(file.to_str().unwrap()).unwrap();
        assert_eq!(src, "{{ messages[0].content }}");
        assert_eq!(
            chat_template_source("{% if x %}y{% endif %}").unwrap(),
            "{% if x %}y{% endif %}"
        );
        let missing = dir.join("missing.jinja");
        let err = chat_template_source(missing.to_str().unwrap()).unwrap_err();
        assert!(err.to_string().contains("neither a file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
