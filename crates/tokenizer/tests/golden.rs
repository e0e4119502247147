//! Golden tests on the default model (SmolLM2-135M-Instruct Q4_1) against llama.cpp's output in
//! crates/model/tests/fixtures/smollm2-135m-instruct-q4_1 (see the README beside it).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use cordial_model::gguf::GgufFile;
use cordial_tokenizer::{TokenId, Tokenizer};
use serde_json::Value;

fn tokenizer() -> &'static Tokenizer {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = cordial_model::fetch::ensure_default_model().expect("default model");
        let gguf = GgufFile::open(&path).expect("open GGUF");
        Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF")
    })
}

fn reference(file: &str) -> Vec<Value> {
    let path = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("../model/tests/fixtures/smollm2-135m-instruct-q4_1")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lines: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect();
    assert!(!lines.is_empty(), "{} is empty", path.display());
    lines
}

fn ids(v: &Value) -> Vec<TokenId> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as TokenId)
        .collect()
}

#[test]
fn tokenize_jsonl_exact_ids_and_round_trip() {
    let t = tokenizer();
    let mut failures = Vec::new();
    let cases = reference("tokenize.jsonl");
    for case in &cases {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        // add_special = false, parse_special = true.
        let got = t.encode(text, false);
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, llama.cpp {want:?}"));
        }
        let back = t.decode(&want, false);
        if back != text {
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
    assert_eq!(cases.len(), 40);
}

#[test]
fn greedy_jsonl_prompt_ids() {
    let t = tokenizer();
    for case in reference("greedy.jsonl") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want = ids(&case["prompt_ids"]);
        // As a completion tokenizes its prompt (add_special = true: no BOS for this model).
        assert_eq!(t.encode(prompt, true), want, "prompt {prompt:?}");
        assert_eq!(t.decode(&want, false), prompt);
        // The generated ids decode and stream identically.
        let generated = ids(&case["ids"]);
        let mut d = t.incremental_decoder(true);
        let mut streamed: String = generated.iter().map(|&id| d.push(t, id)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(streamed, t.decode(&generated, true));
    }
}

#[test]
fn smollm2_special_tokens() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.pre_tokenizer(), "smollm");
    assert_eq!(t.bos_token(), Some(1));
    assert_eq!(t.eos_token(), Some(2));
    assert!(!t.adds_bos());
    assert_eq!(t.encode("Hello", true), t.encode("Hello", false));
    // llama.cpp's EOG set for this model: eos `<|im_end|>` (2), `<|endoftext|>` (0) by its text,
    // and `<reponame>` (4), which its loader takes for the fill-in-the-middle repo token.
    assert_eq!(t.eog_tokens(), [0, 2, 4]);
    for id in 0..17 {
        assert!(t.is_special(id) && t.is_control(id), "token {id}");
    }
    assert!(!t.is_special(17));
    assert_eq!(t.token_text(2), Some("<|im_end|>"));
    assert_eq!(t.token_bytes(2), b"<|im_end|>");
    assert_eq!(t.token_id("<|im_start|>"), Some(1));
    assert_eq!(t.token_bytes(905), b" world");
    assert_eq!(t.token_bytes(198), b"\n");
    let chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    let ids = t.encode(chat, true);
    assert_eq!(t.decode(&ids, false), chat);
    assert_eq!(t.decode(&ids, true), "user\nHi\nassistant\n");
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const PIECES: &[&str] = &[
    "the",
    " quick",
    " brown",
    "Fox",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "7",
    "2024",
    " 3.5",
    "'s",
    "'re",
    "don't",
    "é",
    "ñ",
    "ß",
    "日本語",
    "中文",
    "한국어",
    "Привет",
    "مرحبا",
    "😀",
    "🎉",
    "👍🏽",
    "🇫🇷",
    "👨‍👩‍👧",
    "\u{200B}",
    "\u{A0}",
    "e\u{301}",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|im_",
    "()",
    "{}",
    "->",
    "==",
    "#",
    "    return x",
    "¿",
    "…",
    "\u{FEFF}",
    "\u{1F}",
];

