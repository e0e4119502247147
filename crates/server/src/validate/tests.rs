//! Table-driven tests over example requests (T01–T27 valid, E01–E24 invalid, A01–A04 that
//! must be accepted), with the served names `my-model` and `m`, ids inside the vocabulary and
//! hidden-size vectors; bodies where `null` must mean absent and defaults must never conflict;
//! and the unsupported-field table.

use axum::http::HeaderMap;
use serde_json::{json, Value};

use super::*;

const VOCAB: usize = 1000;
const CONTEXT: usize = 256;
const EOS: &[u32] = &[2];
/// A KV cache that never limits these cases (the KV limits have their own test).
const ROOMY_KV: cordial_engine::KvCapacity = cordial_engine::KvCapacity {
    block_size: 16,
    blocks: 1 << 16,
};

/// A toy tokenizer: one token per byte.
pub(super) fn encode(text: &str) -> Vec<u32> {
    text.bytes().map(|b| b as u32 + 3).collect()
}

/// The toy tokenizer as `ModelInfo` wants it (it has no BOS).
fn encode_bos(text: &str, _bos: bool) -> Vec<u32> {
    encode(text)
}

fn model() -> ModelInfo<'static> {
    ModelInfo {
        limits: Limits {
            vocab_size: VOCAB,
            max_context: CONTEXT,
            hidden_size: 2,
            kv: ROOMY_KV,
        },
        eos_tokens: EOS,
        encode: &encode_bos,
        grammar: None,
    }
}

pub(super) fn run(body: &Value) -> Result<ValidRequest, ApiError> {
    run_on(body, &model())
}

fn run_on(body: &Value, model: &ModelInfo) -> Result<ValidRequest, ApiError> {
    let served = vec!["my-model".to_owned(), "m".to_owned()];
    let bytes = serde_json::to_vec(body).unwrap();
    let parsed = parse_request(&bytes, &HeaderMap::new(), &served)?;
    validate(parsed, model, || 777)
}

/// Lengths stay within the KV cache with all of a request's sequences: defaults are lowered to
/// what fits, explicit lengths that do not fit are refused naming the field and the limit.
#[test]
fn lengths_fit_the_kv_cache() {
    let mut small = model();
    // 4 blocks of 16 = 64 tokens, below the 256-token context.
    small.limits.kv = cordial_engine::KvCapacity {
        block_size: 16,
        blocks: 4,
    };
    let max_new = |body: Value| -> Vec<usize> {
        let v = run_on(&body, &small).unwrap_or_else(|e| panic!("{body}: {e}"));
        v.requests.iter().map(|r| r.params.max_new_tokens).collect()
    };
    let hello = "hello"; // 5 tokens: no full block to share
    assert_eq!(
        max_new(json!({"prompt": hello})),
        [60],
        "5 + 60 - 1 = 64 cached"
    );
    assert_eq!(
        max_new(json!({"prompt": hello, "n": 2})),
        [28],
        "2 blocks each"
    );
    assert_eq!(
        max_new(json!({"prompt": [hello], "n": 2})),
        [16],
        "OpenAI's 16"
    );
    assert_eq!(max_new(json!({"prompt": hello, "max_tokens": 60})), [60]);
    let refused = |body: Value, status: u16, param: &str| {
        let e = run_on(&body, &small).expect_err(&body.to_string());
        assert_eq!(e.status(), status, "{body}: {e}");
        let d = e.detail();
        assert_eq!(d.param.as_deref(), Some(param), "{body}: {e}");
        assert_eq!(d.code, Some("context_length_exceeded"));
        assert!(
            d.message.contains("KV cache holds 64 tokens"),
            "{}",
            d.message
        );
    };
    refused(
        json!({"prompt": hello, "max_tokens": 61}),
        422,
        "max_tokens",
    );
    refused(
        json!({"prompt": [hello], "n": 2, "max_tokens": 29}),
        400,
        "max_tokens",
    );
    refused(
        json!({"prompt": hello, "max_total_tokens": 70}),
        422,
        "max_total_tokens",
    );
    refused(
        json!({"prompt": hello, "num_beams": 4, "max_tokens": 20}),
        422,
        "max_tokens",
    );
    refused(
        json!({"prompt": hello, "forced_output_tokens": vec![5; 61]}),
        422,
        "forced_output_tokens",
    );
    // A 20-token prompt shares one block; 5 choices get no block each.
    refused(json!({"prompt": "a".repeat(20), "n": 5}), 422, "n");
    refused(
        json!({"prompt": ["a".repeat(20)], "best_of": 5}),
        400,
        "best_of",
    );
}

