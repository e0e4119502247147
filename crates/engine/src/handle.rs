//! EngineHandle: the only door into the engine thread, and RequestStream: one request's events.
//!
//! `submit` validates the request, takes a slot in the bounded waiting queue (or answers
//! `QueueFull` at once), and sends `Command::Add`; it never blocks, so async code may call it.
//! Dropping a `RequestStream` before its final event sends `Command::Abort`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{
    EngineConfig, EngineError, EngineRequest, EngineStats, Event, KvCapacity, SubmitError,
};
use crate::core::{Command, EngineCore, ModelShape};
use crate::model::ModelExecutor;
use crate::sample::Sampler;
use crate::seq::RequestId;
use crate::shared::Shared;

/// Cheap to clone; shared by all HTTP handlers.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

struct Inner {
    commands: Sender<Command>,
    shared: Arc<Shared>,
    shape: ModelShape,
    max_waiting: usize,
    max_loras: usize,
    prefix_caching: bool,
    next_id: AtomicU64,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl EngineHandle {
    /// Starts the engine thread owning `model`.
    pub fn spawn(model: Box<dyn ModelExecutor>, config: EngineConfig) -> EngineHandle {
        EngineHandle::spawn_with_sampler(model, config, Sampler::default())
    }

    /// `spawn` with a given sampling pipeline (tests inject processors here).
    pub(crate) fn spawn_with_sampler(
        model: Box<dyn ModelExecutor>,
        config: EngineConfig,
        sampler: Sampler,
    ) -> EngineHandle {
        let shape = ModelShape::of(model.as_ref());
        let window_blocks = model.window_pool().map_or(0, |(_, blocks)| blocks);
        let shared = Arc::new(Shared::new(
            model.num_blocks(),
            window_blocks,
            model.block_size(),
            model.kv_bytes_per_token(),
        ));
        let (commands, receiver) = std::sync::mpsc::channel();
        let inner = Inner {
            commands,
            shared: Arc::clone(&shared),
            shape,
            max_waiting: config.max_waiting,
            max_loras: config.max_loras,
            prefix_caching: config.enable_prefix_caching,
            next_id: AtomicU64::new(0),
        };
        if shape.block_size == 0 {
            tracing::error!("the model reports a block size of 0; the engine does not start");
            return EngineHandle {
                inner: Arc::new(inner),
            };
        }
        let core = EngineCore::new(model, &config, sampler, receiver, Arc::clone(&shared));
        shared.running.store(true, Ordering::Release);
        let spawned = std::thread::Builder::new()
            .name("cordial-engine".to_string())
            .spawn(move || core.run());
        if let Err(err) = spawned {
            tracing::error!(%err, "could not start the engine thread");
            shared.running.store(false, Ordering::Release);
        }
        EngineHandle {
            inner: Arc::new(inner),
        }
    }

    /// Queues a request. Refused at once when the waiting queue is full.
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream, SubmitError> {
        let inner = &*self.inner;
        if !self.is_running() || !inner.shared.accepting.load(Ordering::Acquire) {
            return Err(SubmitError::NotRunning);
        }
        validate(&req, inner.shape)?;
        validate_lora(&req, inner.max_loras)?;
        inner
            .shared
            .reserve_waiting(inner.max_waiting)
            .map_err(|waiting| SubmitError::QueueFull { waiting })?;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (events, receiver) = unbounded_channel();
        if inner
            .commands
            .send(Command::Add {
                id,
                request: Box::new(req),
                events,
            })
            .is_err()
        {
            inner.shared.left_waiting(1);
            return Err(SubmitError::NotRunning);
        }
        Ok(RequestStream {
            control: RequestControl {
                id,
                commands: inner.commands.clone(),
            },
            events: receiver,
            ended: false,
        })
    }

    /// The KV cache's size, fixed at start.
    pub fn kv_capacity(&self) -> KvCapacity {
        KvCapacity {
            block_size: self.inner.shape.block_size,
            blocks: self.inner.shared.total_blocks,
        }
    }

    /// Whether automatic prefix caching is on (`EngineConfig::enable_prefix_caching`).
    pub fn prefix_caching(&self) -> bool {
        self.inner.prefix_caching
    }

    /// A snapshot of the engine's state.
    pub fn stats(&self) -> EngineStats {
        self.inner.shared.snapshot()
    }

    /// True while the engine thread runs.
    pub fn is_running(&self) -> bool {
        self.inner.shared.running.load(Ordering::Acquire)
    }

    /// Asks the engine to stop: waiting and running requests end with `EngineError::ShuttingDown`.
    /// Returns at once; `is_running` turns false when the thread has stopped.
    pub fn shutdown(&self) {
        self.inner.shared.accepting.store(false, Ordering::Release);
        let _ = self.inner.commands.send(Command::Shutdown);
    }
}

/// Checks what the engine relies on (the server validates the user-facing rules first).
fn validate(req: &EngineRequest, shape: ModelShape) -> Result<(), SubmitError> {
    let invalid = |msg: String| Err(SubmitError::Invalid(msg));
    if req.prompt.is_empty() {
        return invalid("the prompt is empty".to_string());
    }
    if req.seeds.is_empty() {
        return invalid("`seeds` is empty: a request needs one seed per choice".to_string());
    }
    if req.prompt.len() >= shape.max_context {
        let (len, max) = (req.prompt.len(), shape.max_context);
        return invalid(format!(
            "the prompt has {len} tokens; the context holds {max}"
        ));
    }
    if let Some((i, t)) = req
        .prompt
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= shape.vocab_size)
    {
        let vocab = shape.vocab_size;
        return invalid(format!(
            "prompt token {t} at index {i} is outside the vocabulary ({vocab})"
        ));
    }
    let p = &req.params;
    if p.temperature.is_nan() || p.temperature < 0.0 {
        return invalid(format!(
            "`temperature` must be >= 0. Given: {}",
            p.temperature
        ));
    }
    for (name, x) in [
        ("top_p", p.top_p),
        ("min_p", p.min_p),
        ("repetition_penalty", p.repetition_penalty),
        ("frequency_penalty", p.frequency_penalty),
        ("presence_penalty", p.presence_penalty),
    ] {
        if !x.is_finite() {
            return invalid(format!("`{name}` must be a finite number. Given: {x}"));
        }
    }
    if let Some((t, b)) = p.logit_bias.iter().find(|(_, b)| !b.is_finite()) {
        return invalid(format!(
            "`logit_bias` of token {t} must be finite. Given: {b}"
        ));
    }
    if p.repetition_penalty <= 0.0 {
        return invalid("`repetition_penalty` must be positive".to_string());
    }
    let lists = [
        ("eos_tokens", p.eos_tokens.as_slice()),
        ("forced_tokens", p.forced_tokens.as_slice()),
    ];
    let seqs = p
        .stop_sequences
        .iter()
        .map(|s| ("stop_sequences", s.as_slice()))
        .chain(
            p.bad_sequences
                .iter()
                .map(|s| ("bad_sequences", s.as_slice())),
        );
    for (name, ids) in lists.into_iter().chain(seqs) {
        if let Some(&t) = ids.iter().find(|&&t| t as usize >= shape.vocab_size) {
            let vocab = shape.vocab_size;
            return invalid(format!(
                "`{name}` has token {t}, outside the vocabulary ({vocab})"
            ));
        }
    }
    if !p.forced_tokens.is_empty() && p.max_new_tokens < p.forced_tokens.len() {
        return invalid("`max_new_tokens` is shorter than `forced_tokens`".to_string());
    }
    Ok(())
}

