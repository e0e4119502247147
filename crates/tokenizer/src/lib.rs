//! Tokenizer built from GGUF metadata (byte-level BPE with llama.cpp's pre-tokenizers), and an
//! incremental UTF-8-safe decoder for streaming. (Skeleton: the tokenizer helper implements it.)

use cordial_model::gguf::GgufFile;

pub type TokenId = u32;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{0}")]
    Unsupported(String),
    #[error("tokenizer metadata is invalid: {0}")]
    Invalid(String),
}

pub struct Tokenizer {}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let _ = gguf;
        todo!("tokenizer helper")
    }
    /// Text → ids. Control tokens spelled in the text are parsed (llama.cpp `parse_special`);
    /// `add_bos`: prepend BOS when the model's `add_bos_token` says so.
    pub fn encode(&self, text: &str, add_bos: bool) -> Vec<TokenId> {
        let _ = (text, add_bos);
        todo!("tokenizer helper")
    }
    /// Ids → text; control tokens are skipped when `skip_special`.
    pub fn decode(&self, ids: &[TokenId], skip_special: bool) -> String {
        let _ = (ids, skip_special);
        todo!("tokenizer helper")
    }
    pub fn vocab_size(&self) -> usize {
        todo!("tokenizer helper")
    }
    /// The raw bytes a token stands for (control tokens: their text).
    pub fn token_bytes(&self, id: TokenId) -> &[u8] {
        let _ = id;
        todo!("tokenizer helper")
    }
    /// Control / user-defined tokens (token_type 3 or 4).
    pub fn is_special(&self, id: TokenId) -> bool {
        let _ = id;
        todo!("tokenizer helper")
    }
    /// The end-of-generation set (decision 16 of the API contract).
    pub fn eog_tokens(&self) -> &[TokenId] {
        todo!("tokenizer helper")
    }
}
