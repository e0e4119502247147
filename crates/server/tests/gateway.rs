//! The model-server protocol that the Kubernetes inference gateway (GIE / llm-d's router) and
//! vllm-router drive: vLLM's metrics parsed from `/metrics` (names, types, meanings, moving with
//! load), the scrape's cost with 64 running sequences, the render endpoints against what a
//! completion tokenizes, and the KV events received by a ZeroMQ subscriber on loopback.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{fake_config, start, start_with, tokenizer, within, TestServer, NAME};
use cordial_engine::block_hash::{chain, external, root_hash, DEFAULT_HASH_SEED};
use cordial_engine::EngineConfig;
use cordial_server::kv_events::{Layout, Publisher};
use cordial_testkit::fake_model::FakeModelConfig;
use serde_json::{json, Value};
use zeromq::{Socket, SocketRecv, SubSocket};

/// `/metrics` parsed: every sample (`name{labels}` → value) and every `# TYPE`.
struct Scrape {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    /// The sample of `name` with the standard labels, plus `extra` (`k="v",...`).
    fn get(&self, name: &str, extra: &str) -> f64 {
        let sep = if extra.is_empty() { "" } else { "," };
        let key = format!("{name}{{model_name=\"{NAME}\",engine=\"0\"{sep}{extra}}}");
        *self
            .samples
            .get(&key)
            .unwrap_or_else(|| panic!("no sample {key}"))
    }

    fn kind(&self, name: &str) -> &str {
        self.types.get(name).map_or("missing", String::as_str)
    }
}

async fn scrape(srv: &TestServer) -> Scrape {
    let text = srv
        .client
        .get(format!("{}/metrics", srv.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut samples = HashMap::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') {
            let (key, value) = line.rsplit_once(' ').unwrap();
            samples.insert(key.to_owned(), value.parse::<f64>().unwrap());
        }
    }
    Scrape { samples, types }
}

