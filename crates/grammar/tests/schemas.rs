//! The JSON Schema rules of issue 19 on the default model's real vocabulary: each document is
//! fed token by token through the compiled constraint; it is accepted when every token is
//! allowed when it comes and the end is allowed after the last one. Closed objects by default
//! (and what stays open), keys never repeated, `oneOf`, unknown formats, the narrowing keywords,
//! exact `maxLength`/`maxItems`, compact whitespace, and the size and time limits.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cordial_engine::TokenMask;
use cordial_grammar::{GrammarCompiler, GrammarError, GrammarLimits, GrammarSpec};
use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;
use serde_json::{json, Value};

fn tokenizer() -> Arc<Tokenizer> {
    static T: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let path = cordial_model::fetch::ensure_default_model().expect("default model");
        let gguf = GgufFile::open(&path).expect("open GGUF");
        Arc::new(Tokenizer::from_gguf(&gguf).expect("tokenizer"))
    })
    .clone()
}

fn compiler() -> &'static GrammarCompiler {
    static C: OnceLock<GrammarCompiler> = OnceLock::new();
    C.get_or_init(|| with_limits(GrammarLimits::default()))
}

fn with_limits(limits: GrammarLimits) -> GrammarCompiler {
    let tok = tokenizer();
    GrammarCompiler::new(tok.clone(), tok.vocab_size(), limits).expect("compiler")
}

/// Whether the constraint for `schema` lets the model write exactly `text` and stop there.
fn accepts(schema: &Value, text: &str) -> bool {
    let tok = tokenizer();
    let grammar = compiler()
        .compile(&GrammarSpec::JsonSchema(schema.clone()))
        .unwrap_or_else(|e| panic!("{e}: {schema}"));
    let mut c = cordial_engine::ConstraintFactory::start(grammar.as_ref());
    let mut mask = TokenMask::new(tok.vocab_size());
    for id in tok.encode(text, false) {
        if c.is_complete() {
            // Ended: nothing more may come.
            return false;
        }
        c.compute_mask(&mut mask).expect("mask");
        if !mask.is_allowed(id) {
            return false;
        }
        c.consume(id).expect("consume");
    }
    if c.is_complete() {
        return true;
    }
    c.compute_mask(&mut mask).expect("mask");
    mask.end_allowed
}

fn check(schema: Value, good: &[&str], bad: &[&str]) {
    for g in good {
        assert!(accepts(&schema, g), "should accept {g}\nschema {schema}");
    }
    for b in bad {
        assert!(!accepts(&schema, b), "should refuse {b}\nschema {schema}");
    }
}

fn error(schema: Value) -> GrammarError {
    compiler()
        .compile(&GrammarSpec::JsonSchema(schema.clone()))
        .err()
        .unwrap_or_else(|| panic!("should not compile: {schema}"))
}

#[test]
fn objects_are_closed_by_default() {
    let user = json!({"type": "object", "properties": {
        "name": {"type": "string"},
        "user": {"type": "object", "properties": {"id": {"type": "integer"}}}
    }});
    check(
        user,
        &[
            r#"{"name": "Ada"}"#,
            r#"{"name": "Ada", "user": {"id": 7}}"#,
            "{}",
        ],
        &[
            r#"{"name": "Ada", "age": 3}"#,
            r#"{"user": {"id": 7, "id2": 8}}"#,
        ],
    );
}

