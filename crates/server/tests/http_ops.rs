//! Operations: API keys and teams on every route, CORS, `/metrics`, `X-Request-Id`, tokenize
//! and detokenize, panic isolation, the default timeout, body and header read timeouts,
//! graceful shutdown, and blocks freed within one step of a disconnect.

mod common;

use std::time::Duration;

use axum::routing::get;
use common::*;
use cordial_engine::{EngineConfig, EngineHandle};
use cordial_server::auth::ApiKeys;
use cordial_server::routes::{routes, with_layers};
use cordial_server::serve::{serve, ServeOptions};
use cordial_server::{AppState, ServerOptions, Serving};
use cordial_testkit::fake_model::{FakeModel, FakeModelConfig};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn keyed() -> ServerOptions {
    let keys = ApiKeys::parse_file("k-any\nk-red red\n").unwrap();
    ServerOptions {
        api_keys: ApiKeys::new(keys),
        ..ServerOptions::default()
    }
}

/// Every route but the open ones, with a body that succeeds.
fn protected_routes() -> Vec<(&'static str, &'static str, Value)> {
    let c = json!({"prompt": "Hi", "max_tokens": 2});
    vec![
        ("POST", "/v1/completions", c.clone()),
        ("POST", "/serverless/v1/completions", c.clone()),
        ("POST", "/dedicated/v1/completions", c),
        (
            "POST",
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}),
        ),
        ("POST", "/v1/completions/render", json!({"prompt": "Hi"})),
        (
            "POST",
            "/v1/chat/completions/render",
            json!({"messages": [{"role": "user", "content": "Hi"}]}),
        ),
        ("POST", "/v1/tokenize", json!({"prompt": "Hi"})),
        ("POST", "/v1/detokenize", json!({"tokens": [1, 2]})),
        ("GET", "/v1/models", Value::Null),
    ]
}