#[derive(Debug)]
enum Expect {
    Ok,
    /// Status and `param`.
    Err(u16, &'static str),
}
use Expect::{Err as E, Ok as OK};

type Case = (&'static str, Value, Expect);

/// The T-cases (valid requests), as answered now: fields the engine does not
/// implement yet are 422 naming the field.
#[rustfmt::skip]
fn t_cases() -> Vec<Case> {
    vec![
        ("T01", json!({"model": "my-model", "prompt": "Say this is a test!", "max_tokens": 16}), OK),
        ("T02", json!({"model": "my-model", "tokens": [182, 327, 164], "max_tokens": 200, "top_k": 1,
            "beam_search_type": "DETERMINISTIC", "early_stopping": false, "encoder_no_repeat_ngram": 1,
            "min_tokens": 0, "n": 1, "no_repeat_ngram": 1, "stream": false}), OK),
        ("T03", t03_body(), OK),
        ("T04", json!({"model": "my-model", "prompt": "Count: 1, 2,", "max_tokens": 8, "stream": true,
            "beam_search_type": "DETERMINISTIC"}), OK),
        ("T05", json!({"model": "my-model", "prompt": "Count: 1, 2,", "max_tokens": 8, "stream": true,
            "stream_options": {"include_usage": true}}), OK),
        ("T06", json!({"model": "m", "prompt": "the of and", "max_tokens": 128, "temperature": 0.0,
            "seed": 1234, "stream": true, "stream_options": {"include_usage": true}, "ignore_eos": true}), OK),
        ("T07", json!({"model": "my-model", "prompt": "Once upon a time", "max_tokens": 16, "n": 3,
            "seed": [11, 22, 33], "temperature": 0.8}), OK),
        ("T08", json!({"model": "my-model", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0}), OK),
        ("T09", json!({"model": "my-model", "prompt": "2+2=", "max_tokens": 4, "temperature": 0}), OK),
        ("T10", json!({"model": "my-model", "prompt": "List fruits:", "max_tokens": 32, "top_k": 40, "top_p": 0.9,
            "frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.2, "no_repeat_ngram": 3}), OK),
        ("T11", json!({"model": "my-model", "prompt": "Q: name a color\nA:", "max_tokens": 32, "stop": ["\n"]}), OK),
        ("T12", json!({"model": "my-model", "prompt": "Hello", "max_tokens": 32, "stop_tokens": [{"tokens": [13]}],
            "eos_token": [2]}), OK),
        ("T13", json!({"model": "my-model", "prompt": "It is very", "max_tokens": 16, "bad_words": [" very"],
            "bad_word_tokens": [{"tokens": [123, 567]}]}), OK),
        ("T14", json!({"model": "my-model", "prompt": "Yes or no?", "max_tokens": 16, "min_tokens": 8}), OK),
        ("T15", json!({"model": "my-model", "prompt": "Tell me a story", "max_total_tokens": 32}), OK),
        ("T16", json!({"model": "my-model", "prompt": "Translate to French: cheese", "max_tokens": 16,
            "num_beams": 4, "length_penalty": 1.2, "early_stopping": true, "beam_search_type": "DETERMINISTIC",
            "beam_compat_pre_normalization": true, "beam_compat_no_post_normalization": true}),
            OK),
        ("T17", json!({"model": "my-model", "prompt": "Poem:", "max_tokens": 16, "num_beams": 3,
            "beam_search_type": "NAIVE_SAMPLING", "top_k": 50}), OK),
        ("T18", json!({"model": "my-model", "tokens": [1, 450, 731, 310], "forced_output_tokens": [344, 338, 263],
            "include_output_logprobs": true, "temperature": 0}), OK),
        ("T19", json!({"model": "my-model", "prompt": "Hi", "max_tokens": 2, "include_output_logits": true}), OK),
        ("T20", json!({"model": "my-model", "prompt": "The capital of France is", "max_tokens": 4, "logprobs": 3,
            "echo": true}), OK),
        ("T21", json!({"model": "my-model", "prompt": ["Hello", "Goodbye"], "n": 2, "max_tokens": 4}), OK),
        ("T22", json!({"model": "my-model", "prompt": [[1, 150], [1, 2]], "max_tokens": 4}), OK),
        ("T23", json!({"model": "my-model", "prompt": "Return a JSON person:", "max_tokens": 64,
            "response_format": {"type": "json_object", "schema": "{\"type\":\"object\"}"}}), E(422, "response_format")),
        ("T24", json!({"model": "my-model", "prompt": "Return JSON:", "max_tokens": 64, "response_format":
            {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}}), E(422, "response_format")),
        ("T25", json!({"model": "my-model", "prompt": "Phone:", "max_tokens": 16,
            "response_format": {"type": "regex", "schema": "[0-9]{3}-[0-9]{4}"}}), E(422, "response_format")),
        // Hidden size 2 here: two indices take four floats (sizes are the model's).
        ("T26", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4, "token_index_to_replace": [0, 2],
            "embedding_to_replace": [0.0, 0.1, 0.2, 0.3]}), OK),
        ("T26-size", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4, "token_index_to_replace": [0, 2],
            "embedding_to_replace": [0.0, 0.1]}), E(422, "embedding_to_replace")),
        ("T26-only-one", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4,
            "token_index_to_replace": [0]}), E(422, "embedding_to_replace")),
        ("T26-outside", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4, "token_index_to_replace": [99],
            "embedding_to_replace": [0.0, 0.1]}), E(422, "token_index_to_replace")),
        ("T26-twice", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4, "token_index_to_replace": [1, 1],
            "embedding_to_replace": [0.0, 0.1, 0.2, 0.3]}), E(422, "token_index_to_replace")),
        ("T26-negative", json!({"model": "my-model", "prompt": "A B C", "max_tokens": 4, "token_index_to_replace": [-1],
            "embedding_to_replace": [0.0, 0.1]}), E(422, "token_index_to_replace")),
        ("T27", json!({"model": "my-model", "prompt": "Write a long essay", "max_tokens": 64,
            "timeout_microseconds": 1000}), OK),
    ]
}

