#!/usr/bin/env python3
"""Exact-math golden data: a float64 numpy forward pass (llama, or gemma3) over the
dequantized GGUF weights, teacher-forced on llama.cpp's reference prompts (no int8 activation
quantization, no f16 rounding). Writes, per prompt and step, the top-8 (id, logprob) pairs.

Why: llama.cpp's own int8 arithmetic deviates from exact math by up to ~0.4 nats on this small
model, so an exact reference pins down the model's math while the llama.cpp fixtures pin down
agreement with llama.cpp. Needs `pip install numpy gguf`. Usage:
    scripts/make-exact-reference.py MODEL.gguf crates/model/tests/fixtures/smollm2-135m-instruct-q4_1/greedy.jsonl OUT.jsonl
    scripts/make-exact-reference.py gemma-3-270m-q4_k_m.gguf crates/model/tests/fixtures/gemma3-270m-q4_k_m/greedy.jsonl OUT.jsonl
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def top8(lg, prompt, w):
    m = lg.max(-1, keepdims=True)
    lp = lg - (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))
    steps = []
    for row in lp:
        top = np.argsort(-row)[:8]
        steps.append([[int(i), round(float(row[i]), 5)] for i in top])
    w.write(json.dumps({"prompt": prompt, "steps": steps}) + "\n")
    print(prompt[:40], file=sys.stderr)


def gemma3(r, greedy, out):
    """llama.cpp's gemma3 graph: embeddings × √D, QK-norm, NEOX rope (base 10000 on sliding
    layers, rope.freq_base on every 6th), attention scale 1/√head_dim, post-norms, GELU-tanh."""
    field = lambda k: r.fields[k].contents()
    L = field("gemma3.block_count")
    H = field("gemma3.attention.head_count")
    KV = field("gemma3.attention.head_count_kv")
    D = field("gemma3.embedding_length")
    HD = field("gemma3.attention.key_length")
    base = float(field("gemma3.rope.freq_base"))
    window = field("gemma3.attention.sliding_window")
    eps = float(field("gemma3.attention.layer_norm_rms_epsilon"))
    T = {t.name: t for t in r.tensors}

    def W(name, dtype=np.float64):
        t = T[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=dtype)

    emb = W("token_embd.weight", np.float32)  # 262144 × D: kept in f32, used in f64 chunks
    names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
             "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
    layers = [{n: W(f"blk.{l}.{n}.weight") for n in names} for l in range(L)]
    onorm = W("output_norm.weight")

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, pos, b):  # NEOX mode: element i paired with i + HD/2
        i = np.arange(HD // 2)
        theta = pos[:, None] * b ** (-2.0 * i / HD)
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, bb = x[..., : HD // 2], x[..., HD // 2:]
        return np.concatenate([a * c - bb * s, a * s + bb * c], -1)

    gelu = lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    with open(greedy) as f, open(out, "w") as w:
        for line in f:
            case = json.loads(line)
            ids = case["prompt_ids"] + case["ids"][:-1]
            n = len(ids)
            pos = np.arange(n, dtype=np.float64)
            x = emb[ids].astype(np.float64) * np.sqrt(np.float32(D))
            qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
            full = np.where(ki > qi, -np.inf, 0.0)
            local = np.where((ki > qi) | (qi - ki >= window), -np.inf, 0.0)
            for li, ly in enumerate(layers):
                is_local = li % 6 < 5
                b = 10000.0 if is_local else base
                mask = local if is_local else full
                h = rms(x, ly["attn_norm"])
                q = rope(rms((h @ ly["attn_q"].T).reshape(n, H, HD), ly["attn_q_norm"]), pos, b)
                k = rope(rms((h @ ly["attn_k"].T).reshape(n, KV, HD), ly["attn_k_norm"]), pos, b)
                v = (h @ ly["attn_v"].T).reshape(n, KV, HD)
                att = np.zeros((n, H, HD))
                for hh in range(H):
                    g = hh // (H // KV)
                    sc = q[:, hh, :] @ k[:, g, :].T / np.sqrt(HD) + mask
                    sc = np.exp(sc - sc.max(-1, keepdims=True))
                    sc /= sc.sum(-1, keepdims=True)
                    att[:, hh, :] = sc @ v[:, g, :]
                x = x + rms(att.reshape(n, H * HD) @ ly["attn_output"].T, ly["post_attention_norm"])
                h = rms(x, ly["ffn_norm"])
                f_ = (gelu(h @ ly["ffn_gate"].T) * (h @ ly["ffn_up"].T)) @ ly["ffn_down"].T
                x = x + rms(f_, ly["post_ffw_norm"])
            start = len(case["prompt_ids"]) - 1
            xn = rms(x[start:], onorm)
            lg = np.concatenate([xn @ emb[c:c + 32768].astype(np.float64).T
                                 for c in range(0, emb.shape[0], 32768)], -1)
            top8(lg, case["prompt"], w)


def main(model, greedy, out):
    r = GGUFReader(model)
    field = lambda k: r.fields[k].contents()
    arch = field("general.architecture")
    if arch == "gemma3":
        return gemma3(r, greedy, out)
    assert arch == "llama", arch
    L = field("llama.block_count")
    H = field("llama.attention.head_count")
    KV = field("llama.attention.head_count_kv")
    D = field("llama.embedding_length")
    HD = D // H
    base = float(field("llama.rope.freq_base"))
    eps = float(field("llama.attention.layer_norm_rms_epsilon"))
    T = {t.name: t for t in r.tensors}

    def W(name):
        t = T[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64)

    emb = W("token_embd.weight")
    out_w = W("output.weight") if "output.weight" in T else emb
    names = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
    layers = [{n: W(f"blk.{l}.{n}.weight") for n in names} for l in range(L)]
    onorm = W("output_norm.weight")

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, pos):  # llama.cpp NORM mode: adjacent pairs
        i = np.arange(HD // 2)
        theta = pos[:, None] * base ** (-2.0 * i / HD)
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        o = np.empty_like(x)
        o[..., 0::2] = a * c - b * s
        o[..., 1::2] = a * s + b * c
        return o

    with open(greedy) as f, open(out, "w") as w:
        for line in f:
            case = json.loads(line)
            ids = case["prompt_ids"] + case["ids"][:-1]
            n = len(ids)
            pos = np.arange(n, dtype=np.float64)
            x = emb[ids]
            mask = np.triu(np.full((n, n), -np.inf), 1)
            for ly in layers:
                h = rms(x, ly["attn_norm"])
                q = rope((h @ ly["attn_q"].T).reshape(n, H, HD), pos)
                k = rope((h @ ly["attn_k"].T).reshape(n, KV, HD), pos)
                v = (h @ ly["attn_v"].T).reshape(n, KV, HD)
                att = np.zeros((n, H, HD))
                for hh in range(H):
                    g = hh // (H // KV)
                    sc = q[:, hh, :] @ k[:, g, :].T / np.sqrt(HD) + mask
                    sc = np.exp(sc - sc.max(-1, keepdims=True))
                    sc /= sc.sum(-1, keepdims=True)
                    att[:, hh, :] = sc @ v[:, g, :]
                x = x + att.reshape(n, D) @ ly["attn_output"].T
                h = rms(x, ly["ffn_norm"])
                g_ = h @ ly["ffn_gate"].T
                x = x + (g_ / (1 + np.exp(-g_)) * (h @ ly["ffn_up"].T)) @ ly["ffn_down"].T
            start = len(case["prompt_ids"]) - 1
            lg = rms(x[start:], onorm) @ out_w.T
            m = lg.max(-1, keepdims=True)
            lp = lg - (m + np.log(np.exp(lg - m).sum(-1, keepdims=True)))
            steps = []
            for row in lp:
                top = np.argsort(-row)[:8]
                steps.append([[int(i), round(float(row[i]), 5)] for i in top])
            w.write(json.dumps({"prompt": case["prompt"], "steps": steps}) + "\n")
            print(case["prompt"][:40], file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
