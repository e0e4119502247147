//! Prefix caching: repeated and shared prompt prefixes reuse cached KV blocks (fewer prefill
//! tokens, same output as with caching off), eviction of cached-free blocks, preemption, aborts
//! and `n > 1` over cached blocks. The fake model fails a forward that reads a block computed
//! after another prefix, so a wrong hit cannot pass as a correct one.

mod common;

use common::{collect, greedy, prompt, sampled, Engine};
use cordial_engine::{EngineConfig, EngineRequest, TokenId};
use cordial_testkit::fake_model::FakeModelConfig;

fn model(num_blocks: usize, gated: bool) -> FakeModelConfig {
    FakeModelConfig {
        num_blocks,
        gated,
        ..Default::default()
    }
}

fn caching(on: bool) -> EngineConfig {
    EngineConfig {
        enable_prefix_caching: on,
        ..Default::default()
    }
}

/// `(queried, hit)` prompt tokens so far.
fn hits(e: &Engine) -> (u64, u64) {
    let s = e.handle.stats();
    (s.prefix_cache_queries_tokens, s.prefix_cache_hit_tokens)
}

/// Tokens fed by the forward calls after the first `from`.
fn tokens_since(e: &Engine, from: usize) -> Vec<usize> {
    e.fake().tokens_per_step[from..].to_vec()
}

#[tokio::test]
async fn a_repeated_prompt_hits_the_cache_and_gives_the_same_output() {
    let (on, off) = (
        Engine::start(model(64, false), caching(true)),
        Engine::start(model(64, false), caching(false)),
    );
    // 10 tokens: 2 full blocks reusable. 12 tokens: 3 full blocks, but the last holds the last
    // prompt token, which is always computed: 2 reusable, 4 tokens computed.
    for (len, reused) in [(10, 8), (12, 8)] {
        let p = prompt(len, len as u32, 64);
        for req in [greedy(p.clone(), 8), sampled(p.clone(), 8, vec![3])] {
            let first = on.run(req.clone()).await;
            let steps = on.fake().forward_calls as usize;
            let (q0, h0) = hits(&on);
            let second = on.run(req.clone()).await;
            assert_eq!(tokens_since(&on, steps)[0], len - reused);
            assert_eq!(hits(&on), (q0 + len as u64, h0 + reused as u64));
            let plain = off.run(req.clone()).await;
            assert_eq!(first, plain, "tokens and logprobs bit for bit");
            assert_eq!(second, plain);
        }
        let p_ref = on.model.greedy_reference(&p, 8, &[]);
        assert_eq!(on.run(greedy(p, 8)).await.single(), p_ref);
    }
    assert_eq!(hits(&off), (0, 0), "caching off queries nothing");
    assert!(off
        .fake()
        .tokens_per_step
        .iter()
        .all(|&t| t == 1 || t >= 10));
    on.wait_all_free().await;
    off.wait_all_free().await;
    assert!(on.handle.stats().cached_free_blocks > 0);
    assert_eq!(off.handle.stats().cached_free_blocks, 0);
}

#[tokio::test]
async fn shared_prefixes_with_different_suffixes_are_correct_and_counted() {
    let e = Engine::start(model(64, true), caching(true));
    let base = prompt(8, 1, 64); // two full blocks
    let with = |suffix: &[TokenId]| [base.as_slice(), suffix].concat();
    let a = with(&[9, 10, 11, 12, 13]);
    let b = with(&[20, 21, 22]);
    let mut c = with(&[30]);
    c[5] = 63; // same first block only
    let mut d = b.clone();
    d[0] = 62; // nothing shared: every later block's chain differs
    let sa = e.submit(greedy(a.clone(), 10));
    e.parked_at(0);
    e.step_to(1); // A's prompt is computed and its blocks registered; A keeps running
    let (sb, sc, sd) = (
        e.submit(greedy(b.clone(), 6)),
        e.submit(greedy(c.clone(), 6)),
        e.submit(greedy(d.clone(), 6)),
    );
    e.step_to(2);
    e.step_to(3);
    // Step 2: A's decode + B's 3 new tokens + C's 5 + D's 11 (D shares nothing).
    assert_eq!(e.fake().tokens_per_step, vec![13, 1, 1 + 3 + 5 + 11]);
    assert_eq!(hits(&e), (13 + 11 + 9 + 11, 8 + 4));
    e.gate.open();
    for (stream, p, max) in [(sa, &a, 10), (sb, &b, 6), (sc, &c, 6), (sd, &d, 6)] {
        let out = collect(stream, 1).await;
        assert_eq!(out.single(), e.model.greedy_reference(p, max, &[]));
    }
    e.wait_all_free().await;
}

