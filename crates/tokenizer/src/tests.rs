//! Unit tests on small synthetic vocabularies (the real model is tested in tests/).

use super::*;

/// A byte-level vocabulary: 4 special tokens, the 256 byte characters, then merge results.
const SPECIALS: &[(&str, i32)] = &[
    ("<|endoftext|>", 3),
    ("<|im_start|>", 3),
    ("<|im_end|>", 3),
    ("<tool>", 4),
];
const MERGES: &[&str] = &[
    "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ Ġ", "1 2",
];

fn base_tokens() -> (Vec<String>, Vec<i32>) {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|(t, _)| t.to_string()).collect();
    let mut types: Vec<i32> = SPECIALS.iter().map(|(_, ty)| *ty).collect();
    for b in 0..=255u8 {
        tokens.push(byte_map::byte_to_char(b).to_string());
        types.push(1);
    }
    for m in MERGES {
        tokens.push(m.replace(' ', ""));
        types.push(1);
    }
    (tokens, types)
}

fn metadata(
    pre: &str,
    tokens: &[String],
    types: &[i32],
    extra: &[(&str, Value)],
) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    m.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
    );
    m.insert(
        "tokenizer.ggml.merges".into(),
        Value::Array(
            MERGES
                .iter()
                .map(|s| Value::String(s.to_string()))
                .collect(),
        ),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(false));
    for (k, v) in extra {
        m.insert(k.to_string(), v.clone());
    }
    m
}

fn tokenizer_with(pre: &str, extra: &[(&str, Value)]) -> Result<Tokenizer, TokenizerError> {
    let (tokens, types) = base_tokens();
    Tokenizer::from_metadata(&metadata(pre, &tokens, &types, extra))
}

fn tokenizer() -> Tokenizer {
    tokenizer_with("smollm", &[]).unwrap()
}

/// The id of a token by its GGUF text.
fn id(t: &Tokenizer, text: &str) -> TokenId {
    t.token_id(text)
        .unwrap_or_else(|| panic!("no token {text:?}"))
}

fn byte_id(t: &Tokenizer, b: u8) -> TokenId {
    id(t, &byte_map::byte_to_char(b).to_string())
}

#[test]
fn encodes_with_merges_and_decodes_back() {
    let t = tokenizer();
    let ids = t.encode("hello world", false);
    assert_eq!(ids, [id(&t, "hello"), id(&t, "Ġworld")]);
    assert_eq!(t.decode(&ids, true), "hello world");
    assert_eq!(t.token_bytes(id(&t, "Ġworld")), b" world");
    assert_eq!(t.token_text(id(&t, "Ġworld")), Some("Ġworld"));
    assert_eq!(t.vocab_size(), 4 + 256 + MERGES.len());
}

#[test]
fn smollm_splits_digits_one_by_one() {
    let t = tokenizer();
    // "12" is a merge, but `\p{N}` isolates every digit first.
    assert_eq!(
        t.encode("12", false),
        [byte_id(&t, b'1'), byte_id(&t, b'2')]
    );
    // gpt-2's split keeps " 12" together, so the merge applies.
    let g = tokenizer_with("gpt-2", &[]).unwrap();
    assert_eq!(g.encode("12", false), [id(&g, "12")]);
}

#[test]
fn whitespace_runs_leave_one_space_for_the_next_word() {
    let t = tokenizer();
    // "   world" → "  " + " world": the run splits before its last space.
    assert_eq!(
        t.encode("   world", false),
        [id(&t, "ĠĠ"), id(&t, "Ġworld")]
    );
}

#[test]
fn control_and_user_defined_tokens_are_parsed_in_text() {
    let t = tokenizer();
    let ids = t.encode(
        "<|im_start|>hello<|im_end|>\n<tool> world<|endoftext|>",
        false,
    );
    assert_eq!(
        ids,
        [
            1,
            id(&t, "hello"),
            2,
            byte_id(&t, b'\n'),
            3,
            id(&t, "Ġworld"),
            0
        ]
    );
    // A partial spelling is plain text.
    let partial = t.encode("<|im_end", false);
    assert!(!partial.contains(&2));
    assert_eq!(t.decode(&partial, true), "<|im_end");
    assert!(t.is_special(1) && t.is_special(3) && !t.is_special(id(&t, "hello")));
    assert!(t.is_control(1) && !t.is_control(3));
}