#[test]
fn random_strings_round_trip_and_stream() {
    let t = tokenizer();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for _ in 0..2000 {
        let n = rng.next() % 16;
        let text: String = (0..n)
            .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
            .collect();
        let ids = t.encode(&text, false);
        assert_eq!(t.decode(&ids, false), text, "ids {ids:?}");
        let mut d = t.incremental_decoder(true);
        let mut streamed: String = ids.iter().map(|&id| d.push(t, id)).collect();
        streamed.push_str(&d.finish());
        assert_eq!(streamed, t.decode(&ids, true), "{text:?}");
    }
}

#[test]
fn streaming_random_ids_equals_decode() {
    // Random ids make arbitrary byte sequences, invalid UTF-8 included.
    let t = tokenizer();
    let mut rng = Rng(42);
    for _ in 0..2000 {
        let ids: Vec<TokenId> = (0..1 + rng.next() % 24)
            .map(|_| (rng.next() % 49152) as TokenId)
            .collect();
        for skip in [false, true] {
            let mut d = t.incremental_decoder(skip);
            let mut streamed = String::new();
            for &id in &ids {
                d.push_to(t, id, &mut streamed);
                assert!(d.pending_bytes().len() <= 3);
            }
            streamed.push_str(&d.finish());
            assert_eq!(streamed, t.decode(&ids, skip), "ids {ids:?}");
        }
    }
}

#[test]
fn load_and_encode_speed() {
    let path = cordial_model::fetch::ensure_default_model().expect("default model");
    let gguf = GgufFile::open(&path).expect("open GGUF");
    let start = Instant::now();
    let t = Tokenizer::from_gguf(&gguf).expect("tokenizer");
    let load = start.elapsed();

    let mut text = String::new();
    for case in reference("tokenize.jsonl") {
        text.push_str(case["text"].as_str().unwrap());
        text.push('\n');
    }
    let text = text.repeat(8);
    let start = Instant::now();
    let ids = t.encode(&text, false);
    let encode = start.elapsed();
    let start = Instant::now();
    let back = t.decode(&ids, false);
    let decode = start.elapsed();
    assert_eq!(back, text);
    eprintln!(
        "load {load:?}; encode {} tokens {encode:?}; decode {decode:?}",
        ids.len()
    );
    assert!(ids.len() > 3000, "{} tokens", ids.len());
    // Generous bounds: dependencies such as regex are unoptimized in test builds.
    assert!(load.as_secs_f64() < 2.0, "load took {load:?}");
    assert!(encode.as_secs_f64() < 1.0, "encoding took {encode:?}");
}

#[test]
fn bytes_without_a_token_are_dropped() {
    // SmolLM2 has no token for some ASCII control bytes; llama.cpp drops them when encoding.
    let t = tokenizer();
    let missing: Vec<u8> = (0..=127u8)
        .filter(|&b| t.encode(&(b as char).to_string(), false).is_empty())
        .collect();
    assert_eq!(missing, [0x04, 0x06, 0x13, 0x14, 0x16, 0x1D]);
    let ids = t.encode("a\u{4}b\u{1D}\u{1F}c", false);
    assert_eq!(t.decode(&ids, false), "ab\u{1F}c");
}

#[test]
fn long_runs_round_trip() {
    let t = tokenizer();
    for text in [
        format!("{}x", " ".repeat(100_000)),
        format!("a{}", "\n".repeat(50_000)),
        "7".repeat(20_000),
        "ab".repeat(50_000),
        "日本語".repeat(10_000),
        format!("{} end", "<|im_end|>".repeat(5_000)),
    ] {
        let start = Instant::now();
        let ids = t.encode(&text, false);
        let took = start.elapsed();
        assert_eq!(
            t.decode(&ids, false),
            text,
            "{} bytes starting {:?}",
            text.len(),
            &text[..8]
        );
        assert!(
            took.as_secs_f64() < 5.0,
            "{} bytes took {took:?}",
            text.len()
        );
    }
}