#[tokio::test]
async fn new_prompts_evict_cached_blocks_and_still_complete() {
    let e = Engine::start(model(8, false), caching(true));
    let p1 = prompt(13, 1, 64); // 3 full blocks cached; 4 blocks with its output
    assert_eq!(
        e.run(greedy(p1.clone(), 3)).await.single(),
        e.model.greedy_reference(&p1, 3, &[])
    );
    e.wait_all_free().await;
    assert_eq!(e.handle.stats().cached_free_blocks, 3);
    // 7 blocks of 8: the 5 plain free ones, then the 2 least recently used cached ones, which
    // are P1's tail (released last block first): its first block stays cached.
    let p2 = prompt(25, 2, 64);
    assert_eq!(
        e.run(greedy(p2.clone(), 4)).await.single(),
        e.model.greedy_reference(&p2, 4, &[])
    );
    let (_, h) = hits(&e);
    assert_eq!(
        e.run(greedy(p1.clone(), 3)).await.single(),
        e.model.greedy_reference(&p1, 3, &[])
    );
    assert_eq!(hits(&e).1 - h, 4, "only P1's first block survived");
    // Many prompts through the small cache, each run twice in a row: the repeat always hits,
    // whatever was evicted for the prompts in between; all correct, all freed.
    for round in 0..3usize {
        for s in 0..6u32 {
            let p = prompt(5 + (s as usize * 4) % 17, s + 10 * round as u32, 64);
            let want = e.model.greedy_reference(&p, 4 + round, &[]);
            assert_eq!(e.run(greedy(p.clone(), 4 + round)).await.single(), want);
            let (_, h) = hits(&e);
            assert_eq!(e.run(greedy(p.clone(), 4 + round)).await.single(), want);
            assert_eq!(hits(&e).1 - h, (p.len() as u64 - 1) / 4 * 4);
        }
    }
    e.wait_all_free().await;
    let s = e.handle.stats();
    assert!(s.cached_free_blocks > 0 && s.cached_free_blocks <= s.total_blocks);
}

/// Two requests with a common prefix outgrow a 10-block cache together: the newer is preempted
/// (its blocks, cached ones included, given back) and recomputed; every output equals its
/// run with caching off, and every block ends free.
#[tokio::test]
async fn preemption_with_cached_blocks_keeps_counts_and_output() {
    let base = prompt(9, 4, 64);
    let pa = base.clone();
    let pb = [base.as_slice(), &[40, 41, 42]].concat();
    let req_a = sampled(pa.clone(), 14, vec![5]);
    let req_b = sampled(pb.clone(), 10, vec![6, 7]);
    let solo = Engine::start(model(64, false), caching(false));
    let want_a = solo.run(req_a.clone()).await;
    let want_b = solo.run(req_b.clone()).await;

    let e = Engine::start(model(10, true), caching(true));
    let a = e.submit(req_a);
    e.parked_at(0);
    e.step_to(1); // A's prompt blocks are cached and in use
    let b = e.submit(req_b);
    e.gate.open();
    assert_eq!(collect(a, 1).await, want_a);
    assert_eq!(collect(b, 2).await, want_b);
    let s = e.handle.stats();
    assert!(s.preemptions > 0, "the scenario must preempt: {s:?}");
    assert!(s.prefix_cache_hit_tokens >= 8, "B reused A's blocks: {s:?}");
    e.wait_all_free().await;
}