#[test]
fn decode_skips_control_tokens_only_when_asked() {
    let t = tokenizer();
    let ids = t.encode("<|im_start|>hello<tool><|im_end|>", false);
    assert_eq!(t.decode(&ids, false), "<|im_start|>hello<tool><|im_end|>");
    // User-defined tokens always show; control tokens are skipped.
    assert_eq!(t.decode(&ids, true), "hello<tool>");
    assert_eq!(t.token_bytes(2), b"<|im_end|>");
}

#[test]
fn out_of_range_ids_decode_to_nothing() {
    let t = tokenizer();
    assert_eq!(t.token_bytes(1_000_000), b"");
    assert_eq!(t.decode(&[id(&t, "hello"), 1_000_000], false), "hello");
    assert!(!t.is_special(1_000_000));
    assert_eq!(t.token_text(1_000_000), None);
}

#[test]
fn bos_needs_both_the_request_and_the_model_flag() {
    let t = tokenizer(); // add_bos_token = false
    assert!(!t.adds_bos());
    assert_eq!(t.encode("hello", true), t.encode("hello", false));

    let t = tokenizer_with(
        "smollm",
        &[("tokenizer.ggml.add_bos_token", Value::Bool(true))],
    )
    .unwrap();
    assert!(t.adds_bos());
    assert_eq!(t.bos_token(), Some(1));
    assert_eq!(t.encode("hello", true), [1, id(&t, "hello")]);
    assert_eq!(t.encode("hello", false), [id(&t, "hello")]);
    assert_eq!(t.encode("", true), [1]);
    assert_eq!(t.encode("", false), [] as [TokenId; 0]);

    // Without the key, llama.cpp's default for the pre-tokenizer applies (Llama 3: BOS).
    let (tokens, types) = base_tokens();
    let mut m = metadata("llama-bpe", &tokens, &types, &[]);
    m.remove("tokenizer.ggml.add_bos_token");
    assert!(Tokenizer::from_metadata(&m).unwrap().adds_bos());
    let mut m = metadata("smollm", &tokens, &types, &[]);
    m.remove("tokenizer.ggml.add_bos_token");
    assert!(!Tokenizer::from_metadata(&m).unwrap().adds_bos());

    // add_bos_token without a BOS id is an error.
    m.insert("tokenizer.ggml.add_bos_token".into(), Value::Bool(true));
    m.remove("tokenizer.ggml.bos_token_id");
    let err = Tokenizer::from_metadata(&m).unwrap_err().to_string();
    assert!(err.contains("bos"), "{err}");
}

#[test]
fn add_eos_token_appends_eos_with_add_special() {
    let t = tokenizer_with(
        "smollm",
        &[("tokenizer.ggml.add_eos_token", Value::Bool(true))],
    )
    .unwrap();
    assert_eq!(t.encode("hello", true), [id(&t, "hello"), 2]);
    assert_eq!(t.encode("hello", false), [id(&t, "hello")]);
}

#[test]
fn unknown_pre_is_an_error_naming_it() {
    let err = tokenizer_with("mystery-bpe", &[]).unwrap_err();
    assert!(matches!(err, TokenizerError::Unsupported(_)));
    assert!(err.to_string().contains("`mystery-bpe`"), "{err}");
    assert!(
        err.to_string().contains("smollm"),
        "lists the supported values: {err}"
    );

    let (tokens, types) = base_tokens();
    let mut m = metadata("smollm", &tokens, &types, &[]);
    m.remove("tokenizer.ggml.pre");
    let err = Tokenizer::from_metadata(&m).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.pre"), "{err}");
}

