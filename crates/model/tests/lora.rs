//! LoRA adapters on tiny random-weight models: the delta's math against a float64 forward
//! pass over MERGED weights (W + s·α·B·A) for every architecture shape (split and fused
//! projections, biases, post-norms); scale 0 is the base bit for bit; the GGUF and PEFT forms
//! of one adapter give the same logits (which checks the Q/K permutation); a batch mixing
//! adapters and the base gives each sequence exactly what it gets alone, on every ISA; and
//! every malformed adapter is an error naming what is wrong.

mod common;

use common::tiny::*;
use common::{log_softmax, Harness};
use cordial_model::lora::LoraAdapter;
use cordial_model::{Compute, Isa, LoraUse};
use cordial_testkit::gguf_writer::{temp_path, GgufWriter, Meta};
use cordial_testkit::lora_writer::LoraSpec;

/// One hand-written matrix pair: (GGUF matrix name, n_out, n_in, A rank×n_in, B n_out×rank).
type HandMat = (String, usize, usize, Vec<f32>, Vec<f32>);

/// An adapter written by hand.
struct Hand {
    arch: &'static str,
    alpha: f32,
    rank: usize,
    mats: Vec<HandMat>,
}

impl Hand {
    /// Random factors for every projection `spec`'s tiny model has.
    fn random(spec: Spec, rank: usize, seed: u64) -> Hand {
        let mut rng = Rng(seed);
        let hd = spec.head_dim;
        let (qd, kvd) = (HEADS * hd, KV_HEADS * hd);
        let mut mats = Vec::new();
        for l in 0..LAYERS {
            let projs: Vec<(&str, usize, usize)> = if spec.fused {
                vec![
                    ("attn_qkv", qd + 2 * kvd, HIDDEN),
                    ("attn_output", HIDDEN, qd),
                    ("ffn_up", 2 * FFN, HIDDEN),
                    ("ffn_down", HIDDEN, FFN),
                ]
            } else {
                vec![
                    ("attn_q", qd, HIDDEN),
                    ("attn_k", kvd, HIDDEN),
                    ("attn_v", kvd, HIDDEN),
                    ("attn_output", HIDDEN, qd),
                    ("ffn_gate", FFN, HIDDEN),
                    ("ffn_up", FFN, HIDDEN),
                    ("ffn_down", HIDDEN, FFN),
                ]
            };
            for (p, n_out, n_in) in projs {
                let a = rng.vec(rank * n_in, 0.3);
                let b = rng.vec(n_out * rank, 0.3);
                mats.push((format!("blk.{l}.{p}.weight"), n_out, n_in, a, b));
            }
        }
        Hand {
            arch: spec.arch,
            alpha: 2.0 * rank as f32,
            rank,
            mats,
        }
    }

    fn writer(&self) -> GgufWriter {
        let mut w = GgufWriter::new()
            .meta("general.architecture", Meta::Str(self.arch.into()))
            .meta("general.type", Meta::Str("adapter".into()))
            .meta("adapter.type", Meta::Str("lora".into()))
            .meta("adapter.lora.alpha", Meta::F32(self.alpha));
        for (name, n_out, n_in, a, b) in &self.mats {
            let r = self.rank as u64;
            let bytes = |v: &Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w = w.tensor(&format!("{name}.lora_a"), &[*n_in as u64, r], 0, bytes(a));
            w = w.tensor(&format!("{name}.lora_b"), &[r, *n_out as u64], 0, bytes(b));
        }
        w
    }

    /// The model's weights with `scale · α/r · B·A` added (float64).
    fn merged(&self, t: &Mats, scale: f64) -> Mats {
        let mut t = t.clone();
        let s = scale * self.alpha as f64 / self.rank as f64;
        for (name, n_out, n_in, a, b) in &self.mats {
            let m = t.get_mut(name).expect("base matrix");
            for o in 0..*n_out {
                for i in 0..*n_in {
                    let d: f64 = (0..self.rank)
                        .map(|r| b[o * self.rank + r] as f64 * a[r * n_in + i] as f64)
                        .sum();
                    m.w[o * n_in + i] += s * d;
                }
            }
        }
        t
    }
}

