//! Generation tests: engine events in, outputs out (no engine, a byte-table tokenizer).

use std::sync::Arc;

use cordial_engine::{EngineError, Event, FinishReason};
use futures::{stream, StreamExt};

use super::text::tests::table;
use super::*;
use crate::error::Flavor;
use crate::protocol::FinishReasonWire;
use crate::stream::TextControls;

fn tok(choice: usize, token: u32) -> Option<Event> {
    Some(Event::Token {
        choice,
        token,
        logprob: 0.0,
        extra: None,
    })
}

fn fin(choice: usize) -> Option<Event> {
    Some(Event::ChoiceFinished {
        choice,
        reason: FinishReason::Length,
    })
}

fn finished(p: usize, c: usize) -> Option<Event> {
    Some(Event::Finished {
        prompt_tokens: p,
        completion_tokens: c,
    })
}

fn run(n: usize, seeds: Vec<Vec<u64>>, events: Vec<(usize, Option<Event>)>) -> Vec<Output> {
    let gen = Generation::new(Arc::new(table()), n, &seeds, Flavor::Friendli);
    futures::executor::block_on(outputs_from(stream::iter(events), gen).collect())
}

#[test]
fn batch_and_n_interleave_by_index() {
    let events = vec![
        (1, tok(1, 4)),
        (0, tok(0, 1)),
        (1, tok(0, 1)),
        (0, tok(1, 2)),
        (0, tok(1, 3)),
        (0, fin(0)),
        (0, fin(1)),
        (0, finished(3, 3)),
        (1, fin(0)),
        (1, fin(1)),
        (1, finished(2, 2)),
    ];
    let outs = run(2, vec![vec![5, 6], vec![5, 6]], events);
    let tokens: Vec<(usize, u32, &str)> = outs
        .iter()
        .filter_map(|o| match o {
            Output::Token {
                index, token, text, ..
            } => Some((*index, *token, text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tokens,
        [
            (3, 4, " b"),
            (0, 1, "a"),
            (2, 1, "a"),
            (1, 2, ""),
            (1, 3, "é")
        ]
    );
    let Some(Output::Done { choices, usage }) = outs.last() else {
        panic!("{outs:?}")
    };
    assert_eq!(usage.prompt_tokens, 5);
    assert_eq!(usage.completion_tokens, 5);
    assert_eq!(usage.total_tokens, 10);
    let summary: Vec<(usize, u64, &str, Vec<u32>)> = choices
        .iter()
        .map(|c| (c.index, c.seed, c.text.as_str(), c.tokens.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (0, 5, "a", vec![1]),
            (1, 6, "é", vec![2, 3]),
            (2, 5, "a", vec![1]),
            (3, 6, " b", vec![4])
        ]
    );
    assert!(choices
        .iter()
        .all(|c| c.finish_reason == Some(FinishReasonWire::Length)));
    let dones = outs
        .iter()
        .filter(|o| matches!(o, Output::ChoiceDone { .. }))
        .count();
    assert_eq!(dones, 4);
}

#[test]
fn held_bytes_flush_before_choice_done() {
    let outs = run(
        1,
        vec![vec![1]],
        vec![
            (0, tok(0, 1)),
            (0, tok(0, 2)),
            (0, fin(0)),
            (0, finished(1, 2)),
        ],
    );
    assert_eq!(
        &outs[..3],
        &[
            Output::Token {
                index: 0,
                token: 1,
                text: "a".into(),
                logprobs: None,
                logits: None,
            },
            Output::Token {
                index: 0,
                token: 2,
                text: "\u{FFFD}".into(),
                logprobs: None,
                logits: None,
            },
            Output::ChoiceDone {
                index: 0,
                reason: FinishReasonWire::Length
            },
        ]
    );
}

#[test]
fn engine_error_ends_the_outputs() {
    let events = vec![
        (0, tok(0, 1)),
        (1, Some(Event::Error(EngineError::Model("bad".into())))),
        (0, tok(0, 1)),
        (0, finished(1, 2)),
    ];
    let outs = run(1, vec![vec![1], vec![1]], events);
    assert_eq!(outs.len(), 2, "{outs:?}");
    assert!(matches!(&outs[1], Output::Failed(e) if e.status() == 500));
}

#[test]
fn a_missing_final_event_is_an_error() {
    let outs = run(1, vec![vec![1]], vec![(0, tok(0, 1)), (0, None)]);
    assert!(matches!(outs.last(), Some(Output::Failed(_))), "{outs:?}");
    let outs = run(1, vec![vec![1]], vec![(0, tok(3, 1))]);
    assert!(
        matches!(outs.last(), Some(Output::Failed(_))),
        "unknown choice or early end: {outs:?}"
    );
}

#[test]
fn collect_returns_results_or_the_error() {
    let ok = run(
        1,
        vec![vec![9]],
        vec![(0, tok(0, 1)), (0, fin(0)), (0, finished(1, 1))],
    );
    let (choices, usage) = futures::executor::block_on(collect(stream::iter(ok))).unwrap();
    assert_eq!(choices[0].text, "a");
    assert_eq!(usage.total_tokens, 2);
    let bad = run(
        1,
        vec![vec![9]],
        vec![(0, Some(Event::Error(EngineError::ShuttingDown)))],
    );
    let err = futures::executor::block_on(collect(stream::iter(bad))).unwrap_err();
    assert_eq!(err.status(), 503);
}

fn run_with(
    n: usize,
    seeds: Vec<Vec<u64>>,
    controls: TextControls,
    events: Vec<(usize, Option<Event>)>,
) -> (Vec<Output>, Vec<(usize, usize)>) {
    let mut gen =
        Generation::with_controls(Arc::new(table()), n, &seeds, Flavor::Friendli, controls);
    let mut queue = std::collections::VecDeque::new();
    let mut stops = Vec::new();
    for (input, event) in events {
        gen.on_event(input, event, &mut queue);
        stops.extend(gen.take_stops());
    }
    (queue.into_iter().collect(), stops)
}

#[test]
fn a_stop_phrase_ends_its_choice_and_is_reported_for_the_engine() {
    // Table: 1 = "a", 4 = " b". Stop " ba": choice 1 of input 0 matches at its third token;
    // choice 0 never does. The engine's in-flight token and Stop for choice 1 are ignored.
    let controls = TextControls {
        stop: vec![" ba".into()],
        ..TextControls::default()
    };
    let events = vec![
        (0, tok(0, 1)),
        (0, tok(1, 1)),
        (0, tok(1, 4)),
        (0, tok(0, 4)),
        (0, tok(1, 1)),
        (0, tok(1, 1)),
        (0, tok(0, 4)),
        (
            0,
            Some(Event::ChoiceFinished {
                choice: 1,
                reason: FinishReason::Stop,
            }),
        ),
        (0, fin(0)),
        (0, finished(2, 6)),
    ];
    let (outs, stops) = run_with(2, vec![vec![1, 2]], controls, events);
    assert_eq!(stops, [(0, 1)]);
    let Some(Output::Done { choices, usage }) = outs.last() else {
        panic!("{outs:?}")
    };
    assert_eq!(
        (choices[0].text.as_str(), choices[0].tokens.as_slice()),
        ("a b b", &[1, 4, 4][..])
    );
    assert_eq!(choices[0].finish_reason, Some(FinishReasonWire::Length));
    assert_eq!(
        (choices[1].text.as_str(), choices[1].tokens.as_slice()),
        ("a", &[1, 4, 1][..])
    );
    assert_eq!(choices[1].finish_reason, Some(FinishReasonWire::Stop));
    assert_eq!(usage.completion_tokens, 6, "the tokens the choices report");
    // Streamed text of each choice equals its final text; one ChoiceDone each.
    for (i, c) in choices.iter().enumerate() {
        let text: String = outs
            .iter()
            .filter_map(|o| match o {
                Output::Token { index, text, .. } if *index == i => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, c.text);
    }
    let dones = outs
        .iter()
        .filter(|o| matches!(o, Output::ChoiceDone { .. }))
        .count();
    assert_eq!(dones, 2);
}

#[test]
fn logprobs_and_logits_follow_their_tokens() {
    let controls = TextControls {
        logprobs: Some(crate::validate::LogprobMode::Floats),
        logits: true,
        ..TextControls::default()
    };
    let tok_lp = |token, lp: f32| {
        Some(Event::Token {
            choice: 0,
            token,
            logprob: lp,
            extra: Some(Box::new(cordial_engine::TokenExtra {
                top_logprobs: Vec::new(),
                logits: Some(vec![lp; 3]),
            })),
        })
    };
    let events = vec![
        (0, tok_lp(1, -0.5)),
        (0, tok_lp(2, -1.5)),
        (0, tok_lp(3, -2.5)),
        (0, fin(0)),
        (0, finished(1, 3)),
    ];
    let (outs, _) = run_with(1, vec![vec![1]], controls, events);
    let Some(Output::Done { choices, .. }) = outs.last() else {
        panic!("{outs:?}")
    };
    let c = &choices[0];
    assert_eq!(c.tokens, [1, 2, 3]);
    assert_eq!(
        c.logprobs,
        Some(crate::protocol::LogprobsWire::Floats(vec![
            -0.5, -1.5, -2.5
        ]))
    );
    assert_eq!(
        c.logits,
        Some(vec![vec![-0.5; 3], vec![-1.5; 3], vec![-2.5; 3]])
    );
}