/// The E-cases (invalid) and A-cases (must be accepted).
#[rustfmt::skip]
fn e_and_a_cases() -> Vec<Case> {
    vec![
        ("E01", json!({"model": "m", "prompt": "x", "tokens": [1, 2]}), E(422, "tokens")),
        ("E02", json!({"model": "m", "max_tokens": 4}), E(422, "prompt")),
        ("E03", json!({"model": "m", "prompt": "x", "max_tokens": 4, "max_total_tokens": 64}), E(422, "max_total_tokens")),
        ("E04", json!({"model": "m", "prompt": "x", "min_tokens": 2, "min_total_tokens": 8}), E(422, "min_total_tokens")),
        ("E05", json!({"model": "m", "prompt": "x", "stream": true, "num_beams": 2}), E(422, "stream")),
        ("E06", json!({"model": "m", "prompt": "x", "n": 2, "num_beams": 2}), E(422, "n")),
        ("E07", json!({"model": "m", "prompt": "x", "stop": ["."], "num_beams": 2}), E(422, "stop")),
        ("E08", json!({"model": "m", "prompt": "x", "num_beams": 2, "top_p": 0.9}), E(422, "top_p")),
        ("E09", json!({"model": "m", "prompt": "x", "length_penalty": 2.0}), E(422, "length_penalty")),
        ("E10", json!({"model": "m", "prompt": "x", "early_stopping": true}), E(422, "early_stopping")),
        ("E11", json!({"model": "m", "prompt": "x", "num_beams": 32}), E(422, "num_beams")),
        ("E12a", json!({"model": "m", "prompt": "x", "top_p": 0}), E(422, "top_p")),
        ("E12b", json!({"model": "m", "prompt": "x", "top_p": 1.5}), E(422, "top_p")),
        ("E13", json!({"model": "m", "prompt": "x", "frequency_penalty": 2.5}), E(422, "frequency_penalty")),
        ("E14", json!({"model": "m", "prompt": "x", "repetition_penalty": 0.9}), E(422, "repetition_penalty")),
        ("E15", json!({"model": "m", "prompt": "x", "num_beams": 2, "beam_search_type": "GREEDY"}),
            E(422, "beam_search_type")),
        ("E16", json!({"model": "m", "prompt": "x", "num_beams": 2, "beam_compat_no_post_normalization": true}),
            E(422, "beam_compat_no_post_normalization")),
        ("E17", json!({"model": "m", "prompt": "x", "response_format": {"type": "regex"}}), E(422, "response_format")),
        ("E18", json!({"model": "m", "prompt": "x", "min_tokens": 4, "response_format": {"type": "json_object"}}),
            E(422, "min_tokens")),
        ("E19", json!({"model": "m", "prompt": "x".repeat(CONTEXT + 10), "max_tokens": 1}), E(422, "prompt")),
        ("E20", json!({"model": "m", "prompt": "x", "n": 2, "seed": [1, 2, 3]}), E(422, "seed")),
        ("E21", json!({"model": "m", "prompt": "x", "stream": "yes"}), E(422, "stream")),
        ("E22", json!({"model": "m", "prompt": "x", "logprobs": 2, "include_output_logprobs": true}), E(400, "logprobs")),
        ("E23a", json!({"model": "m", "prompt": "x", "suffix": "y"}), E(400, "suffix")),
        ("E23b", json!({"model": "m", "prompt": "x", "best_of": 2, "stream": true}), E(400, "best_of")),
        ("E24", json!({"model": "m", "prompt": "x", "position_ids": [0, 1]}), E(422, "position_ids")),
        ("A01", json!({"model": "m", "prompt": "x", "min_tokens": 0, "min_total_tokens": 8}), OK),
        ("A02", json!({"model": "m", "prompt": "x", "num_beams": 2, "top_k": 0, "n": 1,
            "beam_search_type": "DETERMINISTIC", "early_stopping": false}), OK),
        ("A03", json!({"model": "m", "prompt": "x", "beam_search_type": "STOCHASTIC"}), OK),
        ("A04", json!({"model": "m", "prompt": "x", "encoder_no_repeat_ngram": 1}), OK),
    ]
}