#[test]
fn unsupported_models_are_errors_naming_them() {
    let err = tokenizer_with(
        "smollm",
        &[("tokenizer.ggml.model", Value::String("t5".into()))],
    )
    .unwrap_err();
    assert!(matches!(err, TokenizerError::Unsupported(_)));
    assert!(err.to_string().contains("`t5`"), "{err}");
    // SentencePiece needs its scores.
    let err = tokenizer_with(
        "smollm",
        &[("tokenizer.ggml.model", Value::String("llama".into()))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.scores"), "{err}");
    let err = tokenizer_with(
        "smollm",
        &[("tokenizer.ggml.model", Value::String("rwkv".into()))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("`rwkv`"), "{err}");
}

#[test]
fn malformed_metadata_is_invalid() {
    let bad_merge = (
        "tokenizer.ggml.merges",
        Value::Array(vec![Value::String("h zz".into())]),
    );
    let err = tokenizer_with("smollm", &[bad_merge]).unwrap_err();
    assert!(matches!(err, TokenizerError::Invalid(_)), "{err}");

    let err = tokenizer_with("smollm", &[("tokenizer.ggml.tokens", Value::U32(3))]).unwrap_err();
    assert!(err.to_string().contains("tokenizer.ggml.tokens"), "{err}");

    let (mut tokens, types) = base_tokens();
    tokens[5] = tokens[6].clone();
    let err = Tokenizer::from_metadata(&metadata("smollm", &tokens, &types, &[])).unwrap_err();
    assert!(err.to_string().contains("duplicate"), "{err}");

    let (tokens, types) = base_tokens();
    let err =
        Tokenizer::from_metadata(&metadata("smollm", &tokens, &types[..10], &[])).unwrap_err();
    assert!(err.to_string().contains("token_type"), "{err}");
}

#[test]
fn eog_set_follows_llama_cpp() {
    let t = tokenizer();
    // eos (2) plus the tokens spelled like an end of turn (`<|endoftext|>`, `<|im_end|>`).
    assert_eq!(t.eog_tokens(), [0, 2]);
    assert!(t.is_eog(0) && t.is_eog(2) && !t.is_eog(1));
    assert_eq!(t.eos_token(), Some(2));

    // eot/eom ids from metadata join; so does a fill-in-the-middle repo token found by text,
    // which also becomes a control token.
    let (mut tokens, mut types) = base_tokens();
    tokens.push("<reponame>".into());
    types.push(1);
    let reponame = (tokens.len() - 1) as TokenId;
    let extra = [
        ("tokenizer.ggml.eot_token_id", Value::U32(3)),
        ("tokenizer.ggml.eos_token_id", Value::U32(1)),
    ];
    let t = Tokenizer::from_metadata(&metadata("smollm", &tokens, &types, &extra)).unwrap();
    assert_eq!(t.eog_tokens(), [0, 1, 2, 3, reponame]);
    assert!(t.is_control(reponame));
    assert_eq!(
        t.encode("a<reponame>", false),
        [byte_id(&t, b'a'), reponame]
    );
    assert_eq!(t.decode(&[reponame], true), "");

    // An explicit fim_rep id replaces the text search.
    let extra = [("tokenizer.ggml.fim_rep_token_id", Value::U32(3))];
    let t = Tokenizer::from_metadata(&metadata("smollm", &tokens, &types, &extra)).unwrap();
    assert_eq!(t.eog_tokens(), [0, 2, 3]);
    assert!(!t.is_special(reponame));
}

#[test]
fn harmony_end_token_is_not_eog() {
    let (mut tokens, mut types) = base_tokens();
    for special in ["<|return|>", "<|call|>", "<|end|>"] {
        tokens.push(special.into());
        types.push(3);
    }
    let n = tokens.len() as TokenId;
    let t = Tokenizer::from_metadata(&metadata("smollm", &tokens, &types, &[])).unwrap();
    assert_eq!(t.eog_tokens(), [0, 2, n - 3, n - 2]);
    // `<|end|>` becomes user-defined: still parsed, always rendered.
    assert!(t.is_special(n - 1) && !t.is_control(n - 1));
    assert_eq!(t.decode(&[n - 1], true), "<|end|>");
}

#[test]
fn bytes_missing_from_the_vocabulary_are_dropped_like_llama_cpp() {
    let (mut tokens, types) = base_tokens();
    tokens[4 + 0x04] = "unrelated".into();
    let t = Tokenizer::from_metadata(&metadata("gpt-2", &tokens, &types, &[])).unwrap();
    assert_eq!(
        t.encode("a\u{4}b", false),
        [byte_id(&t, b'a'), byte_id(&t, b'b')]
    );
}

#[test]
fn unused_and_byte_type_tokens() {
    let (mut tokens, mut types) = base_tokens();
    tokens.push("<unused0>".into());
    types.push(5);
    tokens.push("<0x41>".into());
    types.push(6);
    let n = tokens.len() as TokenId;
    let t = Tokenizer::from_metadata(&metadata("smollm", &tokens, &types, &[])).unwrap();
    assert_eq!(t.token_bytes(n - 2), b"");
    assert_eq!(t.token_bytes(n - 1), b"A");
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
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "a",
    "hello",
    " world",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    "1",
    "42",
    "3.14",
    " 12",
    "'s",
    "'ll",
    "é",
    "ß",
    "日本",
    "語",
    "😀",
    "🎉",
    "👍🏽",
    "🇫🇷",
    "\u{200B}",
    "\u{A0}",
    "e\u{301}",
    "<|im_end|>",
    "<tool>",
    "<|im_",
    "!?",
    "{}",
];

fn random_text(rng: &mut Rng, max_pieces: u64) -> String {
    (0..rng.next() % max_pieces)
        .map(|_| *rng.pick(PIECES))
        .collect()
}

#[test]
fn arbitrary_strings_round_trip() {
    for pre in ["smollm", "gpt-2", "llama-bpe", "qwen2", "qwen35"] {
        let t = tokenizer_with(pre, &[]).unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..300 {
            let text = random_text(&mut rng, 12);
            let ids = t.encode(&text, false);
            assert_eq!(t.decode(&ids, false), text, "{pre}: {text:?} → {ids:?}");
        }
        for text in [
            "",
            " ",
            "  \n  ",
            "x  ",
            "\n\n\n",
            "0123456789",
            "   leading",
            "trailing\t\t",
        ] {
            assert_eq!(
                t.decode(&t.encode(text, false), false),
                text,
                "{pre}: {text:?}"
            );
        }
    }
}

/// Feeds `ids` one by one; checks each output is what the token completes and that the total
/// equals `decode`.
fn stream(t: &Tokenizer, ids: &[TokenId], skip_special: bool) -> Vec<String> {
    let mut d = t.incremental_decoder(skip_special);
    let mut outs: Vec<String> = ids.iter().map(|&id| d.push(t, id)).collect();
    outs.push(d.finish());
    assert_eq!(outs.concat(), t.decode(ids, skip_special), "ids {ids:?}");
    outs
}

#[test]
fn incremental_decoder_holds_back_split_characters() {
    let t = tokenizer();
    // No merges for these: every UTF-8 byte is its own token.
    let ids = t.encode("a😀日", false);
    assert_eq!(ids.len(), 1 + 4 + 3);
    let outs = stream(&t, &ids, true);
    assert_eq!(outs, ["a", "", "", "", "😀", "", "", "日", ""]);
}

#[test]
fn incremental_decoder_skips_control_tokens() {
    let t = tokenizer();
    let mut ids = t.encode("<|im_start|>hello<tool>", false);
    // A control token in the middle of a split character does not break it.
    let emoji = t.encode("😀", false);
    ids.extend_from_slice(&emoji[..2]);
    ids.push(2);
    ids.extend_from_slice(&emoji[2..]);
    let outs = stream(&t, &ids, true);
    assert_eq!(outs, ["", "hello", "<tool>", "", "", "", "", "😀", ""]);
    let outs = stream(&t, &ids, false);
    assert_eq!(
        outs.concat(),
        "<|im_start|>hello<tool>\u{FFFD}<|im_end|>\u{FFFD}\u{FFFD}"
    );
}

#[test]
fn incremental_decoder_matches_decode_on_random_ids() {
    let t = tokenizer();
    let mut rng = Rng(12345);
    let n = t.vocab_size() as u64;
    for _ in 0..500 {
        let ids: Vec<TokenId> = (0..rng.next() % 16)
            .map(|_| (rng.next() % (n + 2)) as TokenId)
            .collect();
        stream(&t, &ids, true);
        stream(&t, &ids, false);
    }
    // And on encoded random text.
    for _ in 0..200 {
        let text = random_text(&mut rng, 10);
        let ids = t.encode(&text, false);
        assert_eq!(stream(&t, &ids, false).concat(), text);
    }
}

#[test]
fn tokenizer_and_decoder_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<IncrementalDecoder>();
    let t = std::sync::Arc::new(tokenizer());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                t.decode(&t.encode(&format!("hello {i} world"), false), false)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.join().unwrap(), format!("hello {i} world"));
    }
}

