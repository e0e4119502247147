//! Stop phrases: matched in a choice's text across token boundaries, cut from the
//! text; streamed text is held back only while it may be the start of a phrase.
//!
//! The matcher works on [`Delta`]s (one per token, in order). A delta is released whole once no
//! stop phrase can start inside or before its text; until then it waits with its token, so the
//! token's event is sent late rather than its text split off. When a phrase completes, every
//! waiting delta is released with its text cut at the phrase's start: the tokens that produced
//! the phrase stay (and count), their text does not appear.

use super::text::Delta;

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    phrases: Vec<String>,
    /// A match counts only once the choice has this many tokens (`min_tokens`).
    min_tokens: usize,
    tokens: usize,
    held: Vec<Delta>,
    /// The texts of `held`, concatenated.
    pending: String,
    /// Matches are searched from this byte of `pending` (text before it was a match ignored
    /// under `min_tokens`).
    search_from: usize,
}

impl StopMatcher {
    pub fn new(phrases: Vec<String>, min_tokens: usize) -> StopMatcher {
        StopMatcher {
            phrases: phrases.into_iter().filter(|p| !p.is_empty()).collect(),
            min_tokens,
            ..StopMatcher::default()
        }
    }

    /// Feeds the next token's delta; appends the deltas now released to `out`. True when a
    /// stop phrase completed: `out` then ends with every held delta, cut, and the choice is over.
    pub fn push(&mut self, delta: Delta, out: &mut Vec<Delta>) -> bool {
        self.tokens += 1;
        self.pending.push_str(&delta.text);
        self.held.push(delta);
        while let Some((start, end)) = self.earliest_match() {
            if self.tokens >= self.min_tokens {
                self.cut(start, out);
                return true;
            }
            // Too early: this occurrence is ordinary text.
            self.search_from = end;
        }
        let safe = self.pending.len() - self.partial_suffix();
        self.release(safe, out);
        false
    }

    /// The choice ended without a match: releases everything.
    pub fn finish(&mut self, out: &mut Vec<Delta>) {
        out.append(&mut self.held);
        self.pending.clear();
        self.search_from = 0;
    }

    /// `(start, end)` in `pending` of the earliest phrase occurrence at or after `search_from`.
    fn earliest_match(&self) -> Option<(usize, usize)> {
        let hay = self.pending.get(self.search_from..)?;
        self.phrases
            .iter()
            .filter_map(|p| hay.find(p.as_str()).map(|i| (i, i + p.len())))
            .min()
            .map(|(s, e)| (s + self.search_from, e + self.search_from))
    }

