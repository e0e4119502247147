//! `/v1/chat/completions` in process: the real router, tokenizer and chat template over the fake
//! model. The content is the fake model's greedy continuation of the rendered conversation;
//! streams carry the same content in OpenAI's chunk shape.

mod common;

use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;
use common::*;
use cordial_engine::{EngineConfig, EngineHandle};
use cordial_server::error::ApiError;
use cordial_server::protocol::Usage;
use cordial_server::routes::{generation_route, routes, with_layers, Chat, SseWriter, WireShape};
use cordial_server::stream::{ChoiceResult, Output, StreamMeta};
use cordial_server::validate::ValidRequest;
use cordial_server::{AppState, ServerOptions, Serving};
use cordial_testkit::fake_model::{FakeModel, FakeModelConfig};
use serde_json::{json, Map, Value};

/// The conversation as the server renders it, tokenized.
fn rendered_ids(messages: &Value) -> Vec<u32> {
    let tok = tokenizer();
    let tpl =
        cordial_server::state::chat_template(&tok, None).expect("the default model has a template");
    let text = tpl.render(messages, true, &Map::new()).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n"), "{text:?}");
    tok.encode(&text, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_content_is_the_continuation_of_the_rendered_conversation() {
    within(async {
        let srv = start(fake_config()).await;
        let messages = json!([{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"}]);
        let ids = rendered_ids(&messages);
        let want = srv
            .config
            .greedy_reference(&ids, 6, tokenizer().eog_tokens());
        let resp = srv
            .post_to(
                "/v1/chat/completions",
                &json!({"model": NAME, "messages": messages,
                "max_tokens": 6, "temperature": 0}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], NAME);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        assert_eq!(v["usage"]["completion_tokens"], want.len());
        let c = &v["choices"][0];
        assert_eq!(c["message"]["role"], "assistant");
        assert_eq!(c["message"]["content"], tokenizer().decode(&want, true));
        assert!(c["logprobs"].is_null());
        srv.wait_idle().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_has_role_chunks_deltas_finish_and_usage() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"messages": [{"role": "user", "content": "Hello there"}], "n": 2,
            "seed": 3, "max_tokens": 5, "logprobs": true, "top_logprobs": 1});
        let whole: Value = srv
            .post_to("/v1/chat/completions", &body)
            .await
            .json()
            .await
            .unwrap();
        let mut s = body.clone();
        s["stream"] = json!(true);
        s["stream_options"] = json!({"include_usage": true});
        let resp = srv.post_to("/v1/chat/completions", &s).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let raw = resp.text().await.unwrap();
        let payloads = sse_payloads(&raw);
        assert_eq!(payloads.last().unwrap(), "[DONE]");
        let events: Vec<Value> = payloads[..payloads.len() - 1]
            .iter()
            .map(|p| json(p))
            .collect();
        for (i, e) in events[..2].iter().enumerate() {
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["choices"][0]["index"], i);
            assert_eq!(
                e["choices"][0]["delta"],
                json!({"role": "assistant", "content": ""})
            );
        }
        let mut content = [String::new(), String::new()];
        let mut finish = [Value::Null, Value::Null];
        let mut lps = [Vec::new(), Vec::new()];
        for e in &events[2..events.len() - 1] {
            let c = &e["choices"][0];
            let i = c["index"].as_u64().unwrap() as usize;
            assert!(c["delta"].get("role").is_none());
            if let Some(t) = c["delta"]["content"].as_str() {
                content[i].push_str(t);
                lps[i].extend(c["logprobs"]["content"].as_array().unwrap().clone());
            }
            if !c["finish_reason"].is_null() {
                finish[i] = c["finish_reason"].clone();
            }
        }
        for i in 0..2 {
            let c = &whole["choices"][i];
            assert_eq!(
                content[i],
                c["message"]["content"].as_str().unwrap(),
                "choice {i}"
            );
            assert_eq!(finish[i], c["finish_reason"]);
            assert_eq!(&lps[i], c["logprobs"]["content"].as_array().unwrap());
        }
        let usage = events.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"], whole["usage"]);
        srv.wait_idle().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_errors_loading_unknown_model_and_no_template() {
    within(async {
        let client = reqwest::Client::new();
        let ok_body = json!({"messages": [{"role": "user", "content": "x"}]});
        // Loading: 503 with Retry-After.
        let state = AppState::new(vec!["m".to_owned()]);
        let (base, task) = bind(state).await;
        let resp = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&ok_body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert!(resp.headers().contains_key("retry-after"));
        task.abort();
        // A model without a chat template: 400 naming `messages`.
        let config = fake_config();
        let state = AppState::new(vec!["m".to_owned()]);
        let engine =
            EngineHandle::spawn(Box::new(FakeModel::new(config.clone())), Default::default());
        let serving = Serving {
            chat: Err("this model has no chat template".into()),
            engine,
            tokenizer: tokenizer(),
            max_context: config.max_context,
            vocab_size: config.vocab_size,
            hidden_size: FAKE_HIDDEN_SIZE,
            grammar: None,
            lora: None,
            kv_cache_dtype: cordial_model::KvDtype::F16,
        };
        assert!(state.set_serving(serving).is_ok());
        let (base, task) = bind(state).await;
        let resp = client
            .post(format!("{base}/v1/chat/completions"))
            .json(&ok_body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["param"], "messages");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no chat template"));
        task.abort();
        // Unknown model: 404; malformed JSON: 400.
        let srv = start(fake_config()).await;
        let resp = srv
            .post_to(
                "/v1/chat/completions",
                &json!({"model": "nope", "messages": []}),
            )
            .await;
        assert_eq!(resp.status(), 404);
        let resp = srv
            .client
            .post(format!("{}/v1/chat/completions", srv.base))
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400);
    })
    .await;
}

/// Chat goes through the completions pipeline: it is counted under its own route and feeds
/// the TTFT, inter-token and token metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_requests_are_observed_like_completions() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "ignore_eos": true});
        let resp = srv.post_to("/v1/chat/completions", &body).await;
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let resp = srv.post_to("/v1/chat/completions", &streamed).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        srv.wait_idle().await;
        let text = scrape(&srv).await;
        let counted = "cordial_requests_total{route=\"/v1/chat/completions\",status=\"200\",team=\"none\"} 2\n";
        assert!(text.contains(counted), "{text}");
        assert!(!text.contains("route=\"other\""), "{text}");
        assert_eq!(metric(&text, "cordial_time_to_first_token_seconds_count"), 2.0);
        assert_eq!(metric(&text, "cordial_inter_token_latency_seconds_count"), 6.0);
        assert_eq!(metric(&text, "cordial_completion_tokens_total"), 8.0);
        assert_eq!(metric(&text, "cordial_prompt_tokens_total"), 2.0 * prompt);
    })
    .await;
}

/// `--default-timeout` applies to chat: 429 `rate_limit_error`, not worth retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_gets_the_default_timeout() {
    within(async {
        let options = ServerOptions {
            default_timeout: Some(Duration::from_millis(300)),
            ..ServerOptions::default()
        };
        let config = FakeModelConfig {
            gated: true,
            ..fake_config()
        };
        let srv = start_full(config, EngineConfig::default(), options).await;
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50,
            "ignore_eos": true});
        let pending = tokio::spawn({
            let (client, base) = (srv.client.clone(), srv.base.clone());
            async move {
                let r = client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let retry = r.headers().get("x-should-retry").cloned();
                (r.status().as_u16(), retry, r.json::<Value>().await.unwrap())
            }
        });
        assert!(srv.gate.wait_parked(Duration::from_secs(10)).is_some());
        tokio::time::sleep(Duration::from_millis(500)).await;
        srv.gate.open();
        let (status, retry, v) = pending.await.unwrap();
        assert_eq!(status, 429, "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error");
        assert_eq!(retry.unwrap(), "false");
        srv.wait_idle().await;
    })
    .await;
}

