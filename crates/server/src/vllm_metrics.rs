//! The model-server protocol of the Kubernetes Gateway API Inference Extension (GIE proposal
//! 003) and llm-d's router: `/metrics` also exposes vLLM's metrics under vLLM's names, types
//! and meanings, so an endpoint picker that treats the pod as engine type `vllm` reads queue
//! length, KV-cache use and prefix-cache hits with no configuration.
//!
//! Every series has the labels `model_name` (the primary served name) and `engine="0"`, as
//! vLLM V1 writes them. Meanings:
//!
//! - `vllm:num_requests_running` (gauge): sequences being generated. A request with `n`
//!   choices (or `best_of`, or beams) counts once per choice, as vLLM V1 runs the `n` choices of
//!   a request as child requests and counts each.
//! - `vllm:num_requests_waiting` (gauge): requests queued for admission (submitted or
//!   preempted, not yet running). A queued request counts once whatever its `n`.
//! - `vllm:kv_cache_usage_perc` (gauge): used KV blocks / all KV blocks, a fraction 0–1 (cached
//!   blocks nobody uses count as free, as in vLLM).
//! - `vllm:cache_config_info` (gauge, always 1): `block_size`, `num_gpu_blocks` (our KV blocks,
//!   which live in host memory), `cache_dtype` (`--kv-cache-dtype`: `f16` or `q8_0`),
//!   `enable_prefix_caching`, `prefix_caching_hash_algo`.
//! - `vllm:prefix_cache_queries_total`, `vllm:prefix_cache_hits_total` (counters): prompt
//!   tokens looked up in / served from the prefix cache.
//! - `vllm:num_preemptions_total` (counter).
//! - `vllm:prompt_tokens_total`, `vllm:generation_tokens_total` (counters): prompt and
//!   generated tokens of finished completions (a prompt with `n` choices is prefilled once and
//!   counted once).
//! - `vllm:request_success_total{finished_reason}` (counter): finished choices by reason:
//!   `stop`, `length`, `abort` (the client went away), `error` (the request failed).
//! - `vllm:time_to_first_token_seconds`, `vllm:e2e_request_latency_seconds` (histograms, vLLM's
//!   buckets): per choice, from the request's arrival to the choice's first token / its end.
//! - `vllm:lora_requests_info` (gauge, only with `--enable-lora`; labels `max_lora`,
//!   `running_lora_adapters`, `waiting_lora_adapters`, the adapters' names comma-separated, and
//!   no `model_name`/`engine`, as vLLM): the value is the current Unix time, as vLLM sets it
//!   (`set_to_current_time`), so a reader takes the newest sample. The gateway's endpoint picker
//!   routes by adapter affinity from it.
//!
//! Scraping reads atomics (the engine's published counters and these), never the engine
//! thread's state.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cordial_engine::{EngineStats, KvCapacity};

use crate::metrics::{escape_label, Histogram};
use crate::protocol::FinishReasonWire;

/// vLLM's `vllm:time_to_first_token_seconds` buckets.
const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

/// vLLM's `vllm:e2e_request_latency_seconds` buckets.
const E2E_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// Why a choice finished, as `finished_reason` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Stop,
    Length,
    Abort,
    Error,
}

impl Finished {
    const ALL: [Finished; 4] = [
        Finished::Stop,
        Finished::Length,
        Finished::Abort,
        Finished::Error,
    ];

    fn label(self) -> &'static str {
        match self {
            Finished::Stop => "stop",
            Finished::Length => "length",
            Finished::Abort => "abort",
            Finished::Error => "error",
        }
    }
}

impl From<FinishReasonWire> for Finished {
    fn from(r: FinishReasonWire) -> Self {
        match r {
            FinishReasonWire::Stop => Finished::Stop,
            FinishReasonWire::Length => Finished::Length,
        }
    }
}

/// The request-side series (the engine's are read from `EngineStats` at scrape time).
pub struct VllmMetrics {
    ttft: Histogram,
    e2e: Histogram,
    finished: [AtomicU64; 4],
}