#[test]
fn explicitly_open_objects_take_other_keys_but_never_the_same_twice() {
    for open in [json!(true), json!({"type": "integer"})] {
        let s = json!({"type": "object", "properties": {"a": {"type": "integer"}},
            "additionalProperties": open});
        check(
            s,
            &[r#"{"a": 1, "b": 2, "c": 3}"#, r#"{"b": 2}"#],
            &[r#"{"a": 1, "b": 2, "b": 3}"#, r#"{"b": 2, "a": 1, "a": 2}"#],
        );
    }
    // `required` outside `properties` keeps it open; keys still never repeat.
    let s = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["z"]});
    check(
        s,
        &[r#"{"a": 1, "z": 2}"#],
        &[r#"{"a": 1, "z": 2, "z": 3}"#, r#"{"a": 1}"#],
    );
    // Nested maps: the same key in different objects is fine.
    let s = json!({"type": "object", "additionalProperties": {"type": "object",
        "additionalProperties": {"type": "integer"}}});
    check(
        s,
        &[r#"{"x": {"x": 1}, "y": {"x": 2}}"#],
        &[r#"{"x": {"y": 1, "y": 2}}"#],
    );
}

#[test]
fn compositions_are_closed_to_the_union_of_their_parts() {
    let s = json!({
        "$defs": {"named": {"properties": {"name": {"type": "string"}}, "required": ["name"]}},
        "allOf": [{"$ref": "#/$defs/named"}, {"properties": {"age": {"type": "integer"}}}]
    });
    check(
        s,
        &[r#"{"name": "Ada", "age": 36}"#, r#"{"name": "Ada"}"#],
        &[r#"{"age": 36}"#, r#"{"name": "Ada", "city": "X"}"#],
    );
}

#[test]
fn one_of_is_generated_as_any_of() {
    // Overlapping branches: `oneOf` would refuse "ab"; as anyOf it is allowed.
    let s =
        json!({"oneOf": [{"type": "string", "maxLength": 5}, {"type": "string", "pattern": "^a"}]});
    check(
        s,
        &[r#""ab""#, r#""xyz""#, r#""abcdefgh""#],
        &[r#""xyzuvwq""#, "3"],
    );
}

#[test]
fn unknown_formats_are_annotations() {
    check(
        json!({"type": "string", "format": "path"}),
        &[r#""a/b c""#],
        &["1"],
    );
    // Known ones are enforced.
    check(
        json!({"type": "string", "format": "date"}),
        &[r#""2024-02-29""#],
        &[r#""yesterday""#],
    );
}

#[test]
fn narrowing_keywords_are_enforced() {
    // not
    check(
        json!({"type": "string", "not": {"enum": ["red", "green"]}}),
        &[r#""blue""#, r#""re""#, r#""reds""#],
        &[r#""red""#, r#""green""#],
    );
    check(
        json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "not": {"required": ["a", "b"]}}),
        &[r#"{"a": 1}"#, r#"{"b": 1}"#, "{}"],
        &[r#"{"a": 1, "b": 2}"#],
    );
    check(
        json!({"type": "string", "not": {"pattern": "^[0-9]+$"}}),
        &[r#""a1""#, r#""""#],
        &[r#""123""#],
    );
    // dependencies / dependentRequired / dependentSchemas
    let deps = json!({"type": "object", "properties": {"card": {"type": "string"},
        "billing": {"type": "string"}, "n": {"type": "integer"}},
        "dependencies": {"card": ["billing"], "n": {"properties": {"card": {"const": "x"}}, "required": ["card"]}}});
    check(
        deps,
        &[
            r#"{"billing": "b"}"#,
            r#"{"card": "c", "billing": "b"}"#,
            r#"{"card": "x", "billing": "b", "n": 1}"#,
        ],
        &[
            r#"{"card": "c"}"#,
            r#"{"card": "c", "billing": "b", "n": 1}"#,
        ],
    );
    let dr = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "dependentRequired": {"a": ["b"]}});
    check(
        dr,
        &[r#"{"a": 1, "b": 2}"#, r#"{"b": 2}"#],
        &[r#"{"a": 1}"#],
    );
    // if / then / else
    let cond = json!({"type": "object",
        "properties": {"kind": {"enum": ["num", "str"]}, "n": {"type": "integer"}, "s": {"type": "string"}},
        "required": ["kind"],
        "if": {"properties": {"kind": {"const": "num"}}},
        "then": {"required": ["n"]},
        "else": {"required": ["s"]}});
    check(
        cond,
        &[r#"{"kind": "num", "n": 1}"#, r#"{"kind": "str", "s": "x"}"#],
        &[r#"{"kind": "num", "s": "x"}"#, r#"{"kind": "str", "n": 1}"#],
    );
    // propertyNames
    check(
        json!({"type": "object", "additionalProperties": {"type": "integer"},
            "propertyNames": {"pattern": "^[a-z]+$"}}),
        &[r#"{"ab": 1, "c": 2}"#],
        &[r#"{"a1": 1}"#],
    );
    // unevaluatedProperties: false over allOf parts
    check(
        json!({"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "integer"}}}],
            "unevaluatedProperties": false}),
        &[r#"{"a": 1, "b": 2}"#],
        &[r#"{"a": 1, "c": 2}"#],
    );
}

#[test]
fn what_cannot_be_enforced_is_refused_naming_the_keyword() {
    for (schema, keyword) in [
        (json!({"type": "array", "uniqueItems": true}), "uniqueItems"),
        (json!({"not": {"multipleOf": 2}}), "not"),
        (
            json!({"if": {"multipleOf": 2}, "then": {"minimum": 1}}),
            "if",
        ),
        (
            json!({"type": "array", "contains": {"type": "integer"}}),
            "contains",
        ),
        (json!({"$ref": "https://example.com/other.json"}), "$ref"),
    ] {
        let e = error(schema.clone());
        match &e {
            GrammarError::Unsupported { keyword: k, .. } => assert_eq!(k, keyword, "{schema}"),
            other => panic!("{schema}: {other:?}"),
        }
        assert!(e.to_string().contains(&format!("`{keyword}`")), "{e}");
    }
}

#[test]
fn max_length_and_max_items_are_exact() {
    let s = json!({"type": "string", "maxLength": 5});
    check(
        s,
        &[r#""abcde""#, r#""a\nb\"c""#, r#""ééééé""#, r#""""#],
        &[r#""abcdef""#, r#""éééééé""#],
    );
    let s = json!({"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3});
    check(s, &["[1]", "[1, 2, 3]"], &["[]", "[1, 2, 3, 4]"]);
}

#[test]
fn whitespace_is_compact() {
    let s = json!({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
        "required": ["a"]});
    check(
        s,
        &[r#"{"a": [1, 2]}"#],
        &[
            r#"{ "a": [1, 2]}"#,
            r#"{"a":[1,2]}"#,
            r#"{"a": [1,  2]}"#,
            "{\"a\": [1, 2]}\n",
        ],
    );
}

/// An anyOf of `n` single-property objects: a schema that takes a while to compile.
fn slow_schema(n: usize) -> Value {
    let alts: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "object", "properties": {format!("key{i}"): {"const": i}},
            "required": [format!("key{i}")]})
        })
        .collect();
    json!({"anyOf": alts})
}

#[test]
fn the_size_limit_is_checked_first() {
    let big = GrammarSpec::Regex("a".repeat(GrammarLimits::default().max_spec_bytes + 1));
    assert!(matches!(
        compiler().compile(&big),
        Err(GrammarError::TooLarge { what: "regex", .. })
    ));
    // A 1 MB schema is within it.
    let s = slow_schema(14_000);
    assert!(s.to_string().len() > 1_000_000);
    let t = Instant::now();
    let r = compiler().compile(&GrammarSpec::JsonSchema(s));
    eprintln!(
        "1 MB schema: {:?} in {:?}",
        r.as_ref().map(|_| ()),
        t.elapsed()
    );
    assert!(!matches!(r, Err(GrammarError::TooLarge { .. })));
}

#[test]
fn a_slow_compile_is_abandoned_at_the_time_limit_and_ends_on_its_own() {
    let spec = GrammarSpec::JsonSchema(slow_schema(8_000));
    let t = Instant::now();
    let _ = with_limits(GrammarLimits::default()).compile(&spec);
    let full = t.elapsed();
    let limit = full / 8;
    let c = with_limits(GrammarLimits {
        max_compile_time: limit,
        ..GrammarLimits::default()
    });
    let t = Instant::now();
    let e = c.compile(&spec).expect_err("over the limit");
    let waited = t.elapsed();
    eprintln!("full compile {full:?}; with a limit of {limit:?} the request waited {waited:?}");
    assert!(matches!(e, GrammarError::TooSlow { .. }), "{e}");
    assert!(waited < full / 2, "waited {waited:?} of {full:?}");
    // The compile goes on on its own thread and ends (llguidance's limits bound it).
    assert_eq!(c.running(), 1);
    let t = Instant::now();
    while c.running() > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "compile thread never ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Nothing was cached from it.
    assert_eq!(c.cached(), 0);
}

#[test]
fn compiles_beyond_the_concurrency_limit_wait_within_the_time_limit() {
    let spec = GrammarSpec::JsonSchema(slow_schema(8_000));
    let t = Instant::now();
    let _ = with_limits(GrammarLimits::default()).compile(&spec);
    let full = t.elapsed();
    let c = Arc::new(with_limits(GrammarLimits {
        max_compile_time: full / 8,
        max_concurrent_compiles: 1,
        ..GrammarLimits::default()
    }));
    // The first holds the only compile thread past its own deadline.
    assert!(c.compile(&spec).is_err());
    assert_eq!(c.running(), 1);
    // The next one waits for it at most its time limit, then says why.
    let t = Instant::now();
    let e = c
        .compile(&GrammarSpec::Regex("[a-z]+".into()))
        .expect_err("busy");
    assert!(t.elapsed() < full / 2);
    assert!(
        e.to_string().contains("other schemas were compiling"),
        "{e}"
    );
    // Once it ends, small specs compile again.
    while c.running() > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.compile(&GrammarSpec::Regex("[a-z]+".into())).unwrap();
}

#[test]
fn a_prepared_schema_can_be_inspected() {
    let v = cordial_grammar::prepared_schema(&json!({"properties": {"a": {}}})).unwrap();
    assert_eq!(v["additionalProperties"], false);
    assert_eq!(v["x-guidance"]["coerce_one_of"], true);
}
