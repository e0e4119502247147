//! In-process HTTP tests of the non-streamed API, errors, `/health` and `/v1/models`, over the
//! fake model and the default model's real tokenizer.

mod common;

use common::*;
use cordial_engine::EngineConfig;
use cordial_server::AppState;
use cordial_testkit::fake_model::{FakeEos, FakeModelConfig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_stream_body_has_the_superset_shape() {
    within(async {
        let srv = start(fake_config()).await;
        let prompt = "Say this is a test!";
        let body = json!({"model": NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        let id = v["id"].as_str().unwrap();
        assert!(id.starts_with("cmpl-") && id.len() == 37, "{id}");
        assert_eq!(v["object"], "text_completion");
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(v["model"], NAME);
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 1);
        let c = &choices[0];
        assert_eq!(c["index"], 0);
        assert!(c["seed"].is_u64());
        assert_eq!(c["finish_reason"], "length");
        assert!(c["logprobs"].is_null());
        let tokens = ids(&c["tokens"]);
        assert_eq!(
            tokens,
            srv.greedy(prompt, 16),
            "greedy = the fake model's argmax path"
        );
        assert_eq!(c["text"], tokenizer().decode(&tokens, true));
        let prompt_len = tokenizer().encode(prompt, true).len() as u64;
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": prompt_len, "completion_tokens": 16,
            "total_tokens": prompt_len + 16})
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eos_ends_with_stop_and_is_excluded() {
    within(async {
        let prompt = "Hello there";
        let prompt_len = tokenizer().encode(prompt, true).len();
        let eos = tokenizer().eog_tokens()[0];
        let config = FakeModelConfig {
            eos: Some(FakeEos {
                token: eos,
                from_len: prompt_len + 3,
            }),
            ..fake_config()
        };
        let srv = start(config).await;
        let (status, v) = srv
            .post_json(&json!({"prompt": prompt, "max_tokens": 10, "temperature": 0.7}))
            .await;
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["finish_reason"], "stop");
        assert_eq!(ids(&c["tokens"]).len(), 3);
        assert!(!ids(&c["tokens"]).contains(&eos));
        assert_eq!(v["usage"]["completion_tokens"], 3);
        // ignore_eos: EOS is an ordinary token, the request runs to max_tokens.
        let body = json!({"prompt": prompt, "max_tokens": 5, "temperature": 0, "ignore_eos": true});
        let (_, v) = srv.post_json(&body).await;
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(ids(&v["choices"][0]["tokens"])[3], eos);
    })
    .await
}

/// Request, status, `param`, `code`.
#[rustfmt::skip]
fn error_cases() -> Vec<(serde_json::Value, u16, &'static str, Option<&'static str>)> {
    vec![
        // A body over 64 KiB is validated off the async workers, with the same answers.
        (json!({"prompt": "word ".repeat(20_000), "max_tokens": 1}), 422, "prompt", Some("context_length_exceeded")),
        (json!({"prompt": "x", "tokens": [1, 2], "max_tokens": 2}), 422, "tokens", None),
        (json!({"max_tokens": 4}), 422, "prompt", None),
        (json!({"model": "nope", "prompt": "x", "max_tokens": 2}), 404, "model", Some("model_not_found")),
        (json!({"prompt": "x", "stream": "yes", "max_tokens": 2}), 422, "stream", None),
        (json!({"prompt": "x", "max_tokens": 2, "stop": [""]}), 422, "stop", None),
        (json!({"prompt": "x", "max_tokens": 2, "suffix": "y"}), 400, "suffix", None),
        (json!({"prompt": "x", "max_tokens": 2, "num_beams": 32}), 422, "num_beams", None),
        (json!({"prompt": "x", "max_tokens": 600}), 422, "max_tokens", Some("context_length_exceeded")),
        (json!({"tokens": [1, 49152], "max_tokens": 2}), 422, "tokens", None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_have_status_and_param() {
    within(async {
        let srv = start(fake_config()).await;
        let resp = srv
            .client
            .post(format!("{}/v1/completions", srv.base))
            .body("{\"prompt\":")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));
        for (body, status, param, code) in error_cases() {
            let (got, v) = srv.post_json(&body).await;
            assert_eq!(got, status, "{body} -> {v}");
            assert_eq!(v["error"]["param"], param, "{body} -> {v}");
            assert_eq!(v["error"]["code"].as_str(), code, "{body} -> {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(param),
                "{v}"
            );
        }
        let big = "x".repeat(9 * 1024 * 1024);
        let (status, v) = srv
            .post_json(&json!({"prompt": big, "max_tokens": 1}))
            .await;
        assert_eq!(status, 413, "{v}");
        assert!(v["error"]["message"].is_string());
        srv.wait_idle().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_and_alias_serves() {
    within(async {
        let srv = start(fake_config()).await;
        for path in [
            "/v1/completions",
            "/serverless/v1/completions",
            "/dedicated/v1/completions",
        ] {
            for model in [json!(NAME), json!(ALIAS), json!(null)] {
                let body =
                    json!({"model": model, "prompt": "Hi", "max_tokens": 2, "temperature": 0});
                let resp = srv.post_to(path, &body).await;
                assert_eq!(resp.status(), 200, "{path} {model}");
                let v: serde_json::Value = resp.json().await.unwrap();
                let expected = if model.is_null() { json!(NAME) } else { model };
                assert_eq!(v["model"], expected);
                assert_eq!(ids(&v["choices"][0]["tokens"]), srv.greedy("Hi", 2));
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friendli_client_all_null_body_is_accepted() {
    within(async {
        let srv = start(fake_config()).await;
        let mut body = serde_json::Map::new();
        for key in [
            "model",
            "tokens",
            "timeout_microseconds",
            "max_total_tokens",
            "min_tokens",
            "min_total_tokens",
            "n",
            "num_beams",
            "length_penalty",
            "early_stopping",
            "no_repeat_ngram",
            "encoder_no_repeat_ngram",
            "repetition_penalty",
            "encoder_repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "temperature",
            "top_k",
            "top_p",
            "stop",
            "stop_tokens",
            "seed",
            "token_index_to_replace",
            "embedding_to_replace",
            "beam_search_type",
            "beam_compat_pre_normalization",
            "beam_compat_no_post_normalization",
            "bad_words",
            "bad_word_tokens",
            "include_output_logits",
            "include_output_logprobs",
            "forced_output_tokens",
            "eos_token",
            "soft_prompts",
            "position_ids",
            "generation_offset",
        ] {
            body.insert(key.into(), serde_json::Value::Null);
        }
        body.insert("stream".into(), json!(false));
        body.insert("prompt".into(), json!("Hi"));
        body.insert("max_tokens".into(), json!(8));
        let (status, v) = srv.post_json(&serde_json::Value::Object(body)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 8);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_with_seeds_is_reproducible() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": "Once upon a time", "max_tokens": 12, "n": 3, "seed": [11, 22, 33],
            "temperature": 0.8});
        let (status, a) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{a}");
        let seeds: Vec<u64> = a["choices"].as_array().unwrap().iter().map(|c| c["seed"].as_u64().unwrap()).collect();
        assert_eq!(seeds, [11, 22, 33]);
        let indices: Vec<u64> = a["choices"].as_array().unwrap().iter().map(|c| c["index"].as_u64().unwrap()).collect();
        assert_eq!(indices, [0, 1, 2]);
        let (_, b) = srv.post_json(&body).await;
        assert_eq!(a["choices"], b["choices"], "same seeds, same choices");
        let texts: Vec<&str> = a["choices"].as_array().unwrap().iter().map(|c| c["text"].as_str().unwrap()).collect();
        assert!(texts[0] != texts[1] || texts[1] != texts[2], "different seeds sample differently: {texts:?}");
        // Replaying choice 1's seed alone reproduces it.
        let one = json!({"prompt": "Once upon a time", "max_tokens": 12, "seed": 22, "temperature": 0.8});
        let (_, c) = srv.post_json(&one).await;
        assert_eq!(c["choices"][0]["tokens"], a["choices"][1]["tokens"]);
        // A seed left out is returned, and replaying it reproduces the text.
        let free = json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0});
        let (_, d) = srv.post_json(&free).await;
        let seed = d["choices"][0]["seed"].as_u64().unwrap();
        let (_, e) = srv.post_json(&json!({"prompt": "Once upon a time", "max_tokens": 12, "temperature": 1.0,
            "seed": seed})).await;
        assert_eq!(d["choices"][0]["text"], e["choices"][0]["text"]);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompt_batch_indexes_choices_by_prompt_then_n() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": ["Hello", "Goodbye"], "n": 2, "max_tokens": 4, "seed": 5, "temperature": 0.9});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4);
        for (i, c) in choices.iter().enumerate() {
            assert_eq!(c["index"], i);
            assert_eq!(c["seed"], 5 + (i % 2) as u64);
        }
        let alone = json!({"prompt": "Goodbye", "n": 2, "max_tokens": 4, "seed": 5, "temperature": 0.9});
        let (_, w) = srv.post_json(&alone).await;
        assert_eq!(w["choices"][1]["tokens"], choices[3]["tokens"]);
        let p: u64 = ["Hello", "Goodbye"].iter().map(|s| tokenizer().encode(s, true).len() as u64).sum();
        assert_eq!(v["usage"]["prompt_tokens"], p);
        assert_eq!(v["usage"]["completion_tokens"], 16);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_model_is_served() {
    within(async {
        let state = AppState::new(vec!["loading-model".to_owned()]);
        let (base, task) = bind(state).await;
        let client = reqwest::Client::new();
        let resp = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        let resp = client
            .post(format!("{base}/v1/completions"))
            .json(&json!({"prompt": "x", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        let v: serde_json::Value = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["data"][0]["id"], "loading-model");
        task.abort();

        let srv = start(fake_config()).await;
        let resp = srv
            .client
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = srv
            .client
            .get(format!("{}/v1/models", srv.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["object"], "list");
        let names: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(names, [NAME, ALIAS]);
        assert_eq!(v["data"][0]["object"], "model");
        assert_eq!(v["data"][0]["max_model_len"], srv.config.max_context);
        srv.engine.shutdown();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while srv.engine.is_running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let resp = srv
            .client
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503, "a stopped engine is not healthy");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_503_with_retry_after() {
    within(async {
        let config = FakeModelConfig {
            gated: true,
            ..fake_config()
        };
        let engine_config = EngineConfig {
            max_num_seqs: 1,
            max_waiting: 1,
            ..EngineConfig::default()
        };
        let srv = std::sync::Arc::new(start_with(config, engine_config).await);
        let body = json!({"prompt": "x", "max_tokens": 2});
        let first = tokio::spawn({
            let srv = srv.clone();
            let body = body.clone();
            async move { srv.post(&body).await.status() }
        });
        srv.gate
            .wait_parked(std::time::Duration::from_secs(10))
            .expect("the first request runs");
        let second = tokio::spawn({
            let srv = srv.clone();
            let body = body.clone();
            async move { srv.post(&body).await.status() }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while srv.engine.stats().waiting_requests < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                srv.engine.stats()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let resp = srv.post(&body).await;
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        srv.gate.open();
        assert_eq!(first.await.unwrap(), 200);
        assert_eq!(second.await.unwrap(), 200);
        srv.wait_idle().await;
    })
    .await
}