/// The chat shape with an injected fault: its stream writer panics on the first token, its
/// JSON body always.
#[derive(Clone)]
struct PanickingChat;

impl WireShape for PanickingChat {
    fn validate(&self, s: &AppState, h: &HeaderMap, b: &[u8]) -> Result<ValidRequest, ApiError> {
        Chat.validate(s, h, b)
    }
    fn response_id(&self) -> String {
        Chat.response_id()
    }
    fn body(&self, _: &ValidRequest, _: StreamMeta, _: Vec<ChoiceResult>, _: Usage) -> Response {
        panic!("injected panic in a chat body")
    }
    fn writer(&self, valid: &ValidRequest, meta: StreamMeta) -> SseWriter {
        let SseWriter {
            preamble,
            mut render,
        } = Chat.writer(valid, meta);
        let render = move |out: &Output| {
            assert!(
                !matches!(out, Output::Token { .. }),
                "injected panic in a chat stream"
            );
            render(out)
        };
        SseWriter {
            preamble,
            render: Box::new(render),
        }
    }
}

/// A panic while answering a chat request: 500 before the body, an error event ending the
/// stream after it; the request's blocks are freed and the server goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_chat_answer_is_isolated() {
    within(async {
        let config = fake_config();
        let engine =
            EngineHandle::spawn(Box::new(FakeModel::new(config.clone())), Default::default());
        let state = AppState::new(vec![NAME.to_owned()]);
        let serving = Serving {
            chat: cordial_server::state::chat_template(&tokenizer(), None),
            engine: engine.clone(),
            tokenizer: tokenizer(),
            max_context: config.max_context,
            vocab_size: config.vocab_size,
            hidden_size: FAKE_HIDDEN_SIZE,
            grammar: None,
            lora: None,
            kv_cache_dtype: cordial_model::KvDtype::F16,
        };
        assert!(state.set_serving(serving).is_ok());
        let app = with_layers(
            routes().route("/v1/chat/panicking", generation_route(PanickingChat)),
            state,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
            "ignore_eos": true});
        let post = |path: &'static str, body: Value| {
            client.post(format!("{base}{path}")).json(&body).send()
        };
        let resp = post("/v1/chat/panicking", body.clone()).await.unwrap();
        assert_eq!(resp.status(), 500);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let resp = post("/v1/chat/panicking", streamed.clone()).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let events = sse_payloads(&text);
        assert_eq!(events.last().unwrap(), "[DONE]", "{text}");
        let err = json(&events[events.len() - 2]);
        assert_eq!(err["error"]["type"], "server_error", "{text}");
        assert!(!text.contains("\"finish_reason\":\"length\""), "{text}");
        // The server goes on, on the real route and the faulty one's engine requests are gone.
        let resp = post("/v1/chat/completions", streamed).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while engine.stats().free_blocks != engine.stats().total_blocks {
            assert!(std::time::Instant::now() < deadline, "blocks not freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = scrape_at(&client, &base).await;
        assert_eq!(metric(&text, "cordial_handler_panics_total"), 2.0);
        task.abort();
        engine.shutdown();
    })
    .await;
}