impl Default for VllmMetrics {
    fn default() -> Self {
        VllmMetrics {
            ttft: Histogram::with_buckets(&TTFT_BUCKETS),
            e2e: Histogram::with_buckets(&E2E_BUCKETS),
            finished: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// What `/metrics` needs from the loaded model.
pub struct EngineView<'a> {
    pub stats: &'a EngineStats,
    pub kv: KvCapacity,
    /// The KV cache's element type (`f16`, `q8_0`).
    pub cache_dtype: &'static str,
    pub prefix_caching: bool,
}

impl VllmMetrics {
    /// A choice produced its first token `ttft` after the request arrived.
    pub fn first_token(&self, ttft: Duration) {
        self.ttft.observe(ttft);
    }

    /// A choice ended `e2e` after the request arrived.
    pub fn choice_finished(&self, why: Finished, e2e: Duration) {
        self.finished[why as usize].fetch_add(1, Ordering::Relaxed);
        self.e2e.observe(e2e);
    }

    /// The vLLM series; `tokens` are the (prompt, generated) token counters.
    pub fn render(
        &self,
        out: &mut String,
        model_name: &str,
        tokens: (u64, u64),
        engine: Option<EngineView<'_>>,
    ) {
        let labels = format!("model_name=\"{}\",engine=\"0\"", escape_label(model_name));
        let one =
            |out: &mut String, name: &str, kind: &str, help: &str, v: &dyn std::fmt::Display| {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {v}"
                );
            };
        if let Some(e) = engine {
            let s = e.stats;
            one(
                out,
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in model execution batches.",
                &s.running_seqs,
            );
            one(
                out,
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be processed.",
                &s.waiting_requests,
            );
            let used = s.total_blocks.saturating_sub(s.free_blocks);
            let usage = if s.total_blocks == 0 {
                0.0
            } else {
                used as f64 / s.total_blocks as f64
            };
            one(
                out,
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                &usage,
            );
            let _ = writeln!(
                out,
                "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n\
                 # TYPE vllm:cache_config_info gauge\n\
                 vllm:cache_config_info{{{labels},block_size=\"{}\",num_gpu_blocks=\"{}\",\
                 cache_dtype=\"{}\",enable_prefix_caching=\"{}\",\
                 prefix_caching_hash_algo=\"sha256_cbor\"}} 1",
                e.kv.block_size,
                e.kv.blocks,
                e.cache_dtype,
                if e.prefix_caching { "True" } else { "False" },
            );
            one(
                out,
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prefix cache queries, in terms of number of queried tokens.",
                &s.prefix_cache_queries_tokens,
            );
            one(
                out,
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prefix cache hits, in terms of number of cached tokens.",
                &s.prefix_cache_hit_tokens,
            );
            one(
                out,
                "vllm:num_preemptions_total",
                "counter",
                "Cumulative number of preemption from the engine.",
                &s.preemptions,
            );
        }
        one(
            out,
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            &tokens.0,
        );
        one(
            out,
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            &tokens.1,
        );
        let _ = writeln!(
            out,
            "# HELP vllm:request_success_total Count of successfully processed requests.\n\
             # TYPE vllm:request_success_total counter"
        );
        for why in Finished::ALL {
            let n = self.finished[why as usize].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "vllm:request_success_total{{{labels},finished_reason=\"{}\"}} {n}",
                why.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
             # TYPE vllm:time_to_first_token_seconds histogram"
        );
        self.ttft
            .render_samples(out, "vllm:time_to_first_token_seconds", &labels);
        let _ = writeln!(
            out,
            "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.\n\
             # TYPE vllm:e2e_request_latency_seconds histogram"
        );
        self.e2e
            .render_samples(out, "vllm:e2e_request_latency_seconds", &labels);
    }

    /// `vllm:lora_requests_info`: `max_lora` (`--max-loras`), the names of the adapters used by
    /// running requests and of those only waiting ones use; valued `now` (Unix seconds).
    pub fn render_lora_info(
        &self,
        out: &mut String,
        max_lora: usize,
        running: &[String],
        waiting: &[String],
        now: f64,
    ) {
        let join = |names: &[String]| {
            names
                .iter()
                .map(|n| escape_label(n))
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(
            out,
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
             # TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{{max_lora=\"{max_lora}\",\
             running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\"}} {now}",
            join(running),
            join(waiting),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_vllm_names_types_and_labels() {
        let m = VllmMetrics::default();
        m.first_token(Duration::from_millis(30));
        m.choice_finished(Finished::Stop, Duration::from_millis(400));
        m.choice_finished(Finished::Abort, Duration::from_secs(3));
        let stats = EngineStats {
            total_blocks: 8,
            free_blocks: 6,
            running_seqs: 3,
            waiting_requests: 2,
            prefix_cache_queries_tokens: 40,
            prefix_cache_hit_tokens: 16,
            ..EngineStats::default()
        };
        let kv = KvCapacity {
            block_size: 16,
            blocks: 8,
        };
        let mut out = String::new();
        let view = EngineView {
            stats: &stats,
            kv,
            cache_dtype: "q8_0",
            prefix_caching: true,
        };
        m.render(&mut out, "m\"1", (11, 22), Some(view));
        let l = "model_name=\"m\\\"1\",engine=\"0\"";
        for line in [
            "# TYPE vllm:num_requests_running gauge".to_owned(),
            format!("vllm:num_requests_running{{{l}}} 3"),
            format!("vllm:num_requests_waiting{{{l}}} 2"),
            format!("vllm:kv_cache_usage_perc{{{l}}} 0.25"),
            format!(
                "vllm:cache_config_info{{{l},block_size=\"16\",num_gpu_blocks=\"8\",\
                 cache_dtype=\"q8_0\",enable_prefix_caching=\"True\",\
                 prefix_caching_hash_algo=\"sha256_cbor\"}} 1"
            ),
            format!("vllm:prefix_cache_hits_total{{{l}}} 16"),
            "# TYPE vllm:prompt_tokens_total counter".to_owned(),
            format!("vllm:prompt_tokens_total{{{l}}} 11"),
            format!("vllm:generation_tokens_total{{{l}}} 22"),
            format!("vllm:request_success_total{{{l},finished_reason=\"stop\"}} 1"),
            format!("vllm:request_success_total{{{l},finished_reason=\"abort\"}} 1"),
            format!("vllm:request_success_total{{{l},finished_reason=\"length\"}} 0"),
            "# TYPE vllm:time_to_first_token_seconds histogram".to_owned(),
            format!("vllm:time_to_first_token_seconds_bucket{{{l},le=\"0.04\"}} 1"),
            format!("vllm:time_to_first_token_seconds_bucket{{{l},le=\"0.02\"}} 0"),
            format!("vllm:e2e_request_latency_seconds_bucket{{{l},le=\"0.5\"}} 1"),
            format!("vllm:e2e_request_latency_seconds_bucket{{{l},le=\"+Inf\"}} 2"),
            format!("vllm:e2e_request_latency_seconds_count{{{l}}} 2"),
        ] {
            assert!(out.lines().any(|x| x == line), "missing {line}\n{out}");
        }
        // Without an engine (loading), only the request-side series.
        let mut loading = String::new();
        m.render(&mut loading, "m", (0, 0), None);
        assert!(!loading.contains("vllm:num_requests_running"));
        assert!(loading.contains("vllm:prompt_tokens_total"));
    }

    #[test]
    fn lora_requests_info_as_vllm_writes_it() {
        let mut out = String::new();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        VllmMetrics::default().render_lora_info(
            &mut out,
            4,
            &names(&["sql", "chat"]),
            &names(&["x\"y"]),
            1_700_000_000.5,
        );
        assert_eq!(
            out,
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
             # TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"sql,chat\",\
             waiting_lora_adapters=\"x\\\"y\"} 1700000000.5\n"
        );
    }
}
