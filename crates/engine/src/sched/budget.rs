//! TokenBudget: how many prefill tokens a step may still take.

/// The prefill token budget of one step (`EngineConfig::max_prefill_tokens`). Decode tokens do
/// not count against it, so a long prompt is prefilled in chunks while running sequences keep
/// decoding every step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBudget {
    left: usize,
}

impl TokenBudget {
    pub(crate) fn new(max_prefill_tokens: usize) -> TokenBudget {
        TokenBudget {
            left: max_prefill_tokens,
        }
    }

    /// Takes up to `want` tokens; returns how many were granted (0 when spent).
    pub(crate) fn take(&mut self, want: usize) -> usize {
        let granted = want.min(self.left);
        self.left -= granted;
        granted
    }

    pub(crate) fn is_spent(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_until_spent() {
        let mut b = TokenBudget::new(10);
        assert_eq!(b.take(4), 4);
        assert_eq!(b.take(8), 6);
        assert!(b.is_spent());
        assert_eq!(b.take(1), 0);
    }
}
