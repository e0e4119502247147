//! No repeated keys: the JSON grammar closes an object's declared properties after one use, but
//! an open object's other keys (`additionalProperties`, pattern properties) are any name, and
//! a small model then repeats one (`{"a": 1, "a": 1, …}`). [`KeyTracker`] follows the output's
//! JSON structure byte by byte and keeps each open object's keys; [`KeyTracker::filter`] clears
//! from a mask the tokens that would close a key already present in its object.

use std::collections::HashSet;
use std::sync::Arc;

use cordial_engine::{TokenId, TokenMask};

/// The vocabulary's tokens that contain a `"` (only these can close a key), with their bytes.
pub(crate) struct QuoteTokens(Vec<(TokenId, Vec<u8>)>);

impl QuoteTokens {
    /// From every token's bytes (special tokens, marked by 0xFF, are left out).
    pub(crate) fn new(tokens: impl Iterator<Item = (TokenId, Vec<u8>)>) -> QuoteTokens {
        QuoteTokens(
            tokens
                .filter(|(_, b)| b.first() != Some(&0xFF) && b.contains(&b'"'))
                .collect(),
        )
    }
}

#[derive(Clone, Debug, Default)]
struct Frame {
    object: bool,
    keys: HashSet<Vec<u8>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Escape {
    #[default]
    None,
    /// After a backslash.
    Backslash,
    /// Inside `\uXXXX`: hex digits still to come, value so far.
    Hex(u8, u32),
}

/// The JSON structure of the output so far (the grammar guarantees it is valid JSON).
#[derive(Clone, Debug, Default)]
pub(crate) struct KeyTracker {
    /// Open containers, innermost last; shared between simulations (copied on write).
    stack: Vec<Arc<Frame>>,
    in_string: bool,
    /// The string being read is an object key.
    is_key: bool,
    /// The next string in the current object is a key.
    expect_key: bool,
    escape: Escape,
    /// A `\uD800`–`\uDBFF` escape waiting for its low half.
    high: Option<u32>,
    /// The key read so far, decoded (UTF-8; lone surrogates as their 3-byte form).
    key: Vec<u8>,
}

/// A key that is already in its object.
#[derive(Debug, PartialEq)]
pub(crate) struct Repeated;

impl KeyTracker {
    /// Follows the bytes of one token (all of them, whatever happens); `Err` when a key was
    /// closed that its object already had. Special tokens (0xFF-marked) are not output text.
    pub(crate) fn feed(&mut self, bytes: &[u8]) -> Result<(), Repeated> {
        if bytes.first() == Some(&0xFF) {
            return Ok(());
        }
        let mut repeated = false;
        for &b in bytes {
            repeated |= self.byte(b).is_err();
        }
        if repeated {
            Err(Repeated)
        } else {
            Ok(())
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), Repeated> {
        if self.in_string {
            return self.string_byte(b);
        }
        match b {
            b'{' => {
                self.stack.push(Arc::new(Frame {
                    object: true,
                    keys: HashSet::new(),
                }));
                self.expect_key = true;
            }
            b'[' => {
                self.stack.push(Arc::new(Frame::default()));
                self.expect_key = false;
            }
            b'}' | b']' => {
                self.stack.pop();
                self.expect_key = false;
            }
            b',' => self.expect_key = self.stack.last().is_some_and(|f| f.object),
            b':' => self.expect_key = false,
            b'"' => {
                self.in_string = true;
                self.is_key = self.expect_key && self.stack.last().is_some_and(|f| f.object);
                self.key.clear();
                self.escape = Escape::None;
                self.high = None;
            }
            _ => {}
        }
        Ok(())
    }

    fn string_byte(&mut self, b: u8) -> Result<(), Repeated> {
        match self.escape {
            Escape::Backslash => {
                self.escape = Escape::None;
                let c = match b {
                    b'n' => b'\n',
                    b't' => b'\t',
                    b'r' => b'\r',
                    b'b' => 0x08,
                    b'f' => 0x0C,
                    b'u' => {
                        self.escape = Escape::Hex(4, 0);
                        return Ok(());
                    }
                    other => other,
                };
                self.push_key_byte(c);
            }
            Escape::Hex(left, acc) => {
                let d = (b as char).to_digit(16).unwrap_or(0);
                let acc = acc * 16 + d;
                if left > 1 {
                    self.escape = Escape::Hex(left - 1, acc);
                } else {
                    self.escape = Escape::None;
                    self.push_code_unit(acc);
                }
            }
            Escape::None => match b {
                b'\\' => self.escape = Escape::Backslash,
                b'"' => {
                    self.in_string = false;
                    self.flush_high();
                    if self.is_key {
                        self.is_key = false;
                        self.expect_key = false;
                        let key = std::mem::take(&mut self.key);
                        if let Some(top) = self.stack.last_mut() {
                            if top.keys.contains(&key) {
                                return Err(Repeated);
                            }
                            Arc::make_mut(top).keys.insert(key);
                        }
                    }
                }
                _ => self.push_key_byte(b),
            },
        }
        Ok(())
    }

    fn push_key_byte(&mut self, b: u8) {
        self.flush_high();
        if self.is_key {
            self.key.push(b);
        }
    }

    fn push_code_unit(&mut self, u: u32) {
        if (0xD800..0xDC00).contains(&u) {
            self.flush_high();
            self.high = Some(u);
            return;
        }
        let c = match self.high.take() {
            Some(h) if (0xDC00..0xE000).contains(&u) => {
                char::from_u32(0x10000 + ((h - 0xD800) << 10) + (u - 0xDC00))
            }
            Some(h) => {
                self.push_unit_bytes(h);
                char::from_u32(u)
            }
            None => char::from_u32(u),
        };
        match c {
            Some(c) if self.is_key => {
                let mut buf = [0; 4];
                self.key
                    .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            Some(_) => {}
            None => self.push_unit_bytes(u),
        }
    }

    /// A lone surrogate, as its 3-byte (WTF-8) form: equal only to the same escape.
    fn push_unit_bytes(&mut self, u: u32) {
        if self.is_key {
            self.key.extend_from_slice(&[
                0xE0 | (u >> 12) as u8,
                0x80 | ((u >> 6) & 0x3F) as u8,
                0x80 | (u & 0x3F) as u8,
            ]);
        }
    }

    fn flush_high(&mut self) {
        if let Some(h) = self.high.take() {
            self.push_unit_bytes(h);
        }
    }

    /// Whether any key could be closed from here: some object is open.
    fn has_object(&self) -> bool {
        self.stack.iter().any(|f| f.object)
    }

    /// Clears the allowed tokens that would repeat a key of their object. When nothing would
    /// be left (a key can only be finished as one already used, e.g. a pattern property with
    /// a finite set of names, all taken), the mask is left as it was: the grammar must go on.
    /// Returns how many tokens were cleared.
    pub(crate) fn filter(&self, mask: &mut TokenMask, tokens: &QuoteTokens) -> usize {
        if !self.has_object() {
            return 0;
        }
        let mut repeat: Vec<TokenId> = Vec::new();
        for (id, bytes) in &tokens.0 {
            if !mask.is_allowed(*id) {
                continue;
            }
            let mut sim = self.clone();
            if sim.feed(bytes).is_err() {
                repeat.push(*id);
            }
        }
        if repeat.is_empty() {
            return 0;
        }
        let words = mask.words_mut();
        for &id in &repeat {
            words[id as usize / 32] &= !(1 << (id % 32));
        }
        if !mask.end_allowed && mask.words_mut().iter().all(|&w| w == 0) {
            for &id in &repeat {
                mask.allow(id);
            }
            return 0;
        }
        repeat.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(t: &mut KeyTracker, s: &str) -> Result<(), Repeated> {
        t.feed(s.as_bytes())
    }

    #[test]
    fn a_key_repeated_in_its_object_is_caught_and_only_there() {
        let mut t = KeyTracker::default();
        feed(
            &mut t,
            r#"{"a": 1, "b": {"a": "a", "x": ["a", {"a": 2}]}, "#,
        )
        .unwrap();
        // `a` is in the outer object already; in a new object it is fine.
        assert_eq!(t.clone().feed(br#""a""#), Err(Repeated));
        assert!(t.clone().feed(br#""ab""#).is_ok());
        assert!(t.clone().feed(br#""c": {"a""#).is_ok());
        // Values never count as keys, nor do array elements.
        assert!(t.clone().feed(br#""c": "a", "d": ["b"], "e""#).is_ok());
        assert_eq!(t.clone().feed(br#""c": "b", "b""#), Err(Repeated));
    }

    #[test]
    fn escapes_are_compared_decoded() {
        let mut t = KeyTracker::default();
        feed(&mut t, r#"{"a\"b": 1, "é": 2, "😀": 3, "#).unwrap();
        assert_eq!(t.clone().feed(br#""a\u0022b""#), Err(Repeated));
        assert_eq!(t.clone().feed(br#""\u00e9""#), Err(Repeated));
        assert_eq!(t.clone().feed(br#""\ud83d\ude00""#), Err(Repeated));
        assert!(t.clone().feed(br#""\ud83d""#).is_ok());
        // A quote escaped inside a key does not end it.
        assert!(t.clone().feed(br#""a\"""#).is_ok());
    }

    #[test]
    fn filter_clears_only_repeating_tokens_and_never_empties_the_mask() {
        let tokens = QuoteTokens::new(
            [
                (0, b"\"".to_vec()),
                (1, b"a\"".to_vec()),
                (2, b"b".to_vec()),
                (3, b"\xFFeos\"".to_vec()),
            ]
            .into_iter(),
        );
        let mut t = KeyTracker::default();
        feed(&mut t, r#"{"a": 1, "ab": 2, "a"#).unwrap();
        // Inside the key `a…`: `"` and `a"` would give `a` and `aa`; `"` repeats `a`.
        let mut mask = TokenMask::new(4);
        for id in 0..3 {
            mask.allow(id);
        }
        assert_eq!(t.filter(&mut mask, &tokens), 1);
        assert!(!mask.is_allowed(0) && mask.is_allowed(1) && mask.is_allowed(2));
        // Only the repeating token is allowed: it stays (the grammar must go on).
        let mut mask = TokenMask::new(4);
        mask.allow(0);
        assert_eq!(t.filter(&mut mask, &tokens), 0);
        assert!(mask.is_allowed(0));
        // No object open: nothing to do.
        let mut mask = TokenMask::new(4);
        mask.allow(0);
        assert_eq!(KeyTracker::default().filter(&mut mask, &tokens), 0);
    }
}
