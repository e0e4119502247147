//! The LoRA adapters a server serves: names → adapters, with the weights of the most recently
//! used ones resident (`--max-cpu-loras`, least recently used dropped beyond it, read again from
//! their files when needed, checked against the content digest taken at registration).
//!
//! Shared by the HTTP side (model names in requests, `/v1/models`, runtime load/unload, metrics)
//! and the model runner on the engine thread (the weights of a step's adapters). An adapter
//! keeps its id for the server's life: an unloaded one is no longer served by name, but the
//! requests already running with it resolve its id and finish first. Ids are given in
//! registration order (start-up order first): llama.cpp's per-request `lora` list names them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cordial_engine::LoraRef;
use cordial_model::{LoraAdapter, LoraBase};

use crate::metrics::escape_label;

/// Operator settings (`--max-loras`, `--max-lora-rank`, `--max-cpu-loras`,
/// `--allow-runtime-lora-updating`).
#[derive(Debug, Clone)]
pub struct LoraSettings {
    /// Distinct adapters in one step.
    pub max_loras: usize,
    /// Largest rank accepted at load.
    pub max_lora_rank: usize,
    /// Adapters whose weights stay in memory (least recently used dropped beyond it).
    pub max_cpu_loras: usize,
    /// `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` are served.
    pub allow_runtime_updating: bool,
}

impl Default for LoraSettings {
    fn default() -> Self {
        LoraSettings {
            max_loras: 8,
            max_lora_rank: 64,
            max_cpu_loras: 8,
            allow_runtime_updating: false,
        }
    }
}

/// One registered adapter.
#[derive(Debug)]
pub struct AdapterInfo {
    pub id: u32,
    pub name: String,
    /// The GGUF file or PEFT folder (`root` in `/v1/models`).
    pub path: PathBuf,
    /// SHA-256 of its files at registration.
    pub digest: [u8; 32],
    /// The scale a request that names it gets (`--lora-scaled`; else 1).
    pub scale: f32,
    pub rank: usize,
    pub format: &'static str,
    /// Requests that used it, and their tokens (metrics).
    pub requests: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl AdapterInfo {
    /// What a request using it at `scale` hands the engine.
    pub fn lora_ref(&self, scale: f32) -> LoraRef {
        LoraRef {
            id: self.id,
            name: self.name.as_str().into(),
            scale,
            digest: self.digest,
        }
    }
}

/// Why registering or unloading an adapter failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LoraRegistryError {
    /// The file is missing or malformed (400 at runtime, a start-up error otherwise).
    #[error("LoRA adapter `{name}`: {message}")]
    Invalid { name: String, message: String },
    #[error("the LoRA adapter `{0}` has already been loaded")]
    Exists(String),
    #[error("`{0}` is the base model's name; an adapter needs its own")]
    BaseName(String),
    #[error("the LoRA adapter `{0}` cannot be found")]
    NotFound(String),
}

struct Inner {
    /// Served adapters by name.
    names: BTreeMap<String, Arc<AdapterInfo>>,
    /// Every adapter ever registered (unloaded ones too: running requests resolve them).
    by_id: BTreeMap<u32, Arc<AdapterInfo>>,
    /// Resident weights, least recently used first.
    resident: Vec<(u32, Arc<LoraAdapter>)>,
    next_id: u32,
}

/// The adapters of one server (see the module docs).
pub struct LoraRegistry {
    base: LoraBase,
    base_names: Vec<String>,
    pub settings: LoraSettings,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for LoraRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoraRegistry")
            .field("settings", &self.settings)
            .field("adapters", &self.loaded().len())
            .finish()
    }
}

