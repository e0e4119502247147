//! Black-box tests of the OpenAI dialect on the real binary and model: `echo` with prompt
//! log-probabilities (checked against scoring the same tokens with `forced_output_tokens`),
//! `logit_bias`, and `/v1/chat/completions` (template, end of turn, stream == non-stream,
//! chat logprobs, errors).

mod binary;

use binary::*;
use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;
use serde_json::{json, Value};

const PROMPT: &str = "The capital of France is";

fn tokenizer() -> Tokenizer {
    let path = cordial_model::fetch::ensure_default_model().expect("default model");
    Tokenizer::from_gguf(&GgufFile::open(&path).expect("gguf")).expect("tokenizer")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

async fn chat(srv: &Server, body: &Value) -> Value {
    let (status, text) = srv.post_to("/v1/chat/completions", body).await;
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_scores_the_prompt_like_forced_tokens() {
    within(async {
        let ids = tokenizer().encode(PROMPT, true);
        let srv = Server::spawn(&[]).ready().await;
        // Prompt scoring only: lm-evaluation-harness's request shape.
        let v = srv
            .complete(&json!({"prompt": PROMPT, "max_tokens": 0, "echo": true, "logprobs": 1}))
            .await;
        let c = &v["choices"][0];
        assert_eq!(c["text"], PROMPT);
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 0);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        let lp = &c["logprobs"];
        let n = ids.len();
        assert_eq!(lp["tokens"].as_array().unwrap().len(), n, "{lp}");
        assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
        let text: String = lp["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(text, PROMPT);
        let offsets: Vec<u64> = (0..n)
            .map(|i| lp["text_offset"][i].as_u64().unwrap())
            .collect();
        assert_eq!(offsets[0], 0);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        let echoed: Vec<f64> = (1..n)
            .map(|i| lp["token_logprobs"][i].as_f64().unwrap())
            .collect();
        // The same tokens scored by teacher forcing after the first one (decode rows, one at a
        // time, vs prefill rows: equal up to the kernels' int8 noise).
        let teacher = srv
            .complete(
                &json!({"tokens": [ids[0]], "forced_output_tokens": ids[1..],
                "include_output_logprobs": true}),
            )
            .await;
        let forced = floats(&teacher["choices"][0]["logprobs"]);
        assert_eq!(forced.len(), echoed.len());
        for (i, (a, b)) in echoed.iter().zip(&forced).enumerate() {
            assert!(
                (a - b).abs() < 0.02,
                "token {}: echo {a} vs forced {b}",
                i + 1
            );
        }
        // Token-id prompts echo too, and k changes no score.
        let by_ids = srv
            .complete(&json!({"prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 3}))
            .await;
        assert_eq!(
            by_ids["choices"][0]["logprobs"]["token_logprobs"],
            lp["token_logprobs"]
        );
        assert_eq!(by_ids["choices"][0]["text"], PROMPT);
        // With generation: the prompt, then the greedy continuation; streamed, the prompt is
        // the first chunk.
        let body = json!({"prompt": PROMPT, "max_tokens": 3, "echo": true, "logprobs": 2,
            "temperature": 0});
        let v = srv.complete(&body).await;
        let plain = srv
            .complete(&json!({"prompt": PROMPT, "max_tokens": 3, "temperature": 0}))
            .await;
        let gen = plain["choices"][0]["text"].as_str().unwrap();
        assert_eq!(v["choices"][0]["text"], format!("{PROMPT}{gen}"));
        assert_eq!(v["choices"][0]["tokens"], plain["choices"][0]["tokens"]);
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), n + 3);
        assert_eq!(lp["text_offset"][n], PROMPT.len());
        let mut stream = body.clone();
        stream["stream"] = json!(true);
        let (status, raw) = srv.post(&stream).await;
        assert_eq!(status, 200, "{raw}");
        let events = sse_payloads(&raw);
        assert_eq!(events[0]["choices"][0]["text"], PROMPT);
        assert!(
            events[0]["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .unwrap()
                .len()
                == n
        );
        let all: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["text"].as_str())
            .collect();
        assert_eq!(all, v["choices"][0]["text"].as_str().unwrap());
        // logit_bias: banning the greedy token changes the first token.
        let first = plain["choices"][0]["tokens"][0].as_u64().unwrap();
        let banned = srv
            .complete(&json!({"prompt": PROMPT, "max_tokens": 1, "temperature": 0,
                "logit_bias": {first.to_string(): -100}}))
            .await;
        assert_ne!(banned["choices"][0]["tokens"][0], first);
        // best_of 4, n 1: the one returned is the most likely of the four the seed gives.
        let all = srv
            .complete(
                &json!({"prompt": PROMPT, "max_tokens": 6, "n": 4, "seed": 99,
                "logprobs": 0}),
            )
            .await;
        let sums: Vec<f64> = all["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| floats(&c["logprobs"]["token_logprobs"]).iter().sum())
            .collect();
        let best = (0..4)
            .max_by(|&a, &b| sums[a].total_cmp(&sums[b]).then(b.cmp(&a)))
            .unwrap();
        let one = srv
            .complete(
                &json!({"prompt": PROMPT, "max_tokens": 6, "best_of": 4, "n": 1,
                "seed": 99}),
            )
            .await;
        assert_eq!(one["choices"].as_array().unwrap().len(), 1);
        assert_eq!(
            one["choices"][0]["text"], all["choices"][best]["text"],
            "{sums:?}"
        );
        assert_eq!(one["choices"][0]["index"], 0);
        let (status, text) = srv.post(&json!({"prompt": PROMPT, "suffix": "x"})).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("suffix"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_on_the_real_model() {
    within(async {
        let tok = tokenizer();
        let srv = Server::spawn(&[]).ready().await;
        let messages = json!([{"role": "user", "content": "Say hello."}]);
        let body = json!({"messages": messages, "temperature": 0, "max_tokens": 48});
        let v = chat(&srv, &body).await;
        assert_eq!(v["object"], "chat.completion");
        let c = &v["choices"][0];
        assert_eq!(c["message"]["role"], "assistant");
        let content = c["message"]["content"].as_str().unwrap();
        assert!(!content.is_empty());
        assert!(!content.contains("<|im_end|>"));
        // The same prompt rendered by hand through /v1/completions gives the same text: the
        // template, the generation prompt and the end of turn are the model's.
        let rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nSay hello.<|im_end|>\n<|im_start|>assistant\n";
        let ids = tok.encode(rendered, true);
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
        let plain = srv
            .complete(&json!({"tokens": ids, "temperature": 0, "max_tokens": 48}))
            .await;
        assert_eq!(content, plain["choices"][0]["text"]);
        assert_eq!(c["finish_reason"], plain["choices"][0]["finish_reason"]);
        assert_eq!(
            c["finish_reason"], "stop",
            "the model ends its turn within 48 tokens"
        );
        // Streamed: role chunk, then deltas that add up to the same content; usage last.
        let mut s = body.clone();
        s["stream"] = json!(true);
        s["stream_options"] = json!({"include_usage": true});
        let (status, raw) = srv.post_to("/v1/chat/completions", &s).await;
        assert_eq!(status, 200, "{raw}");
        let events = sse_payloads(&raw);
        assert_eq!(events[0]["object"], "chat.completion.chunk");
        assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
        let streamed: String = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(streamed, content);
        let last = events.last().unwrap();
        assert_eq!(last["usage"], v["usage"]);
        assert!(raw.ends_with("data: [DONE]\n\n"));
        // n, seeds, stop and chat logprobs.
        let v = chat(
            &srv,
            &json!({"messages": messages, "n": 2, "seed": 7, "max_tokens": 5,
                "logprobs": true, "top_logprobs": 3, "presence_penalty": 0.5}),
        )
        .await;
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        for c in v["choices"].as_array().unwrap() {
            let content = c["logprobs"]["content"].as_array().unwrap();
            assert!(!content.is_empty());
            let bytes: Vec<u8> = content
                .iter()
                .flat_map(|t| t["bytes"].as_array().unwrap().clone())
                .map(|b| b.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                c["message"]["content"].as_str().unwrap(),
                "token bytes add up to the content, even where a character spans tokens"
            );
            for t in content {
                let top = t["top_logprobs"].as_array().unwrap();
                assert_eq!(top.len(), 3);
                assert!(t["logprob"].as_f64().unwrap() <= 0.0);
            }
        }
        let again = chat(
            &srv,
            &json!({"messages": messages, "n": 2, "seed": 7, "max_tokens": 5,
                "logprobs": true, "top_logprobs": 3, "presence_penalty": 0.5}),
        )
        .await;
        assert_eq!(again["choices"], v["choices"], "seeded replay");
        // response_format in chat: a JSON schema the content must satisfy.
        let (status, text) = srv
            .post_to(
                "/v1/chat/completions",
                &json!({"messages": [{"role": "user", "content": "Give me a person as JSON."}],
                    "max_tokens": 64, "temperature": 0,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {
                        "type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                        "age": {"type": "integer", "minimum": 0, "maximum": 99}},
                        "required": ["name", "age"], "additionalProperties": false}}}}),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let content: Value =
            serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
        assert!(content["name"].is_string() && content["age"].is_u64(), "{content}");
        // Errors in OpenAI's shape with 400.
        for (bad, param) in [
            (json!({"messages": []}), "messages"),
            (json!({"messages": [{"role": "user", "content": "x"}], "n": 0}), "n"),
            (json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}), "tools"),
            (json!({"messages": [{"role": "user", "content": "x".repeat(40000)}]}), "messages"),
            // The completions path decides `response_format` for chat too.
            (json!({"messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "regex", "schema": "(unclosed"}}), "response_format"),
        ] {
            let (status, text) = srv.post_to("/v1/chat/completions", &bad).await;
            assert_eq!(status, 400, "{text}");
            let e: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(e["error"]["param"], param, "{text}");
            assert_eq!(e["error"]["type"], "invalid_request_error");
        }
    })
    .await;
}
