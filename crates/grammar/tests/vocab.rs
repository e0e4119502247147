//! The compiler over the default model's real vocabulary: valid documents are allowed token by
//! token and complete the grammar; EOS only when complete; bad specs are errors that say why;
//! the cache serves repeated specs.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cordial_engine::TokenMask;
use cordial_grammar::{GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec};
use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;
use serde_json::json;

fn setup() -> &'static (Arc<Tokenizer>, GrammarCompiler) {
    static S: OnceLock<(Arc<Tokenizer>, GrammarCompiler)> = OnceLock::new();
    S.get_or_init(|| {
        let path = cordial_model::fetch::ensure_default_model().expect("default model");
        let gguf = GgufFile::open(&path).expect("open GGUF");
        let tok = Arc::new(Tokenizer::from_gguf(&gguf).expect("tokenizer"));
        let width = tok.vocab_size();
        let compiler =
            GrammarCompiler::new(tok.clone(), width, GrammarLimits::default()).expect("compiler");
        (tok, compiler)
    })
}

/// Feeds `text`'s tokens; each must be allowed when it comes; returns whether the constraint
/// accepted the end before the last token and is complete after it, and the mask times.
fn replay(spec: &GrammarSpec, text: &str) -> (bool, bool, Vec<f64>) {
    let (tok, compiler) = setup();
    let grammar = compiler.compile(spec).expect("compiles");
    let mut c = cordial_engine::ConstraintFactory::start(grammar.as_ref());
    let mut mask = TokenMask::new(tok.vocab_size());
    let mut times = Vec::new();
    for id in tok.encode(text, false) {
        let t = Instant::now();
        c.compute_mask(&mut mask).expect("mask");
        times.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(
            mask.is_allowed(id),
            "token {id} ({:?}) of {text:?} not allowed",
            String::from_utf8_lossy(tok.token_bytes(id))
        );
        assert!(!c.is_complete());
        c.consume(id).expect("consume");
    }
    let complete = c.is_complete();
    let end = complete || {
        c.compute_mask(&mut mask).expect("mask");
        mask.end_allowed
    };
    (end, complete, times)
}

#[test]
fn a_valid_document_is_allowed_token_by_token_and_completes() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
            "email": {"type": "string"}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    });
    let spec = GrammarSpec::JsonSchema(schema);
    let (end, complete, times) = replay(&spec, r#"{"name": "Ada", "age": 36, "tags": ["x", "y"]}"#);
    assert!(end && complete);
    // Optional properties may be left out.
    let (end, complete, _) = replay(&spec, r#"{"name": "Bo", "age": 7}"#);
    assert!(end && complete);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    eprintln!("mask time over {} tokens: mean {mean:.1} us", times.len());
}

#[test]
fn a_prefix_is_not_accepting_and_eos_comes_only_at_the_end() {
    let (tok, compiler) = setup();
    let spec = GrammarSpec::JsonSchema(
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}),
    );
    let grammar = compiler.compile(&spec).unwrap();
    let mut c = cordial_engine::ConstraintFactory::start(grammar.as_ref());
    let mut mask = TokenMask::new(tok.vocab_size());
    c.compute_mask(&mut mask).unwrap();
    assert!(!mask.end_allowed);
    // Only text that can start the object (here forced: `{"`), never a letter or an EOS token.
    let open = tok.encode(r#"{"a": 1}"#, false)[0];
    let allowed: Vec<String> = (0..tok.vocab_size() as u32)
        .filter(|&i| mask.is_allowed(i))
        .take(20)
        .map(|i| format!("{i}:{:?}", String::from_utf8_lossy(tok.token_bytes(i))))
        .collect();
    assert!(mask.is_allowed(open), "{open} {allowed:?}");
    assert!(!mask.is_allowed(tok.encode("hello", false)[0]));
    for &e in tok.eog_tokens() {
        assert!(!mask.is_allowed(e), "EOG token {e} allowed as text");
    }
}

#[test]
fn regexes_mean_the_whole_output_with_or_without_anchors() {
    for rx in ["[0-9]{3}-[0-9]{4}", "^[0-9]{3}-[0-9]{4}$"] {
        let spec = GrammarSpec::Regex(rx.into());
        let (end, complete, _) = replay(&spec, "555-1234");
        assert!(end && complete, "{rx}");
    }
    // Open-ended: accepting (EOS allowed) but not complete.
    let (end, complete, _) = replay(&GrammarSpec::Regex("(yes|no)!*".into()), "yes!");
    assert!(end && !complete);
}

#[test]
fn recursion_refs_enums_and_unions_compile() {
    let tree = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}
        }, "required": ["value"], "additionalProperties": false}},
        "$ref": "#/$defs/node"
    });
    let (end, complete, _) = replay(
        &GrammarSpec::JsonSchema(tree),
        r#"{"value": 1, "children": [{"value": 2}, {"value": 3, "children": []}]}"#,
    );
    assert!(end && complete);
    let union = json!({"anyOf": [
        {"type": "string", "enum": ["red", "green"]},
        {"type": "object", "properties": {"kind": {"const": "rgb"}}, "required": ["kind"]}
    ]});
    let (end, complete, _) = replay(&GrammarSpec::JsonSchema(union.clone()), r#""green""#);
    assert!(end && complete);
    let (end, _, _) = replay(&GrammarSpec::JsonSchema(union), r#"{"kind": "rgb"}"#);
    assert!(end);
}

#[test]
fn bad_specs_are_errors_that_say_why() {
    let (_, compiler) = setup();
    let err = |spec: GrammarSpec| compiler.compile(&spec).expect_err("must fail").to_string();
    let e = err(GrammarSpec::JsonSchema(
        json!({"type": "array", "items": {"type": "string"}, "uniqueItems": true}),
    ));
    assert!(e.contains("uniqueItems"), "{e}");
    let e = err(GrammarSpec::Regex("(unclosed".into()));
    assert!(!e.is_empty());
    let e = err(GrammarSpec::Regex("a(?=b)".into()));
    assert!(!e.is_empty(), "lookahead");
    let e = err(GrammarSpec::JsonSchema(json!({"type": "strnig"})));
    assert!(e.contains("strnig"), "{e}");
    let big = GrammarSpec::Regex("a".repeat(GrammarLimits::default().max_spec_bytes + 1));
    assert!(matches!(
        compiler.compile(&big),
        Err(GrammarError::TooLarge { what: "regex", .. })
    ));
}

#[test]
fn repeated_specs_come_from_the_cache() {
    let (_, compiler) = setup();
    let spec = GrammarSpec::Regex("cache-test-[a-z]{2}".into());
    let t = Instant::now();
    let a = compiler.compile(&spec).unwrap();
    let first = t.elapsed();
    let t = Instant::now();
    let b = compiler.compile(&spec).unwrap();
    let second = t.elapsed();
    assert!(Arc::ptr_eq(&a, &b));
    eprintln!("compile {first:?}, cached {second:?}");
}