async fn call(
    srv: &TestServer,
    method: &str,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let url = format!("{}{path}", srv.base);
    let mut req = match method {
        "GET" => srv.client.get(url),
        _ => srv.client.post(url).json(body),
    };
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_route_needs_a_key_and_teams_bind_keys() {
    within(async {
        let srv = start_full(fake_config(), EngineConfig::default(), keyed()).await;
        for (method, path, body) in protected_routes() {
            for bad in [vec![], vec![("authorization", "Bearer wrong")], vec![("authorization", "k-any")]] {
                let (status, v) = call(&srv, method, path, &body, &bad).await;
                assert_eq!(status, 401, "{path} {bad:?}: {v}");
                assert_eq!(v["error"]["type"], "authentication_error", "{v}");
            }
            let ok = [("authorization", "Bearer k-any")];
            let (status, v) = call(&srv, method, path, &body, &ok).await;
            assert_eq!(status, 200, "{path}: {v}");
            let red = [("authorization", "Bearer k-red"), ("x-friendli-team", "red")];
            assert_eq!(call(&srv, method, path, &body, &red).await.0, 200, "{path}");
            let blue = [("authorization", "Bearer k-red"), ("x-friendli-team", "blue")];
            let (status, v) = call(&srv, method, path, &body, &blue).await;
            assert_eq!(status, 403, "{path}: {v}");
            assert_eq!(v["error"]["type"], "permission_error", "{v}");
        }
        // The runtime LoRA routes (off on this server: 404 once authenticated) need a key too.
        let lora_routes = [
            ("/v1/load_lora_adapter", json!({"lora_name": "a", "lora_path": "/x.gguf"})),
            ("/v1/unload_lora_adapter", json!({"lora_name": "a"})),
        ];
        for (path, body) in &lora_routes {
            let (status, v) = call(&srv, "POST", path, body, &[]).await;
            assert_eq!(status, 401, "{path}: {v}");
            let ok = [("authorization", "Bearer k-any")];
            let (status, v) = call(&srv, "POST", path, body, &ok).await;
            assert_eq!(status, 404, "{path}: {v}");
            assert!(v.to_string().contains("--allow-runtime-lora-updating"), "{v}");
        }
        // Every path of the API is here or open.
        let mut covered: Vec<&str> = protected_routes().iter().map(|r| r.1).collect();
        covered.extend(lora_routes.iter().map(|r| r.0));
        covered.extend(cordial_server::auth::OPEN_PATHS);
        covered.sort_unstable();
        let mut paths = cordial_server::routes::PATHS.to_vec();
        paths.sort_unstable();
        assert_eq!(covered, paths);
        // The documented open paths: health and metrics answer without a key.
        for path in ["/health", "/metrics"] {
            assert_eq!(call(&srv, "GET", path, &Value::Null, &[]).await.0, 200, "{path}");
        }
        // Unknown paths are protected too (no probing without a key).
        assert_eq!(call(&srv, "GET", "/nope", &Value::Null, &[]).await.0, 401);
        let metrics = srv.client.get(format!("{}/metrics", srv.base)).send().await.unwrap();
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains("cordial_requests_total{route=\"/v1/completions\",status=\"200\",team=\"red\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("cordial_requests_total{route=\"/v1/completions\",status=\"401\",team=\"none\"} 3\n"),
            "{text}"
        );
    })
    .await
}

/// `--allowed-origins`: preflights are answered before the key check, answers carry the CORS
/// headers for allowed origins only; without the option there are none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_only_for_allowed_origins() {
    within(async {
        let app = "https://app.example";
        let options = ServerOptions {
            allowed_origins: vec![app.to_owned()],
            ..keyed()
        };
        let srv = start_full(fake_config(), EngineConfig::default(), options).await;
        let preflight = |origin: &str| {
            srv.client
                .request(
                    reqwest::Method::OPTIONS,
                    format!("{}/v1/chat/completions", srv.base),
                )
                .header("origin", origin)
                .header("access-control-request-method", "POST")
                .header(
                    "access-control-request-headers",
                    "authorization,content-type",
                )
                .send()
        };
        let resp = preflight(app).await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["access-control-allow-origin"], app);
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        let resp = preflight("https://evil.example").await.unwrap();
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
        let resp = srv
            .client
            .post(format!("{}/v1/completions", srv.base))
            .header("origin", app)
            .bearer_auth("k-any")
            .json(&json!({"prompt": "Hi", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["access-control-allow-origin"], app);
        let exposed = resp.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap();
        assert!(exposed.contains("x-request-id"), "{exposed}");
        // Off by default.
        let plain = start_full(fake_config(), EngineConfig::default(), keyed()).await;
        let resp = plain
            .client
            .get(format!("{}/health", plain.base))
            .header("origin", app)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("access-control-allow-origin"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tokens_latency_and_engine_state() {
    within(async {
        let srv = start(fake_config()).await;
        let before = scrape(&srv).await;
        assert_eq!(metric(&before, "cordial_kv_blocks_total"), 256.0);
        assert_eq!(metric(&before, "cordial_kv_blocks_free"), 256.0);
        let body = json!({"prompt": "The same long prompt, shared by two requests, of more than sixteen tokens for sure. The same long prompt, shared by two requests, of more than sixteen tokens for sure.", "max_tokens": 5, "ignore_eos": true});
        for _ in 0..2 {
            assert_eq!(srv.post_json(&body).await.0, 200);
        }
        let streamed = json!({"prompt": "Hi", "max_tokens": 3, "ignore_eos": true, "stream": true});
        let resp = srv.post(&streamed).await;
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap();
        assert_eq!(srv.post_json(&json!({"prompt": 5})).await.0, 422);
        srv.wait_idle().await;
        let text = scrape(&srv).await;
        assert!(text.contains("cordial_requests_total{route=\"/v1/completions\",status=\"200\",team=\"none\"} 3\n"), "{text}");
        assert!(text.contains("cordial_requests_total{route=\"/v1/completions\",status=\"422\",team=\"none\"} 1\n"), "{text}");
        assert_eq!(metric(&text, "cordial_completion_tokens_total"), 13.0);
        assert!(metric(&text, "cordial_prompt_tokens_total") > 30.0);
        assert_eq!(metric(&text, "cordial_time_to_first_token_seconds_count"), 3.0);
        assert_eq!(metric(&text, "cordial_inter_token_latency_seconds_count"), 10.0);
        assert!(metric(&text, "cordial_request_duration_seconds_count") >= 5.0);
        assert_eq!(metric(&text, "cordial_kv_blocks_used"), 0.0);
        assert_eq!(metric(&text, "cordial_queue_depth"), 0.0);
        assert_eq!(metric(&text, "cordial_running_sequences"), 0.0);
        assert!(metric(&text, "cordial_prefix_cache_hit_rate") > 0.0, "{text}");
        assert!(metric(&text, "cordial_prefix_cache_hit_tokens_total") >= 16.0);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated() {
    within(async {
        let srv = start(fake_config()).await;
        let resp = srv
            .client
            .post(format!("{}/v1/completions", srv.base))
            .header("x-request-id", "my-id-42")
            .json(&json!({"prompt": "Hi", "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["x-request-id"], "my-id-42");
        let resp = srv
            .client
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32);
        let again = srv
            .client
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_ne!(again.headers()["x-request-id"].to_str().unwrap(), id);
        // Errors carry it too.
        let resp = srv.post(&json!({"prompt": "x", "top_p": 7})).await;
        assert_eq!(resp.status(), 422);
        assert!(resp.headers().contains_key("x-request-id"));
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize() {
    within(async {
        let srv = start(fake_config()).await;
        let text = "Hello <|im_start|>world";
        let (status, v) = call(
            &srv,
            "POST",
            "/v1/tokenize",
            &json!({"model": ALIAS, "prompt": text}),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        let tokens = ids(&v["tokens"]);
        assert_eq!(tokens, tokenizer().encode(text, true));
        assert!(tokens.contains(&tokenizer().token_id("<|im_start|>").unwrap()));
        let plain = tokenizer().encode("Hello world, again", true);
        let (status, v) = call(
            &srv,
            "POST",
            "/v1/detokenize",
            &json!({"tokens": plain}),
            &[],
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["text"], tokenizer().decode(&plain, true));
        assert!(v["text"].as_str().unwrap().contains("Hello world, again"));
        let cases = [
            ("/v1/tokenize", json!({}), 422, "prompt"),
            ("/v1/tokenize", json!({"prompt": 5}), 422, "prompt"),
            (
                "/v1/tokenize",
                json!({"prompt": "x", "model": "other"}),
                404,
                "model",
            ),
            (
                "/v1/tokenize",
                json!({"prompt": "x", "model": 3}),
                422,
                "model",
            ),
            ("/v1/detokenize", json!({"tokens": [1, -1]}), 422, "tokens"),
            (
                "/v1/detokenize",
                json!({"tokens": [1, 99_999_999]}),
                422,
                "tokens",
            ),
            ("/v1/detokenize", json!({"tokens": "abc"}), 422, "tokens"),
            ("/v1/detokenize", json!({"tokens": [1.5]}), 422, "tokens"),
            ("/v1/detokenize", json!({}), 422, "tokens"),
        ];
        for (path, body, want, param) in cases {
            let (status, v) = call(&srv, "POST", path, &body, &[]).await;
            assert_eq!(status, want, "{path} {body}: {v}");
            assert_eq!(v["error"]["param"], param, "{path} {body}: {v}");
        }
        for raw in ["[1,2]", "{bad json", ""] {
            let resp = srv
                .client
                .post(format!("{}/v1/tokenize", srv.base))
                .body(raw)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{raw}");
        }
    })
    .await
}

async fn boom() -> &'static str {
    panic!("injected handler panic")
}

/// A fake-model `Serving` for a hand-built router.
fn serving(config: &FakeModelConfig) -> (Serving, EngineHandle) {
    let engine = EngineHandle::spawn(
        Box::new(FakeModel::new(config.clone())),
        EngineConfig::default(),
    );
    let serving = Serving {
        engine: engine.clone(),
        tokenizer: tokenizer(),
        max_context: config.max_context,
        vocab_size: config.vocab_size,
        hidden_size: FAKE_HIDDEN_SIZE,
        chat: Err("no chat template in this test".into()),
        grammar: None,
        lora: None,
        kv_cache_dtype: cordial_model::KvDtype::F16,
    };
    (serving, engine)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_a_500_and_the_server_goes_on() {
    within(async {
        let state = AppState::new(vec![NAME.to_owned()]);
        let (s, engine) = serving(&fake_config());
        assert!(state.set_serving(s).is_ok());
        let app = with_layers(routes().route("/boom", get(boom)), state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let client = reqwest::Client::new();
        for _ in 0..3 {
            let resp = client.get(format!("{base}/boom")).send().await.unwrap();
            assert_eq!(resp.status(), 500);
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["error"]["type"], "server_error");
            let ok = client
                .post(format!("{base}/v1/completions"))
                .json(&json!({"prompt": "Hi", "max_tokens": 2}))
                .send()
                .await
                .unwrap();
            assert_eq!(ok.status(), 200);
        }
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(metric(&text, "cordial_handler_panics_total"), 3.0);
        assert!(text.contains("route=\"other\",status=\"500\""), "{text}");
        task.abort();
        engine.shutdown();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_timeout_applies_only_without_timeout_microseconds() {
    within(async {
        // The deadline passes while the engine is held inside a step; the step then ends.
        for (body, want) in [
            (json!({"prompt": "Hi", "max_tokens": 50, "ignore_eos": true}), 429),
            (json!({"prompt": "Hi", "max_tokens": 50, "ignore_eos": true, "timeout_microseconds": 60_000_000}), 200),
        ] {
            let options = ServerOptions {
                default_timeout: Some(Duration::from_millis(300)),
                ..ServerOptions::default()
            };
            let config = FakeModelConfig { gated: true, ..fake_config() };
            let srv = start_full(config, EngineConfig::default(), options).await;
            let pending = tokio::spawn({
                let (client, base) = (srv.client.clone(), srv.base.clone());
                async move {
                    let r = client.post(format!("{base}/v1/completions")).json(&body).send().await.unwrap();
                    (r.status().as_u16(), r.text().await.unwrap())
                }
            });
            assert!(srv.gate.wait_parked(Duration::from_secs(10)).is_some());
            tokio::time::sleep(Duration::from_millis(500)).await;
            srv.gate.open();
            let (status, text) = pending.await.unwrap();
            assert_eq!(status, want, "{text}");
            if want == 429 {
                assert!(text.contains("timeout_microseconds"), "{text}");
            }
            srv.wait_idle().await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_gets_408() {
    within(async {
        let options = ServerOptions {
            body_read_timeout: Duration::from_millis(400),
            ..ServerOptions::default()
        };
        let srv = start_full(fake_config(), EngineConfig::default(), options).await;
        let addr = srv.base.strip_prefix("http://").unwrap();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"prompt\"")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = conn.read(&mut chunk).await.unwrap_or(0);
            buf.extend_from_slice(&chunk[..n]);
            if n == 0 || buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf);
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await
}

/// Serves a fake-model app with `serve`; the shutdown future fires when `stop` is sent.
struct Served {
    base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    engine: EngineHandle,
    gate: cordial_testkit::fake_model::StepGate,
}

async fn served(config: FakeModelConfig, opts: ServeOptions) -> Served {
    let model = FakeModel::new(config.clone());
    let gate = model.gate();
    let engine = EngineHandle::spawn(Box::new(model), EngineConfig::default());
    let state = AppState::new(vec![NAME.to_owned()]);
    let s = Serving {
        engine: engine.clone(),
        tokenizer: tokenizer(),
        max_context: config.max_context,
        vocab_size: config.vocab_size,
        hidden_size: FAKE_HIDDEN_SIZE,
        chat: Err("no chat template in this test".into()),
        grammar: None,
        lora: None,
        kv_cache_dtype: cordial_model::KvDtype::F16,
    };
    assert!(state.set_serving(s).is_ok());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (flag, eng) = (cancelled.clone(), engine.clone());
    let app = cordial_server::router(state);
    let done = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        let cancel = move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            eng.shutdown();
        };
        serve(listener, app, opts, shutdown, cancel).await.unwrap();
    });
    Served {
        base,
        stop: Some(stop),
        done,
        cancelled,
        engine,
        gate,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    within(async {
        let opts = ServeOptions {
            header_read_timeout: Duration::from_millis(300),
            ..ServeOptions::default()
        };
        let s = served(fake_config(), opts).await;
        let addr = s.base.strip_prefix("http://").unwrap();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 256];
        // The server closes the connection (possibly after a 408) instead of waiting forever.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the connection was still open after 5 s"),
            }
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        // A normal client still gets served.
        let r = reqwest::get(format!("{}/health", s.base)).await.unwrap();
        assert_eq!(r.status(), 200);
        s.engine.shutdown();
        s.done.abort();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_requests_within_the_grace_period() {
    within(async {
        let opts = ServeOptions {
            shutdown_grace: Duration::from_secs(20),
            ..ServeOptions::default()
        };
        let mut s = served(
            FakeModelConfig {
                gated: true,
                ..fake_config()
            },
            opts,
        )
        .await;
        s.gate.allow(1);
        let client = reqwest::Client::new();
        let resp = client
            .post(format!("{}/v1/completions", s.base))
            .json(&json!({"prompt": "Hi", "max_tokens": 6, "ignore_eos": true, "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        s.stop.take().unwrap().send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // No new connections once shutting down.
        let refused = reqwest::Client::new()
            .get(format!("{}/health", s.base))
            .send()
            .await;
        assert!(refused.is_err(), "still accepting");
        s.gate.open();
        let body = resp.text().await.unwrap();
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        tokio::time::timeout(Duration::from_secs(10), &mut s.done)
            .await
            .unwrap()
            .unwrap();
        assert!(
            s.cancelled.load(std::sync::atomic::Ordering::SeqCst),
            "engine stopped at the end"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_what_outlives_the_grace_period() {
    within(async {
        let opts = ServeOptions {
            shutdown_grace: Duration::from_millis(300),
            ..ServeOptions::default()
        };
        let mut s = served(
            FakeModelConfig {
                gated: true,
                ..fake_config()
            },
            opts,
        )
        .await;
        s.gate.allow(1);
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/completions", s.base))
            .json(&json!({"prompt": "Hi", "max_tokens": 400, "ignore_eos": true, "stream": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        s.stop.take().unwrap().send(()).unwrap();
        // The gate stays shut until the grace period is over and the engine was told to stop;
        // then the engine finishes its step and ends the request.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !s.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(std::time::Instant::now() < deadline, "never cancelled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        s.gate.open();
        let body = tokio::time::timeout(Duration::from_secs(10), resp.text())
            .await
            .unwrap()
            .unwrap_or_default();
        assert!(body.contains("the server is shutting down"), "{body}");
        assert!(body.matches("\"token\"").count() < 10, "{body}");
        tokio::time::timeout(Duration::from_secs(10), &mut s.done)
            .await
            .unwrap()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while s.engine.is_running() {
            assert!(
                std::time::Instant::now() < deadline,
                "the engine did not stop"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Blocks of a request whose client went away are free one engine step later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_frees_blocks_within_one_step() {
    within(async {
        let srv = start(FakeModelConfig { gated: true, ..fake_config() }).await;
        for stream in [true, false] {
            srv.gate.allow(3);
            let body = json!({"prompt": "A long story about blocks", "max_tokens": 400, "ignore_eos": true, "stream": stream});
            let client = srv.client.clone();
            let url = format!("{}/v1/completions", srv.base);
            let request = tokio::spawn(async move {
                let resp = client.post(url).json(&body).send().await.unwrap();
                let mut chunks = resp.bytes_stream();
                let _ = chunks.next().await;
                // Dropped here, or (not streamed) aborted below while waiting.
                std::future::pending::<()>().await;
            });
            // The engine is parked in its fourth forward, with the request's blocks in use.
            assert_eq!(srv.gate.wait_parked(Duration::from_secs(10)), Some(srv.forward_calls()));
            let text = scrape(&srv).await;
            assert!(metric(&text, "cordial_kv_blocks_used") > 0.0, "{text}");
            request.abort();
            let _ = request.await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            srv.gate.allow(1);
            // One more step at most: then every block is free and nothing runs.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            loop {
                let text = scrape(&srv).await;
                if metric(&text, "cordial_kv_blocks_used") == 0.0 && metric(&text, "cordial_running_sequences") == 0.0 {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "not freed after one step: {text}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let stats = srv.engine.stats();
            assert_eq!(stats.free_blocks, stats.total_blocks);
        }
        // The abandoned JSON request never got a status: counted as 499; the stream as a 200
        // that did not finish.
        let text = scrape(&srv).await;
        assert!(text.contains("cordial_requests_total{route=\"/v1/completions\",status=\"499\",team=\"none\"} 1\n"), "{text}");
        assert_eq!(metric(&text, "cordial_requests_disconnected_total"), 2.0, "{text}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_json_is_open_and_describes_the_routes() {
    within(async {
        let srv = start_full(fake_config(), EngineConfig::default(), keyed()).await;
        let (status, doc) = call(&srv, "GET", "/openapi.json", &Value::Null, &[]).await;
        assert_eq!(status, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert!(doc["paths"]["/v1/completions"]["post"]["security"].is_array());
        assert!(doc["paths"]["/health"]["get"].get("security").is_none());
        assert!(
            doc["components"]["schemas"]["CompletionRequest"]["properties"]["max_tokens"]
                .is_object()
        );
    })
    .await
}
