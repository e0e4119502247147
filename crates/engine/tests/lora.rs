//! LoRA adapters in the engine: requests with different adapters share a step (no batch
//! split), each getting what it gets alone; the prefix cache is keyed by the adapters' content
//! (prompt P under adapter A, then under B, equals a cold run of B; the same adapter hits; a
//! reloaded adapter with other content does not); `max_loras` bounds the distinct adapters
//! running, admitting a request whose adapter does not fit only when one frees up; `n`, beams
//! and prompt scoring keep their adapter. The fake model salts its K/V fingerprints with the
//! adapters, so a block shared across adapters fails the forward.

mod common;

use common::{greedy, prompt, sampled, Engine};
use cordial_engine::{
    BeamKind, BeamParams, EngineConfig, EngineRequest, LoraRef, SubmitError, TokenId,
};
use cordial_testkit::fake_model::FakeModelConfig;

fn lora(id: u32, digest: u8) -> LoraRef {
    LoraRef {
        id,
        name: format!("adapter-{id}").into(),
        scale: 1.0,
        digest: [digest; 32],
    }
}

fn with(mut r: EngineRequest, l: &[LoraRef]) -> EngineRequest {
    r.lora = l.to_vec();
    r
}

fn engine(gated: bool, max_loras: usize) -> Engine {
    Engine::start(
        FakeModelConfig {
            num_blocks: 128,
            gated,
            ..Default::default()
        },
        EngineConfig {
            max_loras,
            ..Default::default()
        },
    )
}

fn reference(e: &Engine, p: &[TokenId], n: usize, l: &[LoraRef]) -> Vec<TokenId> {
    e.model.greedy_reference_with(p, n, &[], l)
}

#[tokio::test]
async fn the_prefix_cache_is_keyed_by_the_adapters_content() {
    let e = engine(false, 0);
    let p = prompt(14, 3, 64); // 3 full blocks of 4, 12 tokens reusable
    let (a, b) = ([lora(1, 0xA)], [lora(2, 0xB)]);
    let cold_b = reference(&e, &p, 6, &b);
    assert_ne!(cold_b, reference(&e, &p, 6, &a), "the adapters differ");
    assert_ne!(cold_b, reference(&e, &p, 6, &[]));
    let hits = |e: &Engine| e.handle.stats().prefix_cache_hit_tokens;
    // P under A, then under B: B computes its prompt (a hit on A's blocks would fail the fake
    // model's forward, or give A's output) and equals a cold run.
    assert_eq!(
        e.run(with(greedy(p.clone(), 6), &a)).await.single(),
        reference(&e, &p, 6, &a)
    );
    let h0 = hits(&e);
    assert_eq!(e.run(with(greedy(p.clone(), 6), &b)).await.single(), cold_b);
    assert_eq!(hits(&e), h0, "no block shared across adapters");
    // The base model is unsalted and unaffected.
    assert_eq!(
        e.run(greedy(p.clone(), 6)).await.single(),
        reference(&e, &p, 6, &[])
    );
    assert_eq!(hits(&e), h0);
    // The same adapter hits its own blocks.
    assert_eq!(e.run(with(greedy(p.clone(), 6), &b)).await.single(), cold_b);
    assert_eq!(hits(&e), h0 + 12);
    // Another scale is another K/V.
    let half = [LoraRef {
        scale: 0.5,
        ..b[0].clone()
    }];
    let h1 = hits(&e);
    assert_eq!(
        e.run(with(greedy(p.clone(), 6), &half)).await.single(),
        reference(&e, &p, 6, &half)
    );
    assert_eq!(hits(&e), h1);
    // Same id, other content (an adapter reloaded under its name): no hit.
    let reloaded = [lora(2, 0xC)];
    e.run(with(greedy(p.clone(), 6), &reloaded)).await.single();
    assert_eq!(hits(&e), h1);
    e.wait_all_free().await;
}

