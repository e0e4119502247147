//! Multi-LoRA serving through the real binary on the real default model, with seeded adapters
//! written here (testkit's `LoraSpec`, rank 8 over every projection) as llama.cpp GGUF files
//! and PEFT folders: selection by `model` (adapter name, `ENDPOINT:ROUTE`, unknown → 404) on
//! the completions and chat routes, llama.cpp's per-request `lora` list, `/v1/models`, scale 0
//! = the base bit for bit, the GGUF and PEFT forms of one adapter alike, a concurrent mix of
//! adapters and the base each getting what it gets alone, the prefix cache keyed by adapter,
//! `n`/beams/structured output with an adapter, metrics, runtime load/unload (unload lets a
//! running request finish; bad files are 400 naming the problem; off without the flag), and
//! start-up errors.

mod binary;

use std::path::{Path, PathBuf};
use std::time::Duration;

use binary::*;
use cordial_testkit::lora_writer::LoraSpec;
use serde_json::{json, Value};

/// An adapter for the default model (SmolLM2-135M: 30 layers, hidden 576, FFN 1536, 9 heads,
/// 3 KV heads, head size 64), strong enough to change greedy text.
fn spec(seed: u64) -> LoraSpec {
    let mut s = LoraSpec::llama(30, 576, 1536, 9, 3, 64, seed);
    s.a_scale = 0.1;
    s.b_scale = 0.1;
    s
}

fn dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lora-adapters");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes adapter `seed` as `<name>.gguf` (and `<name>-peft/` with `peft`); returns the paths.
fn write(name: &str, seed: u64) -> (PathBuf, PathBuf) {
    let s = spec(seed);
    let (gguf, peft) = (
        dir().join(format!("{name}.gguf")),
        dir().join(format!("{name}-peft")),
    );
    s.write_gguf(&gguf).unwrap();
    s.write_peft(&peft).unwrap();
    (gguf, peft)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Greedy, 8 tokens, with the top-3 log-probabilities of each: what a choice must reproduce.
fn body(model: Option<&str>, prompt: &str) -> Value {
    let mut b = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 3});
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    b
}

/// The first choice's text and log-probabilities.
async fn choice(srv: &Server, b: &Value) -> Value {
    let v = srv.complete(b).await;
    let c = &v["choices"][0];
    json!({"text": c["text"], "logprobs": c["logprobs"]})
}