fn load_file(w: &GgufWriter, base: &cordial_model::LoraBase) -> Result<LoraAdapter, String> {
    let path = temp_path("lora.gguf");
    w.write(&path).unwrap();
    let r = LoraAdapter::load(&path, base, 64).map_err(|e| e.to_string());
    std::fs::remove_file(&path).ok();
    r
}

/// Per-position log-probabilities of the tiny model over `tokens()` with `lora`.
fn score(h: &mut Harness, lora: &[LoraUse<'_>]) -> Vec<Vec<f32>> {
    let toks = tokens();
    h.run_lora(&[(0, &toks, 0, lora)], true)
}

fn max_mean(got: &[Vec<f32>], want: &[Vec<f64>]) -> (f64, f64) {
    let (mut max, mut sum, mut n) = (0.0f64, 0.0, 0);
    for (g, w) in got.iter().zip(want) {
        for (a, b) in log_softmax(g).iter().zip(w) {
            let d = (*a as f64 - b).abs();
            max = max.max(d);
            sum += d;
            n += 1;
        }
    }
    (max, sum / n as f64)
}

/// The delta matches merged float64 weights: tightly in f32-activation mode, within int8
/// noise on every ISA; and the adapter moves the output far more than that noise.
fn check_math(spec: Spec) {
    let tiny = build(spec, 5);
    let hand = Hand::random(spec, 4, 77);
    let adapter = load_file(&hand.writer(), tiny.model.lora_base()).expect("load");
    let scale = 0.7;
    let toks = tokens();
    let base_ref = reference(spec, &tiny.t, &toks);
    let want = reference(spec, &hand.merged(&tiny.t, scale as f64), &toks);
    let effect = base_ref
        .iter()
        .zip(&want)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0f64, f64::max);
    let lora = [LoraUse {
        adapter: &adapter,
        scale,
    }];
    let mut model = tiny.model;
    for cx in std::iter::once(Compute::reference(Isa::best_available()))
        .chain(Isa::all_available().into_iter().map(Compute::new))
    {
        let mut h = Harness::new(model, cx, 1, 64);
        let (max, mean) = max_mean(&score(&mut h, &lora), &want);
        eprintln!(
            "{} {:?} f32={}: |Δ| max {max:.2e} mean {mean:.2e}; adapter effect {effect:.2}",
            spec.arch, cx.isa, cx.f32_activations
        );
        if cx.f32_activations {
            assert!(max < 1e-3, "{}: f32 mode vs float64 {max}", spec.arch);
        } else {
            assert!(max < 0.5 && mean < 0.05, "{}: int8 {:?}", spec.arch, cx.isa);
        }
        model = h.model;
    }
    assert!(
        effect > 1.0,
        "the adapter should change the output: {effect}"
    );
}

#[test]
fn llama_delta_matches_merged_weights() {
    check_math(BASE);
}

#[test]
fn llama_q4_0_delta_matches_merged_weights() {
    // Quantized base matrices: the delta rides on the int8 (repacked) matmul.
    check_math(Spec {
        wtype: cordial_model::quant::GgmlType::Q4_0,
        ..BASE
    });
}

#[test]
fn qwen2_delta_with_biases_matches_merged_weights() {
    check_math(Spec {
        arch: "qwen2",
        rope: Rope::Neox,
        qkv_bias: true,
        ..BASE
    });
}

#[test]
fn phi3_fused_delta_matches_merged_weights() {
    check_math(Spec {
        arch: "phi3",
        rope: Rope::Neox,
        fused: true,
        tied: false,
        ..BASE
    });
}

#[test]
fn gemma3_delta_with_post_norms_matches_merged_weights() {
    check_math(Spec {
        arch: "gemma3",
        rope: Rope::Neox,
        gemma: true,
        ..BASE
    });
}

