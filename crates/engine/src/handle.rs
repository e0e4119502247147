//! EngineHandle: the only door into the engine thread. (Skeleton: the engine helper implements it.)

use crate::api::{EngineConfig, EngineRequest, EngineStats, Event, SubmitError};
use crate::model::ModelExecutor;

/// Cheap to clone; shared by all HTTP handlers.
#[derive(Clone)]
pub struct EngineHandle {}

impl EngineHandle {
    /// Starts the engine thread owning `model`.
    pub fn spawn(model: Box<dyn ModelExecutor>, config: EngineConfig) -> EngineHandle {
        let _ = (model, config);
        todo!("engine helper")
    }

    /// Queues a request. Refused at once when the waiting queue is full.
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream, SubmitError> {
        let _ = req;
        todo!("engine helper")
    }

    /// A snapshot of the engine's state.
    pub fn stats(&self) -> EngineStats {
        todo!("engine helper")
    }

    /// True while the engine thread runs.
    pub fn is_running(&self) -> bool {
        todo!("engine helper")
    }

    /// Asks the engine to stop: waiting and running requests end with `EngineError::ShuttingDown`.
    pub fn shutdown(&self) {
        todo!("engine helper")
    }
}

/// The events of one request. Dropping it aborts the request (its KV blocks are freed at the
/// engine's next step).
pub struct RequestStream {}

impl RequestStream {
    /// The next event; `None` after the final event.
    pub async fn recv(&mut self) -> Option<Event> {
        todo!("engine helper")
    }
}
