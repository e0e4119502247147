//! A model whose sliding-window layers keep their K/V in a window pool: each sequence holds
//! window blocks only for the positions its next token sees, and outputs, forks (`n`, beams),
//! preemption and the prefix cache work as with one pool. The fake model checks every logits
//! row's window slots against its main slots, so a window block released too early, a wrong
//! window table or a missed window copy fails the forward.

mod common;

use common::{collect, greedy, prompt, sampled, Engine};
use cordial_engine::{BeamKind, BeamParams, EngineConfig, EngineError, Event};
use cordial_testkit::fake_model::FakeModelConfig;

const WINDOW: usize = 10;

fn model(num_blocks: usize, window_blocks: Option<usize>) -> FakeModelConfig {
    FakeModelConfig {
        num_blocks,
        max_context: 512,
        window: window_blocks.map(|b| (WINDOW, b)),
        ..Default::default()
    }
}

fn chunked(max_prefill_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_prefill_tokens,
        ..Default::default()
    }
}

#[tokio::test]
async fn outputs_are_the_reference_and_window_blocks_stay_within_the_windows() {
    let e = Engine::start(model(256, Some(64)), chunked(16));
    let prompts: Vec<_> = [40, 25, 9, 61]
        .iter()
        .enumerate()
        .map(|(s, &n)| prompt(n, s as u32, 64))
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| e.submit(greedy(p.clone(), 30)))
        .collect();
    for (stream, p) in streams.into_iter().zip(&prompts) {
        assert_eq!(
            collect(stream, 1).await.single(),
            e.model.greedy_reference(p, 30, &[])
        );
    }
    // Four sequences of up to 91 positions: the main pool holds up to 23 blocks each, the
    // window pool at most the window (3 blocks of 4, plus the one written) and a chunk.
    let f = e.fake();
    assert!(
        f.max_window_blocks_in_step <= 4 * 4 + 16 / 4,
        "{} window blocks named in one step",
        f.max_window_blocks_in_step
    );
    e.wait_all_free().await;
    let s = e.handle.stats();
    assert_eq!((s.total_window_blocks, s.free_window_blocks), (64, 64));
}

#[tokio::test]
async fn choices_and_beams_fork_window_blocks_like_the_main_ones() {
    let p = prompt(33, 7, 64);
    let beam = BeamParams {
        num_beams: 3,
        kind: BeamKind::Deterministic,
        length_penalty: 1.0,
        early_stopping: false,
        pre_normalization: false,
        no_post_normalization: false,
    };
    let mut beams = greedy(p.clone(), 12);
    beams.params.temperature = 1.0;
    beams.beam = Some(beam);
    let n3 = sampled(p.clone(), 20, vec![1, 2, 3]);
    let one_pool = Engine::start(model(256, None), chunked(8));
    let want_beams = one_pool.run(beams.clone()).await;
    let want_n3 = one_pool.run(n3.clone()).await;
    let e = Engine::start(model(256, Some(48)), chunked(8));
    let (a, b) = (e.submit(beams), e.submit(n3));
    assert_eq!(collect(a, 1).await, want_beams);
    assert_eq!(collect(b, 3).await, want_n3);
    let f = e.fake();
    assert!(
        !f.window_block_copies.is_empty(),
        "forks copy shared window blocks on write"
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_short_window_pool_preempts_and_recomputes() {
    // Plenty of main blocks, 20 window blocks of 4, prefill chunks of 4 tokens. Each
    // request's prompt needs a few window blocks, so both are admitted; after the fork each of the three choices holds its own
    // window (and copies the shared last block), and the two requests together outgrow the
    // window pool: the newer is preempted and recomputed.
    let reqs: Vec<_> = (0..2)
        .map(|s| sampled(prompt(30, s, 64), 25, vec![s as u64, 9, 17]))
        .collect();
    let one_pool = Engine::start(model(256, None), chunked(4));
    let mut want = Vec::new();
    for r in &reqs {
        want.push(one_pool.run(r.clone()).await);
    }
    let e = Engine::start(model(256, Some(20)), chunked(4));
    let streams: Vec<_> = reqs.into_iter().map(|r| e.submit(r)).collect();
    for (s, w) in streams.into_iter().zip(want) {
        assert_eq!(collect(s, 3).await, w);
    }
    let s = e.handle.stats();
    assert!(s.preemptions > 0, "the window pool must run short: {s:?}");
    e.wait_all_free().await;
}

#[tokio::test]
async fn the_prefix_cache_reuses_a_prompt_while_its_window_blocks_are_cached() {
    let p = prompt(41, 3, 64);
    let e = Engine::start(model(256, Some(64)), chunked(16));
    let first = e.run(greedy(p.clone(), 5)).await;
    let s = e.handle.stats();
    assert_eq!(s.prefix_cache_hit_tokens, 0);
    // The same prompt again: its main blocks and the window blocks before its last token are
    // still cached (released but not reused), so the hit is every full block but the last
    // token's.
    let again = e.run(greedy(p.clone(), 5)).await;
    assert_eq!(again, first);
    let s = e.handle.stats();
    assert_eq!(s.prefix_cache_hit_tokens, 40);
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_hit_is_shortened_to_the_cached_window_blocks() {
    // A small window pool: other prompts evict the first prompt's cached window blocks while
    // its main blocks stay cached, so the repeat hits only as far as window blocks remain (or
    // not at all) — and its output is unchanged.
    let p = prompt(41, 3, 64);
    let e = Engine::start(model(256, Some(24)), chunked(16));
    let first = e.run(greedy(p.clone(), 5)).await;
    for s in 10..14 {
        e.run(greedy(prompt(41, s, 64), 5)).await;
    }
    let before = e.handle.stats().prefix_cache_hit_tokens;
    let again = e.run(greedy(p.clone(), 5)).await;
    assert_eq!(again, first);
    let hit = e.handle.stats().prefix_cache_hit_tokens - before;
    assert!(
        hit < 40,
        "the window blocks before position 40 were evicted: hit {hit}"
    );
    e.wait_all_free().await;
}

#[tokio::test]
async fn a_request_larger_than_the_window_pool_is_refused() {
    // n = 8 choices each need a window's worth of blocks: more than 12.
    let e = Engine::start(model(256, Some(12)), chunked(16));
    let out = e
        .run(sampled(prompt(20, 1, 64), 10, (0..8).collect()))
        .await;
    assert!(
        matches!(out.end, Event::Error(EngineError::TooLarge { .. })),
        "{:?}",
        out.end
    );
    // One choice fits.
    let out = e.run(greedy(prompt(20, 1, 64), 10)).await;
    assert!(out.is_finished());
}