#[test]
fn chat_template_and_special_texts_come_from_metadata() {
    let t = tokenizer();
    assert_eq!(t.chat_template(), None);
    assert_eq!(t.bos_text(), t.token_text(1));
    assert_eq!(t.eos_text(), t.token_text(2));
    let tpl = ("tokenizer.chat_template", Value::String("{{ x }}".into()));
    assert_eq!(
        tokenizer_with("smollm", &[tpl]).unwrap().chat_template(),
        Some("{{ x }}")
    );
    let bad = ("tokenizer.chat_template", Value::U32(3));
    let err = tokenizer_with("smollm", &[bad]).unwrap_err();
    assert!(err.to_string().contains("tokenizer.chat_template"), "{err}");
}

/// A SentencePiece vocabulary: specials, byte tokens `<0xXX>`, then scored pieces.
fn spm_tokenizer(add_space_prefix: bool) -> Tokenizer {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // Pieces with scores: "ab" beats "bc", so "abc" → "ab" + "c".
    for (t, sc) in [
        ("a", -1.0),
        ("b", -1.0),
        ("c", -1.0),
        ("\u{2581}", -1.0),
        ("ab", -2.0),
        ("bc", -3.0),
        ("\u{2581}a", -2.5),
        ("\u{2581}ab", -1.5),
        ("é", -1.0),
    ] {
        tokens.push(t.to_string());
        types.push(1);
        scores.push(sc);
    }
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    m.insert(
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.iter().map(|t| Value::String(t.clone())).collect()),
    );
    m.insert(
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.iter().map(|&t| Value::I32(t)).collect()),
    );
    m.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(scores.iter().map(|&s| Value::F32(s)).collect()),
    );
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
    m.insert(
        "tokenizer.ggml.add_space_prefix".into(),
        Value::Bool(add_space_prefix),
    );
    Tokenizer::from_metadata(&m).expect("spm tokenizer")
}

