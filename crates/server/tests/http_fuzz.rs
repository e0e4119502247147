//! Property test: random JSON bodies, mixing the request's field names with random values of
//! random types, sent through the real router (fake model, real tokenizer) never get a 5xx, a
//! dropped connection (a panicking handler) or a `server_error` event in a stream, and leave
//! the server healthy.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use cordial_server::protocol::{ChatFields, CompletionRequest};
use cordial_testkit::fake_model::FakeModelConfig;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;

/// Cases per run: enough to reach most rule rows, bounded to keep the test at a few seconds.
const CASES: u32 = 256;
/// One request (including its whole stream) must finish within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON value written by hand, so that number literals serde_json cannot hold (1e400,
/// 30-digit integers) and duplicate keys reach the server too.
#[derive(Debug, Clone)]
enum Json {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => write!(out, "{b}").unwrap(),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        // Small values, where most ranges have their edges.
        3 => (-3i64..70).prop_map(|i| i.to_string()),
        2 => (-3.0f64..3.0).prop_map(|f| format!("{f}")),
        1 => any::<i64>().prop_map(|i| i.to_string()),
        1 => any::<u64>().prop_map(|u| u.to_string()),
        1 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        1 => prop::sample::select(vec![
            "0", "-0", "1.0", "-1", "0.5", "1e2", "1E-9", "2.0000000001", "1e400", "-1e400",
            "123456789012345678901234567890", "-99999999999999999999", "18446744073709551615",
            "18446744073709551616", "9223372036854775808", "4294967296", "1e-400", "0.0",
        ])
        .prop_map(str::to_owned),
    ]
}

fn string() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z !]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
        1 => prop::sample::select(vec![
            "", " ", "DETERMINISTIC", "STOCHASTIC", "NAIVE_SAMPLING", "json_object", "text",
            "regex", "fake-model", "fake-alias", "other-model", "\u{1F600}", "\0", "legacy",
        ])
        .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        1 => Just(Json::Null),
        1 => any::<bool>().prop_map(Json::Bool),
        4 => number().prop_map(Json::Num),
        2 => string().prop_map(Json::Str),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            2 => prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Arr),
            1 => prop::collection::vec((key(), inner), 0..4).prop_map(Json::Obj),
        ]
    })
}

/// Mostly a field name of the request, sometimes anything.
/// Every key of the completions request.
fn fields() -> Vec<&'static str> {
    CompletionRequest::field_names().collect()
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(fields()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["include_usage", "type", "schema", "continuous_usage_stats"])
            .prop_map(str::to_owned),
        1 => "[a-z_]{1,10}",
    ]
}

#[derive(Debug, Clone)]
struct Case {
    path: &'static str,
    header: Option<String>,
    body: String,
}

fn case() -> impl Strategy<Value = Case> {
    let fields = prop::collection::vec((key(), value()), 0..8);
    // A short valid prompt most of the time, so that the rules past "exactly one input" run.
    let prompt = prop::option::weighted(0.6, "[a-zA-Z ]{1,20}");
    // Streaming half of the time, so that both SSE dialects run.
    let stream = prop::option::of(any::<bool>());
    let path = prop::sample::select(vec![
        "/v1/completions",
        "/serverless/v1/completions",
        "/dedicated/v1/completions",
    ]);
    let header = prop::option::weighted(0.2, string());
    let raw = prop::option::weighted(0.05, value());
    (fields, prompt, stream, path, header, raw).prop_map(
        |(fields, prompt, stream, path, header, raw)| {
            let mut obj = Vec::new();
            if let Some(p) = prompt {
                obj.push(("prompt".to_owned(), Json::Str(p)));
            }
            if let Some(s) = stream {
                obj.push(("stream".to_owned(), Json::Bool(s)));
            }
            obj.extend(fields);
            let mut body = String::new();
            // Now and then a body that is not an object at all.
            raw.unwrap_or(Json::Obj(obj)).write(&mut body);
            Case { path, header, body }
        },
    )
}

async fn check(srv: &TestServer, case: &Case) -> Result<u16, TestCaseError> {
    let mut req = srv
        .client
        .post(format!("{}{}", srv.base, case.path))
        .header("content-type", "application/json")
        .body(case.body.clone());
    if let Some(h) = &case.header {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(h) {
            req = req.header("x-stream-format", v);
        }
    }
    let resp = req
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no response (panic?): {e}")))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| TestCaseError::fail(format!("the body broke off (panic?): {e}")))?;
    prop_assert!(!status.is_server_error(), "{status}: {text}");
    prop_assert!(
        !text.contains("\"server_error\""),
        "a server error inside a {status} body: {text}"
    );
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!("a {status} body is not JSON ({e}): {text}"))
        })?;
        prop_assert!(v["error"]["message"].is_string(), "{status}: {text}");
    }
    Ok(status.as_u16())
}

