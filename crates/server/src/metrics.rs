//! Prometheus metrics (`GET /metrics`, text format 0.0.4): the `cordial_*` series here; vLLM's
//! `vllm:*` series follow them (`vllm_metrics.rs`).
//!
//! Counters and histograms are updated by the request middleware (`observe.rs`); engine gauges
//! (queue depth, running sequences, KV blocks, prefix-cache hits) are read from
//! `EngineHandle::stats` at scrape time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cordial_engine::EngineStats;

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A cumulative histogram with fixed buckets; lock-free.
pub struct Histogram {
    /// Upper bounds (seconds), increasing.
    buckets: &'static [f64],
    counts: Box<[AtomicU64]>,
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram::with_buckets(&LATENCY_BUCKETS)
    }

    /// A histogram over these upper bounds (seconds, increasing).
    pub fn with_buckets(buckets: &'static [f64]) -> Histogram {
        Histogram {
            buckets,
            counts: buckets.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.buckets.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_samples(out, name, "");
    }

    /// The `_bucket`, `_sum` and `_count` lines; `labels` (`a="x",b="y"`) go first in each.
    pub(crate) fn render_samples(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, c) in self.buckets.iter().zip(self.counts.iter()) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

/// Labels of a finished HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RequestKey {
    route: &'static str,
    status: u16,
    team: String,
}

/// All server-side metrics; one per server (in `AppState`).
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    in_flight: AtomicU64,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    panics: AtomicU64,
    disconnected: AtomicU64,
    /// The metrics under vLLM's names (`vllm_metrics.rs`).
    pub vllm: crate::vllm_metrics::VllmMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            in_flight: AtomicU64::new(0),
            ttft: Histogram::new(),
            inter_token: Histogram::new(),
            e2e: Histogram::new(),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            vllm: crate::vllm_metrics::VllmMetrics::default(),
        }
    }
}

/// The label value of a route: the API's paths by name, everything else `other` (bounded
/// labels).
pub fn route_label(path: &str) -> &'static str {
    crate::routes::PATHS
        .iter()
        .find(|p| **p == path)
        .copied()
        .unwrap_or("other")
}

impl Metrics {
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request whose response (body included) is over: sent, failed or abandoned.
    pub fn request_finished(&self, route: &'static str, status: u16, team: &str, e2e: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.e2e.observe(e2e);
        let key = RequestKey {
            route,
            status,
            team: team.to_owned(),
        };
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_insert(0) += 1;
    }

    /// Prompt and generated tokens of finished completions so far.
    pub fn tokens(&self) -> (u64, u64) {
        (
            self.prompt_tokens.load(Ordering::Relaxed),
            self.completion_tokens.load(Ordering::Relaxed),
        )
    }

    pub fn add_tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
    }

    /// A response whose body was dropped before its end (the client went away).
    pub fn disconnected(&self) {
        self.disconnected.fetch_add(1, Ordering::Relaxed);
    }

    pub fn panic_caught(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// The requests counted with this route and status so far (for tests and the load tool).
    pub fn requests_with(&self, route: &str, status: u16) -> u64 {
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(k, _)| k.route == route && k.status == status)
            .map(|(_, v)| v)
            .sum()
    }

    /// The whole exposition; `engine` is `None` while the model loads.
    pub fn render(&self, engine: Option<&EngineStats>) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str(
            "# HELP cordial_requests_total HTTP requests finished, by route, status and team.\n\
             # TYPE cordial_requests_total counter\n",
        );
        {
            let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in map.iter() {
                let team = escape_label(&k.team);
                let _ = writeln!(
                    out,
                    "cordial_requests_total{{route=\"{}\",status=\"{}\",team=\"{team}\"}} {v}",
                    k.route, k.status
                );
            }
        }
        gauge(
            &mut out,
            "cordial_requests_in_flight",
            "HTTP requests being served (responses not yet finished).",
            self.in_flight.load(Ordering::Relaxed) as f64,
        );
        counter(
            &mut out,
            "cordial_prompt_tokens_total",
            "Prompt tokens of finished completions.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cordial_completion_tokens_total",
            "Generated tokens of finished completions.",
            self.completion_tokens.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cordial_handler_panics_total",
            "Panics caught while serving a request (answered 500).",
            self.panics.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "cordial_requests_disconnected_total",
            "Responses abandoned by the client before their end.",
            self.disconnected.load(Ordering::Relaxed),
        );
        self.ttft.render(
            &mut out,
            "cordial_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
        );
        self.inter_token.render(
            &mut out,
            "cordial_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        self.e2e.render(
            &mut out,
            "cordial_request_duration_seconds",
            "Time from request arrival to the end of its response (body included).",
        );
        if let Some(s) = engine {
            render_engine(&mut out, s);
        }
        out
    }
}