/// Aborting requests that hold cached blocks (shared with a running request, or during a
/// chunked prefill after a hit) frees each block exactly once; what they registered stays
/// reusable.
#[tokio::test]
async fn aborts_with_cached_blocks_keep_counts_right() {
    let config = EngineConfig {
        max_prefill_tokens: 4,
        ..caching(true)
    };
    let e = Engine::start(model(64, true), config);
    let p = prompt(40, 3, 64);
    let first = e.submit(greedy(p.clone(), 1));
    e.gate.allow(10); // 10 chunks of 4; the last one samples the only token
    assert_eq!(collect(first, 1).await.single().len(), 1);
    e.wait_all_free().await;

    // A sharer of P's cached blocks (36 tokens hit, 4 computed in step 10), then Q, which
    // extends P: 40 tokens hit, 20 left in chunks of 4 from step 11 on, while the sharer
    // decodes. Q is dropped while step 13 computes its third chunk.
    let sharer = e.submit(sampled(p.clone(), 5, vec![8, 9]));
    let q: Vec<TokenId> = [p.as_slice(), &prompt(20, 9, 64)].concat();
    let dropped = e.submit(greedy(q.clone(), 3));
    e.parked_at(10);
    for step in 11..=13 {
        e.step_to(step);
    }
    drop(dropped);
    e.step_to(14);
    assert_eq!(hits(&e), (40 + 40 + 60, 36 + 40)); // P, the sharer, Q
    assert_eq!(tokens_since(&e, 10), vec![4, 2 + 4, 2 + 4, 2 + 4]);
    let (_, h) = hits(&e);
    e.gate.open();
    let sharer = collect(sharer, 2).await;
    assert!(sharer.is_finished());
    e.wait_all_free().await;
    // Q's 3 chunks (12 tokens = 3 blocks) were registered before the abort took effect.
    let again = e.run(greedy(q.clone(), 3)).await;
    assert_eq!(again.single(), e.model.greedy_reference(&q, 3, &[]));
    assert_eq!(hits(&e).1 - h, 52);
    e.wait_all_free().await;
    let solo = Engine::start(model(64, false), caching(false));
    assert_eq!(solo.run(sampled(p, 5, vec![8, 9])).await, sharer);
}

#[tokio::test]
async fn n_choices_fork_a_cached_prefix() {
    let (on, off) = (
        Engine::start(model(64, false), caching(true)),
        Engine::start(model(64, false), caching(false)),
    );
    for len in [10, 12] {
        let p = prompt(len, 7, 64);
        let warm = greedy(p.clone(), 2);
        let req: EngineRequest = sampled(p.clone(), 6, vec![11, 12, 13]);
        assert_eq!(on.run(warm.clone()).await, off.run(warm).await);
        let steps = on.fake().forward_calls as usize;
        let together = on.run(req.clone()).await;
        assert_eq!(tokens_since(&on, steps)[0], len - 8);
        assert_eq!(together, off.run(req).await);
        assert_ne!(together.tokens[0], together.tokens[1]);
    }
    on.wait_all_free().await;
}

/// A block is reused only after the very prefix it was computed after: `[a][d]` finds `[a]`
/// (from `[a][b]`) but not `[d]`, which was computed after `[c]`.
#[tokio::test]
async fn a_cached_block_is_only_reused_after_its_own_prefix() {
    let e = Engine::start(model(64, false), caching(true));
    let (a, b, c, d) = (
        prompt(4, 1, 64),
        prompt(4, 2, 64),
        prompt(4, 3, 64),
        prompt(4, 4, 64),
    );
    for p in [[&a[..], &b, &[9]].concat(), [&c[..], &d, &[9]].concat()] {
        assert!(e.run(greedy(p, 2)).await.is_finished());
    }
    let (_, h) = hits(&e);
    let ad = [&a[..], &d, &[9]].concat();
    assert_eq!(
        e.run(greedy(ad.clone(), 4)).await.single(),
        e.model.greedy_reference(&ad, 4, &[])
    );
    assert_eq!(hits(&e).1 - h, 4);
    e.wait_all_free().await;
}

