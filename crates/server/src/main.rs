//! The `cordial` binary: `cordial serve` (HTTP server), `cordial fetch-model` and `cordial bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use cordial_engine::{EngineConfig, KvEventSender};
use cordial_model::fetch::{default_model_path, ensure_default_model};
use cordial_model::{Compute, Isa, KvDtype};
use cordial_server::auth::ApiKeys;
use cordial_server::kv_events::{self, Layout, Publisher};
use cordial_server::lora::LoraSettings;
use cordial_server::runner::{self, RunnerOptions};
use cordial_server::serve::{serve as serve_http, ServeOptions};
use cordial_server::{router, startup, AppState, ServerOptions, Serving};

#[derive(Parser, Debug)]
#[command(
    name = "cordial",
    version,
    about = "LLM text-completion server (Friendli and OpenAI completions API)"
)]
struct Cli {
    /// Log format: `text` or `json` (one JSON object per line).
    #[arg(
        long,
        env = "CORDIAL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a model (a GGUF file or a Hugging Face folder) over HTTP.
    Serve(Box<ServeArgs>),
    /// Print a known model's path, fetching it first when missing.
    FetchModel(FetchArgs),
    /// Measure the model alone (prefill, decode, batched decode) and, with `--kernels`, the
    /// int8 matmul kernels (GMAC/s), without the server.
    Bench(BenchArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// GGUF file or Hugging Face folder (default: the default model, fetched when missing).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Compute threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Prompt tokens of the prefill measurement (0 skips it).
    #[arg(long, default_value_t = 512)]
    prefill_tokens: usize,
    /// Tokens decoded one at a time after a 16-token prompt (0 skips it).
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Sequences decoded together for 64 steps (1 skips it).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Long context: prefill this many tokens in chunks of 512, then decode 32 at that depth
    /// (0 skips it).
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// How the KV cache stores K and V (`auto`, `f16`, `q8_0`).
    #[arg(long, default_value = "auto", value_parser = parse_kv_dtype)]
    kv_cache_dtype: KvDtype,
    /// Also measure the kernels: one thread, a ROWS × 2048 matrix of each quantized type, on
    /// every kernel level of this CPU.
    #[arg(long, value_name = "ROWS", num_args = 0..=1, default_missing_value = "1536")]
    kernels: Option<usize>,
}

#[derive(Args, Debug)]
struct FetchArgs {
    /// Which model: `smollm2` (the default model, SmolLM2-135M-Instruct Q4_1) or `gemma3-270m`
    /// (Gemma 3 270M Q4_K_M).
    #[arg(default_value = "smollm2")]
    name: String,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// GGUF file or Hugging Face folder (config.json, tokenizer.json, *.safetensors in
    /// f32/f16/bf16) [default: the default model, fetched when missing].
    #[arg(short = 'm', long, env = "CORDIAL_MODEL")]
    model: Option<PathBuf>,
    /// Address to listen on (0.0.0.0: every interface; set an API key then).
    #[arg(long, env = "CORDIAL_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, env = "CORDIAL_PORT", default_value_t = 8000)]
    port: u16,
    /// Name clients use in `model` (repeatable; the first is primary) [default: the file stem].
    #[arg(
        long = "served-model-name",
        env = "CORDIAL_SERVED_MODEL_NAME",
        value_delimiter = ','
    )]
    served_model_name: Vec<String>,
    /// Compute threads (0 = number of cores).
    #[arg(long, env = "CORDIAL_THREADS", default_value_t = 0)]
    threads: usize,
    /// Raises the nice value of the compute threads (the engine thread and the compute pool) by
    /// this much (0-19, Linux) over the server's own. Raised (e.g. by 10), the HTTP workers
    /// preempt them as soon as they wake, so `/metrics`,
    /// `/health` and streamed tokens do not wait for a core the model holds. It weighs them
    /// against every thread of the machine (inside a container: of the container), so on a
    /// machine shared with other busy processes the model gets less of it.
    #[arg(long, env = "CORDIAL_COMPUTE_NICE", default_value_t = 0,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    compute_nice: i32,
    /// Also serve `/metrics` alone on this port, from a thread of its own, for a gateway's
    /// endpoint picker (GIE's `--model-server-metrics-port`): scrapes there never wait behind
    /// streamed tokens. `/metrics` stays on the main port too [default: off].
    #[arg(long, env = "CORDIAL_METRICS_PORT")]
    metrics_port: Option<u16>,
    /// Cap on prompt + output tokens [default: the model's context length]. The KV cache caps
    /// it too (--kv-cache-tokens).
    #[arg(long, env = "CORDIAL_MAX_MODEL_LEN")]
    max_model_len: Option<usize>,
    /// Most sequences decoded together in one step.
    #[arg(long, env = "CORDIAL_MAX_NUM_SEQS", default_value_t = 64)]
    max_num_seqs: usize,
    /// Total KV cache capacity, in tokens (also the longest sequence served).
    #[arg(long, env = "CORDIAL_KV_CACHE_TOKENS", default_value_t = 32768)]
    kv_cache_tokens: usize,
    /// How the KV cache stores K and V: `auto` (= f16), `f16`, or `q8_0` (int8 blocks of 32
    /// with an f16 scale, as llama.cpp's `-ctk q8_0 -ctv q8_0`: about half the bytes).
    #[arg(long, env = "CORDIAL_KV_CACHE_DTYPE", default_value = "auto", value_parser = parse_kv_dtype)]
    kv_cache_dtype: KvDtype,
    /// Chat template for /v1/chat/completions instead of the model's own: a file, or the
    /// template itself (Jinja, as in the model's `tokenizer.chat_template`).
    #[arg(long, env = "CORDIAL_CHAT_TEMPLATE", value_name = "FILE|STRING")]
    chat_template: Option<String>,
    /// Origins that browsers may call the API from (CORS; comma-separated or repeated; `*` =
    /// any) [default: none, CORS off].
    #[arg(long, env = "CORDIAL_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Most requests waiting for admission; more get 503 with Retry-After.
    #[arg(long, env = "CORDIAL_MAX_WAITING", default_value_t = 256)]
    max_waiting: usize,
    /// Most prompt tokens prefilled in one step.
    #[arg(long, env = "CORDIAL_MAX_PREFILL_TOKENS", default_value_t = 512)]
    max_prefill_tokens: usize,
    /// An accepted API key (repeatable); also CORDIAL_API_KEYS (comma-separated). Without any
    /// key the server is open.
    #[arg(long = "api-key")]
    api_key: Vec<String>,
    /// A file of API keys: one `KEY [TEAM]` per line (`#` comments); a key with a TEAM serves
    /// only that team (X-Friendli-Team).
    #[arg(long, env = "CORDIAL_API_KEYS_FILE")]
    api_keys_file: Option<PathBuf>,
    /// Seconds a completion may take when it sets no `timeout_microseconds` (429 after it);
    /// 0 = no limit.
    #[arg(long, env = "CORDIAL_DEFAULT_TIMEOUT", default_value_t = 0.0)]
    default_timeout: f64,
    /// Seconds a client has to send a request's headers (and the keep-alive idle limit).
    #[arg(long, env = "CORDIAL_HEADER_READ_TIMEOUT", default_value_t = 30.0)]
    header_read_timeout: f64,
    /// Seconds a client has to send a whole request body (408 after it).
    #[arg(long, env = "CORDIAL_BODY_READ_TIMEOUT", default_value_t = 30.0)]
    body_read_timeout: f64,
    /// Seconds in-flight requests may take after SIGTERM/SIGINT before they are cancelled.
    #[arg(long, env = "CORDIAL_SHUTDOWN_GRACE", default_value_t = 30.0)]
    shutdown_grace: f64,
    /// Publish the prefix cache's changes (vLLM's KV events: BlockStored, BlockRemoved,
    /// AllBlocksCleared) on a ZeroMQ PUB socket bound here, e.g. `tcp://*:5557` [default: off].
    #[arg(
        long,
        env = "CORDIAL_KV_EVENTS_ENDPOINT",
        value_name = "tcp://HOST:PORT"
    )]
    kv_events_endpoint: Option<String>,
    /// Topic of the KV events [default: kv@<hostname>@<first served name>].
    #[arg(long, env = "CORDIAL_KV_EVENTS_TOPIC")]
    kv_events_topic: Option<String>,
    /// Encoding of the KV events: `array` (vLLM < 0.28's tagged arrays, llm-d's indexer) or
    /// `map` (vLLM >= 0.28's tagged maps, vllm-router).
    #[arg(
        long,
        env = "CORDIAL_KV_EVENTS_LAYOUT",
        value_enum,
        default_value = "array"
    )]
    kv_events_layout: Layout,
    /// Seed of the prefix cache's block hashes (vLLM's `sha256_cbor` chain; the seed plays
    /// vLLM's PYTHONHASHSEED): replicas started with the same seed name equal blocks alike.
    #[arg(
        long,
        env = "CORDIAL_PREFIX_CACHING_HASH_SEED",
        default_value = cordial_engine::block_hash::DEFAULT_HASH_SEED
    )]
    prefix_caching_hash_seed: String,
    /// Serve LoRA adapters (also on when any adapter flag is given): a request selects one by
    /// its name in `model`.
    #[arg(long, env = "CORDIAL_ENABLE_LORA")]
    enable_lora: bool,
    /// LoRA adapters to serve: NAME=PATH (a llama.cpp GGUF adapter or a PEFT folder), or
    /// vLLM's JSON `{"name": ..., "path": ...}` (repeatable; several after one flag).
    #[arg(long = "lora-modules", value_name = "NAME=PATH", num_args = 1..)]
    lora_modules: Vec<String>,
    /// llama.cpp: a LoRA adapter served under its file stem (repeatable).
    #[arg(long = "lora", value_name = "FILE")]
    lora: Vec<PathBuf>,
    /// llama.cpp: a LoRA adapter served under its file stem at this scale when selected
    /// (FILE:SCALE, repeatable or comma-separated).
    #[arg(long = "lora-scaled", value_name = "FILE:SCALE", value_delimiter = ',')]
    lora_scaled: Vec<String>,
    /// Most distinct LoRA adapters in one step (requests of others wait for a slot).
    #[arg(long, env = "CORDIAL_MAX_LORAS", default_value_t = 8)]
    max_loras: usize,
    /// Largest LoRA rank accepted (a larger one is a load error naming the adapter; at most
    /// 512).
    #[arg(long, env = "CORDIAL_MAX_LORA_RANK", default_value_t = 64)]
    max_lora_rank: usize,
    /// LoRA adapters kept in memory (least recently used dropped beyond it and read again
    /// when needed) [default: --max-loras].
    #[arg(long, env = "CORDIAL_MAX_CPU_LORAS")]
    max_cpu_loras: Option<usize>,
    /// Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter.
    #[arg(long, env = "CORDIAL_ALLOW_RUNTIME_LORA_UPDATING")]
    allow_runtime_lora_updating: bool,
}

