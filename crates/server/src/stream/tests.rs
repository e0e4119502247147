//! Generation tests: engine events in, outputs out (no engine, a byte-table tokenizer).

use std::sync::Arc;

use cordial_engine::{EngineError, Event, FinishReason};
use futures::{stream, StreamExt};

use super::text::tests::table;
use super::*;
use crate::error::Flavor;
use crate::protocol::FinishReasonWire;

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
            Output::Token { index, token, text } => Some((*index, *token, text.as_str())),
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
                text: "a".into()
            },
            Output::Token {
                index: 0,
                token: 2,
                text: "\u{FFFD}".into()
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