fn tiny_spec(seed: u64) -> LoraSpec {
    let mut s = LoraSpec::llama(LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, HIDDEN / HEADS, seed);
    s.rank = 4;
    s.a_scale = 0.4;
    s.b_scale = 0.4;
    s
}

fn load_spec(s: &LoraSpec, base: &cordial_model::LoraBase, peft: bool) -> LoraAdapter {
    if peft {
        let dir = temp_path("lora-peft");
        s.write_peft(&dir).unwrap();
        let a = LoraAdapter::load(&dir, base, 64).expect("load peft");
        std::fs::remove_dir_all(&dir).ok();
        a
    } else {
        load_file(&s.gguf_writer(), base).expect("load gguf")
    }
}

#[test]
fn scale_zero_is_the_base_bit_for_bit() {
    let tiny = build(BASE, 5);
    let adapter = load_spec(&tiny_spec(1), tiny.model.lora_base(), false);
    let mut h = Harness::new(tiny.model, Compute::best(), 1, 64);
    let base = score(&mut h, &[]);
    let zero = score(
        &mut h,
        &[LoraUse {
            adapter: &adapter,
            scale: 0.0,
        }],
    );
    assert_eq!(base, zero);
    let one = score(
        &mut h,
        &[LoraUse {
            adapter: &adapter,
            scale: 1.0,
        }],
    );
    assert_ne!(base, one);
}

#[test]
fn gguf_and_peft_forms_give_the_same_logits() {
    for f16 in [false, true] {
        let tiny = build(BASE, 5);
        let mut spec = tiny_spec(2);
        spec.f16 = f16;
        let base = tiny.model.lora_base().clone();
        let gguf = load_spec(&spec, &base, false);
        let peft = load_spec(&spec, &base, true);
        assert_eq!(gguf.rank(), 4);
        assert_eq!(gguf.num_mats(), LAYERS * 7);
        assert_ne!(gguf.digest, peft.digest, "digests are of the files");
        let mut h = Harness::new(tiny.model, Compute::best(), 1, 64);
        let use_ = |a| {
            [LoraUse {
                adapter: a,
                scale: 1.0,
            }]
        };
        let g = score(&mut h, &use_(&gguf));
        let p = score(&mut h, &use_(&peft));
        assert_eq!(g, p, "f16 {f16}");
        assert_ne!(g, score(&mut h, &[]));
    }
}

#[test]
fn a_batch_mixing_three_adapters_and_the_base_gives_each_sequence_what_it_gets_alone() {
    let tiny = build(BASE, 5);
    let base = tiny.model.lora_base().clone();
    let ad: Vec<LoraAdapter> = (10..13)
        .map(|s| load_spec(&tiny_spec(s), &base, s == 11))
        .collect();
    let mut model = tiny.model;
    let prompts: [&[u32]; 5] = [
        &[1, 7, 19, 3, 44, 12],
        &[2, 9, 9, 30],
        &[5, 6, 7, 8, 9, 10, 11, 12, 13],
        &[40, 3],
        &[1, 7, 19, 3, 44, 12],
    ];
    let uses: [Vec<LoraUse<'_>>; 5] = [
        vec![LoraUse {
            adapter: &ad[0],
            scale: 1.0,
        }],
        vec![],
        vec![LoraUse {
            adapter: &ad[1],
            scale: 0.5,
        }],
        vec![
            LoraUse {
                adapter: &ad[2],
                scale: 1.0,
            },
            LoraUse {
                adapter: &ad[0],
                scale: -0.25,
            },
        ],
        vec![LoraUse {
            adapter: &ad[0],
            scale: 2.0,
        }],
    ];
    for isa in Isa::all_available() {
        let mut h = Harness::new(model, Compute::new(isa), prompts.len(), 64);
        // Alone: each prompt prefilled, then 3 decode steps, each in its own batch.
        let mut alone = Vec::new();
        for (i, p) in prompts.iter().enumerate() {
            let mut rows = h.run_lora(&[(i, p, 0, &uses[i])], false);
            for step in 0..3 {
                let tok = [(step * 7 + i) as u32 % VOCAB as u32];
                rows.extend(h.run_lora(&[(i, &tok, p.len() + step, &uses[i])], false));
            }
            alone.push(rows);
        }
        // Together: every prefill in one batch, then every decode step in one batch.
        let items: Vec<_> = (0..prompts.len())
            .map(|i| (i, prompts[i], 0, &uses[i][..]))
            .collect();
        let mut together: Vec<Vec<Vec<f32>>> = h
            .run_lora(&items, false)
            .into_iter()
            .map(|r| vec![r])
            .collect();
        for step in 0..3 {
            let toks: Vec<[u32; 1]> = (0..prompts.len())
                .map(|i| [(step * 7 + i) as u32 % VOCAB as u32])
                .collect();
            let items: Vec<_> = (0..prompts.len())
                .rev()
                .map(|i| (i, &toks[i][..], prompts[i].len() + step, &uses[i][..]))
                .collect();
            let rows = h.run_lora(&items, false);
            for (k, row) in rows.into_iter().enumerate() {
                together[prompts.len() - 1 - k].push(row);
            }
        }
        for i in 0..prompts.len() {
            assert!(
                alone[i] == together[i],
                "{isa:?}: sequence {i} differs in a batch"
            );
        }
        assert_ne!(alone[0], alone[4], "scale matters");
        assert_ne!(alone[0], alone[1], "the adapter matters");
        model = h.model;
    }
}

