//! Teacher-forced golden test against llama.cpp (method: ../shared/reference/README.md): feed
//! `prompt_ids` then the reference `ids`; at every step our argmax equals the reference's top id
//! (unless its top two are within 0.05 nats) and the reference's top-8 log-probabilities are
//! within 0.05 nats of ours. Run on every kernel ISA this CPU has.

mod common;
use common::*;

const TOL: f32 = 0.05;

fn check_case(h: &mut Harness, case: &Greedy) -> (usize, f32) {
    let mut rows = vec![h.step(&[(0, &case.prompt_ids, 0)]).remove(0)];
    let n = case.prompt_ids.len();
    for (i, id) in case.ids[..case.ids.len() - 1].iter().enumerate() {
        rows.push(h.step(&[(0, std::slice::from_ref(id), n + i)]).remove(0));
    }
    let mut worst = 0.0f32;
    for (i, (row, step)) in rows.iter().zip(&case.steps).enumerate() {
        let lp = log_softmax(row);
        let (top, second) = (step.top[0], step.top[1]);
        if top.1 - second.1 > TOL {
            assert_eq!(argmax(row), top.0, "prompt {:?} step {i}: argmax differs", case.prompt);
        }
        for &(id, want) in &step.top {
            let d = (lp[id as usize] - want).abs();
            worst = worst.max(d);
            assert!(d < TOL, "prompt {:?} step {i} token {id}: logprob {} vs reference {want}", case.prompt, lp[id as usize]);
        }
    }
    (rows.len(), worst)
}

fn run(isa: cordial_model::Isa, n_cases: usize) {
    let cases = greedy_cases();
    assert!(cases.len() >= 20);
    let mut h = Harness::new(load_default(), isa, 1, 256);
    let mut steps = 0;
    let mut worst = 0.0f32;
    for case in cases.iter().take(n_cases) {
        let (n, w) = check_case(&mut h, case);
        steps += n;
        worst = worst.max(w);
    }
    eprintln!("{isa:?}: {steps} teacher-forced steps, worst top-8 logprob difference {worst:.4} nats");
}

#[test]
fn golden_best_isa() {
    run(cordial_model::Isa::best_available(), usize::MAX);
}

#[test]
fn golden_scalar_reference_kernels() {
    // The scalar path is slow: a few prompts prove it.
    run(cordial_model::Isa::Scalar, 3);
}
