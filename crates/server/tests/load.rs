//! Bounded load test (CI's version of `scripts/load-test.py`): 300 mixed requests at
//! concurrency 32 through the real router over the fake model, a fifth of them abandoned by
//! the client at a random point. Zero 5xx, zero KV blocks leaked (read from `/metrics` once
//! idle), and the process's resident memory flat between two equal rounds.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cordial_engine::EngineConfig;
use cordial_testkit::fake_model::FakeModelConfig;
use cordial_testkit::rng::SplitMix64 as Rng;
use futures::StreamExt;
use serde_json::{json, Value};

const CONCURRENCY: usize = 32;
const REQUESTS_PER_ROUND: usize = 100;

/// One request of the mix: a body and whether (and after how many chunks) to hang up.
struct Job {
    body: Value,
    hang_up_after: Option<usize>,
}

fn job(rng: &mut Rng) -> Job {
    let words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "shared prefix of the load test",
    ];
    let prompt: Vec<&str> = (0..1 + rng.below(40))
        .map(|_| words[rng.below(words.len() as u64) as usize])
        .collect();
    let mut body = json!({
        "prompt": prompt.join(" "),
        "max_tokens": 1 + rng.below(48),
        "stream": rng.below(2) == 0,
    });
    match rng.below(6) {
        0 => body["n"] = json!(1 + rng.below(3)),
        1 => body["temperature"] = json!(0),
        2 => body["top_p"] = json!(0.9),
        3 => body["top_k"] = json!(1 + rng.below(20)),
        4 => body["seed"] = json!(rng.below(1000)),
        _ => body["prompt"] = json!([prompt.join(" "), "a batch row"]),
    }
    if rng.below(10) == 0 {
        body["top_p"] = json!(7); // a validation failure: 422
    }
    let hang_up_after = (rng.below(5) == 0).then(|| rng.below(4) as usize);
    Job {
        body,
        hang_up_after,
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    client_errors: AtomicUsize,
    server_errors: AtomicUsize,
    hung_up: AtomicUsize,
    transport_errors: AtomicUsize,
}

async fn run_one(client: &reqwest::Client, url: &str, job: Job, tally: &Tally) {
    let send = client.post(url).json(&job.body).send();
    let resp = match job.hang_up_after {
        // Hang up before the answer: the handler (or stream) is dropped mid-request.
        Some(0) => {
            let _ = tokio::time::timeout(Duration::from_millis(3), send).await;
            tally.hung_up.fetch_add(1, Ordering::Relaxed);
            return;
        }
        _ => match send.await {
            Ok(r) => r,
            Err(_) => {
                tally.transport_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        },
    };
    let status = resp.status();
    if status.is_server_error() {
        tally.server_errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if status.is_client_error() {
        tally.client_errors.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut chunks = resp.bytes_stream();
    let mut seen = 0;
    let mut body = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            tally.transport_errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        body.extend_from_slice(&chunk);
        seen += 1;
        if job.hang_up_after == Some(seen) {
            tally.hung_up.fetch_add(1, Ordering::Relaxed);
            return; // dropping the stream closes the connection
        }
    }
    let text = String::from_utf8_lossy(&body);
    if text.contains("\"server_error\"") {
        tally.server_errors.fetch_add(1, Ordering::Relaxed);
    } else {
        tally.ok.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `count` jobs with `CONCURRENCY` workers.
async fn round(srv: &TestServer, seed: u64, count: usize) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/v1/completions", srv.base);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (tally, next, url) = (tally.clone(), next.clone(), url.clone());
            // One connection pool per worker, as separate clients would have.
            let client = reqwest::Client::new();
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ ((w as u64) << 32));
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    run_one(&client, &url, job(&mut rng), &tally).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    tally
}

/// Resident set size of this process, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn scrape(srv: &TestServer) -> String {
    let url = format!("{}/metrics", srv.base);
    srv.client
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_disconnects_leaks_nothing() {
    within(async {
        let config = FakeModelConfig {
            num_blocks: 512,
            ..fake_config()
        };
        let engine = EngineConfig {
            max_num_seqs: 32,
            ..EngineConfig::default()
        };
        let srv = start_with(config, engine).await;
        let started = Instant::now();
        let mut rss = Vec::new();
        for (i, seed) in [11u64, 12, 13].into_iter().enumerate() {
            let t = round(&srv, seed, REQUESTS_PER_ROUND).await;
            let (ok, c4, c5, hung, transport) = (
                t.ok.load(Ordering::Relaxed),
                t.client_errors.load(Ordering::Relaxed),
                t.server_errors.load(Ordering::Relaxed),
                t.hung_up.load(Ordering::Relaxed),
                t.transport_errors.load(Ordering::Relaxed),
            );
            eprintln!("round {i}: ok {ok}, 4xx {c4}, 5xx {c5}, hung up {hung}, transport errors {transport}");
            assert_eq!(c5, 0, "server errors under load");
            assert_eq!(transport, 0, "connections broken by the server");
            // The mix reaches every kind of outcome.
            assert!(ok > REQUESTS_PER_ROUND / 2 && c4 > 0 && hung > 0);
            // Every block comes back once the aborts are through.
            let stats = srv.wait_idle().await;
            assert_eq!(stats.free_blocks, stats.total_blocks);
            let deadline = Instant::now() + Duration::from_secs(10);
            let text = loop {
                let text = scrape(&srv).await;
                // Responses of abandoned connections end once the server sees them closed.
                if metric(&text, "cordial_requests_in_flight") == 1.0 {
                    break text;
                }
                assert!(Instant::now() < deadline, "requests still in flight: {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(metric(&text, "cordial_kv_blocks_used"), 0.0, "leaked blocks");
            assert_eq!(metric(&text, "cordial_running_sequences"), 0.0);
            assert_eq!(metric(&text, "cordial_queue_depth"), 0.0);
            rss.extend(rss_kib());
        }
        eprintln!(
            "{} requests in {:?}; RSS after each round (KiB): {rss:?}",
            3 * REQUESTS_PER_ROUND,
            started.elapsed()
        );
        // Flat memory: the third round does not grow what the first two settled at.
        if let [_, second, third] = rss[..] {
            assert!(
                third <= second + 16 * 1024,
                "RSS grew by {} KiB in the last round",
                third.saturating_sub(second)
            );
        }
    })
    .await
}
