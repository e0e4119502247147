//! Beam search through the engine over the fake model, against references computed in the
//! test from the fake model's logits function: an exhaustive search (when the beams cover every
//! sequence, every beam type must find the best one), and a straightforward Hugging Face style
//! DETERMINISTIC beam search (length penalties below and above 1, early stopping both ways,
//! EOS inside beams). Also: seeded sampling types reproduce, beams batch with other requests,
//! and every block is free afterwards.

mod common;

use common::{greedy, prompt, Engine};
use cordial_engine::{BeamKind, BeamParams, EngineConfig, EngineRequest, FinishReason, TokenId};
use cordial_testkit::fake_model::FakeModelConfig;

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln();
    row.iter().map(|&x| x as f64 - max - z).collect()
}

fn params(k: usize, kind: BeamKind, lp: f32, early: bool) -> BeamParams {
    BeamParams {
        num_beams: k,
        kind,
        length_penalty: lp,
        early_stopping: early,
        pre_normalization: false,
        no_post_normalization: false,
    }
}

fn beam_request(
    p: Vec<TokenId>,
    max_new: usize,
    eos: TokenId,
    beam: BeamParams,
    seed: u64,
) -> EngineRequest {
    let mut r = greedy(p, max_new);
    r.params.temperature = 1.0;
    r.params.eos_tokens = vec![eos];
    r.seeds = vec![seed];
    r.beam = Some(beam);
    r
}

fn norm(score: f64, len: usize, lp: f32) -> f64 {
    score / (len.max(1) as f64).powf(lp as f64)
}

/// Every output the search could return, scored; the best (first on ties by enumeration).
fn exhaustive(
    m: &FakeModelConfig,
    p: &[TokenId],
    max_new: usize,
    eos: TokenId,
    lp: f32,
) -> (Vec<TokenId>, f64) {
    let mut best: (Vec<TokenId>, f64) = (Vec::new(), f64::NEG_INFINITY);
    let mut stack: Vec<(Vec<TokenId>, f64)> = vec![(Vec::new(), 0.0)];
    while let Some((out, score)) = stack.pop() {
        let mut history = p.to_vec();
        history.extend(&out);
        let l = log_softmax(&m.logits(&history));
        // End here with EOS.
        let s = norm(score + l[eos as usize], out.len() + 1, lp);
        if s > best.1 {
            best = (out.clone(), s);
        }
        for t in 0..m.vocab_size as TokenId {
            if t == eos {
                continue;
            }
            let mut next = out.clone();
            next.push(t);
            let sc = score + l[t as usize];
            if next.len() == max_new {
                let s = norm(sc, next.len(), lp);
                if s > best.1 {
                    best = (next, s);
                }
            } else {
                stack.push((next, sc));
            }
        }
    }
    best
}

/// Hugging Face style DETERMINISTIC beam search, written out plainly.
fn reference_beams(
    m: &FakeModelConfig,
    p: &[TokenId],
    max_new: usize,
    eos: TokenId,
    b: BeamParams,
) -> Vec<TokenId> {
    let k = b.num_beams;
    let mut beams: Vec<(Vec<TokenId>, f64)> = vec![(Vec::new(), 0.0)];
    let mut hyps: Vec<(Vec<TokenId>, f64)> = Vec::new();
    let add = |hyps: &mut Vec<(Vec<TokenId>, f64)>, h: (Vec<TokenId>, f64)| {
        if hyps.len() < k {
            hyps.push(h);
        } else {
            let worst = (0..hyps.len())
                .min_by(|&a, &c| hyps[a].1.total_cmp(&hyps[c].1).then(c.cmp(&a)))
                .unwrap();
            if h.1 > hyps[worst].1 {
                hyps[worst] = h;
            }
        }
    };
    loop {
        let mut cands: Vec<(f64, usize, TokenId)> = Vec::new();
        for (i, (out, score)) in beams.iter().enumerate() {
            let mut history = p.to_vec();
            history.extend(out);
            let l = log_softmax(&m.logits(&history));
            for (t, lt) in l.iter().enumerate() {
                cands.push((score + lt, i, t as TokenId));
            }
        }
        cands.sort_by(|a, c| c.0.total_cmp(&a.0).then(a.1.cmp(&c.1)).then(a.2.cmp(&c.2)));
        cands.truncate(2 * k);
        let mut next = Vec::new();
        for (rank, (score, i, t)) in cands.into_iter().enumerate() {
            if t == eos {
                if rank < k {
                    let out = beams[i].0.clone();
                    let n = out.len() + 1;
                    add(&mut hyps, (out, norm(score, n, b.length_penalty)));
                }
                continue;
            }
            let mut out = beams[i].0.clone();
            out.push(t);
            next.push((out, score));
            if next.len() == k {
                break;
            }
        }
        beams = next;
        let len = beams.first().map_or(0, |x| x.0.len());
        let best_running = beams
            .iter()
            .map(|x| norm(x.1, len, b.length_penalty))
            .fold(f64::NEG_INFINITY, f64::max);
        let worst = hyps.iter().map(|h| h.1).fold(f64::INFINITY, f64::min);
        let done = hyps.len() >= k && (b.early_stopping || worst >= best_running);
        if done || len >= max_new || beams.is_empty() {
            if !done {
                for (out, score) in &beams {
                    add(
                        &mut hyps,
                        (out.clone(), norm(*score, out.len(), b.length_penalty)),
                    );
                }
            }
            let best = (0..hyps.len())
                .max_by(|&a, &c| hyps[a].1.total_cmp(&hyps[c].1).then(c.cmp(&a)))
                .unwrap();
            return hyps[best].0.clone();
        }
    }
}

