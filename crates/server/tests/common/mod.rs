//! In-process test server: the real router and engine over the testkit's fake model, with the
//! REAL tokenizer of the default model, on 127.0.0.1:0.
#![allow(dead_code)]

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cordial_engine::{EngineConfig, EngineHandle, EngineStats, TokenId};
use cordial_model::fetch::ensure_default_model;
use cordial_model::gguf::GgufFile;
use cordial_server::{router, AppState, ServerOptions, Serving};
use cordial_testkit::fake_model::{FakeModel, FakeModelConfig, FakeStats, StepGate};
use cordial_tokenizer::Tokenizer;
use serde_json::Value;

pub const NAME: &str = "fake-model";
pub const ALIAS: &str = "fake-alias";

/// Every test body runs under this limit.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("the test timed out")
}

/// The default model's tokenizer, loaded once per test binary.
/// The hidden size the fake model reports to validation (it has no embeddings to replace).
pub const FAKE_HIDDEN_SIZE: usize = 8;

pub fn tokenizer() -> Arc<Tokenizer> {
    static TOK: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = ensure_default_model().expect("the default model");
        let gguf = GgufFile::open(&path).expect("open the GGUF");
        Arc::new(Tokenizer::from_gguf(&gguf).expect("tokenizer"))
    })
    .clone()
}

/// A fake model as wide as the real vocabulary, so every prompt id is valid and every output
/// id decodes.
pub fn fake_config() -> FakeModelConfig {
    FakeModelConfig {
        vocab_size: tokenizer().vocab_size(),
        block_size: 16,
        num_blocks: 256,
        max_context: 512,
        ..FakeModelConfig::default()
    }
}

pub struct TestServer {
    pub base: String,
    pub state: AppState,
    pub engine: EngineHandle,
    pub config: FakeModelConfig,
    pub gate: StepGate,
    pub stats: Arc<Mutex<FakeStats>>,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
        self.engine.shutdown();
    }
}

/// Binds the router on a free loopback port.
pub async fn bind(state: AppState) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, router(state)).await.unwrap();
    });
    (base, task)
}

pub async fn start(config: FakeModelConfig) -> TestServer {
    start_with(config, EngineConfig::default()).await
}

pub async fn start_with(config: FakeModelConfig, engine_config: EngineConfig) -> TestServer {
    start_full(config, engine_config, ServerOptions::default()).await
}

/// A server with operator options (API keys, timeouts).
pub async fn start_full(
    config: FakeModelConfig,
    engine_config: EngineConfig,
    options: ServerOptions,
) -> TestServer {
    let model = FakeModel::new(config.clone());
    let (gate, stats) = (model.gate(), model.stats());
    let engine = EngineHandle::spawn(Box::new(model), engine_config);
    let state = AppState::with_options(vec![NAME.to_owned(), ALIAS.to_owned()], options);
    let tokenizer = tokenizer();
    let serving = Serving {
        chat: cordial_server::state::chat_template(&tokenizer, None),
        engine: engine.clone(),
        tokenizer,
        max_context: config.max_context,
        vocab_size: config.vocab_size,
        hidden_size: FAKE_HIDDEN_SIZE,
        grammar: None,
        lora: None,
        kv_cache_dtype: cordial_model::KvDtype::F16,
    };
    assert!(state.set_serving(serving).is_ok());
    let (base, task) = bind(state.clone()).await;
    let client = reqwest::Client::new();
    TestServer {
        base,
        state,
        engine,
        config,
        gate,
        stats,
        client,
        task,
    }
}

impl TestServer {
    pub async fn post(&self, body: &Value) -> reqwest::Response {
        self.post_to("/v1/completions", body).await
    }

    pub async fn post_to(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Status and JSON body.
    pub async fn post_json(&self, body: &Value) -> (u16, Value) {
        let resp = self.post(body).await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    /// What greedy decoding gives for `prompt` on the fake model, via the real tokenizer.
    pub fn greedy(&self, prompt: &str, max_tokens: usize) -> Vec<TokenId> {
        let ids = tokenizer().encode(prompt, true);
        self.config
            .greedy_reference(&ids, max_tokens, tokenizer().eog_tokens())
    }

    /// Waits until no request runs or waits and every KV block is free.
    pub async fn wait_idle(&self) -> EngineStats {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.engine.stats();
            if s.free_blocks == s.total_blocks && s.running_seqs == 0 && s.waiting_requests == 0 {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the engine did not become idle: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn forward_calls(&self) -> u64 {
        self.stats.lock().unwrap().forward_calls
    }
}

/// The `data:` payloads of an SSE body, checking the framing: every event is exactly
/// `data: <one line>\n\n`, ASCII only, no comments.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(body.is_ascii(), "SSE JSON escapes non-ASCII");
    assert!(body.ends_with("\n\n"), "{body:?}");
    body[..body.len() - 2]
        .split("\n\n")
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("bad event {event:?}"));
            assert!(!data.contains('\n'), "one line per event: {event:?}");
            data.to_owned()
        })
        .collect()
}

pub fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Token ids of a JSON array.
pub fn ids(v: &Value) -> Vec<TokenId> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as TokenId)
        .collect()
}

/// The value of an unlabelled metric.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

/// `GET /metrics` of a server at `base`.
pub async fn scrape_at(client: &reqwest::Client, base: &str) -> String {
    let resp = client.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

pub async fn scrape(srv: &TestServer) -> String {
    scrape_at(&srv.client, &srv.base).await
}
