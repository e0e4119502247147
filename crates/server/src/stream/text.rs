//! Per-choice detokenization: token ids → text deltas, UTF-8 safe, control tokens skipped
//! (decision 17) but kept in `tokens`.
//!
//! A token whose bytes end inside a UTF-8 sequence is held back (with its text so far) until
//! the next token of its choice or the choice's end; at the end, the dangling bytes become
//! U+FFFD in that held delta. So the concatenated deltas always equal the final text, and the
//! final text equals `Tokenizer::decode(tokens, true)`.

use cordial_tokenizer::{IncrementalDecoder, TokenId, Tokenizer};

/// How token ids become text (the real tokenizer; tests use byte tables).
pub trait TokenText: Send + Sync {
    /// Feeds `id` to `decoder`, appending the text it completes to `out`.
    fn push(&self, decoder: &mut IncrementalDecoder, id: TokenId, out: &mut String);
}

impl TokenText for Tokenizer {
    fn push(&self, decoder: &mut IncrementalDecoder, id: TokenId, out: &mut String) {
        decoder.push_to(self, id, out);
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
    pub text: String,
    pub tokens: Vec<TokenId>,
}

impl Default for ChoiceText {
    fn default() -> Self {
        ChoiceText::new()
    }
}

impl ChoiceText {
    pub fn new() -> ChoiceText {
        ChoiceText {
            decoder: IncrementalDecoder::new(true),
            held: None,
            text: String::new(),
            tokens: Vec::new(),
        }
    }

    /// Adds a generated token; appends the deltas now ready (0, 1 or 2) to `out`.
    pub fn push(&mut self, tt: &dyn TokenText, id: TokenId, out: &mut Vec<Delta>) {
        out.extend(self.held.take());
        let mut text = String::new();
        tt.push(&mut self.decoder, id, &mut text);
        self.text.push_str(&text);
        self.tokens.push(id);
        let delta = Delta { token: id, text };
        if self.decoder.pending_bytes().is_empty() {
            out.push(delta);
        } else {
            self.held = Some(delta);
        }
    }

    /// Ends the choice: the held delta, if any, with the dangling bytes as U+FFFD.
    pub fn finish(&mut self) -> Option<Delta> {
        let mut held = self.held.take()?;
        let tail = self.decoder.finish();
        held.text.push_str(&tail);
        self.text.push_str(&tail);
        Some(held)
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
            c.push(&t, id, &mut out);
        }
        out.extend(c.finish());
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
    fn dangling_bytes_end_as_replacement_character() {
        let (out, text) = run(&[1, 2]);
        assert_eq!(text, "a\u{FFFD}");
        assert_eq!(out[1].text, "\u{FFFD}");
        let (_, text) = run(&[5, 1]);
        assert_eq!(text, "\u{FFFD}a");
    }
}
