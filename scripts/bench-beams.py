#!/usr/bin/env python3
"""A 4-beam request against 4 independent greedy requests of the same length, one run.

Start the server first (release build), e.g. `target/release/cordial serve --threads 2`, then
  python3 scripts/bench-beams.py [--base http://127.0.0.1:8000] [--tokens 64] [--beams 4] [--rounds 3]

Both sides decode --tokens tokens per sequence (ignore_eos) from the same prompt. Reported:
wall time and tokens/s (beam tokens = beams × tokens), and the peak KV blocks in use while each
ran, polled from /metrics (`cordial_kv_blocks_used`) every 5 ms when the server exposes it.
"""
import argparse, json, statistics, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())

def blocks_used(base):
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("cordial_kv_blocks_used"):
                    return float(line.split()[-1])
    except Exception:
        return None
    return None

def measure(base, fn):
    peak, stop = [0.0], threading.Event()
    def poll():
        while not stop.is_set():
            b = blocks_used(base)
            if b is None:
                peak[0] = None
                return
            peak[0] = max(peak[0], b)
            time.sleep(0.005)
    t = threading.Thread(target=poll); t.start()
    t0 = time.perf_counter(); fn(); dt = time.perf_counter() - t0
    stop.set(); t.join()
    return dt, peak[0]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    prompt = "The best way to learn a new language is"
    beam = {"prompt": prompt, "max_tokens": a.tokens, "ignore_eos": True, "num_beams": a.beams}
    greedy = {"prompt": prompt, "max_tokens": a.tokens, "ignore_eos": True, "temperature": 0}
    post(a.base, dict(greedy, max_tokens=2))
    bt, gt, bp, gp = [], [], [], []
    for _ in range(a.rounds):
        dt, peak = measure(a.base, lambda: post(a.base, beam))
        bt.append(dt); bp.append(peak)
        with ThreadPoolExecutor(a.beams) as ex:
            dt, peak = measure(a.base, lambda: list(ex.map(lambda _: post(a.base, greedy), range(a.beams))))
        gt.append(dt); gp.append(peak)
    n = a.beams * a.tokens
    b, g = statistics.median(bt), statistics.median(gt)
    print(f"{a.beams} beams x {a.tokens} tokens: {b:.2f} s, {n / b:.1f} beam-tok/s, peak KV blocks {max(bp) if None not in bp else 'n/a'}")
    print(f"{a.beams} greedy requests x {a.tokens} tokens: {g:.2f} s, {n / g:.1f} tok/s, peak KV blocks {max(gp) if None not in gp else 'n/a'}")
    print(f"ratio beams/greedy throughput: {g / b:.3f}")

if __name__ == "__main__":
    main()