/// One adapter from the command line: name, path, scale when selected.
#[derive(Debug, Clone, PartialEq)]
struct AdapterFlag {
    name: String,
    path: PathBuf,
    scale: f32,
}

/// The name llama.cpp's `--lora` gives an adapter: its file stem (a folder's name).
fn adapter_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// `--lora-modules` value: `NAME=PATH` or `{"name": ..., "path": ...}`.
fn lora_module(v: &str) -> anyhow::Result<AdapterFlag> {
    let v = v.trim();
    let (name, path) = if v.starts_with('{') {
        let j: serde_json::Value = serde_json::from_str(v)
            .with_context(|| format!("--lora-modules: `{v}` is not valid JSON"))?;
        let field = |k: &str| j.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        match (field("name"), field("path")) {
            (Some(n), Some(p)) => (n, p),
            _ => anyhow::bail!("--lora-modules: `{v}` needs \"name\" and \"path\""),
        }
    } else {
        let (n, p) = v
            .split_once('=')
            .with_context(|| format!("--lora-modules: `{v}` is not NAME=PATH"))?;
        (n.trim().to_owned(), p.trim().to_owned())
    };
    anyhow::ensure!(
        !name.is_empty() && !path.is_empty(),
        "--lora-modules: `{v}` is not NAME=PATH"
    );
    Ok(AdapterFlag {
        name,
        path: PathBuf::from(path),
        scale: 1.0,
    })
}

