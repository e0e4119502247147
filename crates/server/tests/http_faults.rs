//! Fault tests: invalid UTF-8, deeply nested JSON, huge numbers, every field with every wrong
//! type, and a slow reader that must neither lose its stream nor hold up other clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cordial_server::protocol::CompletionRequest;
use futures::StreamExt;
use serde_json::{json, Value};

async fn raw(srv: &TestServer, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = srv
        .client
        .post(format!("{}{path}", srv.base))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let v =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    (status, v)
}

const POST_PATHS: [&str; 3] = ["/v1/completions", "/v1/tokenize", "/v1/detokenize"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_with_an_error_body() {
    within(async {
        let srv = start(fake_config()).await;
        let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let nested_obj = format!("{{\"prompt\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
        let bodies: Vec<Vec<u8>> = vec![
            b"{\"prompt\": \"\xff\xfe bad utf-8\"}".to_vec(),
            b"\xc3\x28".to_vec(),
            b"{\"prompt\": \"ok\"".to_vec(),
            nested.into_bytes(),
            nested_obj.into_bytes(),
            b"{\"prompt\": \"x\", \"max_tokens\": 1e999999}".to_vec(),
            b"\x00\x00\x00".to_vec(),
        ];
        for path in POST_PATHS {
            for body in &bodies {
                let (status, v) = raw(&srv, path, body.clone()).await;
                assert!(
                    (400..500).contains(&status),
                    "{path} {:?}: {status} {v}",
                    String::from_utf8_lossy(&body[..body.len().min(40)])
                );
                assert!(v["error"]["message"].is_string(), "{v}");
            }
        }
        // A lone surrogate escape is valid JSON syntax but not a Rust string.
        let (status, _) = raw(&srv, "/v1/completions", br#"{"prompt": "\ud800"}"#.to_vec()).await;
        assert!((400..500).contains(&status));
        srv.wait_idle().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_with_every_wrong_type_is_a_4xx_naming_it() {
    within(async {
        let srv = start(fake_config()).await;
        let wrong: Vec<Value> = vec![
            json!({"nested": {"deeper": [1, 2]}}),
            json!([[["x"]]]),
            json!("a string"),
            json!(true),
            json!(-1),
            json!(1.5),
            json!(18446744073709551616.0),
            json!(1e300),
            json!(-1e300),
            json!(9_223_372_036_854_775_807_i64),
        ];
        let mut counts = std::collections::BTreeMap::<u16, u32>::new();
        for field in CompletionRequest::FIELDS.iter().map(|f| &f.name) {
            for value in &wrong {
                let mut body = json!({"prompt": "Hi", "max_tokens": 2});
                body[*field] = value.clone();
                let resp = srv.post(&body).await;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap();
                assert!(!text.contains("server_error"), "{field}={value}: {text}");
                // `stream: true` (a right type) answers with SSE.
                let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                *counts.entry(status).or_default() += 1;
                assert!(status < 500, "{field}={value}: {status} {v}");
                if status == 422 || status == 400 {
                    let param = v["error"]["param"].as_str().unwrap_or_default();
                    let message = v["error"]["message"].as_str().unwrap();
                    assert!(!message.is_empty(), "{v}");
                    // The error names the field (or, for inputs, the input that replaced it).
                    if param != *field {
                        assert!(
                            message.contains(*field) || ["prompt", "tokens"].contains(&param),
                            "{field}={value}: {v}"
                        );
                    }
                }
            }
        }
        eprintln!("statuses: {counts:?}");
        assert!(
            counts.get(&422).copied().unwrap_or(0) > CompletionRequest::FIELDS.len() as u32 * 5
        );
        srv.wait_idle().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_its_whole_stream_and_holds_up_nobody() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": "Slow", "max_tokens": 200, "ignore_eos": true, "stream": true});
        let resp = srv.post(&body).await;
        assert_eq!(resp.status(), 200);
        let mut chunks = resp.bytes_stream();
        let mut text = Vec::from(chunks.next().await.unwrap().unwrap());
        // While it does not read, others are served at full speed.
        let started = Instant::now();
        for _ in 0..5 {
            let (status, v) = srv
                .post_json(&json!({"prompt": "Fast", "max_tokens": 4}))
                .await;
            assert_eq!(status, 200, "{v}");
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(500)).await;
        while let Some(chunk) = chunks.next().await {
            text.extend_from_slice(&chunk.unwrap());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let text = String::from_utf8(text).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert_eq!(text.matches("\"token\":").count(), 200);
        srv.wait_idle().await;
    })
    .await
}
