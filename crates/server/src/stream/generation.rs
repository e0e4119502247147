//! Engine events of all the request's inputs → one ordered stream of dialect-neutral outputs.
//! Choice index = input index × n + choice (OpenAI's rule for prompt batches).
//!
//! Stop phrases are matched here, per choice ([`ChoiceText`]); a match ends the choice at once
//! (`ChoiceDone` with `stop`) and is recorded in [`Generation::take_stops`] so that the caller
//! tells the engine to stop sampling it. Tokens of that choice still in flight are ignored, and
//! `usage.completion_tokens` counts the tokens the choices report.

use std::collections::VecDeque;
use std::sync::Arc;

use cordial_engine::{Event, FinishReason, RequestControl, RequestStream};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt};

use super::logprobs::{self, TokenInfo};
use super::stop::StopMatcher;
use super::text::{ChoiceText, Delta, TokenText};
use crate::error::{ApiError, Flavor};
use crate::protocol::{FinishReasonWire, LogprobsWire, Usage};
use crate::validate::LogprobMode;

/// Final result of one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceResult {
    pub index: usize,
    pub seed: u64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub finish_reason: Option<FinishReasonWire>,
    pub logprobs: Option<LogprobsWire>,
    pub logits: Option<Vec<Vec<f32>>>,
    /// Sum of the choice's token log-probabilities (ranks `best_of` choices).
    pub cum_logprob: f64,
}

/// `best_of`: of each input's `n` choices (consecutive in `choices`), the `keep` with the
/// highest cumulative log-probability (ties: the lower index), re-indexed in that order.
pub fn best_of(choices: Vec<ChoiceResult>, n: usize, keep: usize) -> Vec<ChoiceResult> {
    if keep >= n || n == 0 {
        return choices;
    }
    let mut out = Vec::with_capacity(choices.len() / n * keep);
    let mut rest = choices.into_iter().peekable();
    while rest.peek().is_some() {
        let mut group: Vec<ChoiceResult> = rest.by_ref().take(n).collect();
        group.sort_by(|a, b| {
            b.cum_logprob
                .total_cmp(&a.cum_logprob)
                .then(a.index.cmp(&b.index))
        });
        out.extend(group.into_iter().take(keep));
    }
    for (i, c) in out.iter_mut().enumerate() {
        c.index = i;
    }
    out
}

