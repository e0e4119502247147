//! Greedy selection: the argmax of a row.

use crate::model::TokenId;

/// Index of the largest logit; ties go to the lowest id. NaN never wins; a row with no number
/// larger than `-inf` gives token 0.
pub(crate) fn argmax(row: &[f32]) -> TokenId {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, &x) in row.iter().enumerate() {
        if x > best_value {
            best = i;
            best_value = x;
        }
    }
    best as TokenId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_largest() {
        assert_eq!(argmax(&[0.1, 0.2, 0.7, 0.3]), 2);
        assert_eq!(argmax(&[-5.0, -1.0, -3.0]), 1);
    }

    #[test]
    fn ties_go_to_the_lowest_id() {
        assert_eq!(argmax(&[0.5, 0.9, 0.9, 0.9]), 1);
    }

    #[test]
    fn nan_and_neg_inf_never_win() {
        assert_eq!(argmax(&[f32::NAN, -2.0, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::INFINITY]), 1);
    }
}
