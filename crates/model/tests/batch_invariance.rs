//! Batch invariance: a sequence's logits are bit-for-bit the same whether it runs alone or in a
//! batch with other sequences at other positions, mixing prefill and decode; a prompt
//! prefilled in chunks gives the logits of one prefill; prefill and decode agree.

mod common;
use common::*;
use cordial_model::{Compute, Isa, KvDtype};

fn prompts() -> Vec<Vec<u32>> {
    greedy_cases()
        .into_iter()
        .take(4)
        .map(|c| c.prompt_ids)
        .collect()
}

#[test]
fn logits_do_not_depend_on_the_batch() {
    for kv in [KvDtype::F16, KvDtype::Q8_0] {
        for isa in Isa::all_available() {
            batch_invariance(isa, kv);
        }
    }
}

fn batch_invariance(isa: Isa, kv: KvDtype) {
    {
        let p = prompts();
        let next: Vec<u32> = vec![198, 28, 30, 216];
        // Alone: each prompt, then one decode token, each sequence in its own steps.
        let mut alone = Harness::with_kv(load_default(), Compute::new(isa), 4, 64, kv);
        let mut prefill = Vec::new();
        let mut decode = Vec::new();
        for s in 0..4 {
            prefill.push(alone.step(&[(s, &p[s], 0)]).remove(0));
            decode.push(alone.step(&[(s, &next[s..s + 1], p[s].len())]).remove(0));
        }
        // Batched: three prefills together; then two decodes with a prefill in the same step.
        let mut batched = Harness::with_kv(load_default(), Compute::new(isa), 4, 64, kv);
        let rows = batched.step(&[(0, &p[0], 0), (1, &p[1], 0), (2, &p[2], 0)]);
        for s in 0..3 {
            assert!(
                rows[s] == prefill[s],
                "{isa:?} {kv}: prefill of sequence {s} changed in a batch"
            );
        }
        let rows = batched.step(&[
            (0, &next[0..1], p[0].len()),
            (3, &p[3], 0),
            (1, &next[1..2], p[1].len()),
        ]);
        assert!(
            rows[0] == decode[0],
            "{isa:?} {kv}: decode of sequence 0 changed in a batch"
        );
        assert!(
            rows[1] == prefill[3],
            "{isa:?} {kv}: prefill of sequence 3 changed next to decodes"
        );
        assert!(
            rows[2] == decode[1],
            "{isa:?} {kv}: decode of sequence 1 changed in a batch"
        );
    }
}

#[test]
fn chunked_prefill_equals_one_prefill_and_decode_agrees() {
    let p = &prompts()[2];
    let n = p.len();
    let mut h = Harness::new(load_default(), Compute::new(Isa::best_available()), 3, 64);
    let whole = h.step(&[(0, p, 0)]).remove(0);
    // Two chunks.
    h.step(&[(1, &p[..n / 2], 0)]);
    let chunked = h.step(&[(1, &p[n / 2..], n / 2)]).remove(0);
    assert!(chunked == whole, "chunked prefill differs");
    // Prefill of all but the last token, then the last one as a decode step.
    h.step(&[(2, &p[..n - 1], 0)]);
    let decoded = h.step(&[(2, &p[n - 1..], n - 1)]).remove(0);
    let (a, b) = (log_softmax(&whole), log_softmax(&decoded));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-3,
        "prefill and decode differ by {worst} in log-probability"
    );
}

#[test]
fn bad_batches_are_errors_not_panics() {
    use cordial_model::{Batch, SeqInput};
    let mut h = Harness::new(load_default(), Compute::new(Isa::best_available()), 1, 32);
    let table = h.table(0);
    let cases: Vec<(Vec<u32>, usize, Vec<u32>)> = vec![
        (vec![49152], 0, table.clone()), // token outside the vocabulary
        (vec![1; 40], 0, table.clone()), // past the block table
        (vec![1], 0, vec![999]),         // block out of range
        (vec![1], 9000, vec![0; 600]),   // past the context
    ];
    for (tokens, pos, table) in cases {
        let seqs = vec![SeqInput {
            tokens: &tokens,
            start_pos: pos,
            block_table: &table,
            window_table: &[],
            want_logits: true,
            all_logits: false,
            replace: &[],
            lora: &[],
        }];
        let mut logits = Vec::new();
        let r = h.model.forward(
            &h.pool,
            &Batch { seqs },
            &mut h.kv,
            &mut h.scratch,
            &mut logits,
        );
        assert!(r.is_err(), "tokens {:?} at {pos} accepted", &tokens[..1]);
    }
}

#[test]
fn blocked_prefill_attention_is_the_same_for_every_chunking() {
    // A prompt long enough for several query blocks of prefill attention, prefilled whole, in
    // uneven chunks, and up to its last token followed by a one-token decode step: the last
    // token's logits are the same bits every way (each query's attention is computed the same
    // way whichever block of queries it falls in).
    let p: Vec<u32> = prompts().concat().into_iter().cycle().take(83).collect();
    let n = p.len();
    let levels = Isa::all_available().into_iter();
    for (isa, kv) in levels.flat_map(|i| [(i, KvDtype::F16), (i, KvDtype::Q8_0)]) {
        let mut h = Harness::with_kv(load_default(), Compute::new(isa), 3, 96, kv);
        let whole = h.step(&[(0, &p, 0)]).remove(0);
        h.step(&[(1, &p[..37], 0)]);
        h.step(&[(1, &p[37..50], 37)]);
        let chunked = h.step(&[(1, &p[50..], 50)]).remove(0);
        assert!(chunked == whole, "{isa:?} {kv}: chunked prefill differs");
        h.step(&[(2, &p[..n - 1], 0)]);
        let decoded = h.step(&[(2, &p[n - 1..], n - 1)]).remove(0);
        assert!(
            decoded == whole,
            "{isa:?} {kv}: decode of the last token differs"
        );
    }
}