impl LoraRegistry {
    /// An empty registry for the model `base` served as `base_names` (primary first).
    pub fn new(base: LoraBase, base_names: Vec<String>, settings: LoraSettings) -> LoraRegistry {
        LoraRegistry {
            base,
            base_names,
            settings,
            inner: Mutex::new(Inner {
                names: BTreeMap::new(),
                by_id: BTreeMap::new(),
                resident: Vec::new(),
                next_id: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The base model's primary name (`parent` of the adapters in `/v1/models`).
    pub fn base_name(&self) -> &str {
        self.base_names.first().map_or("", String::as_str)
    }

    /// Reads and checks the adapter at `path`, and serves it as `name` (its weights resident).
    /// Slow (reads the files): call it off the async workers.
    pub fn register(
        &self,
        name: &str,
        path: &Path,
        scale: f32,
    ) -> Result<Arc<AdapterInfo>, LoraRegistryError> {
        if self.base_names.iter().any(|b| b == name) {
            return Err(LoraRegistryError::BaseName(name.into()));
        }
        if name.is_empty() {
            return Err(LoraRegistryError::Invalid {
                name: name.into(),
                message: "the adapter's name is empty".into(),
            });
        }
        if self.resolve(name).is_some() {
            return Err(LoraRegistryError::Exists(name.into()));
        }
        if !scale.is_finite() {
            return Err(LoraRegistryError::Invalid {
                name: name.into(),
                message: format!("the scale {scale} is not finite"),
            });
        }
        let adapter =
            LoraAdapter::load(path, &self.base, self.settings.max_lora_rank).map_err(|e| {
                LoraRegistryError::Invalid {
                    name: name.into(),
                    message: e.to_string(),
                }
            })?;
        let mut inner = self.lock();
        if inner.names.contains_key(name) {
            return Err(LoraRegistryError::Exists(name.into()));
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let info = Arc::new(AdapterInfo {
            id,
            name: name.into(),
            path: path.to_path_buf(),
            digest: adapter.digest,
            scale,
            rank: adapter.rank(),
            format: adapter.format,
            requests: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
        });
        tracing::info!(
            "LoRA adapter `{name}` (id {id}): {} {}, rank {}, {} matrices, {:.1} MiB, sha256 {}",
            adapter.format,
            path.display(),
            adapter.rank(),
            adapter.num_mats(),
            adapter.bytes() as f64 / (1 << 20) as f64,
            adapter.digest_hex(),
        );
        inner.names.insert(name.into(), info.clone());
        inner.by_id.insert(id, info.clone());
        self.make_resident(&mut inner, id, Arc::new(adapter));
        Ok(info)
    }

    /// Stops serving `name`: new requests naming it get 404; running ones finish with it.
    pub fn unload(&self, name: &str) -> Result<(), LoraRegistryError> {
        let mut inner = self.lock();
        let info = inner
            .names
            .remove(name)
            .ok_or_else(|| LoraRegistryError::NotFound(name.into()))?;
        // Its weights leave memory as other adapters are used (or at once if none is).
        let at = inner.resident.iter().position(|(id, _)| *id == info.id);
        if let Some(at) = at {
            let entry = inner.resident.remove(at);
            inner.resident.insert(0, entry);
        }
        tracing::info!("LoRA adapter `{name}` (id {}) unloaded", info.id);
        Ok(())
    }

    /// The adapter served as `name`.
    pub fn resolve(&self, name: &str) -> Option<Arc<AdapterInfo>> {
        self.lock().names.get(name).cloned()
    }

    /// The adapter with id `id`, served or not (unloaded ones too).
    pub fn by_id(&self, id: u32) -> Option<Arc<AdapterInfo>> {
        self.lock().by_id.get(&id).cloned()
    }

    /// The served adapter with id `id` (llama.cpp's per-request `lora` ids).
    pub fn served_id(&self, id: u32) -> Option<Arc<AdapterInfo>> {
        let inner = self.lock();
        inner
            .by_id
            .get(&id)
            .filter(|a| inner.names.get(&a.name).is_some_and(|s| s.id == id))
            .cloned()
    }

    /// The served adapters, by id.
    pub fn loaded(&self) -> Vec<Arc<AdapterInfo>> {
        let mut v: Vec<_> = self.lock().names.values().cloned().collect();
        v.sort_by_key(|a| a.id);
        v
    }

    /// The weights of adapter `id` for a step: resident, or read again from its files (which
    /// must still hold the content it was registered with).
    pub fn weights(&self, id: u32) -> Result<Arc<LoraAdapter>, String> {
        let info = {
            let mut inner = self.lock();
            if let Some(at) = inner.resident.iter().position(|(i, _)| *i == id) {
                let entry = inner.resident.remove(at);
                let w = entry.1.clone();
                inner.resident.push(entry);
                return Ok(w);
            }
            inner
                .by_id
                .get(&id)
                .cloned()
                .ok_or_else(|| format!("no LoRA adapter has id {id}"))?
        };
        let adapter = LoraAdapter::load(&info.path, &self.base, self.settings.max_lora_rank)
            .map_err(|e| format!("reloading LoRA adapter `{}`: {e}", info.name))?;
        if adapter.digest != info.digest {
            return Err(format!(
                "LoRA adapter `{}`: {} changed on disk since it was loaded",
                info.name,
                info.path.display()
            ));
        }
        tracing::debug!(
            "LoRA adapter `{}` read again from {}",
            info.name,
            info.path.display()
        );
        let w = Arc::new(adapter);
        let mut inner = self.lock();
        self.make_resident(&mut inner, id, w.clone());
        Ok(w)
    }

    /// Adapters whose weights are in memory.
    pub fn resident(&self) -> usize {
        self.lock().resident.len()
    }

    fn make_resident(&self, inner: &mut Inner, id: u32, w: Arc<LoraAdapter>) {
        inner.resident.retain(|(i, _)| *i != id);
        inner.resident.push((id, w));
        let keep = self.settings.max_cpu_loras.max(1);
        while inner.resident.len() > keep {
            let (old, _) = inner.resident.remove(0);
            tracing::debug!("LoRA adapter id {old} leaves memory (--max-cpu-loras {keep})");
        }
    }

    /// Counts a request (with its token counts once known) for each adapter it used.
    pub fn count_request(&self, lora: &[LoraRef]) {
        for l in lora {
            if let Some(a) = self.by_id(l.id) {
                a.requests.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn count_tokens(&self, lora: &[LoraRef], prompt: usize, completion: usize) {
        for l in lora {
            if let Some(a) = self.by_id(l.id) {
                a.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
                a.completion_tokens
                    .fetch_add(completion as u64, Ordering::Relaxed);
            }
        }
    }

    /// The names of adapters `ids` (unloaded ones too), in that order.
    pub fn names(&self, ids: &[u32]) -> Vec<String> {
        let inner = self.lock();
        ids.iter()
            .filter_map(|id| inner.by_id.get(id).map(|a| a.name.clone()))
            .collect()
    }

    /// The `cordial_lora_*` lines of `/metrics`, per adapter ever registered (label `adapter`).
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let all: Vec<Arc<AdapterInfo>> = self.lock().by_id.values().cloned().collect();
        let served: Vec<u32> = self.loaded().iter().map(|a| a.id).collect();
        let family = |out: &mut String,
                      name: &str,
                      help: &str,
                      kind: &str,
                      v: &dyn Fn(&AdapterInfo) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for a in &all {
                let _ = writeln!(
                    out,
                    "{name}{{adapter=\"{}\"}} {}",
                    escape_label(&a.name),
                    v(a)
                );
            }
        };
        family(
            out,
            "cordial_lora_requests_total",
            "Requests served with each LoRA adapter.",
            "counter",
            &|a| a.requests.load(Ordering::Relaxed),
        );
        family(
            out,
            "cordial_lora_prompt_tokens_total",
            "Prompt tokens of finished requests, per LoRA adapter.",
            "counter",
            &|a| a.prompt_tokens.load(Ordering::Relaxed),
        );
        family(
            out,
            "cordial_lora_completion_tokens_total",
            "Generated tokens of finished requests, per LoRA adapter.",
            "counter",
            &|a| a.completion_tokens.load(Ordering::Relaxed),
        );
        family(
            out,
            "cordial_lora_adapter_loaded",
            "1 while an adapter is served by name, 0 once unloaded.",
            "gauge",
            &|a| u64::from(served.contains(&a.id)),
        );
        let _ = writeln!(
            out,
            "# HELP cordial_lora_resident_adapters Adapters whose weights are in memory.\n\
             # TYPE cordial_lora_resident_adapters gauge\ncordial_lora_resident_adapters {}",
            self.resident()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cordial_model::gguf::GgufFile;
    use cordial_model::Model;
    use cordial_testkit::gguf_writer::temp_path;
    use cordial_testkit::lora_writer::LoraSpec;
    use cordial_testkit::tiny_llama::{tiny_llama, FFN, HIDDEN, LAYERS};

    /// The tiny llama's base (2 heads, 1 KV head) and a file of adapter `seed` for it.
    fn adapter_file(seed: u64) -> PathBuf {
        let path = temp_path(&format!("lora-lru-{seed}.gguf"));
        LoraSpec::llama(LAYERS, HIDDEN, FFN, 2, 1, HIDDEN / 2, seed)
            .write_gguf(&path)
            .unwrap();
        path
    }

    fn tiny_base() -> LoraBase {
        let path = temp_path("lora-lru-base.gguf");
        tiny_llama(128, None).write(&path).unwrap();
        let model = Model::load(Arc::new(GgufFile::open(&path).unwrap())).unwrap();
        std::fs::remove_file(&path).ok();
        model.lora_base().clone()
    }

    /// `--max-cpu-loras 2` with three adapters: the least recently used one leaves memory,
    /// is read again from its file when a step needs it (same weights, checked by digest),
    /// and a file changed on disk since registration is refused, not served.
    #[test]
    fn max_cpu_loras_keeps_the_most_recent_and_reads_the_others_again() {
        let settings = LoraSettings {
            max_cpu_loras: 2,
            ..LoraSettings::default()
        };
        let reg = LoraRegistry::new(tiny_base(), vec!["tiny".into()], settings);
        let paths: Vec<PathBuf> = (1..=3).map(adapter_file).collect();
        let ids: Vec<u32> = ["a", "b", "c"]
            .iter()
            .zip(&paths)
            .map(|(name, p)| reg.register(name, p, 1.0).unwrap().id)
            .collect();
        assert_eq!(reg.resident(), 2, "three registered, two resident");

        // `a` was dropped: it comes back from its file with the digest it was registered with.
        let a = reg.weights(ids[0]).expect("a read again");
        assert_eq!(a.digest, reg.by_id(ids[0]).unwrap().digest);
        assert_eq!(reg.resident(), 2);
        // Now `b` is the least recently used; `c` and `a` are served from memory.
        let c1 = reg.weights(ids[2]).unwrap();
        let c2 = reg.weights(ids[2]).unwrap();
        assert!(
            Arc::ptr_eq(&c1, &c2),
            "a resident adapter is not read again"
        );

        // `b`'s file changes on disk while `b` is out of memory: refused, naming the adapter.
        LoraSpec::llama(LAYERS, HIDDEN, FFN, 2, 1, HIDDEN / 2, 99)
            .write_gguf(&paths[1])
            .unwrap();
        let err = reg.weights(ids[1]).unwrap_err();
        assert!(
            err.contains("`b`") && err.contains("changed on disk"),
            "{err}"
        );
        for p in &paths {
            std::fs::remove_file(p).ok();
        }
    }
}
