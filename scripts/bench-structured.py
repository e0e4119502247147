#!/usr/bin/env python3
"""Decode speed of a constrained request against the same unconstrained request, one run.

Start the server first (release build), e.g.
  target/release/cordial serve --threads 2
then: python3 scripts/bench-structured.py [--base http://127.0.0.1:8000] [--pairs 5] [--tokens 128]

Both requests decode exactly --tokens tokens from the same prompt: the unconstrained one with
`ignore_eos`, the constrained one under a regex that cannot end sooner (a long run of letters,
digits, spaces and punctuation), and under a JSON schema with one long string. Pairs alternate;
medians of output tok/s are reported with the ratio.
"""
import argparse, json, statistics, time, urllib.request

def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        v = json.loads(r.read())
    dt = time.perf_counter() - t
    return v["usage"]["completion_tokens"], dt

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    a = ap.parse_args()
    prompt = "Write a long story about a dragon who learns to cook:"
    base = {"prompt": prompt, "max_tokens": a.tokens, "temperature": 0.8, "seed": 1}
    formats = {
        "regex": {"type": "regex", "schema": "[A-Za-z0-9 ,.;:'!?-]{4000}"},
        "json": {"type": "json_schema", "json_schema": {"schema": {
            "type": "object", "properties": {"story": {"type": "string", "minLength": 4000}},
            "required": ["story"]}}},
    }
    post(a.base, dict(base, max_tokens=4))  # warm up
    plain, con = [], {k: [] for k in formats}
    for _ in range(a.pairs):
        n, dt = post(a.base, dict(base, ignore_eos=True))
        plain.append(n / dt)
        for k, f in formats.items():
            n2, dt2 = post(a.base, dict(base, response_format=f))
            assert n2 == a.tokens, f"{k}: constrained request ended after {n2} tokens"
            con[k].append(n2 / dt2)
    p = statistics.median(plain)
    print(f"unconstrained: {p:.1f} tok/s (median of {a.pairs}, {a.tokens} tokens each)")
    for k, v in con.items():
        c = statistics.median(v)
        print(f"constrained ({k}): {c:.1f} tok/s, ratio {c / p:.3f} ({(1 - c / p) * 100:+.1f}% slower)")

if __name__ == "__main__":
    main()