#[test]
fn random_bodies_never_get_a_5xx_or_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // A short context keeps generations (up to n x context tokens) cheap.
    let srv = rt.block_on(start(FakeModelConfig {
        max_context: 40,
        ..fake_config()
    }));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
    let result = runner.run(&case(), |case| {
        let status = rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, check(&srv, &case))
                .await
                .map_err(|_| TestCaseError::fail("the request timed out"))?
        })?;
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let statuses = statuses.into_inner().unwrap();
    eprintln!("statuses over {CASES} random bodies: {statuses:?}");
    // The generator reaches both the generation paths and the rejections (about 10% and 90%).
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 5,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().any(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
    // Still serving after all of that.
    rt.block_on(within(async {
        let health = srv
            .client
            .get(format!("{}/health", srv.base))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
        let (status, v) = srv
            .post_json(&json!({"prompt": "Hi", "max_tokens": 4, "temperature": 0}))
            .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["usage"]["completion_tokens"], 4);
        srv.wait_idle().await;
    }));
}

/// Chat keys and message keys, mixed with the completions fields.
fn chat_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(ChatFields::field_names().collect::<Vec<_>>()).prop_map(str::to_owned),
        2 => prop::sample::select(fields()).prop_map(str::to_owned),
        1 => prop::sample::select(vec!["role", "content", "type", "text", "tools", "tool_calls"])
            .prop_map(str::to_owned),
    ]
}

fn message() -> impl Strategy<Value = Json> {
    let role = prop::sample::select(vec!["system", "user", "user", "assistant", "tool", "robot"]);
    let content = prop_oneof![
        3 => "[a-zA-Z ]{0,12}".prop_map(Json::Str),
        1 => value(),
        1 => "[a-z ]{0,8}".prop_map(|t| Json::Arr(vec![Json::Obj(vec![
            ("type".into(), Json::Str("text".into())),
            ("text".into(), Json::Str(t)),
        ])])),
    ];
    let extra = prop::option::weighted(0.2, (chat_key(), value()));
    (role, content, extra).prop_map(|(role, content, extra)| {
        let mut fields = vec![
            ("role".to_owned(), Json::Str(role.to_owned())),
            ("content".to_owned(), content),
        ];
        fields.extend(extra);
        Json::Obj(fields)
    })
}

fn chat_case() -> impl Strategy<Value = Case> {
    let messages = prop_oneof![
        4 => prop::collection::vec(message(), 1..4).prop_map(Json::Arr),
        1 => value(),
    ];
    let fields = prop::collection::vec((chat_key(), value()), 0..3);
    let stream = prop::option::of(any::<bool>());
    (messages, fields, stream).prop_map(|(messages, fields, stream)| {
        let mut obj = vec![("messages".to_owned(), messages)];
        if let Some(s) = stream {
            obj.push(("stream".to_owned(), Json::Bool(s)));
        }
        obj.push(("max_tokens".to_owned(), Json::Num("3".into())));
        obj.extend(fields);
        let mut body = String::new();
        Json::Obj(obj).write(&mut body);
        Case {
            path: "/v1/chat/completions",
            header: None,
            body,
        }
    })
}

#[test]
fn random_chat_bodies_never_get_a_5xx_or_a_panic() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The default model's template adds a ~20-token system turn: room for it and a reply.
    let srv = rt.block_on(start(FakeModelConfig {
        max_context: 160,
        ..fake_config()
    }));
    let mut runner = TestRunner::new(Config {
        cases: CASES / 2,
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    });
    let statuses = Mutex::new(BTreeMap::<u16, u32>::new());
    let result = runner.run(&chat_case(), |case| {
        let status = rt.block_on(async {
            tokio::time::timeout(REQUEST_TIMEOUT, check(&srv, &case))
                .await
                .map_err(|_| TestCaseError::fail("the request timed out"))?
        })?;
        *statuses.lock().unwrap().entry(status).or_default() += 1;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let statuses = statuses.into_inner().unwrap();
    eprintln!(
        "statuses over {} random chat bodies: {statuses:?}",
        CASES / 2
    );
    assert!(
        statuses.get(&200).copied().unwrap_or(0) >= 5,
        "{statuses:?}"
    );
    assert!(
        statuses.keys().any(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
    rt.block_on(within(async { srv.wait_idle().await }));
}
