//! Log-probabilities in the response (of the raw logits, before penalties, temperature or
//! filters): per token as streamed, and per choice as
//! the concatenation of its tokens'.

use cordial_engine::TokenExtra;
use cordial_tokenizer::TokenId;

use super::text::TokenText;
use crate::protocol::{LogprobsWire, OpenAiLogprobs, TopLogprobs};
use crate::validate::LogprobMode;

/// What the engine reported with a token, kept until the token's text is released.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenInfo {
    pub logprob: f32,
    pub extra: Option<Box<TokenExtra>>,
}

/// One token's logprobs in `mode`; `offset` is the character offset of its text in the choice.
pub fn token_logprobs(
    mode: LogprobMode,
    tt: &dyn TokenText,
    token: TokenId,
    info: &TokenInfo,
    offset: usize,
) -> Option<LogprobsWire> {
    match mode {
        LogprobMode::None => None,
        LogprobMode::Floats => Some(LogprobsWire::Floats(vec![info.logprob])),
        LogprobMode::Top(k) => {
            let ids: Vec<(TokenId, f32)> = info
                .extra
                .iter()
                .flat_map(|e| e.top_logprobs.iter().take(k).copied())
                .collect();
            let mut top: Vec<(String, f32)> =
                ids.iter().map(|&(id, lp)| (tt.token_str(id), lp)).collect();
            let mut raw: Vec<Vec<u8>> = ids.iter().map(|&(id, _)| tt.token_raw(id)).collect();
            let text = tt.token_str(token);
            let listed = info
                .extra
                .iter()
                .any(|e| e.top_logprobs.iter().take(k).any(|&(id, _)| id == token));
            if !listed {
                // OpenAI: the sampled token is always among the alternatives (up to k + 1).
                top.push((text.clone(), info.logprob));
                raw.push(tt.token_raw(token));
            }
            Some(LogprobsWire::OpenAi(OpenAiLogprobs {
                tokens: vec![text],
                token_logprobs: vec![Some(info.logprob)],
                top_logprobs: vec![Some(TopLogprobs(top, raw))],
                text_offset: vec![offset],
                token_bytes: vec![tt.token_raw(token)],
            }))
        }
    }
}

/// The echoed prompt's OpenAI logprobs: `infos[p]` is what the engine reported for prompt
/// position `p` (`None` for position 0, which nothing predicts: `null` entries).
pub fn prompt_logprobs(
    k: usize,
    tt: &dyn TokenText,
    tokens: &[TokenId],
    infos: &[Option<TokenInfo>],
    offsets: &[usize],
) -> OpenAiLogprobs {
    let mut all = OpenAiLogprobs::default();
    for (p, &token) in tokens.iter().enumerate() {
        match infos.get(p).and_then(Option::as_ref) {
            Some(info) => {
                let one = token_logprobs(LogprobMode::Top(k), tt, token, info, offsets[p]);
                if let Some(LogprobsWire::OpenAi(o)) = one {
                    all.tokens.extend(o.tokens);
                    all.token_logprobs.extend(o.token_logprobs);
                    all.top_logprobs.extend(o.top_logprobs);
                    all.text_offset.extend(o.text_offset);
                    all.token_bytes.extend(o.token_bytes);
                }
            }
            None => {
                all.token_bytes.push(tt.token_raw(token));
                all.tokens.push(tt.token_str(token));
                all.token_logprobs.push(None);
                all.top_logprobs.push(None);
                all.text_offset.push(offsets[p]);
            }
        }
    }
    all
}

/// Appends one token's logprobs to a choice's.
pub fn append(acc: &mut Option<LogprobsWire>, one: LogprobsWire) {
    match (acc, one) {
        (Some(LogprobsWire::Floats(all)), LogprobsWire::Floats(v)) => all.extend(v),
        (Some(LogprobsWire::OpenAi(all)), LogprobsWire::OpenAi(o)) => {
            all.tokens.extend(o.tokens);
            all.token_logprobs.extend(o.token_logprobs);
            all.top_logprobs.extend(o.top_logprobs);
            all.text_offset.extend(o.text_offset);
            all.token_bytes.extend(o.token_bytes);
        }
        (acc @ None, one) => *acc = Some(one),
        (Some(_), _) => debug_assert!(false, "one logprob mode per request"),
    }
}

/// An empty choice-level value for `mode` (a choice without tokens still reports `[]`).
pub fn empty(mode: LogprobMode) -> Option<LogprobsWire> {
    match mode {
        LogprobMode::None => None,
        LogprobMode::Floats => Some(LogprobsWire::Floats(Vec::new())),
        LogprobMode::Top(_) => Some(LogprobsWire::OpenAi(OpenAiLogprobs::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::text::tests::table;

    fn info(top: Vec<(TokenId, f32)>) -> TokenInfo {
        TokenInfo {
            logprob: -0.5,
            extra: Some(Box::new(TokenExtra {
                top_logprobs: top,
                logits: None,
            })),
        }
    }

    #[test]
    fn openai_object_lists_the_top_k_and_the_sampled_token() {
        let t = table();
        let got = token_logprobs(
            LogprobMode::Top(2),
            &t,
            4,
            &info(vec![(1, -0.125), (2, -0.75)]),
            3,
        );
        let json = serde_json::to_value(got.unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"tokens": [" b"], "token_logprobs": [-0.5],
                "top_logprobs": [{"a": -0.125, "\u{FFFD}": -0.75, " b": -0.5}], "text_offset": [3]})
        );
        let got = token_logprobs(LogprobMode::Top(1), &t, 1, &info(vec![(1, -0.5)]), 0).unwrap();
        let LogprobsWire::OpenAi(o) = got else {
            panic!()
        };
        let top = o.top_logprobs[0].as_ref().unwrap();
        assert_eq!(top.0.len(), 1, "sampled token already listed");
    }

    #[test]
    fn floats_and_appending() {
        let t = table();
        let mut acc = empty(LogprobMode::Floats);
        for lp in [-1.0, -2.0] {
            let i = TokenInfo {
                logprob: lp,
                extra: None,
            };
            append(
                &mut acc,
                token_logprobs(LogprobMode::Floats, &t, 1, &i, 0).unwrap(),
            );
        }
        assert_eq!(acc, Some(LogprobsWire::Floats(vec![-1.0, -2.0])));
        assert_eq!(
            token_logprobs(LogprobMode::None, &t, 1, &info(vec![]), 0),
            None
        );
        let mut acc = empty(LogprobMode::Top(1));
        append(
            &mut acc,
            token_logprobs(LogprobMode::Top(1), &t, 1, &info(vec![]), 0).unwrap(),
        );
        append(
            &mut acc,
            token_logprobs(LogprobMode::Top(1), &t, 4, &info(vec![]), 1).unwrap(),
        );
        let LogprobsWire::OpenAi(o) = acc.unwrap() else {
            panic!()
        };
        assert_eq!(o.tokens, ["a", " b"]);
        assert_eq!(o.text_offset, [0, 1]);
    }
}
