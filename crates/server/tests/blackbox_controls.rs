//! Black-box tests of the decoding controls: the real binary and the real default model. Each
//! checks an observable effect against the same request without the control.

mod binary;

use binary::*;
use serde_json::{json, Value};

fn tokens(v: &Value) -> Vec<u64> {
    v["choices"][0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

fn text(v: &Value) -> &str {
    v["choices"][0]["text"].as_str().unwrap()
}

fn repeats(seq: &[u64], n: usize) -> bool {
    let mut seen = std::collections::HashSet::new();
    !seq.windows(n).all(|w| seen.insert(w.to_vec()))
}

/// The streamed text of choice 0 in whichever dialect the body selects.
async fn streamed(srv: &Server, body: &Value) -> String {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let (status, raw) = srv.post(&body).await;
    assert_eq!(status, 200, "{raw}");
    sse_payloads(&raw)
        .iter()
        .filter(|e| {
            e["event"] == "token_sampled" || (e["event"].is_null() && !e["choices"].is_null())
        })
        .filter_map(|e| e["text"].as_str().or(e["choices"][0]["text"].as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalties_bans_and_minimum_length_on_the_real_model() {
    within(async {
        let srv = Server::spawn(&["--threads", "1"]).ready().await;
        // no_repeat_ngram: this prompt makes greedy decoding repeat a trigram.
        let prompt = "the the the the the";
        let body = json!({"prompt": prompt, "max_tokens": 24, "temperature": 0});
        let plain = srv.complete(&body).await;
        assert!(repeats(&tokens(&plain), 3), "the plain output must repeat: {plain}");
        // Fed back as the prompt, that repeating output must not be continued by a trigram
        // already in prompt + output.
        let prompt_ids = tokens(&plain);
        let v = srv
            .complete(&json!({"tokens": prompt_ids, "max_tokens": 24, "temperature": 0, "no_repeat_ngram": 3}))
            .await;
        let mut all = prompt_ids.clone();
        all.extend(tokens(&v));
        assert_eq!(all.len(), 48);
        for k in prompt_ids.len()..all.len() {
            let gram = &all[k - 2..=k];
            assert!(!all[..k].windows(3).any(|w| w == gram), "{gram:?} repeated: {all:?}");
        }
        let v = srv
            .complete(&json!({"tokens": prompt_ids, "max_tokens": 24, "temperature": 0}))
            .await;
        let mut all = prompt_ids.clone();
        all.extend(tokens(&v));
        let new_repeat = (prompt_ids.len()..all.len())
            .any(|k| all[..k].windows(3).any(|w| w == &all[k - 2..=k]));
        assert!(new_repeat, "without the control the model repeats: {all:?}");
        // bad_words: a word of the plain output never appears once banned.
        let body = json!({"prompt": "It is very", "max_tokens": 16, "temperature": 0});
        let plain = srv.complete(&body).await;
        let word = text(&plain).split_whitespace().find(|w| w.len() > 3).unwrap().to_owned();
        let mut b = body.clone();
        b["bad_words"] = json!([word.clone()]);
        let v = srv.complete(&b).await;
        assert!(!text(&v).contains(&word), "{word:?} in {v}");
        assert_ne!(tokens(&v), tokens(&plain));
        // min_tokens: a chat answer that ends early goes on to the minimum.
        let body = json!({"prompt": "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\n",
            "max_tokens": 40, "temperature": 0});
        let plain = srv.complete(&body).await;
        let len = tokens(&plain).len();
        assert_eq!(plain["choices"][0]["finish_reason"], "stop", "{plain}");
        let mut b = body.clone();
        b["min_tokens"] = json!(len + 5);
        let v = srv.complete(&b).await;
        assert!(tokens(&v).len() >= len + 5, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], tokens(&v).len());
        // Seeded sampling with every penalty replays exactly.
        let body = json!({"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.8, "seed": 7,
            "repetition_penalty": 1.2, "frequency_penalty": 0.5, "presence_penalty": 0.5,
            "no_repeat_ngram": 2, "min_p": 0.05, "top_k": 40});
        let a = srv.complete(&body).await;
        assert_eq!(srv.complete(&body).await["choices"], a["choices"]);
        assert!(!repeats(&tokens(&a), 2), "{a}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_on_the_real_model_streams_like_it_answers() {
    within(async {
        let srv = Server::spawn(&["--threads", "1"]).ready().await;
        let body =
            json!({"prompt": "The capital of France is", "max_tokens": 12, "temperature": 0});
        let plain = srv.complete(&body).await;
        let full = text(&plain).to_owned();
        let ptoks = tokens(&plain);
        // A stop phrase spanning tokens: the text before it, the tokens that made it kept.
        let nl = full.find('\n').expect("a newline in the plain answer");
        let phrase = format!("{}\n", &full[nl - 1..nl]);
        let mut b = body.clone();
        b["stop"] = json!([phrase]);
        let v = srv.complete(&b).await;
        assert_eq!(text(&v), &full[..nl - 1], "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let kept = tokens(&v);
        assert_eq!(kept[..], ptoks[..kept.len()]);
        assert!(kept.len() < ptoks.len());
        assert_eq!(v["usage"]["completion_tokens"], kept.len());
        for dialect in [json!({}), json!({"include_output_logprobs": false})] {
            let mut s = b.clone();
            s.as_object_mut()
                .unwrap()
                .extend(dialect.as_object().unwrap().clone());
            assert_eq!(streamed(&srv, &s).await, text(&v), "{s}");
        }
        // stop_tokens: the matched tokens are excluded from tokens and text.
        let pair = &ptoks[2..4];
        let mut b = body.clone();
        b["stop_tokens"] = json!([{"tokens": pair}]);
        let v = srv.complete(&b).await;
        assert_eq!(tokens(&v), ptoks[..2], "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(streamed(&srv, &b).await, text(&v));
        // eos_token replaces the model's EOS set.
        let mut b = body.clone();
        b["eos_token"] = json!([ptoks[1]]);
        let v = srv.complete(&b).await;
        assert_eq!(tokens(&v), ptoks[..1], "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_scoring_logprobs_batches_and_timeouts_on_the_real_model() {
    within(async {
        let srv = Server::spawn(&["--threads", "1"]).ready().await;
        let body = json!({"prompt": "The capital of France is", "max_tokens": 6, "temperature": 0,
            "include_output_logprobs": true});
        let greedy = srv.complete(&body).await;
        let mut forced = body.clone();
        forced["forced_output_tokens"] = json!(tokens(&greedy));
        forced.as_object_mut().unwrap().remove("max_tokens");
        let v = srv.complete(&forced).await;
        assert_eq!(tokens(&v), tokens(&greedy));
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(
            v["choices"][0]["logprobs"], greedy["choices"][0]["logprobs"],
            "forced = greedy"
        );
        // OpenAI logprobs: greedy picks the most likely alternative.
        let v = srv
            .complete(
                &json!({"prompt": "The capital of France is", "max_tokens": 4,
            "temperature": 0, "logprobs": 3}),
            )
            .await;
        let lp = &v["choices"][0]["logprobs"];
        for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let best = top
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_f64().unwrap())
                .fold(f64::MIN, f64::max);
            assert!(
                (lp["token_logprobs"][i].as_f64().unwrap() - best).abs() < 1e-6,
                "{v}"
            );
        }
        // Prompt batch × n: index = prompt × n + j; greedy choices of one prompt agree.
        let v = srv
            .complete(
                &json!({"prompt": ["Hello", "Goodbye"], "n": 2, "max_tokens": 4,
            "temperature": 0}),
            )
            .await;
        let choices = v["choices"].as_array().unwrap();
        let idx: Vec<u64> = choices
            .iter()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        assert_eq!(idx, [0, 1, 2, 3]);
        assert_eq!(choices[0]["text"], choices[1]["text"]);
        let alone = srv
            .complete(&json!({"prompt": "Goodbye", "max_tokens": 4, "temperature": 0}))
            .await;
        assert_eq!(choices[2]["text"], alone["choices"][0]["text"]);
        // A 1 ms timeout cannot be met: 429, streamed or not.
        for stream in [false, true] {
            let (status, body) = srv
                .post(&json!({"prompt": "Write a long essay", "max_tokens": 64,
                "timeout_microseconds": 1000, "stream": stream}))
                .await;
            assert_eq!(status, 429, "{body}");
        }
        // The server is still fine afterwards.
        srv.complete(&json!({"prompt": "Hi", "max_tokens": 2}))
            .await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_replacement_changes_the_output_deterministically() {
    within(async {
        let srv = Server::spawn(&["--threads", "1"]).ready().await;
        // Over two KV blocks of 16 tokens, so the prefix cache has full blocks to offer.
        let prompt = "My name is Alice. I am a teacher and I live in a small town near the sea \
                      with my two cats and a garden full of roses. Question: what is my name? Answer: my name is";
        let plain_body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
        let plain_v = srv.complete(&plain_body).await;
        let plain = tokens(&plain_v);
        let last = plain_v["usage"]["prompt_tokens"].as_u64().unwrap() - 1;
        assert!(last >= 32, "the prompt must fill two KV blocks");
        // SmolLM2's hidden size is 576: a replaced position takes 576 floats. Position 3 (the
        // name) lies in a full, cacheable block.
        let vector: Vec<f64> = (0..576).map(|i| ((i * 37) % 11) as f64 * 0.05 - 0.25).collect();
        let replaced_body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0,
            "token_index_to_replace": [3], "embedding_to_replace": vector});
        let replaced = tokens(&srv.complete(&replaced_body).await);
        assert_ne!(replaced, plain, "replacing embeddings must change the output");
        assert_eq!(tokens(&srv.complete(&replaced_body).await), replaced, "deterministic");
        // The prefix cache neither served the plain prompt's blocks to the replaced one (same
        // answer as on a fresh server) nor kept the replaced blocks for the plain prompt.
        assert_eq!(tokens(&srv.complete(&plain_body).await), plain);
        let fresh = Server::spawn(&["--threads", "1"]).ready().await;
        assert_eq!(tokens(&fresh.complete(&replaced_body).await), replaced, "as on a fresh server");
        // Wrong sizes name the field.
        let (status, raw) = srv
            .post(&json!({"prompt": prompt, "max_tokens": 2, "token_index_to_replace": [0], "embedding_to_replace": [0.5]}))
            .await;
        assert_eq!(status, 422, "{raw}");
        assert!(raw.contains("embedding_to_replace") && raw.contains("576"), "{raw}");
    })
    .await;
}
