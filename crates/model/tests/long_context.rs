//! Long contexts, bounded: Gemma 3's sliding-window layers served from a window pool that
//! holds only each sequence's window give the same bits as keeping every position; a long
//! SmolLM2 prompt (many key chunks) gives the same logits however it is prefilled; and both
//! models run at the last position of their full context (8,192 and 32,768).

mod common;
use common::*;
use cordial_model::{Batch, Compute, KvCache, KvDtype, Model, Scratch, SeqInput, ThreadPool};
use cordial_model::{KV_BLOCK, NO_BLOCK};

/// One sequence run step by step over its own KV cache, with the window table managed as the
/// engine does: blocks the next token's window has passed go back to a free list (reused
/// first), new ones are taken for the positions written.
struct Seq {
    model: Model,
    kv: KvCache,
    pool: ThreadPool,
    scratch: Scratch,
    table: Vec<u32>,
    window_table: Vec<u32>,
    free_window: Vec<u32>,
}

impl Seq {
    fn new(model: Model, len: usize, window_blocks: Option<usize>, dtype: KvDtype) -> Seq {
        let blocks = len.div_ceil(KV_BLOCK);
        let kv = model
            .kv_cache(dtype, blocks, window_blocks)
            .expect("KV cache");
        Seq {
            model,
            kv,
            pool: ThreadPool::new(2),
            scratch: Scratch::default(),
            table: (0..blocks as u32).collect(),
            window_table: Vec::new(),
            free_window: (0..window_blocks.unwrap_or(0) as u32).rev().collect(),
        }
    }

    /// Runs `tokens` at `start`; the last row of logits.
    fn step(&mut self, tokens: &[u32], start: usize) -> Vec<f32> {
        if let Some(w) = self.kv.window() {
            let first = (start + 1).saturating_sub(w.window) / KV_BLOCK;
            for b in self.window_table.iter_mut().take(first) {
                if *b != NO_BLOCK {
                    self.free_window.push(*b);
                    *b = NO_BLOCK;
                }
            }
            let needed = (start + tokens.len()).div_ceil(KV_BLOCK);
            while self.window_table.len() < needed {
                let b = self.free_window.pop().expect("window pool large enough");
                self.window_table.push(b);
            }
        }
        let seqs = vec![SeqInput {
            tokens,
            start_pos: start,
            block_table: &self.table,
            window_table: &self.window_table,
            want_logits: true,
            all_logits: false,
            replace: &[],
            lora: &[],
        }];
        let mut logits = Vec::new();
        self.model
            .forward(
                &self.pool,
                &Batch { seqs },
                &mut self.kv,
                &mut self.scratch,
                &mut logits,
            )
            .expect("forward");
        logits
    }
}

/// A prompt of `n` ordinary tokens (cycling the golden prompts; the first token kept first).
fn long_prompt(cases: &[Greedy], n: usize) -> Vec<u32> {
    let first = cases[0].prompt_ids[0];
    let rest = cases.iter().flat_map(|c| c.prompt_ids[1..].iter().copied());
    std::iter::once(first).chain(rest.cycle()).take(n).collect()
}

#[test]
fn gemma3_window_pool_keeps_only_the_window_and_changes_no_bit() {
    let cases = greedy_cases_in(&gemma3_dir());
    let p = long_prompt(&cases, 1200);
    let model = load_gemma3();
    let window = model.window();
    assert_eq!(window, 512);
    // Room for the window, one 256-token chunk and the block being written.
    let window_blocks = (window + 256) / KV_BLOCK + 2;
    for dtype in [KvDtype::F16, KvDtype::Q8_0] {
        let mut all = Seq::new(load_gemma3(), 1210, None, dtype);
        let mut win = Seq::new(load_gemma3(), 1210, Some(window_blocks), dtype);
        // 3 global layers over every block, 15 windowed layers over the window pool only.
        let layer_block = all.kv.layer_bytes_per_token() * KV_BLOCK;
        let main = 1210usize.div_ceil(KV_BLOCK);
        assert_eq!(all.kv.total_bytes(), 18 * main * layer_block);
        assert_eq!(
            win.kv.total_bytes(),
            (3 * main + 15 * window_blocks) * layer_block
        );
        for start in (0..p.len()).step_by(256) {
            let chunk = &p[start..(start + 256).min(p.len())];
            let (a, b) = (all.step(chunk, start), win.step(chunk, start));
            assert!(
                a == b,
                "{dtype}: chunk at {start} differs with the window pool"
            );
        }
        for (i, t) in [236764u32, 107, 1018].into_iter().enumerate() {
            let pos = p.len() + i;
            let (a, b) = (all.step(&[t], pos), win.step(&[t], pos));
            assert!(
                a == b,
                "{dtype}: decode at {pos} differs with the window pool"
            );
        }
        let live = win.window_table.iter().filter(|&&b| b != NO_BLOCK).count();
        assert!(live <= window / KV_BLOCK + 2, "{live} window blocks held");
    }
}

#[test]
fn a_long_prompt_gives_the_same_logits_however_it_is_prefilled() {
    // 1,500 positions: twelve key chunks; whole, in the server's 512-token chunks, and up to
    // the last token followed by a decode step.
    let p = long_prompt(&greedy_cases(), 1500);
    let n = p.len();
    let cx = Compute::new(cordial_model::Isa::best_available());
    let mut h = Harness::new(load_default(), cx, 3, 1504);
    let whole = h.step(&[(0, &p, 0)]).remove(0);
    let mut chunked = Vec::new();
    for start in (0..n).step_by(512) {
        let end = (start + 512).min(n);
        chunked = h.step(&[(1, &p[start..end], start)]).remove(0);
    }
    assert!(chunked == whole, "chunked prefill differs");
    h.step(&[(2, &p[..n - 1], 0)]);
    let decoded = h.step(&[(2, &p[n - 1..], n - 1)]).remove(0);
    assert!(decoded == whole, "decode of the last token differs");
}

#[test]
fn both_models_run_at_the_end_of_their_full_context() {
    // The last position of the context (after positions whose K/V are zeros): finite logits,
    // and one position further is refused.
    for (model, dtype) in [
        (load_default(), KvDtype::F16),
        (load_gemma3(), KvDtype::Q8_0),
    ] {
        let ctx = model.config().context;
        let window = model.window();
        let expected = if window > 0 { 32768 } else { 8192 };
        assert_eq!(ctx, expected);
        let window_blocks = (window > 0).then(|| window / KV_BLOCK + 2);
        let mut s = Seq::new(model, ctx, window_blocks, dtype);
        if window > 0 {
            // Window blocks exist only from the last position's window on.
            let first = (ctx - window) / KV_BLOCK;
            s.window_table = vec![NO_BLOCK; first];
            s.window_table
                .extend((0..(ctx.div_ceil(KV_BLOCK) - first) as u32).rev());
            s.free_window.clear();
        }
        let logits = s.step(&[2], ctx - 1);
        assert!(logits.iter().all(|v| v.is_finite()), "context {ctx}");
        let seqs = vec![SeqInput {
            tokens: &[2],
            start_pos: ctx,
            block_table: &s.table,
            window_table: &s.window_table,
            want_logits: true,
            all_logits: false,
            replace: &[],
            lora: &[],
        }];
        let mut out = Vec::new();
        let r = s.model.forward(
            &s.pool,
            &Batch { seqs },
            &mut s.kv,
            &mut s.scratch,
            &mut out,
        );
        assert!(r.is_err(), "position {ctx} accepted");
    }
}
