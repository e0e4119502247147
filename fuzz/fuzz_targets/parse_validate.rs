//! Request parsing + validation (`validate::parse_request` then `validate::validate`) on
//! arbitrary bytes, with the real default-model tokenizer. Never a panic; and what validation
//! accepts satisfies what the engine relies on (its `submit` re-checks, or its KV cache check
//! after queueing, would otherwise turn a validated request into an error).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, HeaderValue};
use cordial_engine::KvCapacity;
use cordial_grammar::{GrammarCompiler, GrammarLimits};
use cordial_model::fetch::ensure_default_model;
use cordial_model::gguf::GgufFile;
use cordial_server::validate::{parse_request, validate, Limits, ModelInfo, STREAM_FORMAT_HEADER};
use cordial_tokenizer::{TokenId, Tokenizer};
use libfuzzer_sys::fuzz_target;

const MAX_CONTEXT: usize = 256;
const HIDDEN: usize = 8;
/// 512 tokens: one sequence of the whole context fits, not many.
const KV: KvCapacity = KvCapacity {
    block_size: 16,
    blocks: 32,
};

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = ensure_default_model().expect("the default model");
        let gguf = GgufFile::open(&path).expect("open the GGUF");
        Tokenizer::from_gguf(&gguf).expect("tokenizer")
    })
}

/// Structured output over the same vocabulary (fuzzed `response_format`s are compiled).
fn grammar() -> &'static GrammarCompiler {
    static GRAMMAR: OnceLock<GrammarCompiler> = OnceLock::new();
    GRAMMAR.get_or_init(|| {
        let path = ensure_default_model().expect("the default model");
        let gguf = GgufFile::open(&path).expect("open the GGUF");
        let tok = Arc::new(Tokenizer::from_gguf(&gguf).expect("tokenizer"));
        let width = tok.vocab_size();
        GrammarCompiler::new(tok, width, GrammarLimits::default()).expect("grammar compiler")
    })
}

fuzz_target!(|data: &[u8]| {
    let tok = tokenizer();
    // The first byte picks the stream-format header, the rest is the body.
    let (pick, body) = data.split_first().unwrap_or((&0, data));
    let mut headers = HeaderMap::new();
    match pick % 4 {
        1 => drop(headers.insert(STREAM_FORMAT_HEADER, HeaderValue::from_static("legacy"))),
        2 => drop(headers.insert(STREAM_FORMAT_HEADER, HeaderValue::from_static("current"))),
        _ => {}
    }
    let served = vec!["m".to_owned(), "alias".to_owned()];
    let Ok(parsed) = parse_request(body, &headers, &served) else {
        return;
    };
    let encode = |text: &str, bos: bool| -> Vec<TokenId> { tok.encode(text, bos) };
    let vocab = tok.vocab_size();
    let info = ModelInfo {
        limits: Limits {
            vocab_size: vocab,
            max_context: MAX_CONTEXT,
            hidden_size: HIDDEN,
            kv: KV,
        },
        eos_tokens: tok.eog_tokens(),
        encode: &encode,
        grammar: Some(grammar()),
        lora: None,
    };
    let Ok(valid) = validate(parsed, &info, || 7) else {
        return;
    };
    assert!(valid.n >= 1);
    assert!(!valid.requests.is_empty());
    for r in &valid.requests {
        assert!(!r.prompt.is_empty(), "empty prompt accepted");
        assert!(
            r.prompt.len() < MAX_CONTEXT,
            "prompt longer than the context accepted"
        );
        assert!(
            r.prompt.iter().all(|&t| (t as usize) < vocab),
            "token id outside the vocabulary"
        );
        assert_eq!(r.seeds.len(), valid.n, "one seed per choice");
        let p = &r.params;
        assert!(p.temperature.is_finite() && p.temperature >= 0.0);
        assert!(p.top_p.is_finite() && p.top_p > 0.0 && p.top_p <= 1.0);
        assert!(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0);
        assert!(p.max_new_tokens + r.prompt.len() <= MAX_CONTEXT || p.forced_tokens.is_empty());
        let seqs = r.beam.map_or(r.seeds.len(), |b| b.num_beams);
        assert!(
            KV.blocks_needed(r.prompt.len(), p.max_new_tokens, seqs, MAX_CONTEXT) <= KV.blocks,
            "a request the KV cache cannot hold accepted"
        );
        for (i, e) in &r.prompt_embeddings {
            assert!(*i < r.prompt.len() && e.len() == HIDDEN);
        }
    }
});
