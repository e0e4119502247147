//! Tokenizer built from GGUF metadata (byte-level BPE with llama.cpp's pre-tokenizers, or
//! SentencePiece BPE over scores with byte fallback, [`spm`]), and an incremental UTF-8-safe
//! decoder for streaming.
//!
//! Encoding follows llama.cpp (`llama_tokenize` with `parse_special = true`): special tokens
//! spelled in the text are cut out first ([`special`]), every remaining fragment is split by the
//! regexes that `tokenizer.ggml.pre` names ([`pre`]), mapped to GPT-2's byte characters and
//! merged by the `tokenizers` crate's BPE. Decoding maps each token back to its raw bytes
//! through a table built at load.

mod byte_map;
mod decode;
mod hf;
mod pre;
mod special;
mod spm;
mod vocab;

use std::collections::BTreeMap;

use cordial_model::gguf::{GgufFile, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

pub use decode::IncrementalDecoder;
use special::{Fragment, SpecialMatcher};
use vocab::attr;

pub type TokenId = u32;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer metadata is invalid: {0}")]
    Invalid(String),
}

/// The segmentation algorithm of the vocabulary.
enum Algo {
    /// Byte-level BPE (`gpt2`), run by the `tokenizers` crate after our pre-tokenizer splits.
    Bpe(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE over scores (`llama`), with byte fallback.
    Spm {
        spm: Box<spm::Spm>,
        add_space_prefix: bool,
    },
    /// A Hugging Face `tokenizer.json`, run whole by the `tokenizers` crate (it also cuts out
    /// the added tokens spelled in the text).
    Hf(Box<tokenizers::Tokenizer>),
}

pub struct Tokenizer {
    algo: Algo,
    specials: SpecialMatcher,
    /// GGUF token texts.
    tokens: Vec<String>,
    attrs: Vec<u8>,
    /// Raw bytes of token `i`: `bytes[offsets[i]..offsets[i + 1]]`.
    bytes: Vec<u8>,
    offsets: Vec<u32>,
    pre_name: String,
    bos: Option<TokenId>,
    eos: Option<TokenId>,
    add_bos: bool,
    add_eos: bool,
    eog: Vec<TokenId>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("pre", &self.pre_name)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        Self::from_metadata(&gguf.metadata)
    }

    /// Builds the tokenizer from GGUF metadata given as a map (what [`GgufFile::metadata`]
    /// holds).
    ///
    /// Errors: a `tokenizer.ggml.model` other than `gpt2`, a `tokenizer.ggml.pre` this crate
    /// does not know (both named in the message), or malformed metadata (missing tokens or
    /// merges, wrong types, duplicate tokens, merges over unknown tokens, `add_bos_token`
    /// without a BOS id).
    ///
    /// A vocabulary may lack some byte characters (SmolLM2 has no token for most ASCII control
    /// bytes); text holding such a byte loses it when encoded, as in llama.cpp.
    pub fn from_metadata(metadata: &BTreeMap<String, Value>) -> Result<Tokenizer, TokenizerError> {
        let vocab::Vocab {
            tokens,
            ids,
            attrs,
            merges,
            pre_name,
            pre,
            spm,
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
            chat_template,
        } = vocab::read(metadata)?;

        let algo = match (spm, pre) {
            (Some(info), _) => Algo::Spm {
                spm: Box::new(spm::Spm::new(ids, info.scores, info.unknown)),
                add_space_prefix: info.add_space_prefix,
            },
            (None, Some(pre)) => Algo::Bpe(Box::new(byte_level_bpe(ids, merges, pre)?)),
            (None, None) => unreachable!("vocab::read gives a pre-tokenizer to BPE vocabularies"),
        };
        let is_spm = matches!(algo, Algo::Spm { .. });

        let specials = SpecialMatcher::new(
            tokens
                .iter()
                .zip(&attrs)
                .enumerate()
                .filter(|(_, (_, &a))| {
                    a & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
                })
                .map(|(id, (t, _))| (t.clone(), id as TokenId)),
        );

        let (bytes, offsets) = byte_table(&tokens, &attrs, is_spm)?;

        Ok(Tokenizer {
            algo,
            specials,
            tokens,
            attrs,
            bytes,
            offsets,
            pre_name,
            bos,
            eos,
            add_bos,
            add_eos,
            eog,
            chat_template,
        })
    }

