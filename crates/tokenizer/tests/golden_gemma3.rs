//! Gemma's SentencePiece tokenizer (`tokenizer.ggml.model = llama`, byte fallback) on the real
//! Gemma 3 270M file against llama.cpp (fixtures in
//! crates/model/tests/fixtures/gemma3-270m-q4_k_m; see the README beside it).

use std::path::PathBuf;
use std::sync::OnceLock;

use cordial_model::gguf::GgufFile;
use cordial_tokenizer::{TokenId, Tokenizer};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = cordial_model::fetch::ensure_model(&cordial_model::fetch::GEMMA3_270M)
            .expect("gemma3 model");
        let gguf = GgufFile::open(&path).expect("open GGUF");
        Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF")
    })
}

fn reference(file: &str) -> Vec<Value> {
    let path = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("../model/tests/fixtures/gemma3-270m-q4_k_m")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn ids(v: &Value) -> Vec<TokenId> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as TokenId)
        .collect()
}

#[test]
fn gemma3_tokenize_exact_ids_and_round_trip() {
    let t = tokenizer();
    let cases = reference("tokenize.jsonl");
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        let got = t.encode(text, false);
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
        // A literal `▁` is SentencePiece's space: it decodes as one (llama.cpp too).
        let back = t.decode(&want, false);
        if back != text.replace('\u{2581}', " ") {
            failures.push(format!("decode({want:?}) = {back:?}, expected {text:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn gemma3_prompt_ids_and_streaming() {
    let t = tokenizer();
    for case in reference("greedy.jsonl") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want = ids(&case["prompt_ids"]);
        assert_eq!(t.encode(prompt, true), want, "prompt {prompt:?}");
        let generated = ids(&case["ids"]);
        let mut d = t.incremental_decoder(true);
        let mut streamed: String = generated.iter().map(|&id| d.push(t, id)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(streamed, t.decode(&generated, true));
    }
}

#[test]
fn gemma3_special_tokens_and_end_of_turn() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 262144);
    assert_eq!(t.bos_token(), Some(2));
    assert_eq!(t.eos_token(), Some(1));
    assert!(t.adds_bos());
    assert_eq!(t.encode("Hi", true)[0], 2);
    let eot = t.token_id("<end_of_turn>").expect("<end_of_turn>");
    assert!(t.is_eog(eot) && t.is_eog(1), "EOG set {:?}", t.eog_tokens());
    assert!(t.is_control(eot));
    let chat = "<start_of_turn>user\nHi there<end_of_turn>\n";
    let ids = t.encode(chat, false);
    assert_eq!(ids[0], t.token_id("<start_of_turn>").unwrap());
    assert!(ids.contains(&eot));
    assert_eq!(t.decode(&ids, false), chat);
    assert_eq!(t.decode(&ids, true), "user\nHi there\n");
    // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    let rare = "\u{10FFFD}";
    let ids = t.encode(rare, false);
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(t.decode(&ids, false), rare);
}