/// An adapter file with one thing wrong → an error whose message contains `needle`.
fn gguf_error(w: GgufWriter, needle: &str) {
    let tiny_base = build(BASE, 5);
    let base = tiny_base.model.lora_base();
    match load_file(&w, base) {
        Ok(_) => panic!("accepted an adapter that should fail with `{needle}`"),
        Err(e) => assert!(e.contains(needle), "`{e}` should mention `{needle}`"),
    }
}

fn with_meta(s: &LoraSpec, skip: &str, extra: &[(&str, Meta)]) -> GgufWriter {
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", Meta::Str(s.arch.clone())),
        ("general.type", Meta::Str("adapter".into())),
        ("adapter.type", Meta::Str("lora".into())),
        ("adapter.lora.alpha", Meta::F32(s.alpha)),
    ] {
        if k != skip {
            w = w.meta(k, v);
        }
    }
    for (k, v) in extra {
        w = w.meta(k, v.clone());
    }
    w
}

fn f32s(n: usize) -> Vec<u8> {
    (0..n)
        .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
        .collect()
}

#[test]
fn malformed_gguf_adapters_are_errors_naming_the_problem() {
    let s = tiny_spec(3);
    let r = s.rank as u64;
    let h = HIDDEN as u64;
    let q = "blk.0.attn_q.weight";
    let pair = |w: GgufWriter, name: &str, a_dims: &[u64], b_dims: &[u64]| {
        let na: u64 = a_dims.iter().product();
        let nb: u64 = b_dims.iter().product();
        w.tensor(&format!("{name}.lora_a"), a_dims, 0, f32s(na as usize))
            .tensor(&format!("{name}.lora_b"), b_dims, 0, f32s(nb as usize))
    };
    let ok = |w: GgufWriter| pair(w, q, &[h, r], &[r, h]);
    gguf_error(ok(with_meta(&s, "general.type", &[])), "general.type");
    gguf_error(
        ok(with_meta(
            &s,
            "general.type",
            &[("general.type", Meta::Str("model".into()))],
        )),
        "expected \"adapter\"",
    );
    gguf_error(
        ok(with_meta(
            &s,
            "adapter.type",
            &[("adapter.type", Meta::Str("ia3".into()))],
        )),
        "only \"lora\"",
    );
    gguf_error(
        ok(with_meta(
            &s,
            "general.architecture",
            &[("general.architecture", Meta::Str("qwen2".into()))],
        )),
        "architecture `qwen2`",
    );
    let m = || with_meta(&s, "", &[]);
    gguf_error(
        m().tensor(&format!("{q}.lora_a"), &[h, r], 0, f32s((h * r) as usize)),
        "blk.0.attn_q.weight.lora_b` is missing",
    );
    gguf_error(
        ok(m()).tensor("blk.0.attn_q.weight.extra", &[h], 0, f32s(h as usize)),
        "blk.0.attn_q.weight.extra",
    );
    gguf_error(
        pair(m(), "blk.9.attn_q.weight", &[h, r], &[r, h]),
        "blk.9.attn_q.weight` does not exist",
    );
    gguf_error(
        pair(m(), "output.weight", &[h, r], &[r, VOCAB as u64]),
        "LoRA on `output.weight` is not supported",
    );
    gguf_error(
        pair(m(), q, &[r, h], &[h, r]),
        "maybe LoRA A/B are transposed",
    );
    gguf_error(pair(m(), q, &[h, r], &[r + 1, h]), "rank");
    gguf_error(
        pair(m(), q, &[h, 128], &[128, h]),
        "above the maximum LoRA rank 64",
    );
    gguf_error(pair(m(), q, &[h, r, 1], &[r, h]), "matrices");
    gguf_error(m(), "no LoRA tensors");
    let q40 = vec![0u8; (h * r / 32 * 18) as usize];
    gguf_error(
        m().tensor(&format!("{q}.lora_a"), &[h, r], 2, q40).tensor(
            &format!("{q}.lora_b"),
            &[r, h],
            0,
            f32s((h * r) as usize),
        ),
        "type Q4_0",
    );
    let mut nan = f32s((h * r) as usize);
    nan[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    gguf_error(
        m().tensor(&format!("{q}.lora_a"), &[h, r], 0, nan).tensor(
            &format!("{q}.lora_b"),
            &[r, h],
            0,
            f32s((h * r) as usize),
        ),
        "non-finite value",
    );
    // Norm vectors are skipped as llama.cpp skips them.
    let tiny = build(BASE, 5);
    let w = ok(m()).tensor("blk.0.attn_norm.weight", &[h], 0, f32s(h as usize));
    assert!(load_file(&w, tiny.model.lora_base()).is_ok());
    // Not a GGUF file, and no file.
    let path = temp_path("not-gguf.gguf");
    std::fs::write(&path, b"hello").unwrap();
    let e = LoraAdapter::load(&path, tiny.model.lora_base(), 64).unwrap_err();
    assert!(e.to_string().contains("not a GGUF file"), "{e}");
    std::fs::remove_file(&path).ok();
    let e = LoraAdapter::load(&path, tiny.model.lora_base(), 64).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

fn peft_error(_s: &LoraSpec, config: Option<String>, weights: Option<Vec<u8>>, needle: &str) {
    let tiny = build(BASE, 5);
    let dir = temp_path("peft-bad");
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(c) = config {
        std::fs::write(dir.join("adapter_config.json"), c).unwrap();
    }
    if let Some(w) = weights {
        std::fs::write(dir.join("adapter_model.safetensors"), w).unwrap();
    }
    let r = LoraAdapter::load(&dir, tiny.model.lora_base(), 64);
    std::fs::remove_dir_all(&dir).ok();
    match r {
        Ok(_) => panic!("accepted a PEFT folder that should fail with `{needle}`"),
        Err(e) => assert!(
            e.to_string().contains(needle),
            "`{e}` should mention `{needle}`"
        ),
    }
}

/// A safetensors file holding `tensors` (name, dtype, shape, bytes).
fn safetensors(tensors: &[(&str, &str, [usize; 2], Vec<u8>)]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut data = Vec::new();
    for (i, (name, dtype, shape, bytes)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{},{}],\"data_offsets\":[{},{}]}}",
            shape[0],
            shape[1],
            data.len(),
            data.len() + bytes.len()
        ));
        data.extend_from_slice(bytes);
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    out
}