/// Lets the gated engine run one forward at a time until `pred` holds of its stats.
async fn step_until(
    srv: &TestServer,
    what: &str,
    pred: impl Fn(&cordial_engine::EngineStats) -> bool,
) {
    let start = Instant::now();
    while !pred(&srv.engine.stats()) {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        srv.gate.allow(1);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_metrics_have_vllm_names_types_and_meanings() {
    within(async {
        let srv = start(FakeModelConfig {
            gated: true,
            ..fake_config()
        })
        .await;
        let idle = scrape(&srv).await;
        for (name, kind) in [
            ("vllm:num_requests_running", "gauge"),
            ("vllm:num_requests_waiting", "gauge"),
            ("vllm:kv_cache_usage_perc", "gauge"),
            ("vllm:cache_config_info", "gauge"),
            ("vllm:prefix_cache_queries_total", "counter"),
            ("vllm:prefix_cache_hits_total", "counter"),
            ("vllm:num_preemptions_total", "counter"),
            ("vllm:prompt_tokens_total", "counter"),
            ("vllm:generation_tokens_total", "counter"),
            ("vllm:request_success_total", "counter"),
            ("vllm:time_to_first_token_seconds", "histogram"),
            ("vllm:e2e_request_latency_seconds", "histogram"),
        ] {
            assert_eq!(idle.kind(name), kind, "{name}");
        }
        let info = "block_size=\"16\",num_gpu_blocks=\"256\",cache_dtype=\"f16\",\
                    enable_prefix_caching=\"True\",prefix_caching_hash_algo=\"sha256_cbor\"";
        assert_eq!(idle.get("vllm:cache_config_info", info), 1.0);
        assert_eq!(idle.get("vllm:kv_cache_usage_perc", ""), 0.0);
        assert_eq!(idle.get("vllm:num_requests_running", ""), 0.0);

        // One request with n = 3, held inside the engine: three running child sequences.
        let body = json!({"prompt": "Hello there, how are you", "n": 3, "max_tokens": 6,
                          "ignore_eos": true, "temperature": 1.0, "seed": 3});
        let client = srv.client.clone();
        let url = format!("{}/v1/completions", srv.base);
        let answer = tokio::spawn(async move {
            let resp = client.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        });
        step_until(&srv, "the request running", |s| s.running_seqs == 3).await;
        let busy = scrape(&srv).await;
        assert_eq!(busy.get("vllm:num_requests_running", ""), 3.0);
        let usage = busy.get("vllm:kv_cache_usage_perc", "");
        assert!(usage > 0.0 && usage < 1.0, "{usage}");
        let s = srv.engine.stats();
        let want = (s.total_blocks - s.free_blocks) as f64 / s.total_blocks as f64;
        assert_eq!(usage, want);
        // A second request waits while the engine is held (it is submitted, not admitted).
        let client = srv.client.clone();
        let url = format!("{}/v1/completions", srv.base);
        let second = tokio::spawn(async move {
            let body = json!({"prompt": "Hi", "max_tokens": 2, "ignore_eos": true});
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
        let start = Instant::now();
        while srv.engine.stats().waiting_requests == 0 {
            assert!(start.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(scrape(&srv).await.get("vllm:num_requests_waiting", ""), 1.0);

        srv.gate.open();
        let (status, v) = answer.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(second.await.unwrap(), 200);
        step_until(&srv, "all free", |s| s.free_blocks == s.total_blocks).await;
        let done = scrape(&srv).await;
        assert_eq!(done.get("vllm:num_requests_running", ""), 0.0);
        assert_eq!(done.get("vllm:kv_cache_usage_perc", ""), 0.0);
        let first_prompt = v["usage"]["prompt_tokens"].as_f64().unwrap();
        let hi = tokenizer().encode("Hi", true).len() as f64;
        assert_eq!(done.get("vllm:prompt_tokens_total", ""), first_prompt + hi);
        assert_eq!(
            done.get("vllm:generation_tokens_total", ""),
            3.0 * 6.0 + 2.0
        );
        // Per choice: 3 + 1 finished by length, each with a first token and an end.
        let length = "finished_reason=\"length\"";
        assert_eq!(done.get("vllm:request_success_total", length), 4.0);
        assert_eq!(
            done.get("vllm:request_success_total", "finished_reason=\"stop\""),
            0.0
        );
        assert_eq!(done.get("vllm:time_to_first_token_seconds_count", ""), 4.0);
        assert_eq!(done.get("vllm:e2e_request_latency_seconds_count", ""), 4.0);
        assert_eq!(
            done.get("vllm:e2e_request_latency_seconds_bucket", "le=\"+Inf\""),
            4.0
        );
        // The cordial_* series stay.
        assert_eq!(done.samples["cordial_kv_blocks_used"], 0.0);
        assert_eq!(done.samples["cordial_kv_events_dropped_total"], 0.0);
    })
    .await
}

/// The p-th percentile of `xs` (sorted in place).
fn percentile(xs: &mut [Duration], p: f64) -> Duration {
    xs.sort_unstable();
    xs[((xs.len() - 1) as f64 * p).round() as usize]
}

/// The endpoint picker scrapes every 50 ms: a scrape reads atomics only, and stays cheap with
/// 64 sequences running. (Measured here on the debug build and the in-process server; the
/// figures of the release binary are in docs/benchmarks.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_is_cheap_with_64_running_sequences() {
    within(async {
        let srv = start(FakeModelConfig {
            gated: true,
            ..fake_config()
        })
        .await;
        let mut answers = Vec::new();
        for i in 0..16 {
            let client = srv.client.clone();
            let url = format!("{}/v1/completions", srv.base);
            let body = json!({"prompt": format!("Request {i} says hello"), "n": 4,
                              "max_tokens": 40, "ignore_eos": true, "seed": i});
            answers.push(tokio::spawn(async move {
                client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        step_until(&srv, "64 running", |s| s.running_seqs == 64).await;
        // The engine is now held inside a step: scrapes must not wait for it.
        let mut http = Vec::new();
        let mut render = Vec::new();
        let metrics = srv.state.metrics();
        for _ in 0..300 {
            let t = Instant::now();
            let s = scrape(&srv).await;
            http.push(t.elapsed());
            assert_eq!(s.get("vllm:num_requests_running", ""), 64.0);
            let t = Instant::now();
            let stats = srv.engine.stats();
            let mut body = metrics.render(Some(&stats));
            let view = cordial_server::vllm_metrics::EngineView {
                stats: &stats,
                kv: srv.engine.kv_capacity(),
                cache_dtype: "f16",
                prefix_caching: true,
            };
            metrics
                .vllm
                .render(&mut body, NAME, metrics.tokens(), Some(view));
            render.push(t.elapsed());
            assert!(body.len() > 1000);
        }
        let (h50, h99) = (percentile(&mut http, 0.5), percentile(&mut http, 0.99));
        let (r50, r99) = (percentile(&mut render, 0.5), percentile(&mut render, 0.99));
        println!(
            "scrape with 64 running: HTTP p50 {h50:?} p99 {h99:?}; render p50 {r50:?} p99 {r99:?}"
        );
        assert!(r99 < Duration::from_millis(1), "render p99 {r99:?}");
        assert!(h99 < Duration::from_millis(50), "HTTP p99 {h99:?}");
        srv.gate.open();
        for a in answers {
            assert_eq!(a.await.unwrap(), 200);
        }
    })
    .await
}

async fn post(srv: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let resp = srv.post_to(path, body).await;
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_gives_the_ids_a_completion_is_given() {
    within(async {
        let srv = start(fake_config()).await;
        // Completions: one entry per input, each exactly what the completion ran on (the fake
        // model's output is a function of its prompt ids).
        let body = json!({"prompt": ["Hello <|im_start|> world", "Bonjour"], "max_tokens": 5,
                          "temperature": 0});
        let (status, rendered) = post(&srv, "/v1/completions/render", &body).await;
        assert_eq!(status, 200, "{rendered}");
        let rendered = rendered.as_array().unwrap().clone();
        assert_eq!(rendered.len(), 2);
        let (_, done) = post(&srv, "/v1/completions", &body).await;
        for (i, r) in rendered.iter().enumerate() {
            assert_eq!(r["model"], NAME);
            assert!(r["request_id"].as_str().unwrap().starts_with("cmpl-"));
            let ids: Vec<u32> = serde_json::from_value(r["token_ids"].clone()).unwrap();
            let text = body["prompt"][i].as_str().unwrap();
            assert_eq!(ids, tokenizer().encode(text, true));
            let by_ids = json!({"prompt": ids, "max_tokens": 5, "temperature": 0});
            let (_, again) = post(&srv, "/v1/completions", &by_ids).await;
            assert_eq!(again["choices"][0]["text"], done["choices"][i]["text"]);
        }
        // Chat: the rendered conversation and its ids; completing those ids gives the chat's
        // content.
        let chat = json!({"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi!"}],
                          "max_tokens": 6, "temperature": 0});
        let (status, r) = post(&srv, "/v1/chat/completions/render", &chat).await;
        assert_eq!(status, 200, "{r}");
        assert!(r["request_id"].as_str().unwrap().starts_with("chatcmpl-"));
        let prompt = r["prompt"].as_str().unwrap();
        assert!(
            prompt.contains("Be brief.") && prompt.contains("<|im_start|>assistant"),
            "{prompt}"
        );
        let ids: Vec<u32> = serde_json::from_value(r["token_ids"].clone()).unwrap();
        assert_eq!(ids, tokenizer().encode(prompt, true));
        let (_, answer) = post(&srv, "/v1/chat/completions", &chat).await;
        let by_ids = json!({"prompt": ids, "max_tokens": 6, "temperature": 0});
        let (_, plain) = post(&srv, "/v1/completions", &by_ids).await;
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            plain["choices"][0]["text"]
        );
        assert_eq!(
            answer["usage"]["prompt_tokens"].as_u64(),
            Some(ids.len() as u64)
        );
        // The same validation errors, status and body, as the generation routes.
        for (path, bad) in [
            ("/v1/completions", json!({"prompt": "Hi", "max_tokens": -1})),
            ("/v1/completions", json!({"prompt": "Hi", "model": "nope"})),
            (
                "/v1/completions",
                json!({"prompt": "Hi", "temperature": "hot"}),
            ),
            ("/v1/completions", json!({"prompt": "x ".repeat(600)})),
            ("/v1/chat/completions", json!({"messages": []})),
            (
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "Hi"}],
                                            "max_tokens": 1, "max_completion_tokens": 1}),
            ),
        ] {
            let (want_status, want) = post(&srv, path, &bad).await;
            let (status, got) = post(&srv, &format!("{path}/render"), &bad).await;
            assert!(want_status >= 400, "{path} {bad}: {want}");
            assert_eq!((status, got), (want_status, want), "{path} {bad}");
        }
        let (status, _) = post(&srv, "/v1/completions/render", &json!("not an object")).await;
        assert_eq!(status, 400);
    })
    .await
}

/// A subscriber on loopback sees `BlockStored` for a prompt's full blocks, named by vLLM's
/// `sha256_cbor` hashes of their tokens, and `BlockRemoved` once other prompts evict them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zeromq_subscriber_receives_stored_and_removed_blocks() {
    within(async {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let config = FakeModelConfig {
            num_blocks: 12,
            ..fake_config()
        };
        let engine = EngineConfig {
            kv_events: Some(tx),
            ..EngineConfig::default()
        };
        let srv = start_with(config, engine).await;
        let topic = format!("kv@test@{NAME}");
        let publisher = Publisher::bind("tcp://127.0.0.1:0", topic.clone(), Layout::Array)
            .await
            .unwrap();
        let mut sub = subscriber(&publisher, "kv@").await;
        tokio::spawn(publisher.run(rx));

        let text = "The quick brown fox jumps over the lazy dog. ".repeat(4);
        let ids = tokenizer().encode(&text, true);
        assert!(ids.len() >= 32, "{}", ids.len());
        let (status, _) = post(
            &srv,
            "/v1/completions",
            &json!({"prompt": text, "max_tokens": 1}),
        )
        .await;
        assert_eq!(status, 200);
        let root = root_hash(DEFAULT_HASH_SEED);
        let hashes: Vec<u64> = chain(&ids, 16, &root).iter().map(external).collect();
        // Full blocks before the last prompt token's block are stored (all full ones here).
        let full = ids.len() / 16;
        let (seq, events) = next_batch(&mut sub, &topic).await;
        assert_eq!((seq, events.len()), (0, 1), "{events:?}");
        let event = &events[0];
        assert_eq!(event[0], "BlockStored", "{event}");
        assert_eq!(event[1], json!(hashes[..full]));
        assert_eq!(event[2], Value::Null);
        assert_eq!(event[3], json!(ids[..full * 16]));
        assert_eq!(event[4], 16);
        assert_eq!(event[5], Value::Null);
        assert_eq!(event[6], "GPU");
        // Other prompts fill the 12 blocks: the first prompt's cached blocks are evicted.
        let mut removed = Vec::new();
        let mut last_seq = seq;
        for i in 0..6 {
            let other =
                format!("{i} Some other text that fills the cache, again and again. ").repeat(4);
            let (status, _) = post(
                &srv,
                "/v1/completions",
                &json!({"prompt": other, "max_tokens": 1}),
            )
            .await;
            assert_eq!(status, 200);
            let wait = Duration::from_millis(300);
            while let Ok((seq, events)) =
                tokio::time::timeout(wait, next_batch(&mut sub, &topic)).await
            {
                assert_eq!(seq, last_seq + 1, "no gap");
                last_seq = seq;
                for event in events.iter().filter(|e| e[0] == "BlockRemoved") {
                    assert_eq!(event[2], "GPU");
                    let hashes = event[1].as_array().unwrap();
                    removed.extend(hashes.iter().map(|h| h.as_u64().unwrap()));
                }
            }
        }
        for h in &hashes[..full] {
            assert!(removed.contains(h), "{h} not removed: {removed:?}");
        }
    })
    .await
}

/// vLLM's default topic is the empty one, and vllm-router's static event sources take only
/// messages whose first frame is exactly empty: `--kv-events-topic ''` publishes that, in the
/// map layout vllm-router decodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_topic_is_published_as_an_empty_first_frame() {
    within(async {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let publisher = Publisher::bind("tcp://127.0.0.1:0", String::new(), Layout::Map)
            .await
            .unwrap();
        let mut sub = subscriber(&publisher, "").await;
        tokio::spawn(publisher.run(rx));
        let batch = |seq| cordial_engine::KvEventBatch {
            seq,
            ts: 1.7e9,
            events: vec![cordial_engine::KvEvent::BlockRemoved {
                block_hashes: vec![7],
            }],
        };
        // Resend until the subscription has reached the publisher (ZeroMQ's slow joiner).
        let mut seq = 0;
        let (got_seq, events) = loop {
            tx.send(batch(seq)).await.unwrap();
            let wait = Duration::from_millis(200);
            if let Ok(got) = tokio::time::timeout(wait, next_batch(&mut sub, "")).await {
                break got;
            }
            seq += 1;
        };
        assert!(got_seq <= seq, "{got_seq} {seq}");
        assert_eq!(events[0]["type"], "BlockRemoved", "{events:?}");
        assert_eq!(events[0]["block_hashes"], json!([7]));
    })
    .await
}

/// A SUB socket on `publisher`'s endpoint for topics starting with `prefix`, given time to
/// reach the publisher (ZeroMQ's slow joiner).
async fn subscriber(publisher: &Publisher, prefix: &str) -> SubSocket {
    let mut sub = SubSocket::new();
    sub.connect(&publisher.endpoint).await.unwrap();
    sub.subscribe(prefix).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sub
}

/// The next message's sequence number and its events (decoded as JSON values).
async fn next_batch(sub: &mut SubSocket, topic: &str) -> (u64, Vec<Value>) {
    let frames = sub.recv().await.unwrap().into_vec();
    assert_eq!(frames.len(), 3);
    assert_eq!(&frames[0][..], topic.as_bytes());
    let seq = u64::from_be_bytes(frames[1][..].try_into().unwrap());
    let batch: Value = rmp_serde::from_slice(&frames[2]).unwrap();
    assert!(batch[0].as_f64().unwrap() > 1.6e9, "{batch}");
    assert_eq!(batch[2], Value::Null);
    (seq, batch[1].as_array().unwrap().clone())
}