#[tokio::test]
async fn beams_covering_every_sequence_find_the_best_one_for_every_type() {
    let m = FakeModelConfig {
        vocab_size: 6,
        ..FakeModelConfig::default()
    };
    let e = Engine::start(m.clone(), EngineConfig::default());
    let eos = 5;
    for salt in 0..4 {
        let p = prompt(5, salt, 6);
        for lp in [0.0, 1.0, 2.0] {
            let (want, _) = exhaustive(&m, &p, 2, eos, lp);
            for kind in [
                BeamKind::Deterministic,
                BeamKind::NaiveSampling,
                BeamKind::Stochastic,
            ] {
                let req = beam_request(p.clone(), 2, eos, params(31, kind, lp, false), 9);
                let out = e.run(req).await;
                assert_eq!(out.tokens.len(), 1, "one choice");
                assert_eq!(out.single(), &want[..], "{kind:?} lp {lp} prompt {salt}");
            }
        }
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn deterministic_beams_match_the_reference_search() {
    let m = FakeModelConfig {
        vocab_size: 16,
        ..FakeModelConfig::default()
    };
    let e = Engine::start(m.clone(), EngineConfig::default());
    let eos = 3;
    let mut ended_by_eos = 0;
    for salt in 0..6 {
        let p = prompt(4 + salt as usize, salt, 16);
        for k in [1, 2, 4] {
            for lp in [0.5, 1.0, 1.5] {
                for early in [false, true] {
                    let b = params(k, BeamKind::Deterministic, lp, early);
                    let want = reference_beams(&m, &p, 6, eos, b);
                    let out = e.run(beam_request(p.clone(), 6, eos, b, 0)).await;
                    assert_eq!(
                        out.single(),
                        &want[..],
                        "k {k} lp {lp} early {early} prompt {salt}"
                    );
                    if out.reasons[0] == Some(FinishReason::Stop) {
                        ended_by_eos += 1;
                        assert!(want.len() < 6 || k > 1);
                    }
                }
            }
        }
    }
    assert!(
        ended_by_eos > 0,
        "EOS never ended a hypothesis: the test lost its point"
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn sampling_beams_reproduce_by_seed_and_vary_across_seeds() {
    let e = Engine::start(FakeModelConfig::default(), EngineConfig::default());
    for kind in [BeamKind::NaiveSampling, BeamKind::Stochastic] {
        let mut outs = Vec::new();
        for seed in 0..8 {
            let req = |s| beam_request(prompt(6, 1, 64), 8, 63, params(3, kind, 1.0, false), s);
            let a = e.run(req(seed)).await.single().to_vec();
            let b = e.run(req(seed)).await.single().to_vec();
            assert_eq!(a, b, "{kind:?} seed {seed}");
            outs.push(a);
        }
        outs.sort();
        outs.dedup();
        assert!(outs.len() > 1, "{kind:?}: every seed gave the same output");
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn beams_batch_with_other_requests_and_free_every_block() {
    let m = FakeModelConfig::default();
    let e = Engine::start(m.clone(), EngineConfig::default());
    let plain = greedy(prompt(9, 3, 64), 12);
    let alone = e.run(plain.clone()).await.single().to_vec();
    let mut beams = Vec::new();
    for i in 0..6 {
        let kind = [BeamKind::Deterministic, BeamKind::Stochastic][i % 2];
        let b = params(4 + i, kind, 1.0, i % 3 == 0);
        beams.push(e.submit(beam_request(
            prompt(7, 10 + i as u32, 64),
            10,
            63,
            b,
            i as u64,
        )));
    }
    let together = e.submit(plain);
    let together = common::collect(together, 1).await;
    assert_eq!(together.single(), &alone[..]);
    for s in beams {
        let out = common::collect(s, 1).await;
        assert!(out.is_finished());
        assert!(out.single().len() <= 10);
    }
    e.wait_all_free().await;
    // A 31-beam request is admitted like any other when the cache can hold it (31 beams × 4
    // blocks of 4 tokens here), and gives every block back.
    let big = Engine::start(
        FakeModelConfig {
            num_blocks: 160,
            ..m
        },
        EngineConfig::default(),
    );
    let b = params(31, BeamKind::Deterministic, 1.0, false);
    let out = big.run(beam_request(prompt(5, 2, 64), 12, 63, b, 0)).await;
    assert!(out.is_finished(), "{:?}", out.end);
    big.wait_all_free().await;
}

#[tokio::test]
async fn preempted_beams_give_the_same_result() {
    let roomy = FakeModelConfig::default();
    let solo = Engine::start(roomy.clone(), EngineConfig::default());
    let reqs: Vec<EngineRequest> = [BeamKind::Deterministic, BeamKind::Stochastic]
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let b = params(3, kind, 1.0, false);
            beam_request(prompt(6, 30 + i as u32, 64), 12, 63, b, 4 + i as u64)
        })
        .collect();
    let mut want = Vec::new();
    for r in &reqs {
        want.push(solo.run(r.clone()).await.single().to_vec());
    }
    // 16 blocks of 4 tokens cannot hold both 3-beam requests at full length.
    let tight = FakeModelConfig {
        num_blocks: 16,
        gated: true,
        ..roomy
    };
    let e = Engine::start(tight, EngineConfig::default());
    let a = e.submit(reqs[0].clone());
    e.parked_at(0);
    let b = e.submit(reqs[1].clone());
    e.gate.open();
    let (a, b) = (common::collect(a, 1).await, common::collect(b, 1).await);
    assert_eq!(a.single(), &want[0][..]);
    assert_eq!(b.single(), &want[1][..]);
    assert!(
        e.handle.stats().preemptions > 0,
        "the scenario must preempt"
    );
    e.wait_all_free().await;
}