fn render_engine(out: &mut String, s: &EngineStats) {
    gauge(
        out,
        "cordial_queue_depth",
        "Requests waiting for admission.",
        s.waiting_requests as f64,
    );
    gauge(
        out,
        "cordial_running_sequences",
        "Sequences being decoded.",
        s.running_seqs as f64,
    );
    gauge(
        out,
        "cordial_kv_blocks_total",
        "KV-cache blocks in all.",
        s.total_blocks as f64,
    );
    gauge(
        out,
        "cordial_kv_blocks_free",
        "KV-cache blocks used by no sequence (cached prefix blocks included).",
        s.free_blocks as f64,
    );
    let used = s.total_blocks.saturating_sub(s.free_blocks);
    gauge(
        out,
        "cordial_kv_blocks_used",
        "KV-cache blocks held by sequences.",
        used as f64,
    );
    let usage = if s.total_blocks == 0 {
        0.0
    } else {
        used as f64 / s.total_blocks as f64
    };
    gauge(
        out,
        "cordial_kv_cache_usage_ratio",
        "Used / total KV blocks.",
        usage,
    );
    gauge(
        out,
        "cordial_kv_blocks_cached_free",
        "Free KV blocks still holding a cached prompt block.",
        s.cached_free_blocks as f64,
    );
    render_kv_bytes(out, s);
    counter(
        out,
        "cordial_engine_steps_total",
        "Engine steps run.",
        s.steps,
    );
    counter(
        out,
        "cordial_preemptions_total",
        "Requests preempted (recomputed later).",
        s.preemptions,
    );
    counter(
        out,
        "cordial_prefix_cache_queries_tokens_total",
        "Prompt tokens looked up in the prefix cache.",
        s.prefix_cache_queries_tokens,
    );
    counter(
        out,
        "cordial_prefix_cache_hit_tokens_total",
        "Prompt tokens served from the prefix cache.",
        s.prefix_cache_hit_tokens,
    );
    counter(
        out,
        "cordial_kv_events_dropped_total",
        "KV-event batches dropped because the publisher's queue was full (--kv-events-endpoint).",
        s.kv_event_batches_dropped,
    );
    let rate = if s.prefix_cache_queries_tokens == 0 {
        0.0
    } else {
        s.prefix_cache_hit_tokens as f64 / s.prefix_cache_queries_tokens as f64
    };
    gauge(
        out,
        "cordial_prefix_cache_hit_rate",
        "Hit tokens / queried tokens, since start.",
        rate,
    );
}

/// KV memory: bytes per token (per pool), bytes held by sequences and allocated, and the
/// window pool's blocks when the model keeps its sliding-window layers apart.
fn render_kv_bytes(out: &mut String, s: &EngineStats) {
    gauge(
        out,
        "cordial_kv_bytes_per_token",
        "KV-cache bytes per token (K and V of every layer, or of the layers without a sliding \
         window when they have a pool of their own).",
        s.kv_bytes_per_token as f64,
    );
    let block = (s.block_size * s.kv_bytes_per_token) as f64;
    let window_block = (s.block_size * s.kv_window_bytes_per_token) as f64;
    let used = s.total_blocks.saturating_sub(s.free_blocks) as f64 * block
        + s.total_window_blocks.saturating_sub(s.free_window_blocks) as f64 * window_block;
    gauge(
        out,
        "cordial_kv_bytes_used",
        "KV-cache bytes in blocks held by sequences (both pools).",
        used,
    );
    gauge(
        out,
        "cordial_kv_bytes_total",
        "KV-cache bytes allocated (both pools).",
        s.total_blocks as f64 * block + s.total_window_blocks as f64 * window_block,
    );
    if s.total_window_blocks > 0 {
        gauge(
            out,
            "cordial_kv_window_bytes_per_token",
            "KV-cache bytes per token of the sliding-window layers, kept only for the positions \
             their window sees.",
            s.kv_window_bytes_per_token as f64,
        );
        gauge(
            out,
            "cordial_kv_window_blocks_total",
            "Blocks of the sliding-window layers' pool.",
            s.total_window_blocks as f64,
        );
        gauge(
            out,
            "cordial_kv_window_blocks_free",
            "Free blocks of the sliding-window layers' pool.",
            s.free_window_blocks as f64,
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, v: f64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
    );
}

/// A label value: backslash, quote and newline escaped.
pub(crate) fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(700));
        h.observe(Duration::from_secs(500));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"120\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    #[test]
    fn render_counts_requests_and_engine_gauges() {
        let m = Metrics::default();
        m.request_started();
        m.request_finished("/v1/completions", 200, "t\"1", Duration::from_millis(5));
        let stats = EngineStats {
            total_blocks: 10,
            free_blocks: 7,
            prefix_cache_queries_tokens: 4,
            prefix_cache_hit_tokens: 1,
            block_size: 16,
            kv_bytes_per_token: 100,
            total_window_blocks: 4,
            free_window_blocks: 3,
            kv_window_bytes_per_token: 10,
            ..EngineStats::default()
        };
        let out = m.render(Some(&stats));
        assert!(out.contains(
            "cordial_requests_total{route=\"/v1/completions\",status=\"200\",team=\"t\\\"1\"} 1\n"
        ));
        assert!(out.contains("cordial_kv_blocks_used 3\n"));
        assert!(out.contains("cordial_prefix_cache_hit_rate 0.25\n"));
        assert!(out.contains("cordial_kv_bytes_per_token 100\n"));
        assert!(out.contains("cordial_kv_bytes_used 4960\n"), "{out}");
        assert!(out.contains("cordial_kv_bytes_total 16640\n"));
        assert!(out.contains("cordial_kv_window_blocks_free 3\n"));
        assert!(out.contains("cordial_requests_in_flight 0\n"));
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("cordial_"), "{line}");
        }
        assert_eq!(m.requests_with("/v1/completions", 200), 1);
    }
}
