//! Splitting text at special tokens spelled in it (llama.cpp `parse_special = true`,
//! `tokenizer_st_partition`): each special token, longest text first, splits every remaining
//! text fragment at each of its occurrences, left to right.

use crate::TokenId;

/// A piece of the input: text still to be BPE-encoded, or a special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    Text(&'a str),
    Token(TokenId),
}

/// The special tokens that can be spelled in text, longest first.
pub(crate) struct SpecialMatcher {
    /// (text, id), by descending text length, then ascending id.
    specials: Vec<(String, TokenId)>,
    /// Whether a byte starts some special token's text: a quick test that a text has none.
    first_bytes: [bool; 256],
}

impl SpecialMatcher {
    pub fn new(specials: impl IntoIterator<Item = (String, TokenId)>) -> Self {
        let mut specials: Vec<(String, TokenId)> = specials
            .into_iter()
            .filter(|(t, _)| !t.is_empty())
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut first_bytes = [false; 256];
        for (t, _) in &specials {
            first_bytes[t.as_bytes()[0] as usize] = true;
        }
        SpecialMatcher {
            specials,
            first_bytes,
        }
    }

    /// Splits `text` into fragments (an empty text gives none).
    pub fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(text)];
        if !text.bytes().any(|b| self.first_bytes[b as usize]) {
            return fragments;
        }
        for (special, id) in &self.specials {
            // Fragments are pieces of `text`: a special absent from it is absent from them.
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(piece) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut rest = piece;
                while let Some(at) = rest.find(special.as_str()) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(*id));
                    rest = &rest[at + special.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            fragments = next;
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Fragment::*;

    fn matcher(specials: &[(&str, TokenId)]) -> SpecialMatcher {
        SpecialMatcher::new(specials.iter().map(|(t, id)| (t.to_string(), *id)))
    }

    #[test]
    fn splits_at_every_occurrence() {
        let m = matcher(&[("<|im_start|>", 1), ("<|im_end|>", 2)]);
        assert_eq!(
            m.partition("<|im_start|>user\nhi<|im_end|><|im_end|>x"),
            [Token(1), Text("user\nhi"), Token(2), Token(2), Text("x")]
        );
        assert_eq!(
            m.partition("no specials < here"),
            [Text("no specials < here")]
        );
        assert_eq!(m.partition(""), []);
        assert_eq!(m.partition("<|im_end|>"), [Token(2)]);
    }

    #[test]
    fn longer_specials_win_over_their_prefixes() {
        let m = matcher(&[("<a>", 1), ("<a><b>", 2)]);
        assert_eq!(m.partition("<a><b><a>"), [Token(2), Token(1)]);
    }

    #[test]
    fn longest_first_not_leftmost_first() {
        // llama.cpp processes the longest special over the whole text first.
        let m = matcher(&[("ab", 1), ("bcd", 2)]);
        assert_eq!(m.partition("abcd"), [Text("a"), Token(2)]);
    }

    #[test]
    fn multibyte_text_around_specials() {
        let m = matcher(&[("<s>", 7)]);
        assert_eq!(
            m.partition("日本<s>語"),
            [Text("日本"), Token(7), Text("語")]
        );
    }
}