async fn get(srv: &Server, path: &str) -> Value {
    let r = reqwest::get(format!("{}{path}", srv.base)).await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn metrics(srv: &Server) -> String {
    reqwest::get(format!("{}/metrics", srv.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

const PROMPT: &str = "The three most useful things to pack for a week of hiking are";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_are_served_by_name_batched_together_and_keyed_in_the_prefix_cache() {
    within(async {
        let (a, a_peft) = write("sql", 11);
        let (b, _) = write("poet", 22);
        let (c, _) = write("chef", 33);
        let zero = dir().join("zero.gguf");
        std::fs::copy(&a, &zero).unwrap();
        let srv = Server::spawn(&[
            "--lora-modules",
            &format!("sql={}", p(&a)),
            &format!("sql-peft={}", p(&a_peft)),
            "--lora",
            p(&b),
            "--lora-scaled",
            &format!("{}:0", p(&zero)),
            "--lora",
            p(&c),
            "--max-loras",
            "4",
        ])
        .ready()
        .await;

        // /v1/models: the base, then each adapter with parent and root.
        let models = get(&srv, "/v1/models").await;
        let data = models["data"].as_array().unwrap();
        let base = data[0]["id"].as_str().unwrap().to_owned();
        assert!(data[0].get("parent").is_none(), "{models}");
        let card = |id: &str| {
            data.iter()
                .find(|m| m["id"] == id)
                .unwrap_or_else(|| panic!("{id} not in {models}"))
        };
        for (id, path) in [
            ("sql", &a),
            ("sql-peft", &a_peft),
            ("poet", &b),
            ("zero", &zero),
            ("chef", &c),
        ] {
            assert_eq!(card(id)["parent"], base.as_str());
            assert_eq!(card(id)["root"], p(path));
        }

        // Selection by name changes the output; ENDPOINT:ROUTE names the adapter too; the
        // base name and no model are the base.
        let base_out = choice(&srv, &body(None, PROMPT)).await;
        assert_eq!(choice(&srv, &body(Some(&base), PROMPT)).await, base_out);
        let sql = choice(&srv, &body(Some("sql"), PROMPT)).await;
        assert_ne!(sql["text"], base_out["text"], "the adapter has an effect");
        assert_eq!(choice(&srv, &body(Some("dep-123:sql"), PROMPT)).await, sql);
        let v = srv.complete(&body(Some("dep-123:sql"), PROMPT)).await;
        assert_eq!(v["model"], "dep-123:sql");
        // The GGUF and PEFT forms of one adapter (the PEFT one unpermuted) agree exactly.
        assert_eq!(choice(&srv, &body(Some("sql-peft"), PROMPT)).await, sql);
        // Scale 0 (--lora-scaled FILE:0) is the base bit for bit.
        assert_eq!(choice(&srv, &body(Some("zero"), PROMPT)).await, base_out);
        // Unknown names: 404 model_not_found, on completions and chat.
        for (path, b) in [
            ("/v1/completions", body(Some("nope"), PROMPT)),
            ("/v1/completions", body(Some("dep-123:nope"), PROMPT)),
            (
                "/v1/chat/completions",
                json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
            ),
        ] {
            let (status, text) = srv.post_to(path, &b).await;
            assert_eq!(status, 404, "{text}");
            assert!(text.contains("model_not_found"), "{text}");
        }

        // llama.cpp's per-request list: ids in start-up order (sql 0, sql-peft 1, poet 2,
        // zero 3, chef 4), unlisted adapters at 0.
        let mut listed = body(None, PROMPT);
        listed["lora"] = json!([{"id": 0, "scale": 1.0}]);
        assert_eq!(choice(&srv, &listed).await, sql);
        listed["lora"] = json!([{"id": 0, "scale": 0.0}, {"id": 2, "scale": 0.0}]);
        assert_eq!(choice(&srv, &listed).await, base_out);
        listed["lora"] = json!([{"id": 9, "scale": 1.0}]);
        let (status, text) = srv.post(&listed).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("lora"), "{text}");
        let mut both = body(Some("sql"), PROMPT);
        both["lora"] = json!([{"id": 2, "scale": 1.0}]);
        let (status, text) = srv.post(&both).await;
        assert_eq!(status, 400, "{text}");

        // Chat selects adapters the same way.
        let chat = |model: &str| {
            json!({"model": model, "max_tokens": 8, "temperature": 0, "logprobs": true,
                   "messages": [{"role": "user", "content": "Name a fruit."}]})
        };
        let (s1, base_chat) = srv.post_to("/v1/chat/completions", &chat(&base)).await;
        let (s2, sql_chat) = srv.post_to("/v1/chat/completions", &chat("sql")).await;
        assert_eq!((s1, s2), (200, 200), "{base_chat}\n{sql_chat}");
        let lp =
            |t: &str| serde_json::from_str::<Value>(t).unwrap()["choices"][0]["logprobs"].clone();
        assert_ne!(lp(&base_chat), lp(&sql_chat));

        // A concurrent mix of three adapters and the base: each gets what it gets alone.
        let prompts = [
            "Once upon a time",
            "SELECT name FROM users WHERE",
            "Roses are red, violets are",
            "To make bread you need flour,",
        ];
        let models = [None, Some("sql"), Some("poet"), Some("chef")];
        let mut alone = Vec::new();
        for (m, pr) in models.iter().zip(prompts) {
            alone.push(choice(&srv, &body(*m, pr)).await);
        }
        for round in 0..2 {
            let futs = models
                .iter()
                .zip(prompts)
                .map(|(m, pr)| {
                    let b = body(*m, pr);
                    let srv = &srv;
                    async move { choice(srv, &b).await }
                })
                .collect::<Vec<_>>();
            let together = futures::future::join_all(futs).await;
            assert_eq!(together, alone, "round {round}");
        }
        // All of a mix's requests in one step: the engine ran them together.
        let m = metrics(&srv).await;
        assert!(m.contains("vllm:lora_requests_info{max_lora=\"4\","), "{m}");

        // Prefix cache: a prompt under sql, then under poet, computes poet's blocks (no hit on
        // sql's) and equals poet's output on it; poet again hits its own blocks.
        let long = "In the beginning of the study we measured the rainfall of every valley \
                    in the region for three years, and the results surprised";
        let hits = |m: &str| metric(m, "vllm:prefix_cache_hits_total");
        choice(&srv, &body(Some("sql"), long)).await;
        let h0 = hits(&metrics(&srv).await);
        let poet_1 = choice(&srv, &body(Some("poet"), long)).await;
        let h1 = hits(&metrics(&srv).await);
        assert_eq!(h1, h0, "no hit across adapters");
        let poet_2 = choice(&srv, &body(Some("poet"), long)).await;
        assert!(hits(&metrics(&srv).await) > h1, "poet hits its own blocks");
        assert_eq!(poet_1, poet_2);
        let base_long = choice(&srv, &body(None, long)).await;
        assert_ne!(base_long, poet_1);

        // n, beams and structured output with an adapter.
        let mut nb = body(Some("sql"), PROMPT);
        nb["n"] = json!(2);
        nb["temperature"] = json!(0.8);
        nb["seed"] = json!(5);
        let v = srv.complete(&nb).await;
        assert_eq!(v["choices"].as_array().unwrap().len(), 2);
        let beams =
            |m: &str| json!({"model": m, "prompt": PROMPT, "max_tokens": 6, "num_beams": 3});
        let (s, bt) = srv.post(&beams("sql")).await;
        assert_eq!(s, 200, "{bt}");
        let (s, bb) = srv.post(&beams(&base)).await;
        assert_eq!(s, 200, "{bb}");
        let text =
            |t: &str| serde_json::from_str::<Value>(t).unwrap()["choices"][0]["text"].clone();
        assert_ne!(text(&bt), text(&bb), "beams run with the adapter");
        let structured = json!({"model": "poet", "max_tokens": 40, "temperature": 0,
            "messages": [{"role": "user", "content": "Give a JSON object with a name."}],
            "response_format": {"type": "json_object"}});
        let (s, t) = srv.post_to("/v1/chat/completions", &structured).await;
        assert_eq!(s, 200, "{t}");
        let v: Value = serde_json::from_str(&t).unwrap();
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        if v["choices"][0]["finish_reason"] == "stop" {
            let parsed: Value = serde_json::from_str(content).unwrap();
            assert!(parsed.is_object(), "{content}");
        }

        // Per-adapter counters.
        let m = metrics(&srv).await;
        assert!(
            metric(&m, "cordial_lora_requests_total{adapter=\"sql\"}") >= 8.0,
            "{m}"
        );
        assert!(metric(&m, "cordial_lora_completion_tokens_total{adapter=\"poet\"}") > 0.0);
        assert_eq!(
            metric(&m, "cordial_lora_adapter_loaded{adapter=\"chef\"}"),
            1.0
        );
        // Runtime updates are off without the flag: 404.
        let (s, t) = srv
            .post_to(
                "/v1/load_lora_adapter",
                &json!({"lora_name": "x", "lora_path": p(&a)}),
            )
            .await;
        assert_eq!(s, 404, "{t}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_load_and_unload() {
    within(async {
        let (a, a_peft) = write("rt-a", 44);
        let srv = Server::spawn(&["--enable-lora", "--allow-runtime-lora-updating"])
            .ready()
            .await;
        let load = |name: &str, path: &str| {
            let b = json!({"lora_name": name, "lora_path": path});
            let srv = &srv;
            async move { srv.post_to("/v1/load_lora_adapter", &b).await }
        };
        let unload = |name: &str| {
            let b = json!({"lora_name": name});
            let srv = &srv;
            async move { srv.post_to("/v1/unload_lora_adapter", &b).await }
        };
        assert_eq!(srv.post(&body(Some("rt"), PROMPT)).await.0, 404);
        let (s, t) = load("rt", p(&a)).await;
        assert_eq!(s, 200, "{t}");
        let with_rt = choice(&srv, &body(Some("rt"), PROMPT)).await;
        let base = choice(&srv, &body(None, PROMPT)).await;
        assert_ne!(with_rt, base);
        let models = get(&srv, "/v1/models").await;
        assert!(models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "rt"));

        // Bad loads: 400 naming the problem.
        let junk = dir().join("junk.gguf");
        std::fs::write(&junk, b"not a gguf file at all").unwrap();
        let mut wide = spec(45);
        wide.rank = 128;
        let wide_path = dir().join("wide.gguf");
        wide.write_gguf(&wide_path).unwrap();
        let mut other = spec(46);
        other.hidden = 512;
        let other_path = dir().join("other-shape.gguf");
        other.write_gguf(&other_path).unwrap();
        let empty_dir = dir().join("empty-peft");
        std::fs::create_dir_all(&empty_dir).unwrap();
        for (name, path, needle) in [
            ("rt", p(&a_peft).to_owned(), "already"),
            (
                "x1",
                "/nonexistent/adapter.gguf".to_owned(),
                "/nonexistent/adapter.gguf",
            ),
            ("x2", p(&junk).to_owned(), "x2"),
            ("x3", p(&wide_path).to_owned(), "rank"),
            ("x4", p(&other_path).to_owned(), "blk.0"),
            ("x5", p(&empty_dir).to_owned(), "adapter_config.json"),
        ] {
            let (s, t) = load(name, &path).await;
            assert_eq!(s, 400, "{name}: {t}");
            assert!(t.contains(needle), "{name}: {t}");
        }
        let (s, t) = srv
            .post_to("/v1/load_lora_adapter", &json!({"lora_name": "x"}))
            .await;
        assert_eq!(s, 400, "{t}");
        assert!(t.contains("lora_path"), "{t}");

        // Unload while a request runs with it: the request finishes with the adapter.
        let mut long = body(Some("rt"), PROMPT);
        long["max_tokens"] = json!(48);
        long["logprobs"] = Value::Null;
        let reference = srv.complete(&long).await["choices"][0]["text"].clone();
        let running = {
            let srv = &srv;
            let long = long.clone();
            async move { srv.complete(&long).await }
        };
        let unloading = async {
            tokio::time::sleep(Duration::from_millis(150)).await;
            unload("rt").await
        };
        let (done, (s, t)) = tokio::join!(running, unloading);
        assert_eq!(s, 200, "{t}");
        assert_eq!(done["choices"][0]["text"], reference);
        // Then it is gone.
        let (s, t) = srv.post(&body(Some("rt"), PROMPT)).await;
        assert_eq!(s, 404, "{t}");
        let (s, _) = unload("rt").await;
        assert_eq!(s, 404);
        let models = get(&srv, "/v1/models").await;
        assert!(!models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "rt"));
        // Loaded again (now from the PEFT form of the same arrays): the same output, and the
        // prefix cache serves it no stale block (the same content digest is fine to hit).
        let (s, t) = load("rt", p(&a_peft)).await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(choice(&srv, &body(Some("rt"), PROMPT)).await, with_rt);
        let m = metrics(&srv).await;
        assert!(m.contains("vllm:lora_requests_info{max_lora=\"8\""), "{m}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_adapter_errors_name_the_adapter() {
    within(async {
        let mut wide = spec(47);
        wide.rank = 16;
        let wide_path = dir().join("rank16.gguf");
        wide.write_gguf(&wide_path).unwrap();
        for (args, needle) in [
            (
                vec![
                    "--lora-modules".to_owned(),
                    "gone=/nonexistent/x.gguf".to_owned(),
                ],
                "gone",
            ),
            (
                vec![
                    "--lora-modules".to_owned(),
                    format!("r16={}", p(&wide_path)),
                    "--max-lora-rank".to_owned(),
                    "8".to_owned(),
                ],
                "r16",
            ),
            (
                vec!["--lora-modules".to_owned(), "noequals".to_owned()],
                "NAME=PATH",
            ),
            (
                vec!["--lora-scaled".to_owned(), format!("{}:abc", p(&wide_path))],
                "abc",
            ),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut srv = Server::spawn(&args);
            let status = srv.exited(Duration::from_secs(120)).await;
            assert!(!status.success(), "{args:?}");
            let log = srv.log();
            assert!(log.contains(needle), "{args:?}: {log}");
        }
    })
    .await;
}
