#!/usr/bin/env python3
"""Cost of the decoding controls: decode tok/s of one stream with every penalty, no_repeat_ngram
and bad_words on, against plain greedy, in pairs on one running server (loopback only).

Usage: scripts/bench-controls.py [--port 8000] [--pairs 5] [--tokens 256]
Start the server first, e.g. target/release/cordial serve --threads 2 --port 8000.
"""
import argparse
import json
import statistics
import time
import urllib.request


def complete(port, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=256)
    a = ap.parse_args()
    base = {"prompt": "Write a long story about a lighthouse keeper and the sea.", "max_tokens": a.tokens,
            "temperature": 0, "ignore_eos": True}
    controls = dict(base, repetition_penalty=1.2, frequency_penalty=0.5, presence_penalty=0.5,
                    no_repeat_ngram=3, bad_words=[" very", " really", "the sea"], min_p=0.05)
    complete(a.port, dict(base, max_tokens=8))  # warm-up
    plain, ctrl = [], []
    for i in range(a.pairs):
        order = [(base, plain), (controls, ctrl)] if i % 2 == 0 else [(controls, ctrl), (base, plain)]
        for body, sink in order:
            out, dt = complete(a.port, body)
            n = out["usage"]["completion_tokens"]
            sink.append(n / dt)
    p, c = statistics.median(plain), statistics.median(ctrl)
    print(json.dumps({"plain_tok_s": [round(x, 1) for x in plain], "controls_tok_s": [round(x, 1) for x in ctrl],
                      "median_plain": round(p, 1), "median_controls": round(c, 1),
                      "slowdown_pct": round(100 * (1 - c / p), 1)}))


if __name__ == "__main__":
    main()