/// A request's adapters: finite scales, no id twice, and no more than `max_loras` (0 = any),
/// or it could never be scheduled.
fn validate_lora(req: &EngineRequest, max_loras: usize) -> Result<(), SubmitError> {
    let invalid = |msg: String| Err(SubmitError::Invalid(msg));
    if let Some(l) = req.lora.iter().find(|l| !l.scale.is_finite()) {
        return invalid(format!(
            "LoRA adapter {} has a non-finite scale {}",
            l.id, l.scale
        ));
    }
    let mut ids: Vec<u32> = req.lora.iter().map(|l| l.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != req.lora.len() {
        return invalid("a LoRA adapter is listed twice".to_string());
    }
    if max_loras > 0 && ids.len() > max_loras {
        return invalid(format!(
            "the request uses {} LoRA adapters; at most {max_loras} run in one step",
            ids.len()
        ));
    }
    Ok(())
}

/// The events of one request. Dropping it aborts the request (its KV blocks are freed at the
/// engine's next step).
#[derive(Debug)]
pub struct RequestStream {
    control: RequestControl,
    events: UnboundedReceiver<Event>,
    /// The final event (`Finished` or `Error`) was returned.
    ended: bool,
}

/// Steers one running request from outside the engine (cheap to clone; outlives nothing: a
/// command for a request that has ended is ignored).
#[derive(Debug, Clone)]
pub struct RequestControl {
    id: RequestId,
    commands: Sender<Command>,
}

impl RequestControl {
    /// Ends choice `choice` now with `FinishReason::Stop` (e.g. the client found a stop phrase
    /// in its text): the engine stops sampling it, frees its KV blocks, and sends its
    /// `ChoiceFinished` (and `Finished` if it was the last live choice). Tokens of that choice
    /// already in flight may still arrive before it; the caller ignores them.
    pub fn stop_choice(&self, choice: usize) {
        let _ = self.commands.send(Command::StopChoice {
            id: self.id,
            choice,
        });
    }
}

impl RequestStream {
    /// A handle to steer this request while its events are read elsewhere.
    pub fn control(&self) -> RequestControl {
        self.control.clone()
    }

    /// The next event; `None` after the final event. If the engine thread vanished without a
    /// final event, the stream ends with `Error(ShuttingDown)` so callers always see one.
    pub async fn recv(&mut self) -> Option<Event> {
        if self.ended {
            return None;
        }
        let event = self
            .events
            .recv()
            .await
            .unwrap_or(Event::Error(EngineError::ShuttingDown));
        self.ended = matches!(event, Event::Finished { .. } | Event::Error(_));
        Some(event)
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self.control.commands.send(Command::Abort {
                id: self.control.id,
            });
        }
    }
}
