//! Black-box tests: the real `cordial` binary on a free loopback port with the real default
//! model.

mod binary;

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use binary::*;
use serde_json::{json, Value};

/// Runs the binary to its end (killed after `limit`): success and stdout.
fn run_bin(args: &[&str], limit: Duration) -> (bool, String) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let name = format!(
        "cordial-run-{}-{}",
        std::process::id(),
        args.join("_").replace('-', "")
    );
    let (out_path, err_path) = (
        dir.join(format!("{name}.out")),
        dir.join(format!("{name}.err")),
    );
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "cordial {args:?} timed out: {}",
                std::fs::read_to_string(&err_path).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        std::fs::read_to_string(&out_path).unwrap(),
    )
}

#[test]
fn fetch_model_prints_the_default_model_path() {
    let (ok, path) = run_bin(&["fetch-model"], TEST_TIMEOUT);
    assert!(ok);
    let path = PathBuf::from(path.trim());
    assert!(path.is_file(), "{}", path.display());
    assert_eq!(path, cordial_model::fetch::default_model_path().unwrap());
}

#[test]
fn serve_help_lists_every_flag_with_its_env_var() {
    let (ok, help) = run_bin(&["serve", "--help"], Duration::from_secs(30));
    assert!(ok);
    for flag in [
        "model",
        "host",
        "port",
        "served-model-name",
        "threads",
        "max-model-len",
        "max-num-seqs",
        "kv-cache-tokens",
        "max-waiting",
        "enable-lora",
        "max-loras",
        "max-lora-rank",
        "max-cpu-loras",
        "allow-runtime-lora-updating",
    ] {
        assert!(help.contains(&format!("--{flag}")), "{flag}: {help}");
        let env = format!("CORDIAL_{}", flag.replace('-', "_").to_uppercase());
        assert!(help.contains(&env), "{env}: {help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_ends_the_process() {
    within(async {
        let mut srv = Server::spawn(&["--model", "/nonexistent/model.gguf"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = srv.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "still running:\n{}", srv.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(!status.success());
        assert!(srv.log().contains("cannot load the model"), "{}", srv.log());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_default_model() {
    within(async {
        let srv = Server::spawn(&["--served-model-name", "smol", "--served-model-name", "smol-alias"]).ready().await;
        let models: Value = reqwest::get(format!("{}/v1/models", srv.base)).await.unwrap().json().await.unwrap();
        let names: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(names, ["smol", "smol-alias"]);
        let body = json!({"model": "smol-alias", "prompt": "The capital of France is", "max_tokens": 8,
            "temperature": 0});
        let v = srv.complete(&body).await;
        assert_eq!(v["model"], "smol-alias");
        let c = &v["choices"][0];
        assert_eq!(c["tokens"].as_array().unwrap().len() as u64, v["usage"]["completion_tokens"].as_u64().unwrap());
        assert!(c["text"].as_str().unwrap().to_lowercase().contains("paris"), "{v}");
        // Both stream dialects give the same text as the non-streamed request.
        let mut legacy = body.clone();
        legacy["stream"] = json!(true);
        legacy["beam_search_type"] = json!("DETERMINISTIC");
        let events = sse_payloads(&srv.post(&legacy).await.1);
        assert_eq!(events.last().unwrap()["choices"][0]["text"], c["text"]);
        let mut current = body.clone();
        current["stream"] = json!(true);
        let chunks = sse_payloads(&srv.post(&current).await.1);
        let text: String = chunks.iter().map(|c| c["choices"][0]["text"].as_str().unwrap_or("")).collect();
        assert_eq!(text, c["text"].as_str().unwrap());
        let (status, err) = srv.post(&json!({"model": "other", "prompt": "x", "max_tokens": 1})).await;
        assert_eq!(status, 404, "{err}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_greedy_requests_equal_the_same_requests_alone() {
    within(async {
        let srv = std::sync::Arc::new(Server::spawn(&[]).ready().await);
        let bodies: Vec<Value> = (0..16)
            .map(|i| {
                json!({"prompt": format!("Question {i}: what is {i} plus {i}? Answer:"),
                "max_tokens": 16, "temperature": 0, "ignore_eos": true})
            })
            .collect();
        let mut alone = Vec::new();
        for b in &bodies {
            alone.push(srv.complete(b).await["choices"][0]["tokens"].clone());
        }
        let tasks: Vec<_> = bodies
            .iter()
            .cloned()
            .map(|b| {
                let srv = srv.clone();
                tokio::spawn(async move { srv.complete(&b).await["choices"][0]["tokens"].clone() })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            let together = t.await.unwrap();
            assert_eq!(
                together, alone[i],
                "request {i}: batched output differs from the same request alone"
            );
            assert_eq!(together.as_array().unwrap().len(), 16);
        }
    })
    .await
}
