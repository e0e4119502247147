//! Pre-tokenizers by `tokenizer.ggml.pre`: the regex splits llama.cpp applies before byte-level
//! BPE (src/llama-vocab.cpp, `llm_tokenizer_bpe`), and the per-`pre` flags it sets
//! (`ignore_merges`, the default of `add_bos`). The regexes are applied in sequence, each one
//! splitting every piece left by the previous into matches and the text between them.
//!
//! Only `pre` values whose llama.cpp handling is fully described by these regexes and flags are
//! listed; anything else is an error naming the value (never a guess).

/// GPT-2's split.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's split, in llama.cpp's form (the case-insensitive group spelled out).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5's split: Qwen2's with combining marks kept with letters.
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes for one `pre` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PreTokenizerSpec {
    /// Regexes applied in sequence (each splits, keeping matches and gaps as pieces).
    pub regexes: &'static [&'static str],
    /// A pre-token that is itself in the vocabulary is emitted whole, without merging.
    pub ignore_merges: bool,
    /// `add_bos` when the GGUF has no `tokenizer.ggml.add_bos_token`.
    pub default_add_bos: bool,
}

const fn spec(
    regexes: &'static [&'static str],
    ignore_merges: bool,
    default_add_bos: bool,
) -> PreTokenizerSpec {
    PreTokenizerSpec {
        regexes,
        ignore_merges,
        default_add_bos,
    }
}

const DIGITS_THEN_GPT2: PreTokenizerSpec = spec(&[r"\p{N}", GPT2], false, false);
const GPT2_ONLY: PreTokenizerSpec = spec(&[GPT2], false, false);
const LLAMA3_SPEC: PreTokenizerSpec = spec(&[LLAMA3], true, true);
const LLAMA3_REGEX_ONLY: PreTokenizerSpec = spec(&[LLAMA3], false, false);
const QWEN2_SPEC: PreTokenizerSpec = spec(&[QWEN2], false, false);
const QWEN35_SPEC: PreTokenizerSpec = spec(&[QWEN35], false, false);

/// Every supported `pre` value.
const TABLE: &[(&str, PreTokenizerSpec)] = &[
    // LLAMA_VOCAB_PRE_TYPE_SMOLLM and the types sharing its case.
    ("smollm", DIGITS_THEN_GPT2),
    ("starcoder", DIGITS_THEN_GPT2),
    ("refact", DIGITS_THEN_GPT2),
    ("command-r", DIGITS_THEN_GPT2),
    ("codeshell", DIGITS_THEN_GPT2),
    ("exaone", DIGITS_THEN_GPT2),
    ("minerva-7b", DIGITS_THEN_GPT2),
    ("mellum2", DIGITS_THEN_GPT2),
    // LLAMA_VOCAB_PRE_TYPE_GPT2 / MPT / OLMO / JAIS / TRILLION / GRANITE_DOCLING (generative
    // models only: the embedding models of this group also change token attributes or add SEP).
    ("gpt-2", GPT2_ONLY),
    ("phi-2", GPT2_ONLY),
    ("gigachat", GPT2_ONLY),
    ("a.x-4.0", GPT2_ONLY),
    ("mellum", GPT2_ONLY),
    ("exaone4", GPT2_ONLY),
    ("mpt", GPT2_ONLY),
    ("olmo", GPT2_ONLY),
    ("jais", GPT2_ONLY),
    ("trillion", GPT2_ONLY),
    ("granite-docling", GPT2_ONLY),
    // LLAMA_VOCAB_PRE_TYPE_LLAMA3: ignore_merges, add_bos by default.
    ("llama3", LLAMA3_SPEC),
    ("llama-v3", LLAMA3_SPEC),
    ("llama-bpe", LLAMA3_SPEC),
    ("falcon3", LLAMA3_SPEC),
    ("falcon-h1", LLAMA3_SPEC),
    ("pixtral", LLAMA3_SPEC),
    ("midm-2.0", LLAMA3_SPEC),
    ("lfm2", LLAMA3_SPEC),
    // DBRX, SMAUG, CHATGLM4: Llama 3's regex without its flags.
    ("dbrx", LLAMA3_REGEX_ONLY),
    ("smaug-bpe", LLAMA3_REGEX_ONLY),
    ("glm4", LLAMA3_REGEX_ONLY),
    ("chatglm-bpe", LLAMA3_REGEX_ONLY),
    // LLAMA_VOCAB_PRE_TYPE_QWEN2 / STABLELM2 / HUNYUAN / SOLAR_OPEN.
    ("qwen2", QWEN2_SPEC),
    ("deepseek-r1-qwen", QWEN2_SPEC),
    ("kormo", QWEN2_SPEC),
    ("f2llmv2", QWEN2_SPEC),
    ("megrez", QWEN2_SPEC),
    ("stablelm2", QWEN2_SPEC),
    ("hunyuan", QWEN2_SPEC),
    ("solar-open", QWEN2_SPEC),
    // LLAMA_VOCAB_PRE_TYPE_QWEN35.
    ("qwen35", QWEN35_SPEC),
];

/// The pre-tokenizer for a `tokenizer.ggml.pre` value, or None when it is not supported.
pub(crate) fn lookup(pre: &str) -> Option<PreTokenizerSpec> {
    TABLE.iter().find(|(name, _)| *name == pre).map(|(_, s)| *s)
}

/// The supported values, for error messages.
pub(crate) fn supported() -> impl Iterator<Item = &'static str> {
    TABLE.iter().map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{
        OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
    };

    #[test]
    fn every_regex_compiles_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for (name, s) in TABLE {
            assert!(names.insert(*name), "duplicate pre {name}");
            for re in s.regexes {
                splitter(re).unwrap_or_else(|e| panic!("{name}: {re}: {e}"));
            }
        }
    }

    #[test]
    fn smollm_is_digits_then_gpt2() {
        let s = lookup("smollm").unwrap();
        assert_eq!(s.regexes, &[r"\p{N}", GPT2]);
        assert!(!s.ignore_merges && !s.default_add_bos);
        assert!(lookup("llama-bpe").unwrap().ignore_merges);
        assert!(lookup("no-such-pre").is_none());
        assert!(lookup("").is_none());
    }

    fn splitter(re: &str) -> tokenizers::Result<Split> {
        Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
    }

    fn split(re: &str, text: &str) -> Vec<String> {
        let mut pieces = PreTokenizedString::from(text);
        splitter(re).unwrap().pre_tokenize(&mut pieces).unwrap();
        pieces
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_string())
            .collect()
    }

    #[test]
    fn gpt2_split_keeps_the_last_space_with_the_next_word() {
        assert_eq!(split(GPT2, "a   b"), ["a", "  ", " b"]);
        assert_eq!(split(GPT2, "I'm 42!\n"), ["I", "'m", " 42", "!", "\n"]);
        assert_eq!(split(GPT2, "x   "), ["x", "   "]);
    }

    #[test]
    fn llama3_split_groups_up_to_three_digits() {
        assert_eq!(split(LLAMA3, "12345 Hello"), ["123", "45", " Hello"]);
        assert_eq!(split(LLAMA3, "a\n\n  b"), ["a", "\n\n", " ", " b"]);
        assert_eq!(split(QWEN2, "123"), ["1", "2", "3"]);
    }
}