#[tokio::test]
async fn different_adapters_share_one_step_and_get_what_they_get_alone() {
    let e = engine(true, 0);
    let loras = [
        vec![],
        vec![lora(1, 1)],
        vec![lora(2, 2)],
        vec![lora(3, 3), lora(1, 1)],
    ];
    let prompts: Vec<Vec<TokenId>> = (0..4).map(|i| prompt(6 + i, i as u32, 64)).collect();
    // The base request's prefill parks the engine; the others join it from the next step.
    let mut streams = vec![e.submit(greedy(prompts[0].clone(), 5))];
    e.parked_at(0);
    streams.extend((1..4).map(|i| e.submit(with(greedy(prompts[i].clone(), 5), &loras[i]))));
    e.gate.open();
    for (i, s) in streams.into_iter().enumerate() {
        let out = common::collect(s, 1).await;
        assert_eq!(
            out.single(),
            reference(&e, &prompts[i], 5, &loras[i]),
            "request {i}"
        );
    }
    let f = e.fake();
    let together = f
        .loras_per_step
        .iter()
        .zip(&f.seqs_per_step)
        .filter(|(ids, n)| **ids == [1, 2, 3] && **n == 4)
        .count();
    assert!(
        together >= 3,
        "steps mixing every adapter: {:?}",
        f.loras_per_step
    );
}

#[tokio::test]
async fn max_loras_admits_an_adapter_only_when_a_slot_frees() {
    let e = engine(true, 2);
    let long = |id: u32, salt: u32| with(greedy(prompt(5, salt, 64), 12), &[lora(id, id as u8)]);
    let a = e.submit(long(1, 1));
    e.parked_at(0);
    let b = e.submit(long(2, 2));
    let c = e.submit(with(greedy(prompt(5, 3, 64), 3), &[lora(3, 3)])); // waits
    let d = e.submit(with(greedy(prompt(5, 4, 64), 3), &[lora(1, 1)])); // fits: adapter 1 runs
    let base = e.submit(greedy(prompt(5, 5, 64), 3)); // no adapter: always fits
    e.gate.open();
    for s in [a, b, c, d, base] {
        assert!(common::collect(s, 1).await.is_finished());
    }
    let f = e.fake();
    assert!(
        f.loras_per_step.iter().all(|ids| ids.len() <= 2),
        "{:?}",
        f.loras_per_step
    );
    // Adapter 3 ran only once 1 or 2 was done; d (adapter 1) and the base request, submitted
    // after it, went first.
    let first = |id: u32| {
        f.loras_per_step
            .iter()
            .position(|ids| ids.contains(&id))
            .unwrap()
    };
    assert_eq!(
        f.seqs_per_step[1], 4,
        "a, b, d and the base request run at once"
    );
    assert_eq!(f.loras_per_step[1], [1, 2]);
    assert!(first(3) > 4, "{:?}", f.loras_per_step);
    e.wait_all_free().await;
    assert!(e.handle.stats().running_loras.is_empty());
}

#[tokio::test]
async fn stats_list_the_running_and_waiting_adapters() {
    let e = engine(true, 1);
    let a = e.submit(with(greedy(prompt(5, 1, 64), 4), &[lora(7, 7)]));
    e.parked_at(0);
    let b = e.submit(with(greedy(prompt(5, 2, 64), 4), &[lora(9, 9)]));
    e.step_to(1);
    e.wait_stats("adapters published", |s| {
        s.running_loras == [7] && s.waiting_loras == [9]
    })
    .await;
    e.gate.open();
    for s in [a, b] {
        assert!(common::collect(s, 1).await.is_finished());
    }
    e.wait_all_free().await;
    e.wait_stats("adapters cleared", |s| {
        s.running_loras.is_empty() && s.waiting_loras.is_empty()
    })
    .await;
}

