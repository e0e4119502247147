//! A Hugging Face `tokenizer.json` (byte-level BPE with a BOS-adding template, in
//! tests/fixtures/hf-tiny) through `Tokenizer::from_hf_dir`: encoding, special tokens in the
//! text, decoding, streaming, BOS/EOS flags and the end-of-generation set.

use std::path::PathBuf;

use cordial_tokenizer::Tokenizer;

fn tokenizer() -> Tokenizer {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("tests/fixtures/hf-tiny");
    Tokenizer::from_hf_dir(&dir).expect("tokenizer.json")
}

#[test]
fn encodes_with_the_template_and_decodes_back() {
    let t = tokenizer();
    assert_eq!(t.vocab_size(), 268);
    assert_eq!(t.bos_token(), Some(0));
    assert_eq!(t.eos_token(), Some(1));
    assert!(t.adds_bos());
    let hello = t.token_id("hello").unwrap();
    let world = t.token_id("Ġworld").unwrap();
    assert_eq!((hello, world), (262, 267));
    assert_eq!(t.encode("hello world", true), [0, hello, world]);
    assert_eq!(t.encode("hello world", false), [hello, world]);
    // Added (special) tokens spelled in the text become their ids.
    assert_eq!(t.encode("hello<|im_end|> world", false), [hello, 2, world]);
    let ids = t.encode("héllo <|end|>\n", false);
    assert_eq!(t.decode(&ids, false), "héllo <|end|>\n");
    assert_eq!(t.decode(&ids, true), "héllo \n");
    let mut d = t.incremental_decoder(true);
    let mut streamed: String = ids.iter().map(|&id| d.push(&t, id)).collect();
    streamed.push_str(&d.finish());
    assert_eq!(streamed, "héllo \n");
}

#[test]
fn end_of_generation_from_config_and_token_texts() {
    let t = tokenizer();
    // eos_token_id from config.json, and `<|im_end|>` by its text.
    assert_eq!(t.eog_tokens(), [1, 2]);
    assert!(t.is_control(0) && t.is_control(1) && t.is_control(2));
    assert!(!t.is_special(262));
}

#[test]
fn missing_tokenizer_json_is_an_error_naming_it() {
    let err = Tokenizer::from_hf_dir(std::path::Path::new("/nonexistent-dir")).unwrap_err();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