/// What the dialect serializers and the JSON collector consume.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A generated token of choice `index`, the text it completes, and what was asked about it.
    Token {
        index: usize,
        token: u32,
        text: String,
        logprobs: Option<LogprobsWire>,
        logits: Option<Vec<f32>>,
    },
    /// The echoed prompt of choice `index` (`echo`), before its first token.
    Echo {
        index: usize,
        text: String,
        logprobs: Option<LogprobsWire>,
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

/// The request's text-side controls: stop phrases and what each token reports.
#[derive(Debug, Clone, Default)]
pub struct TextControls {
    pub stop: Vec<String>,
    /// Per input: stop phrases count only from this many tokens on (`min_tokens`).
    pub min_tokens: Vec<usize>,
    pub logprobs: Option<LogprobMode>,
    pub logits: bool,
    /// `echo`: each input's prompt tokens, whose text (and, with `logprobs: k`, scores) start
    /// each of its choices.
    pub echo: Option<Vec<Vec<u32>>>,
}

/// One input's echoed prompt, gathered until its first choice event.
struct EchoState {
    tokens: Vec<u32>,
    /// What the engine reported for each prompt position (`PromptToken`), by position.
    infos: Vec<Option<TokenInfo>>,
    released: bool,
}

struct ChoiceState {
    seed: u64,
    text: ChoiceText,
    reason: Option<FinishReasonWire>,
    /// What the engine reported with each token whose delta is not out yet, in order.
    infos: VecDeque<TokenInfo>,
    /// Characters of text released so far (OpenAI `text_offset`).
    chars: usize,
    logprobs: Option<LogprobsWire>,
    logits: Option<Vec<Vec<f32>>>,
    /// The echoed prompt text that precedes `text` (`echo`).
    echo: String,
    cum_logprob: f64,
}

/// The state of one request across its inputs.
pub struct Generation {
    n: usize,
    flavor: Flavor,
    tt: Arc<dyn TokenText>,
    mode: LogprobMode,
    choices: Vec<ChoiceState>,
    inputs_left: usize,
    prompt_tokens: usize,
    /// `(input, choice)` of the choices a stop phrase ended, not yet told to the engine.
    stops: Vec<(usize, usize)>,
    /// Per input, with `echo`.
    echo: Vec<EchoState>,
    ended: bool,
}

impl Generation {
    /// `seeds[i]`: the seeds of input `i`'s choices (all of length `n`).
    pub fn new(tt: Arc<dyn TokenText>, n: usize, seeds: &[Vec<u64>], flavor: Flavor) -> Generation {
        Generation::with_controls(tt, n, seeds, flavor, TextControls::default())
    }

    pub fn with_controls(
        tt: Arc<dyn TokenText>,
        n: usize,
        seeds: &[Vec<u64>],
        flavor: Flavor,
        controls: TextControls,
    ) -> Generation {
        let mode = controls.logprobs.unwrap_or(LogprobMode::None);
        let choices = seeds
            .iter()
            .enumerate()
            .flat_map(|(input, s)| s.iter().map(move |&seed| (input, seed)))
            .map(|(input, seed)| {
                let min = controls.min_tokens.get(input).copied().unwrap_or(0);
                ChoiceState {
                    seed,
                    text: ChoiceText::with_stop(StopMatcher::new(controls.stop.clone(), min)),
                    reason: None,
                    infos: VecDeque::new(),
                    chars: 0,
                    logprobs: logprobs::empty(mode),
                    logits: controls.logits.then(Vec::new),
                    echo: String::new(),
                    cum_logprob: 0.0,
                }
            })
            .collect();
        let echo = controls
            .echo
            .unwrap_or_default()
            .into_iter()
            .map(|tokens| EchoState {
                infos: vec![None; tokens.len()],
                tokens,
                released: false,
            })
            .collect();
        Generation {
            n,
            flavor,
            tt,
            mode,
            choices,
            inputs_left: seeds.len(),
            prompt_tokens: 0,
            stops: Vec::new(),
            echo,
            ended: false,
        }
    }

    /// Before input `input`'s first choice event: its prompt (text, and scores when asked)
    /// starts each of its choices.
    fn release_echo(&mut self, input: usize, out: &mut VecDeque<Output>) {
        let Some(echo) = self.echo.get_mut(input) else {
            return;
        };
        if std::mem::replace(&mut echo.released, true) {
            return;
        }
        let tt = self.tt.as_ref();
        let mut decoder = cordial_tokenizer::IncrementalDecoder::new(true);
        let (mut text, mut chars, mut offsets) = (String::new(), 0, Vec::new());
        for &t in &echo.tokens {
            offsets.push(chars);
            let before = text.len();
            tt.push(&mut decoder, t, &mut text);
            chars += text[before..].chars().count();
        }
        let before = text.len();
        text.push_str(&decoder.finish());
        chars += text[before..].chars().count();
        let lp = match self.mode {
            LogprobMode::Top(k) => Some(LogprobsWire::OpenAi(logprobs::prompt_logprobs(
                k,
                tt,
                &echo.tokens,
                &echo.infos,
                &offsets,
            ))),
            LogprobMode::Floats | LogprobMode::None => None,
        };
        for j in 0..self.n {
            let index = input * self.n + j;
            let Some(c) = self.choices.get_mut(index) else {
                continue;
            };
            c.echo = text.clone();
            c.chars = chars;
            if let Some(one) = &lp {
                logprobs::append(&mut c.logprobs, one.clone());
            }
            out.push_back(Output::Echo {
                index,
                text: text.clone(),
                logprobs: lp.clone(),
            });
        }
    }

    /// The choices that stop phrases ended since the last call, as `(input, choice)`.
    pub fn take_stops(&mut self) -> Vec<(usize, usize)> {
        std::mem::take(&mut self.stops)
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
        if !matches!(event, Some(Event::PromptToken { .. })) {
            self.release_echo(input, out);
        }
        match event {
            Some(Event::PromptToken {
                position,
                logprob,
                extra,
                ..
            }) => {
                if let Some(slot) = self
                    .echo
                    .get_mut(input)
                    .and_then(|e| e.infos.get_mut(position))
                {
                    *slot = Some(TokenInfo { logprob, extra });
                }
            }
            Some(Event::Token {
                choice,
                token,
                logprob,
                extra,
            }) => {
                let (tt, mode) = (Arc::clone(&self.tt), self.mode);
                let (index, c) = self.choice(input, choice)?;
                if c.reason.is_some() {
                    return Ok(()); // ended by a stop phrase; the engine had it in flight
                }
                c.infos.push_back(TokenInfo { logprob, extra });
                let mut deltas = Vec::with_capacity(2);
                let stopped = c.text.push(tt.as_ref(), token, &mut deltas);
                emit(c, index, deltas, tt.as_ref(), mode, out);
                if stopped {
                    end_choice(c, index, FinishReasonWire::Stop, out);
                    self.stops.push((input, choice));
                }
            }
            Some(Event::ChoiceFinished { choice, reason }) => {
                let (tt, mode) = (Arc::clone(&self.tt), self.mode);
                let (index, c) = self.choice(input, choice)?;
                if c.reason.is_some() {
                    return Ok(());
                }
                let mut deltas = Vec::new();
                let stopped = c.text.finish(&mut deltas);
                emit(c, index, deltas, tt.as_ref(), mode, out);
                let reason = if stopped {
                    FinishReasonWire::Stop
                } else {
                    finish_reason(reason)
                };
                end_choice(c, index, reason, out);
            }
            Some(Event::Finished { prompt_tokens, .. }) => {
                self.prompt_tokens += prompt_tokens;
                self.inputs_left -= 1;
                if self.inputs_left == 0 {
                    self.ended = true;
                    let completion = self.choices.iter().map(|c| c.text.tokens.len()).sum();
                    out.push_back(Output::Done {
                        choices: self.results(),
                        usage: Usage::new(self.prompt_tokens, completion),
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

    fn results(&mut self) -> Vec<ChoiceResult> {
        self.choices
            .iter_mut()
            .enumerate()
            .map(|(index, c)| ChoiceResult {
                index,
                seed: c.seed,
                text: format!("{}{}", c.echo, c.text.text),
                tokens: c.text.tokens.clone(),
                finish_reason: c.reason,
                logprobs: c.logprobs.take(),
                logits: c.logits.take(),
                cum_logprob: c.cum_logprob,
            })
            .collect()
    }
}

/// Turns released deltas into `Token` outputs, pairing each with its engine info, and records
/// what the choice reports.
fn emit(
    c: &mut ChoiceState,
    index: usize,
    deltas: Vec<Delta>,
    tt: &dyn TokenText,
    mode: LogprobMode,
    out: &mut VecDeque<Output>,
) {
    for Delta { token, text } in deltas {
        let info = c.infos.pop_front().unwrap_or(TokenInfo {
            logprob: f32::NAN,
            extra: None,
        });
        let lp = logprobs::token_logprobs(mode, tt, token, &info, c.chars);
        if let Some(one) = &lp {
            logprobs::append(&mut c.logprobs, one.clone());
        }
        let logits = match (&mut c.logits, info.extra.and_then(|e| e.logits)) {
            (Some(rows), Some(row)) => {
                rows.push(row.clone());
                Some(row)
            }
            _ => None,
        };
        c.chars += text.chars().count();
        c.cum_logprob += f64::from(info.logprob);
        out.push_back(Output::Token {
            index,
            token,
            text,
            logprobs: lp,
            logits,
        });
    }
}

fn end_choice(
    c: &mut ChoiceState,
    index: usize,
    reason: FinishReasonWire,
    out: &mut VecDeque<Output>,
) {
    c.infos.clear();
    c.reason = Some(reason);
    out.push_back(Output::ChoiceDone { index, reason });
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
    let controls: Vec<RequestControl> = streams.iter().map(RequestStream::control).collect();
    let merged = stream::select_all(streams.into_iter().enumerate().map(|(i, s)| tagged(i, s)));
    outputs_with(merged, gen, controls)
}

struct OutputState<S> {
    events: S,
    gen: Generation,
    /// Per input: how to stop one of its choices in the engine.
    controls: Vec<RequestControl>,
    queue: VecDeque<Output>,
    ended: bool,
}

/// `outputs` over any stream of tagged events (unit tests feed it directly; stop phrases are
/// then not told to any engine).
pub fn outputs_from<S>(events: S, gen: Generation) -> impl Stream<Item = Output> + Send
where
    S: Stream<Item = (usize, Option<Event>)> + Unpin + Send,
{
    outputs_with(events, gen, Vec::new())
}

fn outputs_with<S>(
    events: S,
    gen: Generation,
    controls: Vec<RequestControl>,
) -> impl Stream<Item = Output> + Send
where
    S: Stream<Item = (usize, Option<Event>)> + Unpin + Send,
{
    let state = OutputState {
        events,
        gen,
        controls,
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
                Some((input, event)) => {
                    st.gen.on_event(input, event, &mut st.queue);
                    for (input, choice) in st.gen.take_stops() {
                        if let Some(control) = st.controls.get(input) {
                            control.stop_choice(choice);
                        }
                    }
                }
                None => {
                    let e = ApiError::Internal("the engine streams ended early".into());
                    st.queue.push_back(Output::Failed(e));
                }
            }
        }
    })
}

#[cfg(test)]
mod best_of_tests {
    use super::*;

    fn choice(index: usize, cum_logprob: f64) -> ChoiceResult {
        ChoiceResult {
            index,
            seed: index as u64,
            text: String::new(),
            tokens: Vec::new(),
            finish_reason: None,
            logprobs: None,
            logits: None,
            cum_logprob,
        }
    }

    #[test]
    fn keeps_the_most_likely_per_input_and_reindexes() {
        // Two inputs × best_of 3, keep 2.
        let all = vec![
            choice(0, -5.0),
            choice(1, -1.0),
            choice(2, -3.0),
            choice(3, -2.0),
            choice(4, -2.0),
            choice(5, -9.0),
        ];
        let kept = best_of(all, 3, 2);
        let seeds: Vec<u64> = kept.iter().map(|c| c.seed).collect();
        assert_eq!(seeds, [1, 2, 3, 4], "ties keep the lower index first");
        assert_eq!(
            kept.iter().map(|c| c.index).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(best_of(vec![choice(0, -1.0)], 1, 1).len(), 1);
    }
}
