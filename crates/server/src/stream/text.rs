//! Per-choice detokenization: token ids → text deltas, UTF-8 safe, control tokens skipped
//! (as vLLM's `skip_special_tokens`) but kept in `tokens`, then stop phrases ([`StopMatcher`]).
//!
//! A token whose bytes end inside a UTF-8 sequence is held back (with its text so far) until
//! the next token of its choice or the choice's end; at the end, the dangling bytes become
//! U+FFFD in that held delta. Its delta then goes through the stop matcher, which may hold it
//! longer (see `stop.rs`). So the concatenated deltas always equal the final text, and without
//! stop phrases the final text equals `Tokenizer::decode(tokens, true)`.

use cordial_tokenizer::{IncrementalDecoder, TokenId, Tokenizer};

use super::stop::StopMatcher;

/// How token ids become text (the real tokenizer; tests use byte tables).
pub trait TokenText: Send + Sync {
    /// Feeds `id` to `decoder`, appending the text it completes to `out`.
    fn push(&self, decoder: &mut IncrementalDecoder, id: TokenId, out: &mut String);
    /// The text of `id` alone (OpenAI's `logprobs.tokens`; partial UTF-8 becomes U+FFFD).
    fn token_str(&self, id: TokenId) -> String;
    /// The raw bytes of `id` (chat logprobs' `bytes`).
    fn token_raw(&self, id: TokenId) -> Vec<u8> {
        self.token_str(id).into_bytes()
    }
}

impl TokenText for Tokenizer {
    fn push(&self, decoder: &mut IncrementalDecoder, id: TokenId, out: &mut String) {
        decoder.push_to(self, id, out);
    }
    fn token_str(&self, id: TokenId) -> String {
        String::from_utf8_lossy(self.token_bytes(id)).into_owned()
    }
    fn token_raw(&self, id: TokenId) -> Vec<u8> {
        self.token_bytes(id).to_vec()
    }
}

/// The text of one generated token, as streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    pub token: TokenId,
    pub text: String,
}

/// One choice's output so far.
#[derive(Debug, Clone)]
pub struct ChoiceText {
    decoder: IncrementalDecoder,
    held: Option<Delta>,
    stop: StopMatcher,
    stopped: bool,
    /// The text released so far (the final text once the choice ended).
    pub text: String,
    /// The tokens whose deltas were released or are waiting in the stop matcher.
    pub tokens: Vec<TokenId>,
}

impl Default for ChoiceText {
    fn default() -> Self {
        ChoiceText::new()
    }
}

impl ChoiceText {
    pub fn new() -> ChoiceText {
        ChoiceText::with_stop(StopMatcher::default())
    }

    /// A choice whose text ends at the first of the `stop` matcher's phrases.
    pub fn with_stop(stop: StopMatcher) -> ChoiceText {
        ChoiceText {
            decoder: IncrementalDecoder::new(true),
            held: None,
            stop,
            stopped: false,
            text: String::new(),
            tokens: Vec::new(),
        }
    }

    /// Whether a stop phrase ended the choice (later tokens are ignored).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a generated token; appends the deltas now ready to `out`. True when a stop phrase
    /// completed (the choice is over).
    pub fn push(&mut self, tt: &dyn TokenText, id: TokenId, out: &mut Vec<Delta>) -> bool {
        if self.stopped {
            return true;
        }
        let mut ready = Vec::with_capacity(2);
        ready.extend(self.held.take());
        let mut text = String::new();
        tt.push(&mut self.decoder, id, &mut text);
        let delta = Delta { token: id, text };
        if self.decoder.pending_bytes().is_empty() {
            ready.push(delta);
        } else {
            self.held = Some(delta);
        }
        self.release(ready, out)
    }

