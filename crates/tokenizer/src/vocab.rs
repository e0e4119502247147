//! Reading `tokenizer.ggml.*` metadata into a vocabulary: token texts, per-token attributes,
//! special ids, flags, and the end-of-generation set, following llama.cpp's loader
//! (`llama_vocab::impl::load` in src/llama-vocab.cpp).

use std::collections::BTreeMap;

use cordial_model::gguf::Value;

use crate::pre::{self, PreTokenizerSpec};
use crate::{TokenId, TokenizerError};

/// Token attributes (llama.cpp's `llama_token_attr`), as bit flags.
pub(crate) mod attr {
    pub const UNDEFINED: u8 = 0;
    pub const UNKNOWN: u8 = 1 << 0;
    pub const UNUSED: u8 = 1 << 1;
    pub const NORMAL: u8 = 1 << 2;
    pub const CONTROL: u8 = 1 << 3;
    pub const USER_DEFINED: u8 = 1 << 4;
    pub const BYTE: u8 = 1 << 5;

    /// From a `tokenizer.ggml.token_type` value.
    pub fn from_token_type(ty: i64) -> u8 {
        match ty {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => UNDEFINED,
        }
    }
}

/// Texts llama.cpp treats as end of generation (they also become control tokens).
pub(crate) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens that end generation, found by text when their id is not in the
/// metadata: (metadata key, texts).
const FIM_EOG: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

/// gpt-oss: always rendered, as user-defined tokens.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// Everything the tokenizer needs from the metadata.
pub(crate) struct Vocab {
    /// Token texts as stored in the GGUF (byte-level form for normal tokens).
    pub tokens: Vec<String>,
    /// Text → id, for the BPE model.
    pub ids: tokenizers::models::bpe::Vocab,
    pub attrs: Vec<u8>,
    /// Byte-level BPE (`gpt2`): its merges and pre-tokenizer. Empty / None for SentencePiece.
    pub merges: Vec<(String, String)>,
    pub pre_name: String,
    pub pre: Option<PreTokenizerSpec>,
    /// SentencePiece (`llama`): the token scores, and whether a `▁` starts the text.
    pub spm: Option<SpmInfo>,
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub add_bos: bool,
    pub add_eos: bool,
    /// End-of-generation ids, ascending.
    pub eog: Vec<TokenId>,
    /// `tokenizer.chat_template` (Jinja source), when the model has one.
    pub chat_template: Option<String>,
}

/// What a SentencePiece (`tokenizer.ggml.model = llama`) vocabulary adds.
pub(crate) struct SpmInfo {
    pub scores: Vec<f32>,
    pub add_space_prefix: bool,
    pub unknown: Option<TokenId>,
}

/// Typed access to metadata; a key of the wrong type is an error naming it.
struct Meta<'a>(&'a BTreeMap<String, Value>);

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Invalid(msg.into())
}