/// Limits, shapes, and fields sent at their defaults (never a conflict), beyond the examples.
#[rustfmt::skip]
fn extra_cases() -> Vec<Case> {
    vec![
        ("unknown model", json!({"model": "gpt-4", "prompt": "x"}), E(404, "model")),
        ("context via max_tokens", json!({"prompt": "xx", "max_tokens": CONTEXT - 1}), E(422, "max_tokens")),
        ("max_tokens 0", json!({"prompt": "x", "max_tokens": 0}), E(422, "max_tokens")),
        ("max_tokens 0 with echo", json!({"prompt": "x", "max_tokens": 0, "echo": true, "logprobs": 1}), OK),
        ("max_tokens -1 with echo", json!({"prompt": "x", "max_tokens": -1, "echo": true}), E(400, "max_tokens")),
        ("echo with include_output_logprobs", json!({"prompt": "x", "echo": true,
            "include_output_logprobs": true}), E(400, "echo")),
        ("logit_bias over 100", json!({"prompt": "x", "logit_bias": {"5": 100.5}}), E(400, "logit_bias")),
        ("logit_bias not a number", json!({"prompt": "x", "logit_bias": {"5": "a"}}), E(400, "logit_bias")),
        ("best_of 3 of n 2", json!({"prompt": "x", "best_of": 3, "n": 2}), OK),
        ("best_of over the cap", json!({"prompt": "x", "best_of": 129}), E(400, "best_of")),
        ("best_of x batch over the cap", json!({"prompt": ["a", "b"], "best_of": 65}), E(400, "prompt")),
        ("best_of with seed list", json!({"prompt": "x", "best_of": 3, "n": 2, "seed": [1, 2]}), E(400, "seed")),
        ("logit_bias ok", json!({"prompt": "x", "logit_bias": {"5": -100, "6": 3.5}}), OK),
        ("n 0", json!({"prompt": "x", "n": 0}), E(422, "n")),
        ("n 129", json!({"prompt": "x", "n": 129}), E(422, "n")),
        ("batch x n over cap", json!({"prompt": ["a", "b", "c"], "n": 50}), E(400, "prompt")),
        ("temperature < 0", json!({"prompt": "x", "temperature": -0.1}), E(422, "temperature")),
        ("top_k > vocab", json!({"prompt": "x", "top_k": VOCAB + 1}), E(422, "top_k")),
        ("top_k = vocab", json!({"prompt": "x", "top_k": VOCAB}), OK),
        ("token id = vocab", json!({"tokens": [1, VOCAB]}), E(422, "tokens")),
        ("negative token id", json!({"tokens": [-1]}), E(422, "tokens")),
        ("empty tokens", json!({"tokens": []}), E(422, "tokens")),
        ("empty prompt", json!({"prompt": ""}), E(422, "prompt")),
        ("empty prompt batch", json!({"prompt": []}), E(400, "prompt")),
        ("prompt id out of vocab", json!({"prompt": [[1, 5000]]}), E(400, "prompt")),
        ("ignore_eos wrong type", json!({"prompt": "x", "ignore_eos": 1}), E(422, "ignore_eos")),
        ("include_usage wrong type", json!({"prompt": "x", "stream_options": {"include_usage": "y"}}),
            E(400, "stream_options")),
        ("user is ignored", json!({"prompt": "x", "user": "someone"}), OK),
        ("max_total_tokens <= prompt", json!({"prompt": "abcd", "max_total_tokens": 4}), E(422, "max_total_tokens")),
        ("max_total_tokens > context", json!({"prompt": "x", "max_total_tokens": CONTEXT + 1}), E(422, "max_total_tokens")),
        ("R2: max_total_tokens at its default", json!({"prompt": "x", "max_tokens": 3, "max_total_tokens": CONTEXT}), OK),
        ("R2: friendli 0.3.21 defaults", json!({"prompt": "x", "beam_search_type": "DETERMINISTIC",
            "early_stopping": false, "encoder_no_repeat_ngram": 1, "min_tokens": 0, "n": 1, "no_repeat_ngram": 1,
            "top_k": 0, "stream": false, "length_penalty": 1.0, "repetition_penalty": 1.0, "top_p": 1.0,
            "frequency_penalty": 0, "presence_penalty": 0, "stop": [], "bad_words": [], "min_p": 0,
            "xtc_threshold": 0, "xtc_probability": 0, "echo": false, "best_of": 1, "logit_bias": {},
            "include_output_logits": false, "include_output_logprobs": false, "response_format": {"type": "text"}}), OK),
        ("encoder_repetition_penalty", json!({"prompt": "x", "encoder_repetition_penalty": 1.5}),
            E(422, "encoder_repetition_penalty")),
        ("logit_bias out of vocab", json!({"prompt": "x", "logit_bias": {"99999": 1}}), E(400, "logit_bias")),
        ("continuous usage", json!({"prompt": "x", "stream": true,
            "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
            E(400, "stream_options.continuous_usage_stats")),
    ]
}

/// friendli-client 1.5.8's body: every key, unset ones as null.
#[rustfmt::skip]
fn t03_body() -> Value {
    let mut body = serde_json::Map::new();
    for key in [
        "model", "tokens", "timeout_microseconds", "max_total_tokens", "min_tokens", "min_total_tokens", "n",
        "num_beams", "length_penalty", "early_stopping", "no_repeat_ngram", "encoder_no_repeat_ngram",
        "repetition_penalty", "encoder_repetition_penalty", "frequency_penalty", "presence_penalty",
        "temperature", "top_k", "top_p", "stop", "stop_tokens", "seed", "token_index_to_replace",
        "embedding_to_replace", "beam_search_type", "beam_compat_pre_normalization",
        "beam_compat_no_post_normalization", "bad_words", "bad_word_tokens", "include_output_logits",
        "include_output_logprobs", "forced_output_tokens", "eos_token", "soft_prompts", "position_ids",
        "generation_offset",
    ] {
        body.insert(key.to_owned(), Value::Null);
    }
    body.insert("stream".into(), json!(false));
    body.insert("prompt".into(), json!("Hi"));
    body.insert("max_tokens".into(), json!(8));
    Value::Object(body)
}

#[test]
fn example_cases() {
    let mut failures = Vec::new();
    for (name, body, expect) in [t_cases(), e_and_a_cases(), extra_cases()]
        .into_iter()
        .flatten()
    {
        let got = run(&body);
        let ok = match (&expect, &got) {
            (Expect::Ok, Ok(_)) => true,
            (Expect::Err(status, param), Err(e)) => {
                e.status().as_u16() == *status && e.detail().param.as_deref() == Some(*param)
            }
            _ => false,
        };
        if !ok {
            let got = got
                .map(|_| "accepted")
                .map_err(|e| (e.status(), e.detail()));
            failures.push(format!("{name}: expected {expect:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn beam_search_maps_every_field() {
    let v = run(
        &json!({"prompt": "x", "num_beams": 3, "beam_search_type": "STOCHASTIC",
        "length_penalty": 0.5, "early_stopping": true, "beam_compat_pre_normalization": true,
        "beam_compat_no_post_normalization": true, "top_k": 5}),
    )
    .unwrap();
    let b = v.requests[0].beam.expect("beam params");
    assert_eq!(
        (b.num_beams, b.kind),
        (3, cordial_engine::BeamKind::Stochastic)
    );
    assert_eq!(b.length_penalty, 0.5);
    assert!(b.early_stopping && b.pre_normalization && b.no_post_normalization);
    assert_eq!(v.requests[0].seeds.len(), 1);
    // Without num_beams the type is ignored (A03); with it, logits and forced output are refused.
    assert!(
        run(&json!({"prompt": "x", "beam_search_type": "STOCHASTIC"}))
            .unwrap()
            .requests[0]
            .beam
            .is_none()
    );
    for (body, field) in [
        (
            json!({"prompt": "x", "num_beams": 2, "include_output_logits": true}),
            "include_output_logits",
        ),
        (
            json!({"prompt": "x", "num_beams": 2, "forced_output_tokens": [5]}),
            "forced_output_tokens",
        ),
        (
            json!({"prompt": "x", "num_beams": 2, "length_penalty": 1e300}),
            "length_penalty",
        ),
    ] {
        let err = run(&body).expect_err(field);
        assert_eq!(err.detail().param.as_deref(), Some(field), "{body}");
    }
}

#[test]
fn unsupported_message_names_the_field() {
    let err = run(&json!({"prompt": "x", "xtc_threshold": 0.5})).unwrap_err();
    assert_eq!(err.to_string(), "`xtc_threshold` is not supported yet");
}

#[test]
fn context_errors_carry_the_code() {
    for body in [
        json!({"prompt": "x".repeat(CONTEXT)}),
        json!({"prompt": "x", "max_tokens": CONTEXT}),
    ] {
        let err = run(&body).unwrap_err();
        assert_eq!(err.detail().code, Some("context_length_exceeded"), "{body}");
    }
}

/// Each unsupported field: rejected when set, accepted at its default / no-op value.
#[test]
fn every_unsupported_row_rejects_only_when_set() {
    let rows: &[(&str, Value, Option<Value>)] = &[
        ("xtc_threshold", json!(0.1), Some(json!(0))),
        ("xtc_probability", json!(0.5), Some(json!(0))),
        (
            "response_format",
            json!({"type": "json_object"}),
            Some(json!({"type": "text"})),
        ),
        ("suffix", json!("s"), Some(json!(""))),
        ("soft_prompts", json!([]), None),
        ("position_ids", json!([0]), None),
        ("generation_offset", json!(0), None),
    ];
    for (field, set, default) in rows {
        let mut body = json!({"prompt": "x", "max_tokens": 2});
        body[*field] = set.clone();
        let err = run(&body).expect_err(field);
        assert_eq!(err.detail().param.as_deref(), Some(*field), "{body}");
        assert!(err.to_string().contains("not"), "{err}");
        body[*field] = default.clone().unwrap_or(Value::Null);
        assert!(
            run(&body).is_ok(),
            "{field} at its default must be accepted: {body}"
        );
    }
}

/// A value for `schema` other than its default: in range, a list of one, an object of all
/// its properties; unbounded integers are 3 (not the toy model's EOS id, 2).
fn sample(schema: &Value, schemas: &Value) -> Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        return sample(&schemas[r.rsplit('/').next().unwrap()], schemas);
    }
    if let Some(alts) = schema.get("oneOf").and_then(Value::as_array) {
        let alt = alts.iter().find(|a| a["type"] != "null").unwrap();
        return sample(alt, schemas);
    }
    let ty = match &schema["type"] {
        Value::Array(types) => types.iter().find(|t| *t != "null").cloned(),
        other => Some(other.clone()),
    };
    let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
    let low = bound("minimum").or(bound("exclusiveMinimum"));
    match ty.as_ref().and_then(Value::as_str) {
        Some("integer") => json!(low.map_or(3, |m| m as i64 + 2)),
        Some("number") => match (low, bound("maximum")) {
            (Some(lo), Some(hi)) => json!(lo + (hi - lo) / 4.0),
            (Some(lo), None) => json!(lo + 0.5),
            _ => json!(2.0),
        },
        Some("boolean") => json!(true),
        Some("string") => json!("x"),
        Some("array") => json!([sample(&schema["items"], schemas)]),
        Some("object") => match schema["properties"].as_object() {
            Some(props) => props
                .iter()
                .map(|(k, p)| (k.clone(), sample(p, schemas)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            None => json!({"1": sample(&schema["additionalProperties"], schemas)}),
        },
        _ => json!(3),
    }
}

/// No field is silently ignored: set to a value other than its default (made from its
/// schema), every field of the wire request changes the validated request or is refused, in a
/// plain request or in a beam search (the beam tuning fields are ignored without `num_beams`).
/// `prompt` is the baseline's own input; `user` (OpenAI's end-user id) is ignored by design.
#[test]
fn every_field_changes_the_request_or_is_refused() {
    let doc = serde_json::to_value(crate::routes::openapi_document()).unwrap();
    let schemas = &doc["components"]["schemas"];
    let props = &schemas["CompletionRequest"]["properties"];
    let bases = [
        json!({"prompt": "x"}),
        json!({"prompt": "x", "num_beams": 2}),
    ];
    for field in crate::protocol::CompletionRequest::field_names() {
        if field == "prompt" || field == "user" {
            continue;
        }
        let value = sample(&props[field], schemas);
        let effective = bases.iter().any(|base| {
            let mut body = base.clone();
            body[field] = value.clone();
            match run(&body) {
                Ok(v) => format!("{v:?}") != format!("{:?}", run(base).unwrap()),
                Err(_) => true,
            }
        });
        assert!(effective, "`{field}`: {value} changed nothing");
    }
}

/// Every row of the unsupported table names a field of the wire request (or one inside it).
#[test]
fn unsupported_rows_name_request_fields() {
    let fields: Vec<&str> = crate::protocol::CompletionRequest::field_names().collect();
    for row in rules::UNSUPPORTED {
        let root = row.param.split('.').next().unwrap();
        assert!(fields.contains(&root), "{}", row.param);
    }
}

#[test]
fn best_of_generates_best_of_and_keeps_n() {
    let v = run(&json!({"prompt": ["a", "b"], "best_of": 3, "n": 2, "seed": 5})).unwrap();
    assert_eq!((v.n, v.keep), (3, 2));
    assert_eq!(v.requests[0].seeds, [5, 6, 7]);
    let v = run(&json!({"prompt": "a", "n": 2})).unwrap();
    assert_eq!((v.n, v.keep), (2, 2));
}

#[test]
fn token_logprobs_are_computed_only_when_reported_or_ranked() {
    let wants = |body: Value| run(&body).unwrap().requests[0].params.token_logprobs;
    assert!(!wants(json!({"prompt": "a"})));
    assert!(!wants(json!({"prompt": "a", "n": 3, "best_of": 3})));
    assert!(wants(json!({"prompt": "a", "n": 2, "best_of": 3})));
    assert!(wants(json!({"prompt": "a", "logprobs": 0})));
    assert!(wants(
        json!({"prompt": "a", "include_output_logprobs": true})
    ));
}

#[test]
fn echo_and_logit_bias_reach_the_engine() {
    let v = run(
        &json!({"prompt": "ab", "echo": true, "logprobs": 2, "max_tokens": 0,
        "logit_bias": {"5": -100, "7": 2.5}}),
    )
    .unwrap();
    assert!(v.echo);
    let p = &v.requests[0].params;
    assert!(p.prompt_logprobs);
    assert_eq!((p.max_new_tokens, p.top_logprobs), (0, 2));
    assert_eq!(p.logit_bias, vec![(5, -100.0), (7, 2.5)]);
    let v = run(&json!({"prompt": "ab", "echo": true})).unwrap();
    assert!(
        v.echo && !v.requests[0].params.prompt_logprobs,
        "no logprobs: text only"
    );
}

#[test]
fn engine_requests_follow_the_request() {
    let v = run(
        &json!({"prompt": ["ab", "c"], "n": 2, "seed": 10, "temperature": 0.5, "top_k": 3,
        "top_p": 0.5, "ignore_eos": true, "stream": true}),
    )
    .unwrap();
    assert_eq!(v.flavor, Flavor::OpenAi);
    assert_eq!(
        v.mode,
        ResponseMode::Current {
            include_usage: false
        }
    );
    assert_eq!(v.n, 2);
    assert_eq!(v.requests.len(), 2);
    assert_eq!(v.requests[0].prompt, encode("ab"));
    assert_eq!(v.requests[1].prompt, encode("c"));
    for r in &v.requests {
        assert_eq!(r.seeds, vec![10, 11]);
        let p = &r.params;
        assert_eq!(
            (p.temperature, p.top_k, p.top_p, p.ignore_eos),
            (0.5, 3, 0.5, true)
        );
        assert_eq!(
            p.max_new_tokens, OPENAI_DEFAULT_MAX_TOKENS,
            "OpenAI default length"
        );
        assert_eq!(p.eos_tokens, EOS);
    }
}

#[test]
fn defaults_friendli() {
    let v = run(&json!({"prompt": "abc", "stream": true, "early_stopping": null})).unwrap();
    assert_eq!(v.mode, ResponseMode::Legacy);
    assert_eq!(v.model, "my-model");
    let r = &v.requests[0];
    assert_eq!(
        r.params.max_new_tokens,
        CONTEXT - 3,
        "Friendli default: up to the context"
    );
    assert_eq!(
        (r.params.temperature, r.params.top_k, r.params.top_p),
        (1.0, 0, 1.0)
    );
    assert_eq!(r.seeds, vec![777], "random seed when absent");
    let v = run(&json!({"prompt": "abc", "max_total_tokens": 10})).unwrap();
    assert_eq!(v.requests[0].params.max_new_tokens, 7);
    assert_eq!(v.mode, ResponseMode::Json);
}

#[test]
fn seeds_per_choice() {
    let seeds = |body: Value| run(&body).unwrap().requests[0].seeds.clone();
    assert_eq!(
        seeds(json!({"prompt": "x", "n": 3, "seed": [11, 22, 33]})),
        vec![11, 22, 33]
    );
    assert_eq!(
        seeds(json!({"prompt": "x", "n": 3, "seed": [5]})),
        vec![5, 6, 7]
    );
    assert_eq!(
        seeds(json!({"prompt": "x", "n": 2, "seed": u64::MAX})),
        vec![u64::MAX, 0]
    );
    assert_eq!(seeds(json!({"prompt": "x", "n": 2})), vec![777, 778]);
    assert_eq!(
        seeds(json!({"prompt": "x", "seed": -2})),
        vec![u64::MAX - 1]
    );
    assert_eq!(seeds(json!({"prompt": "x", "n": 1, "seed": [9]})), vec![9]);
}

#[test]
fn include_usage_and_tokens_batch() {
    let v = run(&json!({"tokens": [[5, 6], [7]], "stream": true, "stream_options": {"include_usage": true}}))
        .unwrap();
    assert_eq!(
        v.mode,
        ResponseMode::Current {
            include_usage: true
        }
    );
    assert_eq!(v.flavor, Flavor::OpenAi, "stream_options is an OpenAI key");
    assert_eq!(
        v.requests
            .iter()
            .map(|r| r.prompt.clone())
            .collect::<Vec<_>>(),
        vec![vec![5, 6], vec![7]]
    );
}
