//! `/v1/chat/completions` in process: the real router, tokenizer and chat template over the fake
//! model. The content is the fake model's greedy continuation of the rendered conversation;
//! streams carry the same content in OpenAI's chunk shape.

mod common;

use common::*;
use cordial_engine::EngineHandle;
use cordial_server::{AppState, Serving};
use cordial_testkit::fake_model::FakeModel;
use serde_json::{json, Map, Value};

/// The conversation as the server renders it, tokenized.
fn rendered_ids(messages: &Value) -> Vec<u32> {
    let tok = tokenizer();
    let tpl = cordial_server::state::chat_template(&tok).expect("the default model has a template");
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