/// Every KV event batch received so far, in order.
fn drain(
    rx: &mut tokio::sync::mpsc::Receiver<cordial_engine::KvEventBatch>,
) -> Vec<cordial_engine::KvEventBatch> {
    let mut out = Vec::new();
    while let Ok(b) = rx.try_recv() {
        out.push(b);
    }
    out
}

#[tokio::test]
async fn kv_events_name_stored_and_evicted_blocks_by_their_vllm_hashes() {
    use cordial_engine::block_hash::{chain, external, root_hash};
    use cordial_engine::KvEvent;
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let config = EngineConfig {
        prefix_hash_seed: "42".into(),
        kv_events: Some(tx),
        ..caching(true)
    };
    // 4 blocks of 4 tokens: a 9-token prompt (2 full blocks) plus 3 decode tokens needs 3.
    let e = Engine::start(model(4, false), config);
    let a = prompt(9, 1, 64);
    e.run(greedy(a.clone(), 3)).await;
    e.wait_all_free().await;
    let root = root_hash("42");
    let hashes = chain(&a, 4, &root);
    let want: Vec<u64> = hashes.iter().map(external).collect();
    let batches = drain(&mut rx);
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(batches[0].seq, 0);
    assert!(batches[0].ts > 1.6e9);
    assert_eq!(
        batches[0].events,
        [KvEvent::BlockStored {
            block_hashes: want.clone(),
            parent_block_hash: None,
            token_ids: a[..8].to_vec(),
            block_size: 4,
            lora_id: None,
            lora_name: None,
        }]
    );
    // The same prompt again: a hit, nothing new is stored.
    e.run(greedy(a.clone(), 3)).await;
    e.wait_all_free().await;
    assert!(drain(&mut rx).is_empty());
    // A longer prompt sharing a's first block: its second and third blocks are stored as one
    // run whose parent is a's first block.
    let mut b = a[..4].to_vec();
    b.extend(prompt(9, 7, 64));
    e.run(greedy(b.clone(), 1)).await;
    e.wait_all_free().await;
    let b_hashes = chain(&b, 4, &root);
    let events: Vec<KvEvent> = drain(&mut rx).into_iter().flat_map(|x| x.events).collect();
    let stored: Vec<&KvEvent> = events
        .iter()
        .filter(|e| matches!(e, KvEvent::BlockStored { .. }))
        .collect();
    assert_eq!(
        stored,
        [&KvEvent::BlockStored {
            block_hashes: b_hashes[1..3].iter().map(external).collect(),
            parent_block_hash: Some(want[0]),
            token_ids: b[4..12].to_vec(),
            block_size: 4,
            lora_id: None,
            lora_name: None,
        }]
    );
    // b needs all 4 blocks (13 tokens) while 2 of a's are cached-free and b reuses one: a's
    // second block is evicted, and named by its hash.
    let removed: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            KvEvent::BlockRemoved { block_hashes } => Some(block_hashes.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(removed, [want[1]], "{events:?}");
    assert_eq!(e.handle.stats().kv_event_batches_dropped, 0);
}

#[tokio::test]
async fn a_full_kv_event_channel_drops_and_counts_and_leaves_a_gap() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let config = EngineConfig {
        kv_events: Some(tx),
        ..caching(true)
    };
    let e = Engine::start(model(64, false), config);
    for salt in 1..=3 {
        e.run(greedy(prompt(9, salt, 64), 1)).await;
        e.wait_all_free().await;
    }
    let got = drain(&mut rx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].seq, 0);
    assert_eq!(e.handle.stats().kv_event_batches_dropped, 2);
    e.run(greedy(prompt(9, 4, 64), 1)).await;
    // The step's events are sent before its stats are published.
    e.wait_all_free().await;
    assert_eq!(
        drain(&mut rx)[0].seq,
        3,
        "dropped batches leave their numbers unused"
    );
}
