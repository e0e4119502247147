//! The tokenizer of a Hugging Face model folder: `tokenizer.json` run by the `tokenizers`
//! crate for encoding; our byte table for decoding (byte-level vocabularies through GPT-2's
//! byte map, SentencePiece-style ones with `▁` as space and `<0xXX>` byte tokens); BOS / EOS
//! and the end-of-generation set from `config.json`, `generation_config.json` and the tokens
//! spelled like an end of turn.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::decoders::DecoderWrapper;

use crate::special::SpecialMatcher;
use crate::vocab::{attr, EOG_TEXTS};
use crate::{byte_table, Algo, TokenId, Tokenizer, TokenizerError};

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

fn json(path: &Path) -> Option<Json> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Token ids of a config key that holds one id or a list of them.
fn ids(v: &Json) -> Vec<TokenId> {
    match v {
        Json::Array(a) => a
            .iter()
            .filter_map(Json::as_u64)
            .map(|i| i as TokenId)
            .collect(),
        v => v.as_u64().map(|i| vec![i as TokenId]).unwrap_or_default(),
    }
}

impl Tokenizer {
    /// Builds the tokenizer of a Hugging Face folder (`tokenizer.json`, with `config.json` and
    /// `generation_config.json` when present for the special ids).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        let path = dir.join("tokenizer.json");
        let tk = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        let vocab = tk.get_vocab(true);
        let n = vocab.values().map(|&i| i as usize + 1).max().unwrap_or(0);
        if n == 0 {
            return Err(invalid(format!("{}: empty vocabulary", path.display())));
        }
        let mut tokens = vec![String::new(); n];
        for (t, &i) in &vocab {
            tokens[i as usize] = t.clone();
        }
        let byte_level = match tk.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => true,
            Some(DecoderWrapper::Sequence(_)) | Some(DecoderWrapper::Metaspace(_)) => false,
            _ => !tokens.iter().any(|t| t.contains(crate::spm::SPACE)),
        };
        let mut attrs = vec![attr::NORMAL; n];
        for (i, t) in tokens.iter().enumerate() {
            if t.is_empty() {
                attrs[i] = attr::UNDEFINED;
            } else if !byte_level && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                attrs[i] = attr::BYTE;
            }
        }
        for (id, added) in tk.get_added_tokens_decoder() {
            if let Some(a) = attrs.get_mut(id as usize) {
                *a = if added.special {
                    attr::CONTROL
                } else {
                    attr::USER_DEFINED
                };
            }
        }
        let config = json(&dir.join("config.json")).unwrap_or(Json::Null);
        let gen = json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
        let text_config = config.get("text_config").cloned().unwrap_or(Json::Null);
        let pick = |k: &str| -> Vec<TokenId> {
            [&gen, &config, &text_config]
                .iter()
                .map(|c| ids(&c[k]))
                .find(|v| !v.is_empty())
                .unwrap_or_default()
                .into_iter()
                .filter(|&i| (i as usize) < n)
                .collect()
        };
        let bos = pick("bos_token_id").first().copied();
        let eos_all = pick("eos_token_id");
        let eos = eos_all.first().copied();
        let mut eog: std::collections::BTreeSet<TokenId> = eos_all.into_iter().collect();
        for (i, t) in tokens.iter().enumerate() {
            if EOG_TEXTS.contains(&t.as_str()) {
                eog.insert(i as TokenId);
                attrs[i] |= attr::CONTROL;
            }
        }
        // Whether the post-processor adds BOS (or EOS) to an encoding with special tokens.
        let probe = |special: bool| {
            tk.encode_fast("a", special)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        };
        let (with, without) = (probe(true), probe(false));
        let add_bos = with.len() > without.len() && with.first() != without.first();
        let add_eos = with.len() > without.len() && with.last() != without.last();
        let (bytes, offsets) = byte_table(&tokens, &attrs, !byte_level)?;
        let chat_template = hf_chat_template(dir);
        Ok(Tokenizer {
            algo: Algo::Hf(Box::new(tk)),
            specials: SpecialMatcher::new(std::iter::empty()),
            tokens,
            attrs,
            bytes,
            offsets,
            pre_name: "tokenizer.json".into(),
            bos,
            eos,
            add_bos,
            add_eos,
            eog: eog.into_iter().collect(),
            chat_template,
        })
    }
}

/// The folder's chat template: `tokenizer_config.json`'s `chat_template` (a string, or the
/// `default` entry of a list of named templates), else `chat_template.jinja`.
fn hf_chat_template(dir: &std::path::Path) -> Option<String> {
    let config = json(&dir.join("tokenizer_config.json")).unwrap_or(Json::Null);
    match &config["chat_template"] {
        Json::String(s) => return Some(s.clone()),
        Json::Array(list) => {
            let named = list
                .iter()
                .find(|t| t["name"] == "default")
                .or_else(|| list.first());
            if let Some(s) = named.and_then(|t| t["template"].as_str()) {
                return Some(s.to_owned());
            }
        }
        _ => {}
    }
    std::fs::read_to_string(dir.join("chat_template.jinja")).ok()
}
