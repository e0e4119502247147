//! The closed set of commands the engine thread accepts.

use tokio::sync::mpsc::UnboundedSender;

use crate::api::{EngineRequest, Event};
use crate::seq::RequestId;

/// Everything other threads can ask of the engine. Closed on purpose: the engine thread is the
/// only owner of scheduler, blocks, sampler and model, and this enum is its whole surface.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue a request whose events go to `events`. (Already validated and counted as waiting
    /// by `EngineHandle::submit`.)
    Add {
        id: RequestId,
        request: Box<EngineRequest>,
        events: UnboundedSender<Event>,
    },
    /// The client is gone: drop the request and free its blocks.
    Abort { id: RequestId },
    /// End choice `choice` of request `id` now with `Stop` (the client matched a stop phrase)
    /// and free its blocks; the request goes on with its other choices.
    StopChoice { id: RequestId, choice: usize },
    /// End every request with `EngineError::ShuttingDown` and stop the thread.
    Shutdown,
}
