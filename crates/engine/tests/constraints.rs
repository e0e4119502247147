//! Structured output through the engine over the fake model, with hand-written constraints:
//! masks are obeyed, the end comes only when the constraint accepts, a complete constraint
//! ends the choice, choices have independent states, failures fail only their request, and
//! unconstrained requests in the same batch are unchanged.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{greedy, prompt, sampled, Engine};
use cordial_engine::{
    ConstraintFactory, EngineConfig, EngineError, Event, FinishReason, OutputConstraint, TokenId,
    TokenMask,
};
use cordial_testkit::fake_model::FakeModelConfig;

/// A constraint made of steps: at step `i` the tokens `steps[i]` are allowed; the end is
/// allowed once at least `end_from` tokens were consumed; complete after the last step.
#[derive(Debug, Clone)]
struct Steps {
    steps: Vec<Vec<TokenId>>,
    end_from: usize,
    pos: usize,
    /// Counts masks computed, shared by every fork.
    masks: Arc<AtomicUsize>,
    /// `compute_mask` panics at this position.
    panic_at: Option<usize>,
}

impl OutputConstraint for Steps {
    fn compute_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        assert!(self.panic_at != Some(self.pos), "injected panic");
        self.masks.fetch_add(1, Ordering::Relaxed);
        mask.clear();
        for &t in self.steps.get(self.pos).into_iter().flatten() {
            mask.allow(t);
        }
        mask.end_allowed = self.pos >= self.end_from;
        Ok(())
    }

    fn consume(&mut self, token: TokenId) -> Result<(), String> {
        match self.steps.get(self.pos) {
            Some(allowed) if allowed.contains(&token) => {
                self.pos += 1;
                Ok(())
            }
            _ => Err(format!("token {token} not allowed at step {}", self.pos)),
        }
    }

    fn is_complete(&self) -> bool {
        self.pos >= self.steps.len()
    }

    fn fork(&self) -> Box<dyn OutputConstraint> {
        Box::new(self.clone())
    }
}

impl ConstraintFactory for Steps {
    fn start(&self) -> Box<dyn OutputConstraint> {
        Box::new(self.clone())
    }
}

fn steps(steps: Vec<Vec<TokenId>>, end_from: usize) -> Steps {
    Steps {
        steps,
        end_from,
        pos: 0,
        masks: Arc::new(AtomicUsize::new(0)),
        panic_at: None,
    }
}

fn engine() -> Engine {
    Engine::start(FakeModelConfig::default(), EngineConfig::default())
}

#[tokio::test]
async fn a_single_path_constraint_gives_exactly_its_tokens_and_stops() {
    let e = engine();
    let c = steps(vec![vec![5], vec![9], vec![7]], 99);
    for mut req in [
        greedy(prompt(6, 1, 64), 10),
        sampled(prompt(6, 1, 64), 10, vec![3]),
    ] {
        req.constraint = Some(Arc::new(c.clone()));
        let out = e.run(req).await;
        assert_eq!(out.single(), &[5, 9, 7]);
        assert_eq!(out.reasons[0], Some(FinishReason::Stop));
    }
    // One mask per sampled token.
    assert_eq!(c.masks.load(Ordering::Relaxed), 6);
    e.wait_all_free().await;
}