#[tokio::test]
async fn n_beams_and_prompt_scores_keep_their_adapter() {
    let e = engine(false, 0);
    let l = [lora(4, 4)];
    let p = prompt(9, 7, 64);
    // n = 2 greedy choices both follow the adapter's reference.
    let mut r = with(greedy(p.clone(), 5), &l);
    r.seeds = vec![1, 2];
    let out = e.run(r).await;
    let want = reference(&e, &p, 5, &l);
    assert_eq!(out.tokens, vec![want.clone(), want.clone()]);
    // Sampled choices replay exactly per seed, and differ from the base's.
    let s = with(sampled(p.clone(), 6, vec![11, 12]), &l);
    assert_eq!(e.run(s.clone()).await, e.run(s).await);
    // Beam search with one beam is greedy under the adapter.
    let mut beam = with(greedy(p.clone(), 5), &l);
    beam.beam = Some(BeamParams {
        num_beams: 1,
        kind: BeamKind::Deterministic,
        length_penalty: 1.0,
        early_stopping: true,
        pre_normalization: false,
        no_post_normalization: false,
    });
    assert_eq!(e.run(beam).await.tokens[0], want);
    // Prompt scores come from the adapter's logits.
    let mut scored = with(greedy(p.clone(), 1), &l);
    scored.params.prompt_logprobs = true;
    let out = e.run(scored).await;
    let row = e.model.logits_with(&p[..1], &l);
    let lse = row.iter().map(|v| v.exp()).sum::<f32>().ln();
    assert!((out.prompt[0].2 - (row[p[1] as usize] - lse)).abs() < 1e-4);
    e.wait_all_free().await;
}

#[test]
fn adapters_that_could_never_run_are_refused() {
    let e = engine(false, 2);
    let bad = [
        vec![lora(1, 1), lora(2, 2), lora(3, 3)],
        vec![lora(1, 1), lora(1, 1)],
        vec![LoraRef {
            scale: f32::NAN,
            ..lora(1, 1)
        }],
    ];
    for l in bad {
        let r = with(greedy(vec![1, 2], 2), &l);
        assert!(
            matches!(e.handle.submit(r), Err(SubmitError::Invalid(_))),
            "{l:?}"
        );
    }
}

/// KV events of an adapter's blocks carry vLLM's hashes with the extra key `(lora_name,)` and
/// name the adapter (`lora_id`, `lora_name`); the base's blocks keep the plain hashes.
#[tokio::test]
async fn kv_events_name_the_adapter_and_hash_with_its_name() {
    use cordial_engine::block_hash::{chain, external, hash_block_with, root_hash};
    use cordial_engine::KvEvent;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let e = Engine::start(
        FakeModelConfig {
            num_blocks: 64,
            ..Default::default()
        },
        EngineConfig {
            kv_events: Some(tx),
            ..Default::default()
        },
    );
    let p = prompt(9, 1, 64); // 2 full blocks of 4
    let a = [lora(3, 0xA)];
    e.run(with(greedy(p.clone(), 2), &a)).await;
    e.run(greedy(p.clone(), 2)).await;
    e.wait_all_free().await;
    let mut stored = Vec::new();
    while let Ok(b) = rx.try_recv() {
        stored.extend(
            b.events
                .into_iter()
                .filter(|e| matches!(e, KvEvent::BlockStored { .. })),
        );
    }
    let root = root_hash(cordial_engine::block_hash::DEFAULT_HASH_SEED);
    let b0 = hash_block_with(&root, &p[..4], Some(&["adapter-3"]));
    let b1 = hash_block_with(&b0, &p[4..8], Some(&["adapter-3"]));
    assert_eq!(
        stored,
        [
            KvEvent::BlockStored {
                block_hashes: vec![external(&b0), external(&b1)],
                parent_block_hash: None,
                token_ids: p[..8].to_vec(),
                block_size: 4,
                lora_id: Some(3),
                lora_name: Some("adapter-3".into()),
            },
            KvEvent::BlockStored {
                block_hashes: chain(&p, 4, &root).iter().map(external).collect(),
                parent_block_hash: None,
                token_ids: p[..8].to_vec(),
                block_size: 4,
                lora_id: None,
                lora_name: None,
            },
        ]
    );
}
