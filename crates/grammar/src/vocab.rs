//! The grammar engine's view of the model's vocabulary: a token trie built from the GGUF token
//! table, as wide as the logits row (ids past the tokenizer's table are empty, never allowed).

use std::sync::Arc;

use cordial_tokenizer::Tokenizer;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

struct GgufTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for GgufTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer.encode(&String::from_utf8_lossy(s), false)
    }
}

/// Builds the trie: each token's bytes; special tokens (control and user-defined) are marked
/// with the special-token byte, so a grammar never spells them as text.
pub(crate) fn token_env(tokenizer: Arc<Tokenizer>, logits_width: usize) -> TokEnv {
    let words: Vec<Vec<u8>> = (0..logits_width as TokenId)
        .map(|id| {
            let bytes = tokenizer.token_bytes(id);
            if tokenizer.is_special(id) && !bytes.is_empty() {
                let mut marked = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                marked.extend_from_slice(bytes);
                marked
            } else {
                bytes.to_vec()
            }
        })
        .collect();
    let eos = tokenizer
        .eos_token()
        .or_else(|| tokenizer.eog_tokens().first().copied())
        .unwrap_or(0);
    let mut info = TokRxInfo::new(logits_width as u32, eos);
    info.tok_bos = tokenizer.bos_token();
    let trie = TokTrie::from(&info, &words);
    Arc::new(GgufTokEnv { trie, tokenizer })
}