/// `--lora-scaled` value: `FILE:SCALE` (split at the last `:`).
fn lora_scaled(v: &str) -> anyhow::Result<AdapterFlag> {
    let (file, scale) = v
        .trim()
        .rsplit_once(':')
        .with_context(|| format!("--lora-scaled: `{v}` is not FILE:SCALE"))?;
    let scale: f32 = scale
        .trim()
        .parse()
        .ok()
        .filter(|s: &f32| s.is_finite())
        .with_context(|| format!("--lora-scaled: `{scale}` in `{v}` is not a number"))?;
    let path = PathBuf::from(file);
    Ok(AdapterFlag {
        name: adapter_stem(&path),
        path,
        scale,
    })
}

/// The adapters of the three flags in command-line order (llama.cpp's per-request `lora` ids
/// number them in this order). `order` holds each flag's value indices from clap.
fn adapter_flags(args: &ServeArgs, order: &AdapterOrder) -> anyhow::Result<Vec<AdapterFlag>> {
    let mut all: Vec<(usize, AdapterFlag)> = Vec::new();
    for (i, v) in args.lora_modules.iter().enumerate() {
        all.push((order.at(&order.modules, i), lora_module(v)?));
    }
    for (i, p) in args.lora.iter().enumerate() {
        let flag = AdapterFlag {
            name: adapter_stem(p),
            path: p.clone(),
            scale: 1.0,
        };
        all.push((order.at(&order.lora, i), flag));
    }
    for (i, v) in args.lora_scaled.iter().enumerate() {
        all.push((order.at(&order.scaled, i), lora_scaled(v)?));
    }
    all.sort_by_key(|(i, _)| *i);
    let flags: Vec<AdapterFlag> = all.into_iter().map(|(_, f)| f).collect();
    for (i, f) in flags.iter().enumerate() {
        if flags[..i].iter().any(|g| g.name == f.name) {
            anyhow::bail!("two LoRA adapters are named `{}`", f.name);
        }
    }
    Ok(flags)
}