impl<'a> Meta<'a> {
    fn str(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(invalid(format!(
                "`{key}` has type {}, expected string",
                v.type_name()
            ))),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(invalid(format!(
                "`{key}` has type {}, expected bool",
                v.type_name()
            ))),
        }
    }

    /// A token id; None when absent or out of range (llama.cpp ignores those with a warning).
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<TokenId>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => {
                let id = v.as_i64().ok_or_else(|| {
                    invalid(format!(
                        "`{key}` has type {}, expected integer",
                        v.type_name()
                    ))
                })?;
                Ok(usize::try_from(id)
                    .ok()
                    .filter(|&i| i < n_tokens)
                    .map(|i| i as TokenId))
            }
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, TokenizerError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(invalid(format!(
                "`{key}` has type {}, expected array",
                v.type_name()
            ))),
        }
    }

    fn str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>, TokenizerError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(invalid(format!(
                    "`{key}` holds a {}, expected strings",
                    v.type_name()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn int_array(&self, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .map(|v| {
                v.as_i64().ok_or_else(|| {
                    invalid(format!(
                        "`{key}` holds a {}, expected integers",
                        v.type_name()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

/// Reads and checks the vocabulary.
pub(crate) fn read(metadata: &BTreeMap<String, Value>) -> Result<Vocab, TokenizerError> {
    let meta = Meta(metadata);
    let model = meta
        .str("tokenizer.ggml.model")?
        .ok_or_else(|| invalid("`tokenizer.ggml.model` is missing"))?;
    let is_spm = match model {
        "gpt2" => false,
        "llama" => true,
        _ => {
            let what = match model {
                "bert" => " (WordPiece)",
                "t5" => " (Unigram)",
                _ => "",
            };
            return Err(TokenizerError::Unsupported(format!(
                "tokenizer model `{model}`{what} is not supported (supported: `gpt2`, byte-level BPE; `llama`, SentencePiece)"
            )));
        }
    };
    // SentencePiece ignores `pre` (llama.cpp too).
    let (pre_name, pre) = if is_spm {
        (meta.str("tokenizer.ggml.pre")?.unwrap_or("default"), None)
    } else {
        let pre_name = meta.str("tokenizer.ggml.pre")?.ok_or_else(|| {
            TokenizerError::Unsupported(
                "`tokenizer.ggml.pre` is missing: the pre-tokenizer is unknown".into(),
            )
        })?;
        let pre = pre::lookup(pre_name).ok_or_else(|| {
            TokenizerError::Unsupported(format!(
                "pre-tokenizer `{pre_name}` (tokenizer.ggml.pre) is not supported (supported: {})",
                pre::supported().collect::<Vec<_>>().join(", ")
            ))
        })?;
        (pre_name, Some(pre))
    };

    let token_texts = meta
        .str_array("tokenizer.ggml.tokens")?
        .ok_or_else(|| invalid("`tokenizer.ggml.tokens` is missing"))?;
    let n = token_texts.len();
    if n == 0 {
        return Err(invalid("`tokenizer.ggml.tokens` is empty"));
    }
    if n > u32::MAX as usize {
        return Err(invalid(format!(
            "{n} tokens is more than token ids can hold"
        )));
    }
    let tokens: Vec<String> = token_texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.to_string()
            }
        })
        .collect();
    let mut ids = tokenizers::models::bpe::Vocab::with_capacity(n);
    for (i, t) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(t.clone(), i as TokenId) {
            return Err(invalid(format!(
                "duplicate token {t:?} (ids {first} and {i})"
            )));
        }
    }

    let mut attrs = vec![attr::NORMAL; n];
    if let Some(types) = meta.int_array("tokenizer.ggml.token_type")? {
        if types.len() < n {
            return Err(invalid(format!(
                "`tokenizer.ggml.token_type` has {} entries for {n} tokens",
                types.len()
            )));
        }
        for (a, &ty) in attrs.iter_mut().zip(&types) {
            *a = attr::from_token_type(ty);
        }
    }

    let merge_texts = if is_spm {
        Vec::new()
    } else {
        meta.str_array("tokenizer.ggml.merges")?
            .ok_or_else(|| invalid("`tokenizer.ggml.merges` is missing"))?
    };
    let mut merges = Vec::with_capacity(merge_texts.len());
    for m in merge_texts {
        // Split at the first space after the first byte (a merge's left part may be a space).
        // A merge without one is inert in llama.cpp: skipped (later ranks keep their order).
        if let Some(pos) = m.as_bytes().iter().skip(1).position(|&b| b == b' ') {
            merges.push((m[..pos + 1].to_string(), m[pos + 2..].to_string()));
        }
    }

    let bos = meta.token_id("tokenizer.ggml.bos_token_id", n)?;
    let eos = meta.token_id("tokenizer.ggml.eos_token_id", n)?;
    let eot = meta.token_id("tokenizer.ggml.eot_token_id", n)?;
    let eom = meta.token_id("tokenizer.ggml.eom_token_id", n)?;
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(pre.is_none_or(|p| p.default_add_bos));
    let spm = if is_spm {
        let scores = match meta.array("tokenizer.ggml.scores")? {
            Some(a) => a
                .iter()
                .map(|v| {
                    v.as_f64().map(|x| x as f32).ok_or_else(|| {
                        invalid(format!(
                            "`tokenizer.ggml.scores` holds a {}, expected numbers",
                            v.type_name()
                        ))
                    })
                })
                .collect::<Result<Vec<f32>, _>>()?,
            None => return Err(invalid("`tokenizer.ggml.scores` is missing")),
        };
        if scores.len() < n {
            return Err(invalid(format!(
                "`tokenizer.ggml.scores` has {} entries for {n} tokens",
                scores.len()
            )));
        }
        Some(SpmInfo {
            scores,
            add_space_prefix: meta
                .bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true),
            unknown: meta.token_id("tokenizer.ggml.unknown_token_id", n)?,
        })
    } else {
        None
    };
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_bos && bos.is_none() {
        return Err(invalid(
            "`tokenizer.ggml.add_bos_token` is true, but there is no valid `bos_token_id`",
        ));
    }
    if add_eos && eos.is_none() {
        return Err(invalid(
            "`tokenizer.ggml.add_eos_token` is true, but there is no valid `eos_token_id`",
        ));
    }

    let mut eog = std::collections::BTreeSet::new();
    for (key, texts) in FIM_EOG {
        let id = match meta.token_id(key, n)? {
            Some(id) => Some(id),
            None => {
                // Found by text (the lowest id when several match); it becomes a control token.
                let found = tokens.iter().position(|t| texts.contains(&t.as_str()));
                if let Some(i) = found {
                    attrs[i] |= attr::CONTROL;
                }
                found.map(|i| i as TokenId)
            }
        };
        eog.extend(id);
    }
    for (i, t) in tokens.iter().enumerate() {
        if EOG_TEXTS.contains(&t.as_str()) {
            eog.insert(i as TokenId);
            attrs[i] |= attr::CONTROL;
        }
        if ALWAYS_RENDERED.contains(&t.as_str()) {
            attrs[i] = attr::USER_DEFINED;
        }
    }
    eog.extend(eos);
    eog.extend(eot);
    eog.extend(eom);

    // gpt-oss / solar-open: `<|end|>` ends a message, not the generation.
    let has = |text: &str| eog.iter().any(|&id| tokens[id as usize] == text);
    if (has("<|return|>") && (has("<|call|>") || has("<|calls|>")) && has("<|end|>"))
        || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>") && has("<|end|>"))
    {
        let end = *eog
            .iter()
            .find(|&&id| tokens[id as usize] == "<|end|>")
            .expect("checked");
        eog.remove(&end);
        attrs[end as usize] = attr::USER_DEFINED;
    }
    // Gemma 4 / PaddleOCR: `</s>` is an ordinary token there.
    let has = |text: &str| eog.iter().any(|&id| tokens[id as usize] == text);
    if has("<|tool_response>") && has("</s>") {
        let s = *eog
            .iter()
            .find(|&&id| tokens[id as usize] == "</s>")
            .expect("checked");
        eog.remove(&s);
        attrs[s as usize] = attr::NORMAL;
    }

    Ok(Vocab {
        tokens,
        ids,
        attrs,
        merges,
        pre_name: pre_name.to_string(),
        pre,
        spm,
        bos,
        eos,
        add_bos,
        add_eos,
        eog: eog.into_iter().collect(),
        chat_template: meta.str("tokenizer.chat_template")?.map(str::to_owned),
    })
}
