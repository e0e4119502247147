//! SentencePiece-style BPE over token scores (`tokenizer.ggml.model = llama`: Llama 1/2,
//! Gemma, Mistral v0.1, Phi-3), as llama.cpp's `llm_tokenizer_spm` does it:
//!
//! 1. spaces become `▁` (and, when `add_space_prefix`, a `▁` is put in front of a fragment
//!    that follows a special token or starts the text; the caller does that);
//! 2. the text is split into UTF-8 characters;
//! 3. repeatedly, the adjacent pair whose concatenation is a vocabulary token with the highest
//!    score is merged (ties: the leftmost pair);
//! 4. each final piece is emitted as its token; a single character outside the vocabulary
//!    becomes its UTF-8 bytes as `<0xXX>` tokens (byte fallback).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::TokenId;

pub(crate) struct Spm {
    ids: tokenizers::models::bpe::Vocab,
    scores: Vec<f32>,
    /// `<0xXX>` token of each byte (or the one-byte token, or the unknown token).
    bytes: [Option<TokenId>; 256],
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// `▁` (U+2581), SentencePiece's visible space.
pub(crate) const SPACE: &str = "\u{2581}";

impl Spm {
    pub fn new(
        ids: tokenizers::models::bpe::Vocab,
        scores: Vec<f32>,
        unknown: Option<TokenId>,
    ) -> Spm {
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            let hex = format!("<0x{b:02X}>");
            *slot = ids
                .get(&hex)
                .copied()
                .or_else(|| {
                    (b < 0x80)
                        .then(|| ids.get(&(b as u8 as char).to_string()).copied())
                        .flatten()
                })
                .or(unknown);
        }
        Spm { ids, scores, bytes }
    }

    pub fn token_id(&self, text: &str) -> Option<TokenId> {
        self.ids.get(text).copied()
    }

    /// Tokens of `text` (already escaped: spaces as `▁`), appended to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<TokenId>) {
        let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
        for (i, (start, ch)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        if syms.is_empty() {
            return;
        }
        let mut queue = BinaryHeap::new();
        for i in 1..syms.len() {
            self.try_bigram(text, &syms, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (syms[b.left], syms[b.right]);
            // Skip pairs whose symbols have changed since they were queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            syms[b.left].len += r.len;
            syms[b.right].len = 0;
            syms[b.left].next = r.next;
            if let Some(n) = r.next {
                syms[n].prev = Some(b.left);
            }
            if let Some(p) = syms[b.left].prev {
                self.try_bigram(text, &syms, p, b.left, &mut queue);
            }
            if let Some(n) = syms[b.left].next {
                self.try_bigram(text, &syms, b.left, n, &mut queue);
            }
        }
        // Every merge made a vocabulary token, so a final piece is a token or a single
        // character outside the vocabulary, which falls back to its bytes.
        let mut i = Some(0);
        while let Some(s) = i {
            let sym = syms[s];
            let piece = &text[sym.start..sym.start + sym.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[b as usize])),
            }
            i = sym.next;
        }
    }

    fn try_bigram(
        &self,
        text: &str,
        syms: &[Sym],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (syms[left], syms[right]);
        let piece = &text[l.start..r.start + r.len];
        if let Some(&id) = self.ids.get(piece) {
            queue.push(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                right,
                len: piece.len(),
            });
        }
    }
}
