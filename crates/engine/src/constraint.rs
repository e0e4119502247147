//! Output constraints (structured output): the engine's side of a grammar.
//!
//! The engine knows nothing of JSON schemas or regexes. A request may carry a
//! [`ConstraintFactory`]; each choice gets its own [`OutputConstraint`] from it. Every step, for
//! each constrained choice that samples, the engine asks the constraint for the tokens allowed
//! next ([`TokenMask`]) while the forward pass runs (on another thread); the sampler masks the
//! rest; the token drawn is then fed back with [`OutputConstraint::consume`]. The end of
//! generation (the request's EOS set) is allowed only when the constraint accepts the output as
//! complete, and a constraint that admits nothing more ends the choice with `Stop`.

use std::fmt::Debug;
use std::sync::Arc;

use crate::model::TokenId;

/// Makes one independent constraint per choice; shared by the request's clones.
pub trait ConstraintFactory: Send + Sync + Debug {
    fn start(&self) -> Box<dyn OutputConstraint>;
}

/// The state of one choice's constraint.
pub trait OutputConstraint: Send + Debug {
    /// Writes the tokens allowed next into `mask` (every bit is written) and whether the output
    /// so far is complete, so that the end of generation may come now.
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String>;
    /// Advances past one output token.
    fn consume(&mut self, token: TokenId) -> Result<(), String>;
    /// Nothing more can follow the output: the choice is done.
    fn is_complete(&self) -> bool;
    /// An independent copy of the current state (beams, forks).
    fn fork(&self) -> Box<dyn OutputConstraint>;
}

/// A shared factory, as requests carry it.
pub type SharedConstraint = Arc<dyn ConstraintFactory>;

/// The allowed next tokens of one constrained row: one bit per vocabulary id, plus whether the
/// end of generation is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenMask {
    words: Vec<u32>,
    vocab: usize,
    /// The output is complete as it is: the end-of-generation tokens are allowed.
    pub end_allowed: bool,
}

impl TokenMask {
    /// A mask of `vocab` ids, all disallowed.
    pub fn new(vocab: usize) -> TokenMask {
        TokenMask {
            words: vec![0; vocab.div_ceil(32)],
            vocab,
            end_allowed: false,
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// The bit words (id `i` is bit `i % 32` of word `i / 32`), for bulk copies. Bits at or
    /// past `vocab` are ignored.
    pub fn words_mut(&mut self) -> &mut [u32] {
        &mut self.words
    }

    pub fn clear(&mut self) {
        self.words.fill(0);
        self.end_allowed = false;
    }

    pub fn allow(&mut self, id: TokenId) {
        if (id as usize) < self.vocab {
            self.words[id as usize / 32] |= 1 << (id % 32);
        }
    }

    pub fn is_allowed(&self, id: TokenId) -> bool {
        (id as usize) < self.vocab && self.words[id as usize / 32] & (1 << (id % 32)) != 0
    }

    /// Number of allowed ids.
    pub fn count(&self) -> usize {
        (0..self.vocab as TokenId)
            .filter(|&i| self.is_allowed(i))
            .count()
    }

    /// Sets every disallowed entry of `row` to `-inf`; the `end` tokens (the request's EOS set)
    /// keep their value exactly when the end is allowed, whatever their bits say.
    pub fn apply(&self, row: &mut [f32], end: &[TokenId]) {
        let saved: Vec<Option<f32>> = end.iter().map(|&t| row.get(t as usize).copied()).collect();
        for (w, chunk) in self.words.iter().zip(row.chunks_mut(32)) {
            if *w == u32::MAX {
                continue;
            }
            for (bit, x) in chunk.iter_mut().enumerate() {
                if w & (1 << bit) == 0 {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        for x in row.iter_mut().skip(self.words.len() * 32) {
            *x = f32::NEG_INFINITY;
        }
        for (&t, v) in end.iter().zip(saved) {
            if let (Some(x), Some(v)) = (row.get_mut(t as usize), v) {
                *x = if self.end_allowed {
                    v
                } else {
                    f32::NEG_INFINITY
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_masks_disallowed_and_gates_the_end_tokens() {
        let mut m = TokenMask::new(40);
        m.allow(1);
        m.allow(33);
        m.allow(99); // outside: ignored
        assert_eq!(m.count(), 2);
        assert!(m.is_allowed(33) && !m.is_allowed(2) && !m.is_allowed(99));
        let row: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let mut r = row.clone();
        m.apply(&mut r, &[5]);
        let live: Vec<usize> = (0..40).filter(|&i| r[i].is_finite()).collect();
        assert_eq!(live, vec![1, 33]);
        m.end_allowed = true;
        let mut r = row.clone();
        m.apply(&mut r, &[5]);
        let live: Vec<usize> = (0..40).filter(|&i| r[i].is_finite()).collect();
        assert_eq!(live, vec![1, 5, 33]);
        assert_eq!(r[5], 5.0);
        // An end token the grammar's bits allow is still masked while the end is not allowed.
        m.allow(5);
        m.end_allowed = false;
        let mut r = row;
        m.apply(&mut r, &[5]);
        assert!(r[5].is_infinite());
    }
}
