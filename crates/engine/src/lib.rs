//! The serving engine: one thread owning scheduler, KV block accounting, sampler and model.
//! No HTTP, no JSON. See ARCHITECTURE.md.
//!
//! Key types: [`EngineHandle`] (spawn the engine thread over a [`ModelExecutor`], `submit`
//! requests, read `stats`), [`RequestStream`] (one request's [`Event`]s; dropping it aborts the
//! request), [`EngineRequest`] / [`SamplingParams`] in, [`Event`] out.
//!
//! Protocol: every submitted request ends with exactly one `Event::Finished` or `Event::Error`;
//! before `Finished` come its `Token`s and one `ChoiceFinished` per choice.
//!
//! Inside (private): `core` (the loop and the step), `sched` (scheduler, token budget,
//! preemption), `kv` (block allocator, block tables, copy-on-write), `seq` (sequences and
//! groups of `n` choices), `sample` (the ordered logits-processor pipeline).

pub mod api;
pub mod block_hash;
pub mod constraint;
mod core;
pub mod handle;
mod kv;
pub mod model;
mod sample;
mod sched;
mod seq;
mod shared;

pub use api::*;
pub use constraint::{ConstraintFactory, OutputConstraint, SharedConstraint, TokenMask};
pub use handle::{EngineHandle, RequestControl, RequestStream};
pub use model::{ModelError, ModelExecutor, SeqStep, TokenId, NO_BLOCK};
