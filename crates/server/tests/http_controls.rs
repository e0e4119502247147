//! In-process HTTP tests of the decoding controls over the fake model and the real tokenizer:
//! stop phrases (JSON and both stream dialects), logprobs, logits, forced output, timeouts.

mod common;

use std::time::Duration;

use common::*;
use cordial_testkit::fake_model::FakeModelConfig;
use serde_json::{json, Value};

/// The text of choice 0 from a streamed body, in either dialect; and the final event/chunk.
async fn streamed_text(srv: &TestServer, body: &Value) -> (String, Vec<Value>) {
    let resp = srv.post(body).await;
    assert_eq!(resp.status(), 200);
    let raw = resp.text().await.unwrap();
    let events: Vec<Value> = sse_payloads(&raw)
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| json(p))
        .collect();
    let text = events
        .iter()
        .filter(|e| e["event"] == "token_sampled" || e["object"] == "text_completion")
        .filter_map(|e| e["text"].as_str().or(e["choices"][0]["text"].as_str()))
        .collect();
    (text, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_phrases_cut_the_text_in_every_mode() {
    within(async {
        let srv = start(fake_config()).await;
        let prompt = "Say this is a test!";
        let tokens = srv.greedy(prompt, 24);
        let full = tokenizer().decode(&tokens, true);
        // A phrase made of the text of tokens 6 and 7 (maybe starting mid-token is fine too).
        let start = tokenizer().decode(&tokens[..6], true).len();
        let end = tokenizer().decode(&tokens[..8], true).len();
        let phrase = &full[start + 1..end];
        let cut = full.find(phrase).unwrap();
        let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0, "stop": [phrase, "\u{1F600}never"]});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        assert_eq!(c["text"], &full[..cut], "phrase {phrase:?} in {full:?}");
        assert_eq!(c["finish_reason"], "stop");
        let kept = ids(&c["tokens"]);
        assert!(kept.len() >= 7 && kept.len() < 24, "{kept:?}");
        assert_eq!(kept, tokens[..kept.len()], "the tokens that produced the phrase stay");
        assert!(tokenizer().decode(&kept, true).contains(phrase));
        assert_eq!(v["usage"]["completion_tokens"], kept.len());
        for extra in [json!({"stream": true}), json!({"stream": true, "early_stopping": false})] {
            let mut b = body.clone();
            b.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let (text, events) = streamed_text(&srv, &b).await;
            assert_eq!(text, c["text"].as_str().unwrap(), "stream = non-stream for {b}");
            let last = events.last().unwrap();
            if last["event"] == "complete" {
                assert_eq!(last["choices"][0]["text"], c["text"]);
                assert_eq!(last["choices"][0]["finish_reason"], "stop");
            }
        }
        let stats = srv.wait_idle().await;
        assert!(
            srv.forward_calls() < 3 * 24,
            "stopped choices stop sampling: {stats:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_and_logits_have_their_shapes() {
    within(async {
        let srv = start(fake_config()).await;
        let body = json!({"prompt": "Hi there", "max_tokens": 5, "logprobs": 3, "n": 2, "seed": 4});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        for c in v["choices"].as_array().unwrap() {
            let lp = &c["logprobs"];
            let toks = ids(&c["tokens"]);
            assert_eq!(lp["tokens"].as_array().unwrap().len(), toks.len());
            let offsets: Vec<u64> = lp["text_offset"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert!(
                offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0,
                "{offsets:?}"
            );
            for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
                let top = top.as_object().unwrap();
                assert!((3..=4).contains(&top.len()), "{top:?}");
                let chosen = lp["token_logprobs"][i].as_f64().unwrap();
                assert!(chosen <= 0.0);
                assert!(top.values().all(|x| x.as_f64().unwrap() <= 0.0));
            }
        }
        // Friendli floats, and logits rows of the vocabulary's width.
        let body = json!({"prompt": "Hi", "max_tokens": 2, "include_output_logprobs": true,
            "include_output_logits": true, "temperature": 0});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        let lps: Vec<f64> = c["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(lps.len(), 2);
        let rows = c["logits"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows
            .iter()
            .all(|r| r.as_array().unwrap().len() == srv.config.vocab_size));
        // The reported logprob is log_softmax of the reported row at the token.
        let row: Vec<f64> = rows[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let max = row.iter().copied().fold(f64::MIN, f64::max);
        let z: f64 = row.iter().map(|x| (x - max).exp()).sum();
        let t = ids(&c["tokens"])[0] as usize;
        assert!((row[t] - max - z.ln() - lps[0]).abs() < 1e-4);
        // Legacy stream tokens carry their logprob.
        let mut b = body.clone();
        b["stream"] = json!(true);
        let (_, events) = streamed_text(&srv, &b).await;
        assert_eq!(events[0]["event"], "token_sampled");
        assert!((events[0]["logprob"].as_f64().unwrap() - lps[0]).abs() < 1e-6);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_output_is_exact_and_scored() {
    within(async {
        let srv = start(fake_config()).await;
        let prompt = tokenizer().encode("The answer is", true);
        let eos = tokenizer().eog_tokens()[0];
        let forced = vec![330u32, eos, 1000];
        let body = json!({"tokens": [prompt.clone(), prompt], "forced_output_tokens": forced,
            "include_output_logprobs": true, "temperature": 0, "n": 2});
        let (status, v) = srv.post_json(&body).await;
        assert_eq!(status, 200, "{v}");
        let choices = v["choices"].as_array().unwrap();
        assert_eq!(choices.len(), 4);
        for c in choices {
            assert_eq!(ids(&c["tokens"]), forced, "EOS is an ordinary forced token");
            assert_eq!(c["finish_reason"], "length");
            assert_eq!(c["logprobs"].as_array().unwrap().len(), 3);
            assert_eq!(c["logprobs"], choices[0]["logprobs"]);
        }
        assert_eq!(v["usage"]["completion_tokens"], 12);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_are_429_before_the_stream_and_an_error_event_after() {
    within(async {
        let srv = start(FakeModelConfig {
            gated: true,
            ..fake_config()
        })
        .await;
        for stream in [false, true] {
            let body = json!({"prompt": "x", "max_tokens": 8, "timeout_microseconds": 30_000, "stream": stream});
            let client = srv.client.clone();
            let url = format!("{}/v1/completions", srv.base);
            let req = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });
            // Once the request's first forward waits at the gate, let its deadline pass.
            assert!(srv.gate.wait_parked(Duration::from_secs(20)).is_some());
            tokio::time::sleep(Duration::from_millis(80)).await;
            srv.gate.allow(1);
            let resp = req.await.unwrap();
            assert_eq!(resp.status(), 429);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["param"], "timeout_microseconds", "{v}");
            srv.wait_idle().await;
        }
        // A deadline that passes mid-stream ends the stream with an error event (the legacy
        // dialect: `timeout_microseconds` is a legacy key).
        let body = json!({"prompt": "x", "max_tokens": 8, "timeout_microseconds": 1_000_000, "stream": true});
        let client = srv.client.clone();
        let url = format!("{}/v1/completions", srv.base);
        let req = tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() });
        srv.gate.allow(2);
        let resp = req.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(srv.gate.wait_parked(Duration::from_secs(20)).is_some());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        srv.gate.open();
        let raw = resp.text().await.unwrap();
        let payloads = sse_payloads(&raw);
        assert_eq!(json(&payloads[0])["event"], "token_sampled", "{raw}");
        let err = json(payloads.last().unwrap());
        assert_eq!(err["event"], "error", "{raw}");
        assert_eq!(err["error"]["param"], "timeout_microseconds", "{raw}");
        srv.wait_idle().await;
    })
    .await
}