/// Where clap found each adapter flag's values on the command line.
#[derive(Debug, Default)]
struct AdapterOrder {
    modules: Vec<usize>,
    lora: Vec<usize>,
    scaled: Vec<usize>,
}

impl AdapterOrder {
    fn of(m: &clap::ArgMatches) -> AdapterOrder {
        let idx = |id: &str| -> Vec<usize> {
            m.subcommand_matches("serve")
                .and_then(|s| s.indices_of(id))
                .map(|i| i.collect())
                .unwrap_or_default()
        };
        AdapterOrder {
            modules: idx("lora_modules"),
            lora: idx("lora"),
            scaled: idx("lora_scaled"),
        }
    }

    /// The position of value `i` (values without one, e.g. from tests, keep their order).
    fn at(&self, of: &[usize], i: usize) -> usize {
        of.get(i).copied().unwrap_or(usize::MAX / 2 + i)
    }
}

/// LoRA serving's settings, when it is on.
fn lora_settings(args: &ServeArgs) -> anyhow::Result<Option<LoraSettings>> {
    let on = args.enable_lora
        || !args.lora_modules.is_empty()
        || !args.lora.is_empty()
        || !args.lora_scaled.is_empty()
        || args.allow_runtime_lora_updating;
    if !on {
        return Ok(None);
    }
    anyhow::ensure!(args.max_loras >= 1, "--max-loras must be at least 1");
    anyhow::ensure!(
        (1..=cordial_model::lora::MAX_RANK).contains(&args.max_lora_rank),
        "--max-lora-rank must be between 1 and {}",
        cordial_model::lora::MAX_RANK
    );
    let max_cpu_loras = args.max_cpu_loras.unwrap_or(args.max_loras);
    anyhow::ensure!(
        max_cpu_loras >= args.max_loras,
        "--max-cpu-loras ({max_cpu_loras}) must be at least --max-loras ({})",
        args.max_loras
    );
    Ok(Some(LoraSettings {
        max_loras: args.max_loras,
        max_lora_rank: args.max_lora_rank,
        max_cpu_loras,
        allow_runtime_updating: args.allow_runtime_lora_updating,
    }))
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let order = AdapterOrder::of(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().flatten_event(true).init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.command {
        Command::FetchModel(a) => {
            let m = match a.name.as_str() {
                "smollm2" => cordial_model::fetch::DEFAULT_MODEL,
                "gemma3-270m" => cordial_model::fetch::GEMMA3_270M,
                other => anyhow::bail!("unknown model `{other}` (known: smollm2, gemma3-270m)"),
            };
            println!("{}", cordial_model::fetch::ensure_model(&m)?.display());
            Ok(())
        }
        Command::Serve(args) => serve(*args, cli.log_format == LogFormat::Json, &order),
        Command::Bench(a) => bench(a),
    }
}

fn bench(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let path = match a.model {
        Some(p) => p,
        None => ensure_default_model()?,
    };
    let opts = cordial_model::bench::ModelBench {
        threads: a.threads,
        prefill: a.prefill_tokens,
        decode: a.decode_tokens,
        batch: a.batch,
        depth: a.depth,
        kv_dtype: a.kv_cache_dtype,
        compute: Compute::from_env()?,
    };
    let mut out = std::io::stdout();
    cordial_model::bench::model(&path, &opts, &mut out)?;
    if let Some(rows) = a.kernels {
        anyhow::ensure!(rows >= 1, "--kernels needs at least 1 row");
        cordial_model::bench::kernels(rows, &mut out)?;
    }
    Ok(())
}

/// The served names: the flags, or the model file's stem.
fn served_names(args: &ServeArgs, path: &Path) -> Vec<String> {
    let names: Vec<String> = args
        .served_model_name
        .iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    if !names.is_empty() {
        return names;
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    vec![stem.unwrap_or_else(|| "model".to_owned())]
}

fn serve(args: ServeArgs, json_logs: bool, order: &AdapterOrder) -> anyhow::Result<()> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    let names = served_names(&args, &path);
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("invalid --host/--port {}:{}", args.host, args.port))?;
    let keys = api_keys(&args)?;
    let lora = lora_settings(&args)?;
    let adapters = adapter_flags(&args, order)?;
    // The kernel level and weight layout: read once, here, from CORDIAL_ISA / CORDIAL_REPACK.
    let compute = Compute::from_env()?;
    let allowed_origins: Vec<String> = args
        .allowed_origins
        .iter()
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect();
    cordial_server::routes::cors(&allowed_origins)
        .map_err(|e| anyhow::anyhow!("--allowed-origins: {e}"))?;
    let options = ServerOptions {
        default_timeout: Some(seconds("--default-timeout", args.default_timeout)?)
            .filter(|d| !d.is_zero()),
        body_read_timeout: positive("--body-read-timeout", args.body_read_timeout)?,
        api_keys: keys.clone(),
        allowed_origins: allowed_origins.clone(),
    };
    let serve_opts = ServeOptions {
        header_read_timeout: positive("--header-read-timeout", args.header_read_timeout)?,
        shutdown_grace: seconds("--shutdown-grace", args.shutdown_grace)?,
    };
    tracing::info!(
        "settings: model={} served_model_names={:?} host={} port={} threads={} compute_nice={} \
         max_model_len={:?} max_num_seqs={} kv_cache_tokens={} kv_cache_dtype={} max_waiting={} max_prefill_tokens={} \
         api_keys={} \
         default_timeout_s={} header_read_timeout_s={} body_read_timeout_s={} shutdown_grace_s={} \
         chat_template={} allowed_origins={:?}",
        path.display(),
        names,
        args.host,
        args.port,
        args.threads,
        args.compute_nice,
        args.max_model_len,
        args.max_num_seqs,
        args.kv_cache_tokens,
        args.kv_cache_dtype,
        args.max_waiting,
        args.max_prefill_tokens,
        keys.len(),
        args.default_timeout,
        args.header_read_timeout,
        args.body_read_timeout,
        args.shutdown_grace,
        if args.chat_template.is_some() {
            "custom"
        } else {
            "the model's"
        },
        allowed_origins,
    );
    if let Some(l) = &lora {
        tracing::info!(
            "LoRA: {} adapters at start-up, max_loras={} max_lora_rank={} max_cpu_loras={} \
             runtime_updating={}",
            adapters.len(),
            l.max_loras,
            l.max_lora_rank,
            l.max_cpu_loras,
            l.allow_runtime_updating
        );
    }
    if keys.is_empty() && !addr.ip().is_loopback() {
        tracing::warn!(
            "no API key is configured and the server listens on {}: anyone who can reach it \
             can use it (set --api-key, CORDIAL_API_KEYS or --api-keys-file)",
            addr.ip()
        );
    }
    let names_for_lora = names.clone();
    let state = AppState::with_options(names, options);
    // Two workers: the compute pool needs the cores; HTTP work is light.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!("listening on http://{}", listener.local_addr()?);
        if let Some(port) = args.metrics_port {
            let at = std::net::SocketAddr::new(addr.ip(), port);
            let at = cordial_server::serve::spawn_on_own_thread(
                at,
                cordial_server::routes::metrics_router(state.clone()),
                serve_opts,
            )?;
            tracing::info!("metrics also on http://{at}/metrics");
        }
        let kv_events = match &args.kv_events_endpoint {
            Some(endpoint) => {
                let topic = args
                    .kv_events_topic
                    .clone()
                    .unwrap_or_else(|| kv_events::default_topic(&state.served_names()[0]));
                let publisher =
                    Publisher::bind(endpoint, topic.clone(), args.kv_events_layout).await?;
                tracing::info!(
                    "KV events on {} (topic {topic}, {:?} layout)",
                    publisher.endpoint,
                    args.kv_events_layout
                );
                let (sender, receiver) = tokio::sync::mpsc::channel(kv_events::CHANNEL_CAPACITY);
                tokio::spawn(publisher.run(receiver));
                Some(sender)
            }
            None => None,
        };
        let setup = LoadSetup {
            json_logs,
            compute,
            lora: lora.map(|l| (l, names_for_lora, adapters)),
            kv_events,
        };
        spawn_loader(state.clone(), args, path, setup);
        let shutdown_state = state.clone();
        let cancel = move || {
            if let Some(s) = shutdown_state.serving() {
                s.engine.shutdown();
            }
        };
        serve_http(
            listener,
            router(state),
            serve_opts,
            shutdown_signal(),
            cancel,
        )
        .await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Keys from `--api-key`, `CORDIAL_API_KEYS` (comma-separated) and the keys file, together.
fn api_keys(args: &ServeArgs) -> anyhow::Result<ApiKeys> {
    let mut keys: Vec<(String, Option<String>)> = args
        .api_key
        .iter()
        .map(|k| (k.trim().to_owned(), None))
        .collect();
    if let Ok(env) = std::env::var("CORDIAL_API_KEYS") {
        keys.extend(env.split(',').map(|k| (k.trim().to_owned(), None)));
    }
    if let Some(file) = &args.api_keys_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the keys file {}", file.display()))?;
        let parsed = ApiKeys::parse_file(&text)
            .map_err(|e| anyhow::anyhow!("keys file {}: {e}", file.display()))?;
        keys.extend(parsed);
    }
    Ok(ApiKeys::new(keys))
}