#[test]
fn sentencepiece_merges_by_score_with_byte_fallback() {
    let t = spm_tokenizer(false);
    let id = |s: &str| t.token_id(s).unwrap_or_else(|| panic!("{s}"));
    // Highest score first: "ab" (-2) before "bc" (-3).
    assert_eq!(t.encode("abc", false), [id("ab"), id("c")]);
    // Spaces become ▁; "▁ab" (-1.5) wins over "▁a" (-2.5) once "ab" is formed.
    assert_eq!(t.encode("c ab", false), [id("c"), id("\u{2581}ab")]);
    // A character outside the vocabulary falls back to its UTF-8 bytes.
    assert_eq!(t.encode("aü", false), [id("a"), id("<0xC3>"), id("<0xBC>")]);
    assert_eq!(t.decode(&t.encode("c ab aü é", false), false), "c ab aü é");
    // SentencePiece adds BOS by default; specials are cut out of the text.
    assert!(t.adds_bos());
    assert_eq!(t.encode("</s>ab", true), [1, 2, id("ab")]);
    assert!(t.is_eog(2));
}

#[test]
fn sentencepiece_space_prefix_follows_special_tokens() {
    let t = spm_tokenizer(true);
    let id = |s: &str| t.token_id(s).unwrap_or_else(|| panic!("{s}"));
    assert_eq!(t.encode("ab", false), [id("\u{2581}ab")]);
    assert_eq!(
        t.encode("ab</s>ab", false),
        [id("\u{2581}ab"), 2, id("\u{2581}ab")]
    );
}
