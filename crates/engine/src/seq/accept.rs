//! What one sampled token does to its choice: EOS, stop sequences (held back while they may
//! match), forced outputs and length limits.

use super::Sequence;
use crate::api::{Event, FinishReason, SamplingParams};
use crate::model::TokenId;
use crate::sample::Sampled;

pub(super) fn finish(seq: &mut Sequence, c: usize, reason: FinishReason, out: &mut Vec<Event>) {
    seq.finish = Some(reason);
    out.push(Event::ChoiceFinished { choice: c, reason });
}

/// One sampled token of choice `c`:
/// - a forced output takes every token as it comes and ends with `Length` after the last;
/// - EOS (unless `ignore_eos`) ends the choice with `Stop` and is not a token;
/// - a token that completes a stop sequence ends it with `Stop`; the sequence's tokens are
///   removed from the output (their events were held back, and are dropped);
/// - otherwise the token is added; its event is held while the output ends with a proper prefix
///   of a stop sequence, and released (in order) once it no longer does;
/// - `max_new_tokens` or the context limit end the choice with `Length` (held events go out
///   first: they are ordinary tokens after all).
pub(super) fn accept(
    params: &SamplingParams,
    prompt_len: usize,
    seq: &mut Sequence,
    c: usize,
    s: Sampled,
    max_context: usize,
    out: &mut Vec<Event>,
) {
    let forced = !params.forced_tokens.is_empty();
    if !forced && !params.ignore_eos && params.eos_tokens.contains(&s.token) {
        out.append(&mut seq.held);
        return finish(seq, c, FinishReason::Stop, out);
    }
    seq.generated.push(s.token);
    let stop = if forced {
        None
    } else {
        params
            .stop_sequences
            .iter()
            .filter(|q| !q.is_empty() && seq.generated.ends_with(q))
            .map(Vec::len)
            .max()
    };
    if let Some(len) = stop {
        seq.generated.truncate(seq.generated.len() - len);
        // Held events beyond the match (a longer held prefix of another sequence) go out.
        let keep = (seq.held.len() + 1).saturating_sub(len);
        out.extend(seq.held.drain(..).take(keep));
        return finish(seq, c, FinishReason::Stop, out);
    }
    seq.held.push(Event::Token {
        choice: c,
        token: s.token,
        logprob: s.logprob,
        extra: s.extra,
    });
    let hold = if forced {
        0
    } else {
        held_suffix(&seq.generated, &params.stop_sequences)
    };
    let release = seq.held.len().saturating_sub(hold);
    out.extend(seq.held.drain(..release));
    let len = prompt_len + seq.generated.len();
    let limit = if forced {
        params.forced_tokens.len()
    } else {
        params.max_new_tokens
    };
    if seq.generated.len() >= limit || len >= max_context {
        out.append(&mut seq.held);
        finish(seq, c, FinishReason::Length, out);
    }
}

/// Length of the longest suffix of `generated` that is a proper prefix of a stop sequence.
fn held_suffix(generated: &[TokenId], stops: &[Vec<TokenId>]) -> usize {
    stops
        .iter()
        .filter_map(|q| {
            (1..q.len())
                .rev()
                .find(|&k| k <= generated.len() && generated.ends_with(&q[..k]))
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::Rng;

    fn seq() -> Sequence {
        Sequence {
            generated: Vec::new(),
            num_computed: 0,
            blocks: Default::default(),
            rng: Rng::new(0),
            finish: None,
            held: Vec::new(),
            constraint: None,
            mask: None,
        }
    }

    /// Feeds `tokens`; returns (tokens reported, finish reason, tokens kept in `generated`).
    fn feed(
        params: &SamplingParams,
        tokens: &[TokenId],
    ) -> (Vec<TokenId>, Option<FinishReason>, Vec<TokenId>) {
        let mut s = seq();
        let mut out = Vec::new();
        for &t in tokens {
            assert!(s.finish.is_none(), "token after the end");
            accept(
                params,
                2,
                &mut s,
                0,
                Sampled::plain(t, -1.0),
                1000,
                &mut out,
            );
        }
        let reported = out
            .iter()
            .filter_map(|e| match e {
                Event::Token { token, .. } => Some(*token),
                _ => None,
            })
            .collect();
        (reported, s.finish, s.generated)
    }

    fn stops(seqs: &[&[TokenId]]) -> SamplingParams {
        SamplingParams {
            max_new_tokens: 6,
            eos_tokens: vec![9],
            stop_sequences: seqs.iter().map(|s| s.to_vec()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_stop_sequence_is_held_then_dropped() {
        let p = stops(&[&[3, 4]]);
        let (out, reason, kept) = feed(&p, &[1, 3, 4]);
        assert_eq!(
            (out, reason, kept),
            (vec![1], Some(FinishReason::Stop), vec![1])
        );
    }

    #[test]
    fn a_broken_prefix_is_released_in_order() {
        let p = stops(&[&[3, 4]]);
        let (out, reason, _) = feed(&p, &[3, 3, 5]);
        assert_eq!((out, reason), (vec![3, 3, 5], None));
        // Held tokens go out when the length limit ends the choice.
        let (out, reason, kept) = feed(&p, &[1, 2, 1, 2, 1, 3]);
        assert_eq!(out, kept);
        assert_eq!((out.len(), reason), (6, Some(FinishReason::Length)));
    }

    #[test]
    fn overlapping_sequences_release_only_what_cannot_match() {
        // [1, 2, 3] and [2, 4]: after 1 2, both may still match; 4 completes [2, 4] and the 1
        // that only [1, 2, 3] held goes out.
        let p = stops(&[&[1, 2, 3], &[2, 4]]);
        let (out, reason, kept) = feed(&p, &[1, 2, 4]);
        assert_eq!(
            (out, reason, kept),
            (vec![1], Some(FinishReason::Stop), vec![1])
        );
        let (out, _, _) = feed(&p, &[1, 2, 3]);
        assert!(out.is_empty());
    }

    #[test]
    fn eos_releases_held_tokens() {
        let p = stops(&[&[3, 4]]);
        let (out, reason, kept) = feed(&p, &[3, 9]);
        assert_eq!(
            (out, reason, kept),
            (vec![3], Some(FinishReason::Stop), vec![3])
        );
    }

    #[test]
    fn forced_output_ignores_eos_and_stops_and_ends_with_length() {
        let p = SamplingParams {
            forced_tokens: vec![3, 9, 4],
            max_new_tokens: 3,
            ..stops(&[&[3, 4], &[9]])
        };
        let (out, reason, _) = feed(&p, &[3, 9, 4]);
        assert_eq!((out, reason), (vec![3, 9, 4], Some(FinishReason::Length)));
    }

    #[test]
    fn held_suffix_finds_the_longest_proper_prefix() {
        let s = vec![vec![1, 2, 3], vec![2, 2]];
        assert_eq!(held_suffix(&[5, 1, 2], &s), 2);
        assert_eq!(held_suffix(&[5, 2], &s), 1);
        assert_eq!(held_suffix(&[5, 3], &s), 0);
        assert_eq!(held_suffix(&[], &s), 0);
    }
}
