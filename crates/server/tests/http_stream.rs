//! In-process HTTP tests of both stream dialects, concurrency and client disconnects, over the
//! fake model and the default model's real tokenizer.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use cordial_testkit::fake_model::FakeModelConfig;
use futures::StreamExt;
use serde_json::{json, Value};

/// Posts a stream request: checks the SSE headers, returns the raw body.
async fn stream_body(srv: &TestServer, body: &Value, header: Option<&str>) -> String {
    let mut req = srv
        .client
        .post(format!("{}/v1/completions", srv.base))
        .json(body);
    if let Some(h) = header {
        req = req.header("X-Stream-Format", h);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    resp.text().await.unwrap()
}

/// The non-streamed result of the same request.
async fn non_stream(srv: &TestServer, body: &Value) -> Value {
    let mut body = body.clone();
    body["stream"] = json!(false);
    let (status, v) = srv.post_json(&body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_stream_is_token_sampled_then_complete() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": "Count: 1, 2,", "max_tokens": 8, "stream": true, "temperature": 0,
            "beam_search_type": "DETERMINISTIC"});
        let raw = stream_body(&srv, &body, None).await;
        assert!(!raw.contains("[DONE]"), "no [DONE] in the legacy dialect");
        let events: Vec<Value> = sse_payloads(&raw).iter().map(|s| json(s)).collect();
        assert_eq!(events.len(), 9, "{raw}");
        let expected = srv.greedy("Count: 1, 2,", 8);
        let mut text = String::new();
        for (e, &tok) in events[..8].iter().zip(&expected) {
            let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, ["event", "index", "text", "token"], "{e}");
            assert_eq!(e["event"], "token_sampled");
            assert_eq!(e["index"], 0);
            assert_eq!(e["token"], tok);
            text.push_str(e["text"].as_str().unwrap());
        }
        let done = &events[8];
        assert_eq!(done["event"], "complete");
        let c = &done["choices"][0];
        assert_eq!(c["text"], text.as_str(), "concatenated tokens = complete text");
        assert_eq!(ids(&c["tokens"]), expected);
        assert_eq!(c["finish_reason"], "length");
        assert!(c["seed"].is_u64());
        assert_eq!(done["usage"]["completion_tokens"], 8);
        let v = non_stream(&srv, &body).await;
        assert_eq!(v["choices"][0]["text"], text.as_str(), "stream text = non-stream text");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_stream_with_usage_chunk_and_done() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"model": NAME, "prompt": "Count: 1, 2,", "max_tokens": 8, "stream": true,
            "temperature": 0, "stream_options": {"include_usage": true}});
        let raw = stream_body(&srv, &body, None).await;
        let payloads = sse_payloads(&raw);
        assert_eq!(payloads.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|s| json(s))
            .collect();
        assert_eq!(
            chunks.len(),
            8 + 2,
            "8 tokens, a finish chunk, a usage chunk"
        );
        let id = chunks[0]["id"].as_str().unwrap();
        let expected = srv.greedy("Count: 1, 2,", 8);
        let mut text = String::new();
        for (c, &tok) in chunks[..8].iter().zip(&expected) {
            assert_eq!(c["id"], id, "one id per stream");
            assert_eq!(c["object"], "text_completion");
            assert_eq!(c["model"], NAME);
            assert!(c["usage"].is_null());
            let ch = &c["choices"][0];
            assert_eq!(ch["token"], tok);
            assert!(ch["finish_reason"].is_null());
            text.push_str(ch["text"].as_str().unwrap());
        }
        let fin = &chunks[8]["choices"][0];
        assert_eq!(fin["text"], "");
        assert_eq!(fin["finish_reason"], "length");
        assert!(fin.get("token").is_none(), "the finish chunk has no token");
        let usage = &chunks[9];
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 8);
        let v = non_stream(&srv, &body).await;
        assert_eq!(
            v["choices"][0]["text"],
            text.as_str(),
            "stream text = non-stream text"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_stream_without_usage_and_header_override() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": "Hi", "max_tokens": 3, "stream": true, "temperature": 0});
        let payloads = sse_payloads(&stream_body(&srv, &body, None).await);
        assert_eq!(payloads.len(), 3 + 1 + 1, "tokens, finish chunk, [DONE]");
        assert_eq!(payloads[4], "[DONE]");
        assert!(
            !payloads.iter().any(|p| p.contains("\"usage\":{")),
            "no usage chunk"
        );
        // The header selects the legacy dialect for a plain body...
        let payloads = sse_payloads(&stream_body(&srv, &body, Some("legacy")).await);
        assert_eq!(json(&payloads[3])["event"], "complete");
        // ...and the current one despite legacy keys.
        let mut legacy = body.clone();
        legacy["num_beams"] = Value::Null;
        let payloads = sse_payloads(&stream_body(&srv, &legacy, Some("current")).await);
        assert_eq!(payloads.last().unwrap(), "[DONE]");
        let payloads = sse_payloads(&stream_body(&srv, &legacy, None).await);
        assert_eq!(json(payloads.last().unwrap())["event"], "complete");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_and_batches_stream_by_index_in_both_dialects() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": ["Hello", "Bye"], "n": 2, "max_tokens": 5, "stream": true, "seed": 3,
            "temperature": 1.0, "timeout_microseconds": null});
        let events: Vec<Value> = sse_payloads(&stream_body(&srv, &body, None).await).iter().map(|s| json(s)).collect();
        let complete = events.last().unwrap();
        assert_eq!(complete["event"], "complete");
        let mut texts: BTreeMap<u64, String> = BTreeMap::new();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for e in &events[..events.len() - 1] {
            let i = e["index"].as_u64().unwrap();
            texts.entry(i).or_default().push_str(e["text"].as_str().unwrap());
            *counts.entry(i).or_default() += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [5, 5, 5, 5]);
        for c in complete["choices"].as_array().unwrap() {
            assert_eq!(c["text"].as_str().unwrap(), texts[&c["index"].as_u64().unwrap()]);
        }
        // The current dialect gives the same choices.
        let mut current = body.clone();
        current.as_object_mut().unwrap().remove("timeout_microseconds");
        let payloads = sse_payloads(&stream_body(&srv, &current, None).await);
        let mut ctexts: BTreeMap<u64, String> = BTreeMap::new();
        let mut finished = 0;
        for p in &payloads[..payloads.len() - 1] {
            let c = json(p);
            let ch = &c["choices"][0];
            if ch["finish_reason"].is_string() {
                finished += 1;
            }
            ctexts.entry(ch["index"].as_u64().unwrap()).or_default().push_str(ch["text"].as_str().unwrap());
        }
        assert_eq!(finished, 4);
        assert_eq!(ctexts, texts);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_requests_match_greedy() {
    within(async {
        let srv = std::sync::Arc::new(start(fake_config()).await);
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let srv = srv.clone();
                tokio::spawn(async move {
                    let prompt = format!("Request number {i} says");
                    let stream = i % 2 == 0;
                    let body = json!({"prompt": prompt, "max_tokens": 12 + i, "temperature": 0, "stream": stream});
                    let tokens = if stream {
                        let raw = stream_body(&srv, &body, None).await;
                        let p = sse_payloads(&raw);
                        p[..p.len() - 2].iter().map(|s| json(s)["choices"][0]["token"].as_u64().unwrap() as u32).collect()
                    } else {
                        ids(&srv.post_json(&body).await.1["choices"][0]["tokens"])
                    };
                    (prompt, 12 + i, tokens)
                })
            })
            .collect();
        for t in tasks {
            let (prompt, max_tokens, tokens) = t.await.unwrap();
            assert_eq!(tokens, srv.greedy(&prompt, max_tokens), "{prompt}");
        }
        srv.wait_idle().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_disconnect_frees_blocks() {
    within(async {
        let srv = start(FakeModelConfig {
            gated: true,
            ..fake_config()
        })
        .await;
        srv.gate.allow(4);
        let body = json!({"prompt": "A long story", "max_tokens": 400, "stream": true});
        let resp = srv.post(&body).await;
        assert_eq!(resp.status(), 200);
        let mut chunks = resp.bytes_stream();
        let first = chunks.next().await.unwrap().unwrap();
        assert!(first.starts_with(b"data: "));
        assert!(srv.engine.stats().free_blocks < srv.engine.stats().total_blocks);
        drop(chunks);
        srv.gate.open();
        srv.wait_idle().await;
        assert!(
            srv.forward_calls() < 100,
            "aborted long before 400 tokens: {}",
            srv.forward_calls()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_disconnect_frees_blocks() {
    within(async {
        let srv = start(FakeModelConfig {
            gated: true,
            ..fake_config()
        })
        .await;
        srv.gate.allow(2);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let body = json!({"prompt": "A long story", "max_tokens": 400});
        let err = client
            .post(format!("{}/v1/completions", srv.base))
            .json(&body)
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        assert!(
            srv.engine.stats().free_blocks < srv.engine.stats().total_blocks,
            "still running"
        );
        srv.gate.open();
        srv.wait_idle().await;
        assert!(
            srv.forward_calls() < 100,
            "aborted long before 400 tokens: {}",
            srv.forward_calls()
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_first_token_is_a_plain_error_response() {
    within(async {
        let srv = start(FakeModelConfig {
            fail_at_forward: Some(0),
            ..fake_config()
        })
        .await;
        let body = json!({"prompt": "Hi", "max_tokens": 4, "stream": true});
        let resp = srv.post(&body).await;
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        srv.wait_idle().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_mid_stream_ends_with_an_error_event_in_each_dialect() {
    within(async {
        // Forward 0 is the prefill (token 1); forwards 1 and 2 give tokens 2 and 3; 3 fails.
        let srv = start(FakeModelConfig {
            fail_at_forward: Some(3),
            ..fake_config()
        })
        .await;
        let body =
            json!({"prompt": "Hi", "max_tokens": 8, "stream": true, "beam_search_type": null});
        let events: Vec<Value> = sse_payloads(&stream_body(&srv, &body, None).await)
            .iter()
            .map(|s| json(s))
            .collect();
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(events[..3].iter().all(|e| e["event"] == "token_sampled"));
        assert_eq!(events[3]["event"], "error");
        assert_eq!(events[3]["error"]["type"], "server_error");
        srv.wait_idle().await;

        let srv = start(FakeModelConfig {
            fail_at_forward: Some(3),
            ..fake_config()
        })
        .await;
        let body = json!({"prompt": "Hi", "max_tokens": 8, "stream": true});
        let payloads = sse_payloads(&stream_body(&srv, &body, None).await);
        assert_eq!(payloads.len(), 5, "{payloads:?}");
        assert_eq!(json(&payloads[3])["error"]["type"], "server_error");
        assert_eq!(payloads[4], "[DONE]");
        srv.wait_idle().await;
    })
    .await
}
