//! Black-box test on a second real model: the `cordial` binary serving Gemma 3 270M Q4_K_M
//! (gemma3 architecture, SentencePiece tokenizer, K-quant weights) greedily reproduces
//! llama.cpp's tokens (crates/model/tests/fixtures/gemma3-270m-q4_k_m/greedy.jsonl) as long as
//! llama.cpp's choice was clear (top-2 margin over 0.3 nats; past a near-tie either may win).

mod binary;

use std::path::PathBuf;

use binary::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gemma3_greedy_matches_llamacpp() {
    let path = cordial_model::fetch::ensure_model(&cordial_model::fetch::GEMMA3_270M)
        .expect("gemma3 model");
    let server = Server::spawn(&["--model", path.to_str().unwrap(), "--threads", "2"])
        .ready()
        .await;
    let fixture = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("../model/tests/fixtures/gemma3-270m-q4_k_m/greedy.jsonl");
    let text = std::fs::read_to_string(fixture).unwrap();
    let mut compared = 0;
    for line in text.lines().take(6) {
        let case: Value = serde_json::from_str(line).unwrap();
        let want: Vec<u64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let clear = case["steps"]
            .as_array()
            .unwrap()
            .iter()
            .take_while(|s| {
                let top = s["top"].as_array().unwrap();
                top[0][1].as_f64().unwrap() - top[1][1].as_f64().unwrap() > 0.3
            })
            .count()
            .min(16);
        if clear == 0 {
            continue;
        }
        let body = within(server.complete(&json!({
            "prompt": case["prompt"],
            "max_tokens": clear,
            "temperature": 0,
            "ignore_eos": true,
        })))
        .await;
        let got: Vec<u64> = body["choices"][0]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, want[..clear], "prompt {}", case["prompt"]);
        compared += clear;
    }
    assert!(compared >= 6, "only {compared} tokens compared");
}
