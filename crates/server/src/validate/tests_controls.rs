//! Validation of the decoding controls: the invalid combinations they touch, in both status
//! flavours (422 Friendli, 400 OpenAI-flavoured via `user`), and how they map to `SamplingParams`.

use serde_json::{json, Value};

use super::tests::{encode, run};
use super::*;

/// `(name, body, param)`: each body is rejected naming `param`, with 422 as is and 400 once
/// made OpenAI-flavoured.
#[rustfmt::skip]
fn rejected() -> Vec<(&'static str, Value, &'static str)> {
    let stops: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    vec![
        ("empty stop phrase", json!({"prompt": "x", "stop": ["a", ""]}), "stop"),
        ("too many stop phrases", json!({"prompt": "x", "stop": stops}), "stop"),
        ("empty stop_tokens entry", json!({"prompt": "x", "stop_tokens": [{"tokens": []}]}), "stop_tokens"),
        ("stop_tokens id out of vocab", json!({"prompt": "x", "stop_tokens": [{"tokens": [1000]}]}), "stop_tokens"),
        ("blank bad word", json!({"prompt": "x", "bad_words": [" "]}), "bad_words"),
        ("empty bad_word_tokens entry", json!({"prompt": "x", "bad_word_tokens": [{"tokens": []}]}), "bad_word_tokens"),
        ("eos_token out of vocab", json!({"prompt": "x", "eos_token": [-1]}), "eos_token"),
        ("eos_token with ignore_eos", json!({"prompt": "x", "eos_token": [5], "ignore_eos": true}), "eos_token"),
        ("forced + stop", json!({"prompt": "x", "forced_output_tokens": [5], "stop": ["."]}), "forced_output_tokens"),
        ("forced + min_tokens", json!({"prompt": "x", "forced_output_tokens": [5], "min_tokens": 1}), "forced_output_tokens"),
        ("forced + bad words", json!({"prompt": "x", "forced_output_tokens": [5], "bad_words": ["a"]}), "forced_output_tokens"),
        ("forced rows != inputs", json!({"tokens": [[5], [6]], "forced_output_tokens": [[7]]}), "forced_output_tokens"),
        ("forced empty row", json!({"tokens": [[5]], "forced_output_tokens": [[]]}), "forced_output_tokens"),
        ("forced longer than max_tokens", json!({"prompt": "x", "forced_output_tokens": [5, 6, 7], "max_tokens": 2}), "forced_output_tokens"),
        ("forced id out of vocab", json!({"prompt": "x", "forced_output_tokens": [1000]}), "forced_output_tokens"),
        ("min_tokens > max_tokens", json!({"prompt": "x", "min_tokens": 5, "max_tokens": 4}), "min_tokens"),
        ("min_tokens beyond max_total_tokens", json!({"prompt": "abcd", "max_total_tokens": 6, "min_tokens": 3}), "min_tokens"),
        ("min_total_tokens beyond max_total_tokens", json!({"prompt": "ab", "max_total_tokens": 5, "min_total_tokens": 9}), "min_total_tokens"),
        ("min_total_tokens < 0", json!({"prompt": "x", "min_total_tokens": -1}), "min_total_tokens"),
        ("E04 both minimums", json!({"prompt": "x", "min_tokens": 2, "min_total_tokens": 8}), "min_total_tokens"),
        ("repetition_penalty < 1", json!({"prompt": "x", "repetition_penalty": 0.5}), "repetition_penalty"),
        ("presence_penalty > 2", json!({"prompt": "x", "presence_penalty": 2.1}), "presence_penalty"),
        ("frequency_penalty < -2", json!({"prompt": "x", "frequency_penalty": -3}), "frequency_penalty"),
        ("no_repeat_ngram 0", json!({"prompt": "x", "no_repeat_ngram": 0}), "no_repeat_ngram"),
        ("min_p > 1", json!({"prompt": "x", "min_p": 1.5}), "min_p"),
        ("encoder_no_repeat_ngram", json!({"prompt": "x", "encoder_no_repeat_ngram": 3}), "encoder_no_repeat_ngram"),
        ("logits too large", json!({"prompt": "x", "include_output_logits": true, "n": 20, "max_tokens": 250}), "include_output_logits"),
        ("timeout 0", json!({"prompt": "x", "timeout_microseconds": 0}), "timeout_microseconds"),
        ("xtc stays unsupported", json!({"prompt": "x", "xtc_probability": 0.5}), "xtc_probability"),
    ]
}

