//! Beam search on the real binary and the real default model: DETERMINISTIC is deterministic
//! and its output scores (re-scored with `forced_output_tokens` + `include_output_logprobs`)
//! at least as well as greedy's for most prompts; seeded sampling types reproduce; a grammar
//! works inside beams; every KV block is free afterwards. Prints the 4-beam vs 4-greedy timing.

mod binary;

use binary::*;
use serde_json::{json, Value};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, there was a",
    "The best way to learn programming is",
    "Water boils at a temperature of",
    "My favourite fruit is",
    "In the year 2050, cities will",
    "The three primary colors are",
    "A good breakfast includes",
];

fn tokens(v: &Value) -> Vec<u64> {
    v["choices"][0]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

/// Sum of the raw log-probabilities of `out` after `prompt`, scored by forcing it.
async fn score(srv: &Server, prompt: &str, out: &[u64]) -> f64 {
    let v = srv
        .complete(&json!({"prompt": prompt, "forced_output_tokens": out,
            "max_tokens": out.len(), "include_output_logprobs": true}))
        .await;
    v["choices"][0]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beams_on_the_real_model() {
    within(async {
        let srv = Server::spawn(&["--threads", "2"]).ready().await;
        let len = 12;
        let mut better = 0;
        for prompt in PROMPTS {
            let beam = json!({"prompt": prompt, "max_tokens": len, "ignore_eos": true, "num_beams": 4});
            let a = srv.complete(&beam).await;
            let b = srv.complete(&beam).await;
            assert_eq!(a["choices"][0]["tokens"], b["choices"][0]["tokens"], "DETERMINISTIC must be deterministic");
            assert_eq!(a["choices"].as_array().unwrap().len(), 1);
            let beam_out = tokens(&a);
            assert_eq!(beam_out.len(), len);
            let greedy = srv
                .complete(&json!({"prompt": prompt, "max_tokens": len, "ignore_eos": true, "temperature": 0}))
                .await;
            let (sb, sg) = (score(&srv, prompt, &beam_out).await, score(&srv, prompt, &tokens(&greedy)).await);
            if sb >= sg - 1e-4 {
                better += 1;
            }
            eprintln!("{prompt:?}: beam {sb:.3} greedy {sg:.3}");
        }
        eprintln!("beam sequence log-prob >= greedy's on {better}/{} prompts", PROMPTS.len());
        assert!(better * 2 > PROMPTS.len(), "beam beat greedy on only {better}");

        // Seeded sampling types reproduce.
        for kind in ["NAIVE_SAMPLING", "STOCHASTIC"] {
            let body = json!({"prompt": PROMPTS[1], "max_tokens": 10, "num_beams": 3,
                "beam_search_type": kind, "seed": 42, "top_k": 40});
            let a = srv.complete(&body).await;
            let b = srv.complete(&body).await;
            assert_eq!(a["choices"][0]["tokens"], b["choices"][0]["tokens"], "{kind}");
            assert_eq!(a["choices"][0]["seed"], 42);
        }

        // A grammar inside beams, with the normalization flags and a length penalty.
        let v = srv
            .complete(&json!({"prompt": "A phone number: ", "max_tokens": 12, "num_beams": 3,
                "length_penalty": 0.8, "early_stopping": true, "beam_compat_pre_normalization": true,
                "response_format": {"type": "regex", "schema": "[0-9]{3}-[0-9]{4}"}}))
            .await;
        let text = v["choices"][0]["text"].as_str().unwrap();
        assert!(regex::Regex::new("^[0-9]{3}-[0-9]{4}$").unwrap().is_match(text), "{text}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");

        // 4 beams against 4 independent greedy requests of the same length.
        let t = std::time::Instant::now();
        srv.complete(&json!({"prompt": PROMPTS[2], "max_tokens": 64, "ignore_eos": true, "num_beams": 4}))
            .await;
        let beams = t.elapsed();
        let t = std::time::Instant::now();
        let greedy = json!({"prompt": PROMPTS[2], "max_tokens": 64, "ignore_eos": true, "temperature": 0});
        futures::future::join_all((0..4).map(|_| srv.complete(&greedy))).await;
        let independent = t.elapsed();
        eprintln!(
            "64 tokens: 4 beams {beams:?} ({:.1} beam-tok/s), 4 greedy requests {independent:?} ({:.1} tok/s)",
            256.0 / beams.as_secs_f64(),
            256.0 / independent.as_secs_f64()
        );
    })
    .await;
}
