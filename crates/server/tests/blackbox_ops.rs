//! The real binary's operator wiring: keys from the flag, the environment and a keys file (with
//! a team), JSON logs with one line per request, `X-Request-Id`, `/metrics`, and a clean exit on
//! SIGTERM.

mod binary;

use std::time::{Duration, Instant};

use binary::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_teams_json_logs_and_sigterm() {
    within(async {
        let keys = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cordial-keys.txt");
        std::fs::write(&keys, "# key team\nk3 red\n").unwrap();
        let mut srv = Server::spawn_env(
            &[
                "--api-key",
                "k1",
                "--api-keys-file",
                keys.to_str().unwrap(),
                "--log-format",
                "json",
                "--shutdown-grace",
                "5",
            ],
            &[("CORDIAL_API_KEYS", "k2")],
        )
        .ready()
        .await;
        let client = reqwest::Client::new();
        let tokenize = |key: Option<&str>, team: Option<&str>| {
            let mut req = client
                .post(format!("{}/v1/tokenize", srv.base))
                .header("x-request-id", "bb-ops-1")
                .json(&json!({"prompt": "Hello"}));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            if let Some(t) = team {
                req = req.header("x-friendli-team", t);
            }
            req.send()
        };
        assert_eq!(tokenize(None, None).await.unwrap().status(), 401);
        assert_eq!(tokenize(Some("nope"), None).await.unwrap().status(), 401);
        for key in ["k1", "k2", "k3"] {
            let resp = tokenize(Some(key), None).await.unwrap();
            assert_eq!(resp.status(), 200, "{key}");
            assert_eq!(resp.headers()["x-request-id"], "bb-ops-1");
        }
        assert_eq!(
            tokenize(Some("k3"), Some("blue")).await.unwrap().status(),
            403
        );
        let metrics = client
            .get(format!("{}/metrics", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains(
                "cordial_requests_total{route=\"/v1/tokenize\",status=\"200\",team=\"red\"} 1"
            ),
            "{text}"
        );
        // SIGTERM: a clean exit.
        let pid = srv.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = srv.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                srv.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "{status}\n{}", srv.log());
        let log = srv.log();
        let lines: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let settings = lines
            .iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("settings:"))
            })
            .unwrap();
        let settings = settings["message"].as_str().unwrap();
        assert!(
            settings.contains("api_keys=3") && !settings.contains("k1"),
            "{settings}"
        );
        let requests: Vec<&Value> = lines
            .iter()
            .filter(|l| l["target"] == "cordial::request" && l["request_id"] == "bb-ops-1")
            .collect();
        assert_eq!(requests.len(), 6, "{log}");
        let ok = requests.iter().find(|l| l["status"] == 200).unwrap();
        assert_eq!(ok["path"], "/v1/tokenize");
        assert!(ok["duration_ms"].as_f64().is_some());
        assert!(
            lines
                .iter()
                .any(|l| l["message"].as_str().is_some_and(|m| m.contains("SIGTERM"))),
            "{log}"
        );
    })
    .await
}
