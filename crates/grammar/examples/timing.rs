//! Compile and mask times of the structured-output suite, on the default model's vocabulary.
//!
//! `cargo run --release -p cordial-grammar --example timing -- SUITE.json [OUTPUTS.json]`
//!
//! SUITE.json is `crates/server/tests/fixtures/structured-suite.json`. Every spec is compiled by
//! a fresh compiler (no cache: the cold cost a new schema pays), then once more (the cache).
//! With OUTPUTS.json (written by the black-box suite with `CORDIAL_STRUCTURED_OUT`), each
//! output's tokens are replayed through a fresh constraint, timing every mask as the engine
//! computes it.

use std::sync::Arc;
use std::time::Instant;

use cordial_engine::{ConstraintFactory, TokenMask};
use cordial_grammar::{GrammarCompiler, GrammarLimits, GrammarSpec};
use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;
use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let suite: Value = serde_json::from_str(&std::fs::read_to_string(&args[0]).unwrap()).unwrap();
    let outputs: Option<Value> = args
        .get(1)
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap());
    let path = cordial_model::fetch::ensure_default_model().unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap());
    let t = Instant::now();
    let compiler =
        GrammarCompiler::new(tok.clone(), tok.vocab_size(), GrammarLimits::default()).unwrap();
    println!("vocabulary trie + factory: {:.1} ms", ms(t));
    let mut compile = Vec::new();
    let mut cached = Vec::new();
    let mut masks = Vec::new();
    for case in suite["cases"].as_array().unwrap() {
        let spec = match case["kind"].as_str().unwrap() {
            "json" => GrammarSpec::JsonSchema(case["schema"].clone()),
            _ => GrammarSpec::Regex(case["pattern"].as_str().unwrap().into()),
        };
        let t = Instant::now();
        let grammar = compiler.compile(&spec).unwrap();
        compile.push(ms(t));
        let t = Instant::now();
        compiler.compile(&spec).unwrap();
        cached.push(ms(t));
        let Some(outs) = &outputs else { continue };
        let out = outs
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == case["name"]);
        let Some(tokens) = out.and_then(|o| o["tokens"].as_array()) else {
            continue;
        };
        let mut c = grammar.start();
        let mut mask = TokenMask::new(tok.vocab_size());
        let mut so_far = Vec::new();
        for id in tokens.iter().map(|t| t.as_u64().unwrap() as u32) {
            let t = Instant::now();
            c.compute_mask(&mut mask).unwrap();
            let us = ms(t) * 1000.0;
            if us > 1000.0 && std::env::var("TIMING_VERBOSE").is_ok() {
                let text = tok.decode(&so_far, false);
                println!("slow mask {us:.0} us: {} after {text:?}", case["name"]);
            }
            masks.push(us);
            c.consume(id).unwrap();
            so_far.push(id);
        }
    }
    report("compile (fresh), ms", &mut compile);
    report("compile (cached), ms", &mut cached);
    if !masks.is_empty() {
        report("mask per token, us", &mut masks);
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn report(what: &str, v: &mut [f64]) {
    v.sort_by(f64::total_cmp);
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let p99 = v[(v.len() * 99 / 100).min(v.len() - 1)];
    println!(
        "{what}: n {}, mean {mean:.3}, p50 {:.3}, p99 {p99:.3}, max {:.3}",
        v.len(),
        v[v.len() / 2],
        v[v.len() - 1]
    );
}
