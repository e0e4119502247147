#!/usr/bin/env python3
"""Multi-LoRA throughput: aggregate generated tokens/s at a fixed concurrency, all requests on
the base model vs a mix of adapters (request i uses adapter i mod k), on cordial and on
llama.cpp's llama-server serving the same adapter files.

Adapters: k seeded rank-8 adapters over every projection of the default model, written by the
test helper `write_reference_adapter` (crates/model/tests/golden_lora.rs) with seeds 1..k.
cordial selects them by name (`--lora-modules aI=PATH`, `"model": "aI"`); llama-server loads
them all (`--lora PATH ...`, `--lora-init-without-apply`) and takes llama.cpp's per-request
`"lora": [{"id": I, "scale": 1}]` (it splits a batch whose requests use different adapters).

Usage: scripts/bench-lora.py CORDIAL_BINARY LLAMA_SERVER_BINARY [--concurrency 16]
       [--requests 32] [--max-tokens 64] [--adapters 4] [--threads 2]
Run it on a quiet machine (e.g. under `chrt -f 50`).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the of and to in is was for that on as with by he at from his it an were are which "
         "this be or had but not have they first one their all also new after who two has been "
         "its more her other when she time there into years would school over only most some").split()


def post(url, body, timeout=900):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait_ready(base, proc):
    for _ in range(1200):
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.returncode}")
        try:
            if urllib.request.urlopen(base + "/health", timeout=2).status == 200:
                return
        except Exception:
            pass
        time.sleep(0.25)
    sys.exit("server not ready")


def prompt(i, n_words=48):
    return " ".join(WORDS[(i * 7 + j * 13) % len(WORDS)] for j in range(n_words))


def run(url, extras, args):
    """Aggregate completion tokens / wall time; request i gets extras[i % len(extras)]."""
    lock = threading.Lock()
    state = {"next": 0, "tokens": 0, "errors": 0}

    def worker():
        while True:
            with lock:
                i = state["next"]
                if i >= args.requests:
                    return
                state["next"] += 1
            body = {"prompt": prompt(i), "max_tokens": args.max_tokens, "temperature": 0,
                    "ignore_eos": True, **extras[i % len(extras)]}
            try:
                r = post(url, body)
                n = r["usage"]["completion_tokens"]
                with lock:
                    state["tokens"] += n
            except Exception as e:  # counted, reported
                print("error:", e, file=sys.stderr)
                with lock:
                    state["errors"] += 1

    # Warm-up: one request per distinct body kind.
    for e in extras:
        post(url, {"prompt": "warm up", "max_tokens": 4, "temperature": 0, **e})
    t0 = time.time()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.time() - t0
    return state["tokens"] / dt, state["errors"], dt


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cordial")
    p.add_argument("llama_server")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-llama", action="store_true")
    args = p.parse_args()
    model = subprocess.check_output([args.cordial, "fetch-model"], text=True).strip().splitlines()[-1]
    tmp = tempfile.mkdtemp()
    paths = []
    for k in range(args.adapters):
        path = os.path.join(tmp, f"a{k}.gguf")
        subprocess.check_call(
            ["cargo", "test", "-q", "-p", "cordial-model", "--test", "golden_lora", "--",
             "--ignored", "--exact", "write_reference_adapter"],
            cwd=ROOT, stdout=subprocess.DEVNULL,
            env={**os.environ, "CORDIAL_LORA_OUT": path, "CORDIAL_LORA_SEED": str(k + 1)})
        paths.append(path)
    results = {}
    port = 18941
    base = f"http://127.0.0.1:{port}"
    cmd = [args.cordial, "serve", "--model", model, "--port", str(port), "--threads",
           str(args.threads), "--max-num-seqs", str(args.concurrency), "--max-loras",
           str(args.adapters), "--lora-modules"] + [f"a{k}={p}" for k, p in enumerate(paths)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(base, proc)
        url = base + "/v1/completions"
        results["cordial base"] = run(url, [{}], args)
        results["cordial mix"] = run(url, [{"model": f"a{k}"} for k in range(args.adapters)], args)
    finally:
        proc.terminate()
        proc.wait()
    if not args.skip_llama:
        port += 1
        base = f"http://127.0.0.1:{port}"
        cmd = [args.llama_server, "-m", model, "--host", "127.0.0.1", "--port", str(port),
               "-t", str(args.threads), "-np", str(args.concurrency), "-c",
               str(args.concurrency * 256), "--no-webui", "--lora-init-without-apply"]
        for p_ in paths:
            cmd += ["--lora", p_]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(base, proc)
            url = base + "/v1/completions"
            results["llama-server base"] = run(url, [{}], args)
            mix = [{"lora": [{"id": k, "scale": 1.0}]} for k in range(args.adapters)]
            results["llama-server mix"] = run(url, mix, args)
        finally:
            proc.terminate()
            proc.wait()
    print(f"concurrency {args.concurrency}, {args.requests} requests x {args.max_tokens} tokens, "
          f"{args.adapters} adapters (rank 8, every projection), {args.threads} threads")
    for k, (tps, errors, dt) in results.items():
        print(f"{k:20s} {tps:8.1f} tok/s  ({dt:.1f} s, {errors} errors)")
    if "cordial mix" in results:
        print(f"cordial mix / base: {results['cordial mix'][0] / results['cordial base'][0]:.3f}")
    if "llama-server mix" in results:
        print(f"llama-server mix / base: "
              f"{results['llama-server mix'][0] / results['llama-server base'][0]:.3f}")
        print(f"cordial mix / llama-server mix: "
              f"{results['cordial mix'][0] / results['llama-server mix'][0]:.3f}")


if __name__ == "__main__":
    main()
