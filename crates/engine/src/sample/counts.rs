//! Token counts of a history, shared by the penalties.

use crate::model::TokenId;

/// `(token, occurrences)` of every distinct token in `tokens`, by increasing id. Sorting a copy
/// costs O(L log L) per row, without a vocabulary-sized buffer.
pub(crate) fn token_counts(tokens: impl Iterator<Item = TokenId>) -> Vec<(TokenId, usize)> {
    let mut sorted: Vec<TokenId> = tokens.collect();
    sorted.sort_unstable();
    let mut out: Vec<(TokenId, usize)> = Vec::new();
    for t in sorted {
        match out.last_mut() {
            Some((last, n)) if *last == t => *n += 1,
            _ => out.push((t, 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_distinct_tokens_in_id_order() {
        assert_eq!(
            token_counts([5, 1, 5, 3, 5, 1].into_iter()),
            [(1, 2), (3, 1), (5, 3)]
        );
        assert!(token_counts(std::iter::empty()).is_empty());
    }
}