#[test]
fn rejected_in_both_flavours() {
    let mut failures = Vec::new();
    for (name, body, param) in rejected() {
        let mut openai = body.clone();
        openai["user"] = json!("u");
        for (body, status) in [(body, 422), (openai, 400)] {
            match run(&body) {
                Err(e) if e.status() == status && e.detail().param.as_deref() == Some(param) => {}
                got => failures.push(format!(
                    "{name}: want {status} {param}, got {:?}",
                    got.map(|_| "accepted")
                        .map_err(|e| (e.status(), e.detail()))
                )),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn logprobs_above_the_limit_is_400() {
    let err = run(&json!({"prompt": "x", "logprobs": rules::MAX_LOGPROBS + 1})).unwrap_err();
    assert_eq!(
        (err.status().as_u16(), err.detail().param.as_deref()),
        (400, Some("logprobs"))
    );
}

#[test]
fn logits_limit_follows_the_default_length_of_each_flavour() {
    // Friendli: up to the context (255 rows × 20 × 1000 > 2^22); OpenAI: 16 rows each.
    let body = json!({"prompt": "x", "include_output_logits": true, "n": 20});
    let err = run(&body).unwrap_err();
    assert_eq!(err.detail().param.as_deref(), Some("include_output_logits"));
    assert!(
        err.to_string().contains(&MAX_OUTPUT_LOGITS.to_string()),
        "{err}"
    );
    let mut openai = body;
    openai["user"] = json!("u");
    assert!(run(&openai).is_ok());
}

#[test]
fn controls_map_to_sampling_params() {
    let v = run(&json!({"prompt": "abc", "max_tokens": 9, "min_tokens": 4, "eos_token": [7, 8],
        "stop_tokens": [{"tokens": [5, 6]}], "bad_words": ["q"], "bad_word_tokens": [{"tokens": [9]}],
        "repetition_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": -0.5,
        "no_repeat_ngram": 3, "min_p": 0.1, "stop": ["zz"], "include_output_logprobs": true,
        "include_output_logits": true, "timeout_microseconds": 1000000}))
    .unwrap();
    let p = &v.requests[0].params;
    assert_eq!((p.max_new_tokens, p.min_new_tokens), (9, 4));
    assert_eq!(p.eos_tokens, [7, 8], "eos_token replaces the model's set");
    assert_eq!(p.stop_sequences, [vec![5, 6]]);
    let q = encode("q");
    let spaced = encode(" q");
    assert_eq!(p.bad_sequences, [vec![9], q, spaced]);
    assert_eq!(
        (
            p.repetition_penalty,
            p.frequency_penalty,
            p.presence_penalty
        ),
        (1.3, 0.5, -0.5)
    );
    assert_eq!((p.no_repeat_ngram, p.min_p), (3, 0.1));
    assert_eq!((p.top_logprobs, p.output_logits), (0, true));
    assert!(p.forced_tokens.is_empty());
    assert!(v.requests[0].deadline.is_some());
    assert_eq!(v.stop, ["zz"]);
    assert_eq!((v.logprobs, v.logits), (LogprobMode::Floats, true));
    let v = run(&json!({"prompt": "x", "logprobs": 3, "stop": "."})).unwrap();
    assert_eq!(v.logprobs, LogprobMode::Top(3));
    assert_eq!(v.requests[0].params.top_logprobs, 3);
    assert_eq!(v.stop, ["."]);
    assert!(v.requests[0].deadline.is_none());
}

#[test]
fn min_total_tokens_counts_the_prompt_per_input() {
    // A01: min_tokens 0 is the default, so min_total_tokens alone applies.
    let v = run(
        &json!({"tokens": [[5, 6], [5, 6, 7, 8, 9]], "min_tokens": 0, "min_total_tokens": 4,
        "max_tokens": 8}),
    )
    .unwrap();
    let mins: Vec<usize> = v.requests.iter().map(|r| r.params.min_new_tokens).collect();
    assert_eq!(mins, [2, 0]);
}

#[test]
fn forced_output_sets_the_length_per_input() {
    let v =
        run(&json!({"tokens": [[5], [6, 7]], "forced_output_tokens": [[8, 9, 10], [11]]})).unwrap();
    let got: Vec<(Vec<u32>, usize)> = v
        .requests
        .iter()
        .map(|r| (r.params.forced_tokens.clone(), r.params.max_new_tokens))
        .collect();
    assert_eq!(got, [(vec![8, 9, 10], 3), (vec![11], 1)]);
    // One list applies to every input; max_tokens above its length is fine.
    let v = run(&json!({"prompt": ["a", "b"], "forced_output_tokens": [8, 9], "max_tokens": 5}))
        .unwrap();
    assert!(v
        .requests
        .iter()
        .all(|r| r.params.forced_tokens == [8, 9] && r.params.max_new_tokens == 2));
}