#[tokio::test]
async fn the_end_comes_only_when_allowed_and_max_tokens_cuts_with_length() {
    let e = engine();
    let set: Vec<TokenId> = vec![3, 4, 10, 11];
    for seed in 0..8 {
        // End allowed from the third token; EOS is a likely token (every token's logit is
        // random in the fake model, so give EOS every chance by making it the whole set of
        // allowed end tokens).
        let mut req = sampled(prompt(5, seed, 64), 8, vec![seed as u64]);
        req.params.eos_tokens = vec![20, 21, 22, 23, 24, 25, 26, 27, 28, 29];
        req.constraint = Some(Arc::new(steps(vec![set.clone(); 8], 3)));
        let out = e.run(req).await;
        let toks = out.single();
        assert!(toks.iter().all(|t| set.contains(t)), "{toks:?}");
        match out.reasons[0] {
            Some(FinishReason::Stop) => assert!(toks.len() >= 3, "ended early: {toks:?}"),
            Some(FinishReason::Length) => assert_eq!(toks.len(), 8),
            None => panic!("no finish"),
        }
    }
    // A max_new_tokens shorter than the constraint: Length, and a valid prefix.
    let mut req = greedy(prompt(5, 1, 64), 2);
    req.constraint = Some(Arc::new(steps(vec![vec![5], vec![9], vec![7]], 99)));
    let out = e.run(req).await;
    assert_eq!(
        (out.single(), out.reasons[0]),
        (&[5, 9][..], Some(FinishReason::Length))
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn choices_have_independent_constraint_states() {
    let e = engine();
    // Two allowed tokens per step: choices sample different paths, each valid on its own.
    let c = steps(vec![vec![1, 2], vec![3, 4], vec![5, 6], vec![7, 8]], 99);
    let mut req = sampled(prompt(7, 2, 64), 10, vec![1, 2, 3, 4, 5, 6]);
    req.constraint = Some(Arc::new(c));
    let out = e.run(req).await;
    assert!(out.is_finished());
    for toks in &out.tokens {
        assert_eq!(toks.len(), 4);
        for (i, t) in toks.iter().enumerate() {
            assert!([2 * i as u32 + 1, 2 * i as u32 + 2].contains(t), "{toks:?}");
        }
    }
    assert!(
        out.tokens.iter().any(|t| t != &out.tokens[0]),
        "6 seeds, one path?"
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn unconstrained_requests_in_the_same_batch_are_unchanged() {
    let e = engine();
    let plain: Vec<_> = (0..3).map(|i| greedy(prompt(9, 10 + i, 64), 12)).collect();
    let mut alone = Vec::new();
    for r in &plain {
        alone.push(e.run(r.clone()).await.single().to_vec());
    }
    let mut streams = Vec::new();
    for (i, r) in plain.iter().enumerate() {
        let mut c = sampled(prompt(9, 20 + i as u32, 64), 12, vec![i as u64]);
        c.constraint = Some(Arc::new(steps(vec![vec![40, 41, 42]; 12], 0)));
        streams.push((e.submit(r.clone()), 1));
        streams.push((e.submit(c), 1));
    }
    let mut outs = Vec::new();
    for (s, n) in streams {
        outs.push(common::collect(s, n).await);
    }
    for i in 0..3 {
        assert_eq!(outs[2 * i].single(), &alone[i][..], "plain request {i}");
        assert!(outs[2 * i + 1]
            .single()
            .iter()
            .all(|t| [40, 41, 42].contains(t)));
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_failing_constraint_fails_only_its_request() {
    let e = engine();
    // Bad words remove the only allowed token: a constraint error, not a wrong token.
    let mut req = greedy(prompt(5, 3, 64), 6);
    req.constraint = Some(Arc::new(steps(vec![vec![5], vec![9]], 99)));
    req.params.bad_sequences = vec![vec![9]];
    let out = e.run(req).await;
    assert_eq!(out.tokens[0], [5]);
    assert!(
        matches!(&out.end, Event::Error(EngineError::Constraint(m)) if m.contains("response_format")),
        "{:?}",
        out.end
    );
    // A panic inside the grammar engine while computing a mask.
    let mut bad = steps(vec![vec![5], vec![9], vec![7]], 99);
    bad.panic_at = Some(1);
    let mut req = greedy(prompt(5, 3, 64), 6);
    req.constraint = Some(Arc::new(bad));
    let other = e.submit(greedy(prompt(5, 4, 64), 6));
    let out = e.run(req).await;
    assert!(
        matches!(&out.end, Event::Error(EngineError::Constraint(m)) if m.contains("panicked")),
        "{:?}",
        out.end
    );
    let other = common::collect(other, 1).await;
    assert!(other.is_finished());
    assert_eq!(other.single().len(), 6);
    e.wait_all_free().await;
}