    /// Longest suffix of `pending` (after `search_from`) that is a proper prefix of a phrase.
    fn partial_suffix(&self) -> usize {
        let hay = self.pending.get(self.search_from..).unwrap_or("");
        self.phrases
            .iter()
            .filter_map(|p| {
                (1..p.len().min(hay.len() + 1))
                    .rev()
                    .find(|&k| p.is_char_boundary(k) && hay.ends_with(&p[..k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Releases the held deltas whose text ends at or before byte `safe` of `pending`.
    fn release(&mut self, safe: usize, out: &mut Vec<Delta>) {
        let mut end = 0;
        let count = self
            .held
            .iter()
            .take_while(|d| {
                end += d.text.len();
                end <= safe
            })
            .count();
        let bytes: usize = self.held[..count].iter().map(|d| d.text.len()).sum();
        out.extend(self.held.drain(..count));
        self.pending.drain(..bytes);
        self.search_from = self.search_from.saturating_sub(bytes);
    }

    /// Releases every held delta with the text cut at byte `start` of `pending`.
    fn cut(&mut self, start: usize, out: &mut Vec<Delta>) {
        let mut offset = 0;
        for mut d in self.held.drain(..) {
            let keep = start.saturating_sub(offset).min(d.text.len());
            offset += d.text.len();
            d.text.truncate(keep);
            out.push(d);
        }
        self.pending.clear();
        self.search_from = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(token: u32, text: &str) -> Delta {
        Delta {
            token,
            text: text.into(),
        }
    }

    /// Feeds texts as tokens 0, 1, …; returns the released `(token, text)` after each push,
    /// and whether (and at which token) a phrase matched.
    fn run(
        phrases: &[&str],
        min: usize,
        texts: &[&str],
    ) -> (Vec<Vec<(u32, String)>>, Option<usize>) {
        let mut m = StopMatcher::new(phrases.iter().map(|s| s.to_string()).collect(), min);
        let mut steps = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let mut out = Vec::new();
            let stopped = m.push(d(i as u32, t), &mut out);
            steps.push(out.into_iter().map(|d| (d.token, d.text)).collect());
            if stopped {
                return (steps, Some(i));
            }
        }
        let mut out = Vec::new();
        m.finish(&mut out);
        steps.push(out.into_iter().map(|d| (d.token, d.text)).collect());
        (steps, None)
    }

    fn joined(steps: &[Vec<(u32, String)>]) -> String {
        steps.iter().flatten().map(|(_, t)| t.as_str()).collect()
    }

    fn tokens(steps: &[Vec<(u32, String)>]) -> Vec<u32> {
        steps.iter().flatten().map(|(t, _)| *t).collect()
    }

    #[test]
    fn no_phrases_releases_every_delta_at_once() {
        let (steps, stop) = run(&[], 0, &["a", "b"]);
        assert_eq!(stop, None);
        assert_eq!(steps[0], [(0, "a".to_string())]);
        assert_eq!(steps[1], [(1, "b".to_string())]);
    }

    #[test]
    fn a_phrase_across_tokens_is_cut_and_its_tokens_stay() {
        let (steps, stop) = run(&["END"], 0, &["Hi E", "N", "D!", "x"]);
        assert_eq!(stop, Some(2));
        assert_eq!(joined(&steps), "Hi ");
        assert_eq!(tokens(&steps), [0, 1, 2], "the phrase's tokens are kept");
        assert!(
            steps[0].is_empty() && steps[1].is_empty(),
            "held while a match is possible"
        );
    }

    #[test]
    fn text_is_released_once_no_match_is_possible() {
        let (steps, stop) = run(&["END"], 0, &["ab", "E", "x", "yz"]);
        assert_eq!(stop, None);
        assert_eq!(steps[0], [(0, "ab".to_string())]);
        assert!(steps[1].is_empty());
        assert_eq!(steps[2], [(1, "E".to_string()), (2, "x".to_string())]);
        assert_eq!(joined(&steps), "abExyz");
    }

    #[test]
    fn the_earliest_of_several_phrases_wins() {
        let (steps, stop) = run(&["world", "lo w"], 0, &["hello world"]);
        assert_eq!(stop, Some(0));
        assert_eq!(joined(&steps), "hel");
    }

    #[test]
    fn a_phrase_inside_one_token_cuts_that_token() {
        let (steps, _) = run(&["\n"], 0, &["red", " blue\nQ:"]);
        assert_eq!(joined(&steps), "red blue");
        assert_eq!(tokens(&steps), [0, 1]);
    }

    #[test]
    fn the_end_flushes_a_held_partial_match() {
        let (steps, stop) = run(&["END"], 0, &["x", "EN"]);
        assert_eq!(stop, None);
        assert_eq!(steps[2], [(1, "EN".to_string())]);
        assert_eq!(joined(&steps), "xEN");
    }

    #[test]
    fn matches_before_min_tokens_are_ordinary_text() {
        let (steps, stop) = run(&["."], 3, &["a.", "b.", "c.", "d."]);
        assert_eq!(stop, Some(2));
        assert_eq!(joined(&steps), "a.b.c");
        let (steps, stop) = run(&["ab"], 2, &["ab", "ab"]);
        assert_eq!(stop, Some(1));
        assert_eq!(joined(&steps), "ab");
    }

    #[test]
    fn multibyte_phrases_and_text() {
        let (steps, stop) = run(&["é!"], 0, &["caf", "é", "!"]);
        assert_eq!(stop, Some(2));
        assert_eq!(joined(&steps), "caf");
        let (steps, stop) = run(&["éa"], 0, &["ééb"]);
        assert_eq!((joined(&steps), stop), ("ééb".to_string(), None));
    }
}
