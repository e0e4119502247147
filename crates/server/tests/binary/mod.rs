//! The real `cordial` binary on a free loopback port with the real default model, for the
//! black-box test files.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_cordial");
pub const TEST_TIMEOUT: Duration = Duration::from_secs(300);
pub const LOAD_TIMEOUT: Duration = Duration::from_secs(180);

pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("the test timed out")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The running binary; killed on drop. Its stderr goes to a log file shown on failure.
pub struct Server {
    pub child: Child,
    pub base: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn spawn(extra: &[&str]) -> Server {
        Server::spawn_env(extra, &[])
    }

    /// `spawn` with extra environment variables.
    pub fn spawn_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut args = vec!["--kv-cache-tokens", "16384"];
        args.extend(extra);
        Server::spawn_args(&args, env)
    }

    /// `cordial serve --port <free port>` with exactly `args` (no default KV size).
    pub fn spawn_args(args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cordial-{port}.log"));
        let child = Command::new(BIN)
            .args(["serve", "--port", &port.to_string()])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("start cordial");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit by itself (failing after `timeout`).
    pub async fn exited(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every log line as JSON (the server ran with `--log-format json`).
    pub fn json_log(&self) -> Vec<Value> {
        self.log()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits for `/health` 200; fails at once if the process exits.
    pub async fn ready(mut self) -> Server {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + LOAD_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "cordial exited ({status}) before becoming ready:\n{}",
                    self.log()
                );
            }
            if let Ok(r) = client.get(format!("{}/health", self.base)).send().await {
                if r.status() == 200 {
                    return self;
                }
                assert_eq!(r.status(), 503, "health while loading");
            }
            assert!(
                Instant::now() < deadline,
                "not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn post(&self, body: &Value) -> (u16, String) {
        self.post_to("/v1/completions", body).await
    }

    /// POSTs `body` to `path` (such as `/v1/chat/completions`).
    pub async fn post_to(&self, path: &str, body: &Value) -> (u16, String) {
        let resp = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    pub async fn complete(&self, body: &Value) -> Value {
        let (status, text) = self.post(body).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }
}

pub fn sse_payloads(body: &str) -> Vec<Value> {
    body.trim_end()
        .split("\n\n")
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("{e:?}")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}