    /// Text → ids. Control tokens spelled in the text are parsed (llama.cpp `parse_special`);
    /// `add_bos`: prepend BOS when the model's `add_bos_token` says so (llama.cpp's
    /// `add_special`, so an EOS is also appended for the rare model whose `add_eos_token` is
    /// true).
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<TokenId> {
        if let Algo::Hf(tk) = &self.algo {
            // Its post-processor adds BOS (and EOS) when the model's template says so. It
            // fails only on text it cannot represent, which gives no tokens.
            return tk
                .encode_fast(text, add_bos)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default();
        }
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            ids.extend(self.bos);
        }
        // SentencePiece puts a `▁` before text that starts the input or follows a special
        // token, when the vocabulary asks for it (llama.cpp's `is_prev_special`).
        let mut prev_special = true;
        for fragment in self.specials.partition(text) {
            match (fragment, &self.algo) {
                (Fragment::Token(id), _) => {
                    ids.push(id);
                    prev_special = true;
                }
                (Fragment::Text(_), Algo::Hf(_)) => unreachable!("handled above"),
                (Fragment::Text(piece), Algo::Bpe(bpe)) => {
                    // Cannot fail: no normalizer, splits that never fail, and a BPE model
                    // without an unknown token (its only error).
                    let encoding = bpe
                        .encode_fast(piece, false)
                        .expect("byte-level BPE encoding is infallible");
                    ids.extend_from_slice(encoding.get_ids());
                }
                (
                    Fragment::Text(piece),
                    Algo::Spm {
                        spm,
                        add_space_prefix,
                    },
                ) => {
                    let mut escaped = String::with_capacity(piece.len() + 8);
                    if *add_space_prefix && prev_special {
                        escaped.push_str(spm::SPACE);
                    }
                    for ch in piece.chars() {
                        if ch == ' ' {
                            escaped.push_str(spm::SPACE);
                        } else {
                            escaped.push(ch);
                        }
                    }
                    spm.encode(&escaped, &mut ids);
                    prev_special = false;
                }
            }
        }
        if add_bos && self.add_eos {
            ids.extend(self.eos);
        }
        ids
    }

    /// Ids → text; control tokens are skipped when `skip_special` (user-defined tokens always
    /// show). Ids outside the vocabulary are ignored. Invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> String {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if !(skip_special && self.is_skipped_by_decode(id)) {
                out.extend_from_slice(self.token_bytes(id));
            }
        }
        match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// A streaming decoder (see [`IncrementalDecoder`]).
    pub fn incremental_decoder(&self, skip_special: bool) -> IncrementalDecoder {
        IncrementalDecoder::new(skip_special)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The raw bytes a token stands for (control tokens: their text; empty for unused tokens
    /// and for ids outside the vocabulary).
    pub fn token_bytes(&self, id: TokenId) -> &[u8] {
        let i = id as usize;
        match (self.offsets.get(i), self.offsets.get(i + 1)) {
            (Some(&start), Some(&end)) => &self.bytes[start as usize..end as usize],
            _ => &[],
        }
    }

    /// The token's text as the GGUF spells it (byte-level form for normal tokens: `Ġthe`).
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id whose GGUF text is exactly `text` (`<|im_end|>`, `Ġthe`).
    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        match &self.algo {
            Algo::Bpe(bpe) => bpe.token_to_id(text),
            Algo::Spm { spm, .. } => spm.token_id(text),
            Algo::Hf(tk) => tk.token_to_id(text),
        }
    }

    /// Control / user-defined tokens (token_type 3 or 4, plus the tokens llama.cpp promotes
    /// to control: end-of-generation and fill-in-the-middle texts).
    pub fn is_special(&self, id: TokenId) -> bool {
        self.attr(id) & (attr::CONTROL | attr::USER_DEFINED) != 0
    }

    /// Control tokens (skipped by a decode with `skip_special`).
    pub fn is_control(&self, id: TokenId) -> bool {
        self.attr(id) & attr::CONTROL != 0
    }

    /// What `skip_special` hides: control and unknown-type tokens (llama.cpp's
    /// `token_to_piece(special = false)`).
    pub(crate) fn is_skipped_by_decode(&self, id: TokenId) -> bool {
        self.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0
    }

    fn attr(&self, id: TokenId) -> u8 {
        self.attrs
            .get(id as usize)
            .copied()
            .unwrap_or(attr::UNDEFINED)
    }

    /// The end-of-generation set (where generation stops; a request's `eos_token` replaces it),
    /// ascending: what llama.cpp computes: `eos_token_id`, `eot_token_id`, `eom_token_id`, the
    /// fill-in-the-middle pad/repo/file-separator tokens, and the tokens spelled like an end of turn
    /// (`<|endoftext|>`, `<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, ...).
    pub fn eog_tokens(&self) -> &[TokenId] {
        &self.eog
    }

    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    pub fn bos_token(&self) -> Option<TokenId> {
        self.bos
    }

    pub fn eos_token(&self) -> Option<TokenId> {
        self.eos
    }

    /// Whether `encode(_, true)` prepends BOS (`tokenizer.ggml.add_bos_token`, or llama.cpp's
    /// default for the pre-tokenizer when absent).
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The model's chat template (`tokenizer.chat_template`, Jinja source), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The text of the BOS token as the template sees it (`bos_token`), if the model has one.
    pub fn bos_text(&self) -> Option<&str> {
        self.bos.and_then(|id| self.token_text(id))
    }

    /// The text of the EOS token as the template sees it (`eos_token`), if the model has one.
    pub fn eos_text(&self) -> Option<&str> {
        self.eos.and_then(|id| self.token_text(id))
    }

    /// The `tokenizer.ggml.pre` value.
    pub fn pre_tokenizer(&self) -> &str {
        &self.pre_name
    }
}

