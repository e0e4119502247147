//! Structured output (`response_format`) on the real binary and the real default model: a
//! suite of real-world schemas and regexes whose outputs must validate (JSON Schema validator,
//! regex fullmatch), compile errors as 422s, constrained and unconstrained requests together,
//! `n` > 1 and both stream dialects, and `length` cuts.
//!
//! CI runs every third case of `fixtures/structured-suite.json`; `CORDIAL_STRUCTURED_SUITE=full`
//! (see `scripts/structured-suite.sh`) runs all of them, and `CORDIAL_STRUCTURED_OUT=FILE`
//! writes the outputs' tokens for the mask-time replay.

mod binary;

use binary::*;
use futures::future::join_all;
use serde_json::{json, Value};

fn suite() -> Value {
    let text = include_str!("fixtures/structured-suite.json");
    serde_json::from_str(text).unwrap()
}

fn format_of(case: &Value) -> Value {
    match case["kind"].as_str().unwrap() {
        "json" => {
            json!({"type": "json_schema", "json_schema": {"name": case["name"], "schema": case["schema"]}})
        }
        _ => json!({"type": "regex", "schema": case["pattern"]}),
    }
}

/// Whether `text` satisfies the case: schema-valid JSON, or a full regex match.
fn valid(case: &Value, text: &str) -> Result<(), String> {
    match case["kind"].as_str().unwrap() {
        "json" => {
            let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
            let validator = jsonschema::validator_for(&case["schema"]).unwrap();
            validator
                .validate(&v)
                .map_err(|e| format!("schema violation: {e}"))
        }
        _ => {
            let pattern = case["pattern"].as_str().unwrap();
            let core = pattern.trim_start_matches('^').trim_end_matches('$');
            let re = regex::Regex::new(&format!("^(?:{core})$")).unwrap();
            if re.is_match(text) {
                Ok(())
            } else {
                Err(format!("no full match of {pattern}"))
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_suite_generates_valid_outputs() {
    within(async {
        let srv = Server::spawn(&["--threads", "2"]).ready().await;
        let suite = suite();
        let full = std::env::var("CORDIAL_STRUCTURED_SUITE").is_ok_and(|v| v == "full");
        let cases: Vec<&Value> = suite["cases"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(i, _)| full || i % 3 == 0)
            .map(|(_, c)| c)
            .collect();
        let max_tokens = suite["max_tokens"].as_u64().unwrap();
        let started = std::time::Instant::now();
        let answers = join_all(cases.iter().map(|case| {
            let body = json!({
                "prompt": case["prompt"],
                "max_tokens": max_tokens,
                "temperature": 0,
                "response_format": format_of(case),
            });
            let srv = &srv;
            async move { srv.complete(&body).await }
        }))
        .await;
        let elapsed = started.elapsed();
        if let Ok(path) = std::env::var("CORDIAL_STRUCTURED_OUT") {
            // The outputs' tokens, for `cordial-grammar`'s `timing` example (mask times).
            let dump: Vec<Value> = cases
                .iter()
                .zip(&answers)
                .map(|(c, v)| json!({"name": c["name"], "tokens": v["choices"][0]["tokens"]}))
                .collect();
            std::fs::write(&path, serde_json::to_string(&dump).unwrap()).unwrap();
        }
        let (mut stopped, mut tokens) = (0, 0);
        let mut failures = Vec::new();
        for (case, v) in cases.iter().zip(&answers) {
            let choice = &v["choices"][0];
            let text = choice["text"].as_str().unwrap();
            tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
            let name = case["name"].as_str().unwrap();
            match choice["finish_reason"].as_str().unwrap() {
                "stop" => {
                    stopped += 1;
                    if let Err(e) = valid(case, text) {
                        failures.push(format!("{name}: {e}: {text:?}"));
                    }
                }
                other => failures.push(format!("{name}: finish_reason {other}: {text:?}")),
            }
        }
        eprintln!(
            "structured suite: {} cases, {stopped} stopped, {} failures, {tokens} tokens in {elapsed:?}",
            cases.len(),
            failures.len()
        );
        for f in &failures {
            eprintln!("  {f}");
        }
        // Every output that stopped is valid; at least 90% stop.
        assert!(
            failures.iter().all(|f| f.contains("finish_reason")),
            "{failures:#?}"
        );
        assert!(
            stopped * 10 >= cases.len() * 9,
            "only {stopped}/{} stopped: {failures:#?}",
            cases.len()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_mixed_batches_choices_streams_and_length() {
    within(async {
        let srv = Server::spawn(&["--threads", "1"]).ready().await;
        // Compile errors: 422 naming response_format with the reason; the server goes on.
        for (format, needle) in [
            (json!({"type": "json_object", "schema": "{not json"}), "not valid JSON"),
            (json!({"type": "json_object", "schema": "{\"type\":\"array\",\"uniqueItems\":true}"}), "uniqueItems"),
            (json!({"type": "json_schema", "json_schema": {"schema": {"type": "strnig"}}}), "strnig"),
            (json!({"type": "regex", "schema": "(unclosed"}), "regex"),
            (json!({"type": "regex", "schema": "a(?=b)"}), "regex"),
        ] {
            let (status, body) = srv
                .post(&json!({"prompt": "x", "max_tokens": 4, "response_format": format}))
                .await;
            assert_eq!(status, 422, "{format}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["param"], "response_format", "{body}");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains(needle), "{format}: {msg}");
        }
        let (status, body) = srv
            .post(&json!({"prompt": "x", "max_tokens": 4, "ignore_eos": true,
                "response_format": {"type": "json_object"}}))
            .await;
        assert_eq!(status, 422, "{body}");

        // Unconstrained greedy output is the same alone and beside constrained requests.
        let plain = json!({"prompt": "The three primary colors are", "max_tokens": 24, "temperature": 0});
        let alone = srv.complete(&plain).await;
        let person = json!({"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 99}}, "required": ["name", "age"],
            "additionalProperties": false});
        let constrained = |seed: u64| {
            json!({"prompt": "A person as JSON: ", "max_tokens": 64, "seed": seed, "temperature": 0.8,
                "response_format": {"type": "json_object", "schema": person.to_string()}})
        };
        let (b1, b2) = (constrained(1), constrained(2));
        let (together, c1, c2) =
            tokio::join!(srv.complete(&plain), srv.complete(&b1), srv.complete(&b2));
        assert_eq!(alone["choices"][0]["text"], together["choices"][0]["text"]);
        assert_eq!(alone["choices"][0]["tokens"], together["choices"][0]["tokens"]);
        let case = json!({"kind": "json", "schema": person});
        for v in [&c1, &c2] {
            let text = v["choices"][0]["text"].as_str().unwrap();
            valid(&case, text).unwrap_or_else(|e| panic!("{e}: {text}"));
        }

        // n > 1: every choice valid on its own.
        let mut body = constrained(7);
        body["n"] = json!(3);
        let v = srv.complete(&body).await;
        for c in v["choices"].as_array().unwrap() {
            assert_eq!(c["finish_reason"], "stop", "{c}");
            valid(&case, c["text"].as_str().unwrap()).unwrap();
        }

        // Penalties and bad words act inside the grammar's choices; the output stays valid.
        let first = srv.complete(&constrained(5)).await;
        let first: Value =
            serde_json::from_str(first["choices"][0]["text"].as_str().unwrap()).unwrap();
        let name = first["name"].as_str().unwrap().to_owned();
        let mut body = constrained(5);
        body["repetition_penalty"] = json!(1.3);
        body["presence_penalty"] = json!(0.5);
        body["bad_words"] = json!([name]);
        let v = srv.complete(&body).await;
        let text = v["choices"][0]["text"].as_str().unwrap();
        valid(&case, text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let again: Value = serde_json::from_str(text).unwrap();
        assert_ne!(again["name"], json!(name), "banned name came back: {text}");

        // Streams in both dialects give the same text as the non-streamed request.
        let once = srv.complete(&constrained(3)).await;
        let want = once["choices"][0]["text"].as_str().unwrap();
        let mut body = constrained(3);
        body["stream"] = json!(true);
        let chunks = sse_payloads(&srv.post(&body).await.1);
        let text: String = chunks
            .iter()
            .map(|c| c["choices"][0]["text"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(text, want, "current dialect");
        body["beam_search_type"] = json!("DETERMINISTIC"); // a legacy key selects the dialect
        let events = sse_payloads(&srv.post(&body).await.1);
        assert_eq!(events.last().unwrap()["choices"][0]["text"], want, "legacy dialect");

        // max_tokens cuts a constrained output: `length`, and a prefix of the full output.
        let mut body = constrained(3);
        body["max_tokens"] = json!(3);
        let cut = srv.complete(&body).await;
        assert_eq!(cut["choices"][0]["finish_reason"], "length");
        let cut_text = cut["choices"][0]["text"].as_str().unwrap();
        assert!(want.starts_with(cut_text), "{cut_text:?} vs {want:?}");

        // Regex with anchors: the whole output.
        let v = srv
            .complete(&json!({"prompt": "Call ", "max_tokens": 16, "temperature": 0,
                "response_format": {"type": "regex", "schema": "^[0-9]{3}-[0-9]{4}$"}}))
            .await;
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap().is_match(text), "{text}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_close_by_default_and_open_ones_never_repeat_a_key() {
    within(async {
        let srv = Server::spawn(&["--threads", "2"]).ready().await;
        // A nested object that says nothing of additionalProperties: closed, so the model
        // cannot keep inventing keys; the answer finishes well within 128 tokens.
        let schema = json!({"type": "object", "properties": {
            "user": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 20},
                "age": {"type": "integer", "minimum": 0, "maximum": 120}}},
            "active": {"type": "boolean"}}});
        let v = srv
            .complete(&json!({"prompt": "A user record as JSON: ", "max_tokens": 128,
                "temperature": 0, "response_format": {"type": "json_schema",
                "json_schema": {"name": "record", "schema": schema}}}))
            .await;
        let choice = &v["choices"][0];
        let text = choice["text"].as_str().unwrap();
        assert_eq!(choice["finish_reason"], "stop", "{text}");
        let closed = json!({"type": "object", "additionalProperties": false, "properties": {
            "user": {"type": "object", "additionalProperties": false,
                "properties": {"name": {}, "age": {}}}, "active": {}}});
        valid(&json!({"kind": "json", "schema": closed}), text).unwrap();
        valid(&json!({"kind": "json", "schema": schema}), text).unwrap();

        // An explicitly open map: any keys, but never the same one twice.
        let map = json!({"type": "object",
            "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}});
        let v = srv
            .complete(&json!({"prompt": "Scores as JSON: ", "max_tokens": 96, "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "m", "schema": map}}}))
            .await;
        let text = v["choices"][0]["text"].as_str().unwrap();
        let keys: Vec<&str> = regex::Regex::new(r#""((?:[^"\\]|\\.)*)": "#)
            .unwrap()
            .captures_iter(text)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        let distinct: std::collections::HashSet<&&str> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "a key repeated: {text}");
    })
    .await;
}
