//! Engine events → detokenized text → JSON body or one of the two SSE dialects.
//!
//! `generation` merges the events of a request's inputs into dialect-neutral `Output`s (text
//! deltas per token, choice ends, the final results); `sse` writes them in the legacy or current
//! dialect; `collect` gathers them for a non-streamed body. Both paths read the same outputs, so
//! streamed text always equals non-streamed text.

mod chat;
mod generation;
mod logprobs;
mod sse;
mod stop;
#[cfg(test)]
mod tests;
mod text;

pub use chat::{chat_logprobs, ChatStream};
pub use generation::{
    best_of, finish_reason, outputs, outputs_from, ChoiceResult, Generation, Output, TextControls,
};
pub use logprobs::TokenInfo;
pub use sse::{current_event, legacy_event, SseDialect, StreamMeta, DONE};
pub use stop::StopMatcher;
pub use text::{ChoiceText, Delta, TokenText};

use futures::{Stream, StreamExt};

use crate::error::ApiError;
use crate::protocol::Usage;

/// Drains outputs to their final results (non-streamed responses).
pub async fn collect(
    outputs: impl Stream<Item = Output>,
) -> Result<(Vec<ChoiceResult>, Usage), ApiError> {
    let mut outputs = std::pin::pin!(outputs);
    while let Some(out) = outputs.next().await {
        match out {
            Output::Done { choices, usage } => return Ok((choices, usage)),
            Output::Failed(e) => return Err(e),
            Output::Token { .. } | Output::Echo { .. } | Output::ChoiceDone { .. } => {}
        }
    }
    Err(ApiError::Internal(
        "the request ended without a result".into(),
    ))
}