/// The raw bytes of every token, concatenated, and their offsets: control, unknown and
/// user-defined tokens stand for their text; normal ones for their text decoded (GPT-2 byte
/// characters, or `▁` as a space for SentencePiece); byte tokens `<0xXX>` for their byte.
pub(crate) fn byte_table(
    tokens: &[String],
    attrs: &[u8],
    spm_text: bool,
) -> Result<(Vec<u8>, Vec<u32>), TokenizerError> {
    let mut bytes = Vec::with_capacity(tokens.iter().map(String::len).sum());
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    offsets.push(0u32);
    for (text, &a) in tokens.iter().zip(attrs) {
        if a & (attr::CONTROL | attr::UNKNOWN | attr::USER_DEFINED) != 0 {
            bytes.extend_from_slice(text.as_bytes());
        } else if a & attr::NORMAL != 0 {
            if spm_text {
                bytes.extend_from_slice(text.replace(spm::SPACE, " ").as_bytes());
            } else {
                byte_map::decode_token_text(text, &mut bytes);
            }
        } else if a & attr::BYTE != 0 {
            // `<0xXX>`
            if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                bytes.push(b);
            }
        }
        // Unused and undefined tokens stand for nothing (llama.cpp renders them empty).
        let end = u32::try_from(bytes.len())
            .map_err(|_| TokenizerError::Invalid("token texts exceed 4 GiB".into()))?;
        offsets.push(end);
    }
    Ok((bytes, offsets))
}

/// The `tokenizers` BPE model with our pre-tokenizer regexes and GPT-2's byte mapping.
fn byte_level_bpe(
    ids: tokenizers::models::bpe::Vocab,
    merges: Vec<(String, String)>,
    pre: pre::PreTokenizerSpec,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let model = BPE::builder()
        .vocab_and_merges(ids, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| TokenizerError::Invalid(format!("BPE merges: {e}")))?;
    let mut bpe = tokenizers::Tokenizer::new(model);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
    for re in pre.regexes {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| TokenizerError::Invalid(format!("pre-tokenizer regex {re:?}: {e}")))?;
        steps.push(split.into());
    }
    // Bytes → GPT-2 characters; no prefix space, no regex of its own.
    steps.push(ByteLevel::new(false, false, false).into());
    bpe.with_pre_tokenizer(Some(Sequence::new(steps)));

    Ok(bpe)
}

#[cfg(test)]
mod tests;