#[test]
fn malformed_peft_folders_are_errors_naming_the_problem() {
    let s = tiny_spec(4);
    let good = Some(s.safetensors());
    let cfg = |extra: &str| Some(s.peft_config(extra));
    peft_error(&s, None, good.clone(), "no adapter_config.json");
    peft_error(&s, cfg(""), None, "no adapter_model.safetensors");
    peft_error(&s, Some("{".into()), good.clone(), "adapter_config.json");
    peft_error(&s, cfg("\"use_dora\": true"), good.clone(), "use_dora");
    peft_error(
        &s,
        cfg("\"modules_to_save\": [\"lm_head\"]"),
        good.clone(),
        "modules_to_save",
    );
    peft_error(&s, cfg("\"bias\": \"lora_only\""), good.clone(), "`bias`");
    peft_error(&s, cfg("\"peft_type\": \"IA3\""), good.clone(), "peft_type");
    peft_error(
        &s,
        cfg("\"target_modules\": [\"lm_head\"]"),
        good.clone(),
        "target module `lm_head`",
    );
    peft_error(&s, cfg("\"r\": 0"), good.clone(), "`r`");
    peft_error(
        &s,
        cfg("\"r\": 16"),
        good.clone(),
        "adapter_config.json says r = 16",
    );
    peft_error(&s, cfg(""), Some(b"xx".to_vec()), "too short");
    let (r, h) = (s.rank, HIDDEN);
    let a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
    let b = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    let st = |t: &[(&str, &str, [usize; 2], Vec<u8>)]| Some(safetensors(t));
    peft_error(
        &s,
        cfg(""),
        st(&[(a, "F32", [r, h], f32s(r * h))]),
        "only one of lora_A and lora_B",
    );
    peft_error(
        &s,
        cfg(""),
        st(&[
            (a, "I8", [r, h], vec![0; r * h]),
            (b, "F32", [h, r], f32s(r * h)),
        ]),
        "dtype I8",
    );
    peft_error(
        &s,
        cfg(""),
        st(&[(
            "base_model.model.model.embed_tokens.lora_embedding_A",
            "F32",
            [r, h],
            f32s(r * h),
        )]),
        "lora_embedding_A",
    );
    peft_error(
        &s,
        cfg(""),
        st(&[
            (
                "base_model.model.lm_head.lora_A.weight",
                "F32",
                [r, h],
                f32s(r * h),
            ),
            (
                "base_model.model.lm_head.lora_B.weight",
                "F32",
                [VOCAB, r],
                f32s(r * VOCAB),
            ),
        ]),
        "`output.weight` is not supported",
    );
    peft_error(
        &s,
        cfg(""),
        st(&[
            (a, "F32", [r, h], f32s(r * h)),
            (b, "F32", [h + 1, r], f32s(r * (h + 1))),
        ]),
        "maybe LoRA A/B are transposed",
    );
    // A .bin-only folder names the format.
    let tiny = build(BASE, 5);
    let dir = temp_path("peft-bin");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), s.peft_config("")).unwrap();
    std::fs::write(dir.join("adapter_model.bin"), b"pickle").unwrap();
    let e = LoraAdapter::load(&dir, tiny.model.lora_base(), 64).unwrap_err();
    std::fs::remove_dir_all(&dir).ok();
    assert!(e.to_string().contains("adapter_model.bin"), "{e}");
    // use_rslora changes the scale: alpha/√r instead of alpha/r.
    let dir = temp_path("peft-rs");
    s.write_peft(&dir).unwrap();
    let plain = LoraAdapter::load(&dir, tiny.model.lora_base(), 64).unwrap();
    std::fs::write(
        dir.join("adapter_config.json"),
        s.peft_config("\"use_rslora\": true"),
    )
    .unwrap();
    let rs = LoraAdapter::load(&dir, tiny.model.lora_base(), 64).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let m = |a: &LoraAdapter| a.mat(0, cordial_model::lora::Proj::Q).unwrap().alpha_scale;
    assert_eq!(m(&plain), s.alpha / r as f32);
    assert_eq!(m(&rs), s.alpha / (r as f32).sqrt());
}