    /// Ends the choice: the held deltas, the dangling bytes as U+FFFD. True when that last text
    /// completed a stop phrase.
    pub fn finish(&mut self, out: &mut Vec<Delta>) -> bool {
        if self.stopped {
            return true;
        }
        let mut ready = Vec::new();
        if let Some(mut held) = self.held.take() {
            held.text.push_str(&self.decoder.finish());
            ready.push(held);
        }
        if self.release(ready, out) {
            return true;
        }
        let from = out.len();
        self.stop.finish(out);
        self.text
            .extend(out[from..].iter().map(|d| d.text.as_str()));
        false
    }

    /// Passes `ready` deltas through the stop matcher into `out`.
    fn release(&mut self, ready: Vec<Delta>, out: &mut Vec<Delta>) -> bool {
        let from = out.len();
        for d in ready {
            self.tokens.push(d.token);
            if self.stop.push(d, out) {
                self.stopped = true;
                break;
            }
        }
        self.text
            .extend(out[from..].iter().map(|d| d.text.as_str()));
        self.stopped
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Token `i` stands for `TABLE[i]`; token 0 is a control token (no text).
    pub(crate) struct ByteTable(pub Vec<Vec<u8>>);

    impl TokenText for ByteTable {
        fn push(&self, decoder: &mut IncrementalDecoder, id: TokenId, out: &mut String) {
            if id != 0 {
                decoder.push_bytes(&self.0[id as usize], out);
            }
        }
        fn token_str(&self, id: TokenId) -> String {
            String::from_utf8_lossy(&self.0[id as usize]).into_owned()
        }
    }

    pub(crate) fn table() -> ByteTable {
        let e = "é".as_bytes();
        ByteTable(vec![
            b"<ctl>".to_vec(),
            b"a".to_vec(),
            vec![e[0]],
            vec![e[1]],
            b" b".to_vec(),
            vec![0xFF],
        ])
    }

    fn run(ids: &[u32]) -> (Vec<Delta>, String) {
        let t = table();
        let mut c = ChoiceText::new();
        let mut out = Vec::new();
        for &id in ids {
            assert!(!c.push(&t, id, &mut out));
        }
        assert!(!c.finish(&mut out));
        assert_eq!(c.tokens, ids, "every token is kept");
        let joined: String = out.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(joined, c.text, "deltas concatenate to the text");
        assert_eq!(
            out.iter().map(|d| d.token).collect::<Vec<_>>(),
            ids,
            "one delta per token, in order"
        );
        (out, c.text)
    }

    #[test]
    fn split_characters_are_held_with_their_token() {
        let (out, text) = run(&[1, 2, 3, 4]);
        assert_eq!(text, "aé b");
        let texts: Vec<&str> = out.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["a", "", "é", " b"]);
    }

    #[test]
    fn control_tokens_have_no_text() {
        let (out, text) = run(&[1, 0, 4]);
        assert_eq!(text, "a b");
        assert_eq!(
            out[1],
            Delta {
                token: 0,
                text: String::new()
            }
        );
    }

    #[test]
    fn stop_phrases_cut_the_text_after_utf8_holds() {
        let t = table();
        let mut c = ChoiceText::with_stop(StopMatcher::new(vec!["é b".into()], 0));
        let mut out = Vec::new();
        for id in [1, 2, 3] {
            assert!(!c.push(&t, id, &mut out));
        }
        assert!(c.push(&t, 4, &mut out), "\"é b\" completes with token 4");
        assert_eq!(c.text, "a");
        assert_eq!(c.tokens, [1, 2, 3, 4]);
        let texts: Vec<&str> = out.iter().map(|d| d.text.as_str()).collect();
        assert_eq!(texts, ["a", "", "", ""]);
        assert!(c.push(&t, 1, &mut out), "tokens after the stop are ignored");
        assert_eq!((c.tokens.len(), out.len()), (4, 4));
        assert!(c.finish(&mut out));
    }

    #[test]
    fn dangling_bytes_end_as_replacement_character() {
        let (out, text) = run(&[1, 2]);
        assert_eq!(text, "a\u{FFFD}");
        assert_eq!(out[1].text, "\u{FFFD}");
        let (_, text) = run(&[5, 1]);
        assert_eq!(text, "\u{FFFD}a");
    }
}
