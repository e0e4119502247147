//! Streaming detokenization: token ids in, newly completed text out, UTF-8 safe.

use crate::{TokenId, Tokenizer};

/// Turns a stream of token ids into text, one token at a time.
///
/// Each [`push`](Self::push) returns the text completed by that token: bytes of a UTF-8
/// sequence split across tokens are held back (at most 3) until the sequence completes. Bytes
/// that can never form valid UTF-8 become U+FFFD as soon as that is certain, exactly where
/// [`String::from_utf8_lossy`] puts them. Concatenating every output and [`finish`](Self::finish)
/// gives [`Tokenizer::decode`] of all ids with the same `skip_special`.
///
/// The decoder holds no reference to the tokenizer: pass it to each call (so it can live in a
/// per-request state next to an `Arc<Tokenizer>`).
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    skip_special: bool,
    /// The start of an incomplete UTF-8 sequence (at most 3 bytes once a push returns).
    pending: Vec<u8>,
}

impl IncrementalDecoder {
    /// `skip_special`: control tokens produce no text (as in [`Tokenizer::decode`]).
    pub fn new(skip_special: bool) -> Self {
        IncrementalDecoder {
            skip_special,
            pending: Vec::with_capacity(8),
        }
    }

    pub fn skip_special(&self) -> bool {
        self.skip_special
    }

    /// The text `id` completes (possibly empty).
    pub fn push(&mut self, tokenizer: &Tokenizer, id: TokenId) -> String {
        let mut out = String::new();
        self.push_to(tokenizer, id, &mut out);
        out
    }

    /// Like [`push`](Self::push), appending to `out`; returns the number of bytes appended.
    pub fn push_to(&mut self, tokenizer: &Tokenizer, id: TokenId, out: &mut String) -> usize {
        if self.skip_special && tokenizer.is_skipped_by_decode(id) {
            return 0;
        }
        self.push_bytes(tokenizer.token_bytes(id), out)
    }

    /// Feeds raw bytes (as a token would); returns the number of bytes appended to `out`.
    pub fn push_bytes(&mut self, bytes: &[u8], out: &mut String) -> usize {
        let before = out.len();
        if self.pending.is_empty() {
            // Common case: nothing held back; decode straight from the token's bytes.
            if let Some(rest) = emit_complete(bytes, out) {
                self.pending.extend_from_slice(rest);
            }
        } else {
            self.pending.extend_from_slice(bytes);
            let rest = emit_complete(&self.pending, out).map_or(0, <[u8]>::len);
            let done = self.pending.len() - rest;
            self.pending.drain(..done);
        }
        out.len() - before
    }

    /// Flushes what is held back (a dangling partial sequence becomes U+FFFD) and resets.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Bytes held back, waiting for the rest of their UTF-8 sequence.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }
}

/// Appends the complete part of `bytes` to `out` (invalid sequences as U+FFFD) and returns the
/// incomplete tail that more bytes might still complete, if any.
fn emit_complete<'a>(mut bytes: &'a [u8], out: &mut String) -> Option<&'a [u8]> {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return None;
            }
            Err(e) => {
                let (valid, after) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).expect("valid up to here"));
                match e.error_len() {
                    Some(n) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes = &after[n..];
                    }
                    None => return Some(after),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` as tokens and checks the total against `from_utf8_lossy` of the whole.
    fn stream(chunks: &[&[u8]]) -> (Vec<String>, String) {
        let mut d = IncrementalDecoder::new(false);
        let mut outs = Vec::new();
        for c in chunks {
            let mut s = String::new();
            d.push_bytes(c, &mut s);
            assert!(d.pending_bytes().len() <= 3);
            outs.push(s);
        }
        let tail = d.finish();
        let mut all: String = outs.concat();
        all.push_str(&tail);
        let whole: Vec<u8> = chunks.concat();
        assert_eq!(all, String::from_utf8_lossy(&whole), "chunks {chunks:?}");
        (outs, tail)
    }

    #[test]
    fn holds_back_split_sequences() {
        let emoji = "😀".as_bytes(); // F0 9F 98 80
        let (outs, tail) = stream(&[b"a", &emoji[..1], &emoji[1..3], &emoji[3..], b"b"]);
        assert_eq!(outs, ["a", "", "", "😀", "b"]);
        assert_eq!(tail, "");
        let cjk = "日本".as_bytes();
        let (outs, _) = stream(&[&cjk[..2], &cjk[2..4], &cjk[4..]]);
        assert_eq!(outs, ["", "日", "本"]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_where_lossy_puts_them() {
        let (outs, tail) = stream(&[b"\xFFa", b"\xE6\x97", b"x"]);
        assert_eq!(outs, ["\u{FFFD}a", "", "\u{FFFD}x"]);
        assert_eq!(tail, "");
        let (outs, tail) = stream(&[b"ok", b"\xF0\x9F"]);
        assert_eq!(outs, ["ok", ""]);
        assert_eq!(tail, "\u{FFFD}");
        // A lone continuation byte after a complete sequence, and a surrogate encoding.
        stream(&[b"\xC3\xA9\x80", b"\xED\xA0", b"\x80"]);
        stream(&[b"\xF4\x90\x80\x80"]);
        stream(&[b"\xE0", b"\x80", b"\x80"]);
    }

    #[test]
    fn every_split_of_mixed_text_matches_lossy() {
        let text = "héllo 日本語 😀🎉👍🏽 🇫🇷".as_bytes();
        let mut bad = text.to_vec();
        bad.insert(9, 0xFF);
        bad.push(0xE2);
        for bytes in [text, &bad[..]] {
            for i in 0..=bytes.len() {
                for j in i..=bytes.len() {
                    stream(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                }
            }
            // One byte at a time.
            let singles: Vec<&[u8]> = bytes.chunks(1).collect();
            stream(&singles);
        }
    }

    #[test]
    fn finish_resets() {
        let mut d = IncrementalDecoder::new(true);
        let mut s = String::new();
        d.push_bytes(b"\xE6", &mut s);
        assert_eq!(d.pending_bytes(), b"\xE6");
        assert_eq!(d.finish(), "\u{FFFD}");
        assert!(d.pending_bytes().is_empty());
        assert_eq!(d.push_bytes("語".as_bytes(), &mut s), 3);
        assert_eq!(s, "語");
        assert!(d.skip_special());
    }
}
