#!/usr/bin/env python3
"""long-context-client.py - one long-prompt completion at a time against an OpenAI-style
/v1/completions endpoint (cordial or llama-server), streamed, stdlib only.

The prompt is a list of token ids (random, distinct per run, so no prompt cache can help),
sent as the `prompt` array both servers accept; `ignore_eos` makes every run generate exactly
--max-tokens tokens. Per run it reports the prefill rate (prompt tokens / time to the first
token) and the decode rate ((max tokens - 1) / time from the first to the last streamed
chunk), then the medians, as one JSON line on stdout.

  long-context-client.py --port 8000 --prompt-tokens 7264 --max-tokens 64 --runs 3 \
      --vocab 1000:40000
"""
import argparse
import http.client
import json
import random
import statistics
import sys
import time


def one_run(port, prompt, max_tokens, timeout):
    body = json.dumps({
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
    })
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    stamps = []
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        ev = json.loads(data)
        if any(ch.get("text") for ch in ev.get("choices", [])):
            stamps.append(time.perf_counter())
    conn.close()
    if len(stamps) < 2:
        raise RuntimeError(f"only {len(stamps)} streamed chunks")
    ttft = stamps[0] - t0
    # ignore_eos: exactly max_tokens tokens, the first one in the first chunk.
    decode = (max_tokens - 1) / (stamps[-1] - stamps[0])
    return ttft, decode, len(stamps)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--prompt-tokens", type=int, required=True)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--vocab", default="1000:40000", help="token ids drawn from LO:HI")
    p.add_argument("--first-token", type=int, default=None, help="token id put first (BOS)")
    p.add_argument("--seed", default="lc")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--label", default="")
    a = p.parse_args()
    lo, hi = (int(x) for x in a.vocab.split(":"))
    prefill, decode = [], []
    for r in range(a.runs):
        rng = random.Random(f"{a.seed}|{a.prompt_tokens}|{r}|{time.time_ns()}")
        prompt = [rng.randrange(lo, hi) for _ in range(a.prompt_tokens)]
        if a.first_token is not None:
            prompt[0] = a.first_token
        ttft, dec, n = one_run(a.port, prompt, a.max_tokens, a.timeout)
        prefill.append(a.prompt_tokens / ttft)
        decode.append(dec)
        print(f"# {a.label} run {r}: prefill {prefill[-1]:.1f} tok/s (ttft {ttft:.2f} s), "
              f"decode {dec:.1f} tok/s over {n} tokens", file=sys.stderr, flush=True)
    print(json.dumps({
        "label": a.label,
        "prompt_tokens": a.prompt_tokens,
        "max_tokens": a.max_tokens,
        "prefill_tok_s": [round(x, 1) for x in prefill],
        "decode_tok_s": [round(x, 1) for x in decode],
        "prefill_median": round(statistics.median(prefill), 1),
        "decode_median": round(statistics.median(decode), 1),
    }), flush=True)


if __name__ == "__main__":
    main()
