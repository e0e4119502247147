//! A compiled grammar as the engine sees it: a factory of per-choice constraints, each an
//! llguidance `Matcher`.

use std::sync::{Arc, Mutex};

use cordial_engine::{ConstraintFactory, OutputConstraint, TokenId, TokenMask};
use llguidance::toktrie::TokEnv;
use llguidance::Matcher;

use crate::keys::{KeyTracker, QuoteTokens};

/// A compiled grammar, shared by every request with the same spec (the cache holds it). Each
/// choice starts from a deep copy of the template, which already carries the lexer state built
/// by the first mask (computed at compile time to surface errors early).
pub struct Grammar {
    template: Mutex<Matcher>,
    /// The trie's EOS id: its bit is cleared from masks (the engine gates the request's own
    /// end-of-generation tokens).
    eos: TokenId,
    /// The vocabulary (token bytes, for the key tracker).
    env: TokEnv,
    /// JSON grammars: the tokens that can close a key (keys never repeat in an object).
    keys: Option<Arc<QuoteTokens>>,
}

impl Grammar {
    pub(crate) fn new(
        template: Matcher,
        eos: TokenId,
        env: TokEnv,
        keys: Option<Arc<QuoteTokens>>,
    ) -> Grammar {
        Grammar {
            template: Mutex::new(template),
            eos,
            env,
            keys,
        }
    }
}

impl std::fmt::Debug for Grammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammar").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for GrammarConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarConstraint")
            .field("stopped", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

impl ConstraintFactory for Grammar {
    fn start(&self) -> Box<dyn OutputConstraint> {
        let template = self.template.lock().unwrap_or_else(|p| p.into_inner());
        Box::new(GrammarConstraint {
            matcher: template.deep_clone(),
            eos: self.eos,
            env: self.env.clone(),
            keys: self
                .keys
                .as_ref()
                .map(|q| (KeyTracker::default(), q.clone())),
        })
    }
}

/// One choice's grammar state.
pub struct GrammarConstraint {
    matcher: Matcher,
    eos: TokenId,
    env: TokEnv,
    keys: Option<(KeyTracker, Arc<QuoteTokens>)>,
}

impl OutputConstraint for GrammarConstraint {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        let vob = self.matcher.compute_mask().map_err(|e| e.to_string())?;
        let bits = vob.as_slice();
        let words = mask.words_mut();
        let n = words.len().min(bits.len());
        words[..n].copy_from_slice(&bits[..n]);
        words[n..].fill(0);
        let eos = self.eos as usize;
        if let Some(w) = words.get_mut(eos / 32) {
            *w &= !(1 << (eos % 32));
        }
        mask.end_allowed = self.matcher.is_accepting().map_err(|e| e.to_string())?;
        if let Some((tracker, quotes)) = &self.keys {
            tracker.filter(mask, quotes);
        }
        Ok(())
    }

    fn consume(&mut self, token: TokenId) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| e.to_string())?;
        if let Some((tracker, _)) = &mut self.keys {
            // A repeat here means the grammar left no other way (see `KeyTracker::filter`).
            let _ = tracker.feed(self.env.tok_trie().token(token));
        }
        Ok(())
    }

    fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    fn fork(&self) -> Box<dyn OutputConstraint> {
        Box::new(GrammarConstraint {
            matcher: self.matcher.deep_clone(),
            eos: self.eos,
            env: self.env.clone(),
            keys: self.keys.clone(),
        })
    }
}