/// `--kv-cache-dtype`: `auto`, `f16` or `q8_0`.
fn parse_kv_dtype(s: &str) -> Result<KvDtype, String> {
    KvDtype::parse(s).ok_or_else(|| format!("`{s}` is not one of auto, f16, q8_0"))
}

/// A duration flag in seconds, between 0 and 1e9.
fn seconds(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        anyhow::bail!("{flag} must be a number of seconds between 0 and 1e9, got {secs}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`seconds`], above 0.
fn positive(flag: &str, secs: f64) -> anyhow::Result<Duration> {
    let d = seconds(flag, secs)?;
    if d.is_zero() {
        anyhow::bail!("{flag} must be above 0 seconds");
    }
    Ok(d)
}

/// What the loader needs besides the flags: the log format, the kernels, and LoRA serving
/// (settings, the base's served names, the start-up adapters).
struct LoadSetup {
    json_logs: bool,
    compute: Compute,
    lora: Option<(LoraSettings, Vec<String>, Vec<AdapterFlag>)>,
    kv_events: Option<KvEventSender>,
}

/// Loads the model on its own thread; the server answers `/health` 503 meanwhile. A failure to
/// load (an error or a panic) ends the process.
fn spawn_loader(state: AppState, args: ServeArgs, path: PathBuf, setup: LoadSetup) {
    std::thread::spawn(move || {
        let load = || load(&args, path, setup);
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(load))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the model loader panicked")));
        finish_loading(state, loaded)
    });
}

fn finish_loading(state: AppState, loaded: anyhow::Result<Serving>) {
    match loaded {
        Ok(serving) => {
            tracing::info!(
                "model loaded (context {} tokens); ready",
                serving.max_context
            );
            if state.set_serving(serving).is_err() {
                tracing::error!("the model was loaded twice");
            }
        }
        Err(e) => {
            tracing::error!("cannot load the model: {e:#}");
            std::process::exit(1);
        }
    }
}

fn load(args: &ServeArgs, path: PathBuf, setup: LoadSetup) -> anyhow::Result<Serving> {
    let LoadSetup {
        json_logs,
        compute,
        lora,
        kv_events,
    } = setup;
    let path = if args.model.is_none() {
        startup::fetch_default_model(json_logs)?
    } else {
        path
    };
    let template = args
        .chat_template
        .as_deref()
        .map(startup::chat_template_source)
        .transpose()?;
    anyhow::ensure!(
        args.compute_nice == 0 || cfg!(target_os = "linux"),
        "--compute-nice is supported on Linux only (its nice values are per thread)"
    );
    let opts = RunnerOptions {
        threads: args.threads,
        compute_nice: args.compute_nice,
        kv_cache_tokens: args.kv_cache_tokens,
        max_model_len: args.max_model_len,
        compute,
        lora: lora
            .as_ref()
            .map(|(s, names, _)| (s.clone(), names.clone())),
        kv_cache_dtype: args.kv_cache_dtype,
        max_num_seqs: args.max_num_seqs,
        max_prefill_tokens: args.max_prefill_tokens,
    };
    let loaded =
        runner::load(&path, &opts).with_context(|| format!("loading {}", path.display()))?;
    if let (Some(registry), Some((_, _, adapters))) = (&loaded.lora, &lora) {
        for a in adapters {
            registry.register(&a.name, &a.path, a.scale)?;
        }
    }
    tracing::info!(
        "architecture {}, vocabulary {} tokens, kernels={}{} (available: {})",
        loaded.architecture,
        loaded.vocab_size,
        compute.isa,
        if compute.pack().is_some() {
            ", weights repacked"
        } else {
            ", weights in the GGUF layout"
        },
        Isa::all_available()
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let config = EngineConfig {
        max_num_seqs: args.max_num_seqs,
        max_waiting: args.max_waiting,
        max_prefill_tokens: args.max_prefill_tokens,
        max_loras: lora.as_ref().map_or(0, |(s, _, _)| s.max_loras),
        prefix_hash_seed: args.prefix_caching_hash_seed.clone(),
        kv_events,
        ..EngineConfig::default()
    };
    startup::serving(loaded, config, template.as_deref())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, naming it in the log.
async fn shutdown_signal() {
    let ctrl_c = async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(e) => {
                tracing::warn!("cannot listen for Ctrl-C: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
                "SIGTERM"
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<&str>();
    let name = tokio::select! {
        name = ctrl_c => name,
        name = term => name,
    };
    tracing::info!("{name} received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_a_help_line() {
        let cli = Cli::command();
        cli.clone().debug_assert();
        let builtin = |id: &str| id == "help" || id == "version";
        for arg in cli
            .get_arguments()
            .filter(|a| !builtin(a.get_id().as_str()))
        {
            assert!(arg.get_help().is_some(), "--{}", arg.get_id());
        }
        for sub in cli.get_subcommands() {
            assert!(sub.get_about().is_some(), "{}", sub.get_name());
            for arg in sub
                .get_arguments()
                .filter(|a| !builtin(a.get_id().as_str()))
            {
                assert!(
                    arg.get_help().is_some(),
                    "{} {}",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        let serve = cli.find_subcommand("serve").unwrap();
        let about = serve.get_about().unwrap().to_string();
        assert!(
            about.contains("GGUF file or a Hugging Face folder"),
            "{about}"
        );
    }

    #[test]
    fn serve_flags_as_users_bring_them() {
        let cli = Cli::try_parse_from([
            "cordial",
            "serve",
            "-m",
            "model.gguf",
            "--chat-template",
            "t.jinja",
            "--allowed-origins",
            "https://a.example,https://b.example",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.model, Some(PathBuf::from("model.gguf")));
        assert_eq!(args.chat_template.as_deref(), Some("t.jinja"));
        assert_eq!(
            args.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
    }
}
