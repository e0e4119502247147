//! Engine events of all the request's inputs → one ordered stream of dialect-neutral outputs.
//! Choice index = input index × n + choice (OpenAI's rule for prompt batches).

use std::collections::VecDeque;
use std::sync::Arc;

use cordial_engine::{Event, FinishReason, RequestStream};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};

use super::text::{ChoiceText, Delta, TokenText};
use crate::error::{ApiError, Flavor};
use crate::protocol::{FinishReasonWire, Usage};

/// Final result of one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceResult {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: Option<FinishReasonWire>,
}

/// What the dialect serializers and the JSON collector consume.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A generated token of choice `index` and the text it completes.
    Token {
        index: usize,
        token: u32,
        text: String,
    },
    /// Choice `index` ended.
    ChoiceDone {
        index: usize,
        reason: FinishReasonWire,
    },
    /// Every choice ended: the full results, in index order. Last output.
    Done {
        choices: Vec<ChoiceResult>,
        usage: Usage,
    },
    /// The request failed. Last output.
    Failed(ApiError),
}

impl Output {
    pub fn is_last(&self) -> bool {
        matches!(self, Output::Done { .. } | Output::Failed(_))
    }
}

pub fn finish_reason(r: FinishReason) -> FinishReasonWire {
    match r {
        FinishReason::Stop => FinishReasonWire::Stop,
        FinishReason::Length => FinishReasonWire::Length,
    }
}

struct ChoiceState {
    seed: u64,
    text: ChoiceText,
    reason: Option<FinishReasonWire>,
}

/// The state of one request across its inputs.
pub struct Generation {
    n: usize,
    flavor: Flavor,
    tt: Arc<dyn TokenText>,
    choices: Vec<ChoiceState>,
    inputs_left: usize,
    usage: Usage,
    ended: bool,
}

impl Generation {
    /// `seeds[i]`: the seeds of input `i`'s choices (all of length `n`).
    pub fn new(tt: Arc<dyn TokenText>, n: usize, seeds: &[Vec<u64>], flavor: Flavor) -> Generation {
        let choices = seeds
            .iter()
            .flat_map(|s| s.iter())
            .map(|&seed| ChoiceState {
                seed,
                text: ChoiceText::new(),
                reason: None,
            })
            .collect();
        Generation {
            n,
            flavor,
            tt,
            choices,
            inputs_left: seeds.len(),
            usage: Usage::default(),
            ended: false,
        }
    }

    fn choice(
        &mut self,
        input: usize,
        choice: usize,
    ) -> Result<(usize, &mut ChoiceState), ApiError> {
        let index = input * self.n + choice;
        match self.choices.get_mut(index) {
            Some(c) if choice < self.n => Ok((index, c)),
            _ => Err(ApiError::Internal(format!(
                "the engine reported unknown choice {choice}"
            ))),
        }
    }

    /// Consumes one event of input `input`; appends the resulting outputs.
    pub fn on_event(&mut self, input: usize, event: Option<Event>, out: &mut VecDeque<Output>) {
        if self.ended {
            return;
        }
        if let Err(e) = self.apply(input, event, out) {
            self.ended = true;
            out.push_back(Output::Failed(e));
        }
    }

    fn apply(
        &mut self,
        input: usize,
        event: Option<Event>,
        out: &mut VecDeque<Output>,
    ) -> Result<(), ApiError> {
        match event {
            Some(Event::Token { choice, token, .. }) => {
                let tt = Arc::clone(&self.tt);
                let (index, c) = self.choice(input, choice)?;
                let mut deltas = Vec::with_capacity(2);
                c.text.push(tt.as_ref(), token, &mut deltas);
                out.extend(
                    deltas
                        .into_iter()
                        .map(|Delta { token, text }| Output::Token { index, token, text }),
                );
            }
            Some(Event::ChoiceFinished { choice, reason }) => {
                let (index, c) = self.choice(input, choice)?;
                if let Some(Delta { token, text }) = c.text.finish() {
                    out.push_back(Output::Token { index, token, text });
                }
                let reason = finish_reason(reason);
                c.reason = Some(reason);
                out.push_back(Output::ChoiceDone { index, reason });
            }
            Some(Event::Finished {
                prompt_tokens,
                completion_tokens,
            }) => {
                self.usage = Usage::new(
                    self.usage.prompt_tokens + prompt_tokens,
                    self.usage.completion_tokens + completion_tokens,
                );
                self.inputs_left -= 1;
                if self.inputs_left == 0 {
                    self.ended = true;
                    out.push_back(Output::Done {
                        choices: self.results(),
                        usage: self.usage,
                    });
                }
            }
            Some(Event::Error(e)) => return Err(ApiError::from_engine(e, self.flavor)),
            None => {
                return Err(ApiError::Internal(
                    "the engine ended a request without a result".into(),
                ))
            }
        }
        Ok(())
    }

    fn results(&self) -> Vec<ChoiceResult> {
        self.choices
            .iter()
            .enumerate()
            .map(|(index, c)| ChoiceResult {
                index,
                seed: c.seed,
                text: c.text.text.clone(),
                tokens: c.text.tokens.clone(),
                finish_reason: c.reason,
            })
            .collect()
    }
}

/// The events of one engine request, tagged with its input index. Ends after the final event
/// (`Finished` or `Error`); a channel that closes before it yields one `None`, so that a missing
/// final event is noticed.
fn tagged(input: usize, rs: RequestStream) -> BoxStream<'static, (usize, Option<Event>)> {
    stream::unfold(Some(rs), move |rs| async move {
        let mut rs = rs?;
        match rs.recv().await {
            Some(ev @ (Event::Finished { .. } | Event::Error(_))) => {
                Some(((input, Some(ev)), None))
            }
            Some(ev) => Some(((input, Some(ev)), Some(rs))),
            None => Some(((input, None), None)),
        }
    })
    .boxed()
}

/// All inputs' events merged (interleaved as they come), turned into outputs. Ends after the
/// last output. Dropping it drops the engine streams, which aborts the requests.
pub fn outputs(streams: Vec<RequestStream>, gen: Generation) -> impl Stream<Item = Output> + Send {
    let merged = stream::select_all(streams.into_iter().enumerate().map(|(i, s)| tagged(i, s)));
    outputs_from(merged, gen)
}

struct OutputState<S> {
    events: S,
    gen: Generation,
    queue: VecDeque<Output>,
    ended: bool,
}

/// `outputs` over any stream of tagged events (unit tests feed it directly).
pub fn outputs_from<S>(events: S, gen: Generation) -> impl Stream<Item = Output> + Send
where
    S: Stream<Item = (usize, Option<Event>)> + Unpin + Send,
{
    let state = OutputState {
        events,
        gen,
        queue: VecDeque::new(),
        ended: false,
    };
    stream::unfold(state, |mut st| async move {
        loop {
            if st.ended {
                return None;
            }
            if let Some(out) = st.queue.pop_front() {
                st.ended = out.is_last();
                return Some((out, st));
            }
            match st.events.next().await {
                Some((input, event)) => st.gen.on_event(input, event, &mut st.queue),
                None => {
                    let e = ApiError::Internal("the engine streams ended early".into());
                    st.queue.push_back(Output::Failed(e));
                }
            }
        }
    })
}
