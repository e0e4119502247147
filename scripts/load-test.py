#!/usr/bin/env python3
"""Load test of a cordial server on loopback (Python standard library only).

Starts `cordial serve` (the release binary, default model) on a free port, sends a fixed number
of mixed completion requests (prompt lengths, max_tokens, n, sampling settings, streamed or not,
some invalid) from a fixed number of concurrent clients, and hangs up on a fraction of them at a
random point (before the answer, or after a few stream events). Then it waits for the server to
go idle and reads /metrics.

Pass criteria (exit status 1 otherwise): zero 5xx (and no server_error event in a stream), zero
broken connections, zero KV blocks still in use once idle, and flat memory: the measured
requests run in --rounds rounds, and RSS after the last round is not more than --rss-slack-mib
above RSS after the middle one (the KV cache, allocated zeroed, becomes resident as its blocks
are first used, so RSS rises during the first rounds up to about model + cache).

    python3 scripts/load-test.py                      # full run: 2000 requests, concurrency 32
    python3 scripts/load-test.py --requests 300       # a shorter run
    python3 scripts/load-test.py --base http://127.0.0.1:8000 --pid PID   # an existing server
"""

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request

WORDS = ("the capital of France is Paris and the river Seine runs through it while "
         "people walk along the old stone bridges in spring").split()
# Longer than two 16-token KV blocks, so requests that share it hit the prefix cache.
SHARED_PREFIX = ("You are a helpful assistant for travellers in Europe. Answer briefly and precisely, "
                 "in plain English, without lists, and say so when you do not know the answer. ")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.status, r.read().decode()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def make_job(rng):
    """A request body, and when to hang up: None, 'early' (before the answer), or k events."""
    n_words = rng.choice([1, 4, 16, 64, 200])
    prompt = " ".join(rng.choice(WORDS) for _ in range(n_words))
    if rng.random() < 0.3:
        prompt = SHARED_PREFIX + prompt  # exercises the prefix cache
    body = {"prompt": prompt, "max_tokens": rng.randint(1, 48), "stream": rng.random() < 0.5}
    kind = rng.randrange(6)
    if kind == 0:
        body["n"] = rng.randint(1, 3)
    elif kind == 1:
        body["temperature"] = 0
    elif kind == 2:
        body["top_p"] = 0.9
        body["seed"] = rng.randrange(1000)
    elif kind == 3:
        body["top_k"] = rng.randint(1, 40)
    elif kind == 4:
        body["prompt"] = [prompt, "Once upon a time"]
    if rng.random() < 0.1:
        body["top_p"] = 7  # invalid: 422
    hang_up = None
    if rng.random() < 0.2:
        hang_up = "early" if rng.random() < 0.3 else rng.randint(1, 4)
        if not body["stream"]:
            hang_up = "early"  # a JSON answer comes whole: hang up while it is generated
    return body, hang_up


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.status = {}
        self.hung_up = 0
        self.broken = 0
        self.stream_errors = 0
        self.latencies = []
        self.ttfts = []

    def add(self, **kw):
        with self.lock:
            if "status" in kw:
                self.status[kw["status"]] = self.status.get(kw["status"], 0) + 1
            self.hung_up += kw.get("hung_up", 0)
            self.broken += kw.get("broken", 0)
            self.stream_errors += kw.get("stream_error", 0)
            if "latency" in kw:
                self.latencies.append(kw["latency"])
            if "ttft" in kw:
                self.ttfts.append(kw["ttft"])


def run_one(host, port, body, hang_up, rng, tally, api_key):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    start = time.monotonic()
    try:
        conn.request("POST", "/v1/completions", body=data, headers=headers)
        if hang_up == "early":
            time.sleep(rng.random() * 1.0)
            conn.sock.close()
            tally.add(hung_up=1)
            return
        resp = conn.getresponse()
        status = resp.status
        if status != 200 or not body.get("stream"):
            text = resp.read()
            tally.add(status=status)
            if status == 200:
                tally.add(latency=time.monotonic() - start)
            if status >= 500:
                print(f"{status}: {text[:300]!r}", file=sys.stderr)
            return
        events = 0
        first = None
        while True:
            line = resp.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                events += 1
                if first is None:
                    first = time.monotonic() - start
                if b'"server_error"' in line:
                    tally.add(stream_error=1)
                if line.strip() == b"data: [DONE]":
                    break
                if isinstance(hang_up, int) and events >= hang_up:
                    conn.sock.close()
                    tally.add(status=200, hung_up=1)
                    return
        tally.add(status=200, latency=time.monotonic() - start, ttft=first or 0.0)
    except (ConnectionError, http.client.HTTPException, OSError) as e:
        tally.add(broken=1)
        print(f"broken connection: {e!r} for {json.dumps(body)[:200]}", file=sys.stderr)
    finally:
        conn.close()


def run_round(host, port, count, concurrency, seed, api_key):
    tally = Tally()
    counter = iter(range(count))
    lock = threading.Lock()

    def worker(w):
        rng = random.Random(seed * 1000 + w)
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            body, hang_up = make_job(rng)
            run_one(host, port, body, hang_up, rng, tally, api_key)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return tally, time.monotonic() - started


def wait_idle(base, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        _, text = get(base, "/metrics")
        busy = (metric(text, "cordial_running_sequences"), metric(text, "cordial_queue_depth"),
                metric(text, "cordial_requests_in_flight"))
        if busy == (0.0, 0.0, 1.0):  # only this scrape is in flight
            return text
        if time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=100, help="requests before the RSS baseline")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "cordial"))
    ap.add_argument("--base", help="use a running server instead of starting one")
    ap.add_argument("--pid", type=int, help="the running server's pid (for RSS)")
    ap.add_argument("--api-key", default=os.environ.get("CORDIAL_LOAD_API_KEY"))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--rss-slack-mib", type=float, default=64.0,
                    help="allowed RSS growth over the second half of the rounds")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    proc = None
    if args.base:
        base, pid = args.base.rstrip("/"), args.pid
    else:
        port = free_port()
        log = open(f"/tmp/cordial-load-{port}.log", "w")
        binary = os.environ.get("CARGO_TARGET_DIR") and os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "cordial")
        binary = binary if binary and os.path.exists(binary) else args.binary
        proc = subprocess.Popen([binary, "serve", "--port", str(port), "--max-num-seqs", "32",
                                 "--max-waiting", "512"], stdout=subprocess.DEVNULL, stderr=log)
        base, pid = f"http://127.0.0.1:{port}", proc.pid
        deadline = time.monotonic() + 300
        while True:
            try:
                if get(base, "/health")[0] == 200:
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the server did not start; see {log.name}")
            time.sleep(0.2)
    host, port = base.split("//")[1].split(":")
    port = int(port)
    try:
        rss_loaded = rss_kib(pid) if pid else 0
        warm, _ = run_round(host, port, args.warmup, args.concurrency, args.seed + 7, args.api_key)
        wait_idle(base)
        rss_warm = rss_kib(pid) if pid else 0
        # The measured requests in --rounds equal rounds, idle in between: RSS after each shows
        # whether memory settles (the KV cache's pages become resident as blocks are first used,
        # up to --kv-cache-tokens) or keeps growing.
        tally, wall, rss_rounds = Tally(), 0.0, []
        per_round = [args.requests // args.rounds + (i < args.requests % args.rounds) for i in range(args.rounds)]
        for i, count in enumerate(per_round):
            t, w = run_round(host, port, count, args.concurrency, args.seed + i, args.api_key)
            wall += w
            for k, v in t.status.items():
                tally.status[k] = tally.status.get(k, 0) + v
            tally.hung_up += t.hung_up
            tally.broken += t.broken
            tally.stream_errors += t.stream_errors
            tally.latencies += t.latencies
            tally.ttfts += t.ttfts
            text = wait_idle(base)
            rss_rounds.append(round(rss_kib(pid) / 1024, 1) if pid else 0)
            print(f"round {i + 1}/{args.rounds}: {count} requests in {w:.0f} s, "
                  f"KV blocks used when idle {metric(text, 'cordial_kv_blocks_used'):.0f}, "
                  f"RSS {rss_rounds[-1]} MiB", file=sys.stderr, flush=True)
        rss_end = rss_kib(pid) if pid else 0
        used = metric(text, "cordial_kv_blocks_used")
        total = metric(text, "cordial_kv_blocks_total")
        fivexx = sum(v for k, v in tally.status.items() if k >= 500) + sum(
            v for k, v in warm.status.items() if k >= 500)
        figures = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "wall_s": round(wall, 1),
            "requests_per_s": round(args.requests / wall, 2),
            "status_counts": {str(k): v for k, v in sorted(tally.status.items())},
            "hung_up": tally.hung_up,
            "broken_connections": tally.broken + warm.broken,
            "stream_error_events": tally.stream_errors + warm.stream_errors,
            "5xx": fivexx,
            "latency_s": {p: round(pct(tally.latencies, int(p[1:])), 3) for p in ("p50", "p95", "p99")},
            "ttft_stream_s": {p: round(pct(tally.ttfts, int(p[1:])), 3) for p in ("p50", "p95", "p99")},
            "completed_200": len(tally.latencies),
            "kv_blocks_total": total,
            "kv_blocks_leaked": used,
            "rss_mib": {"loaded": round(rss_loaded / 1024, 1), "after_warmup": round(rss_warm / 1024, 1),
                        "after_each_round": rss_rounds, "after_run": round(rss_end / 1024, 1)},
            "prefix_cache_hit_rate": round(metric(text, "cordial_prefix_cache_hit_rate"), 3),
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(figures, f, indent=2)
        failed = []
        if fivexx or figures["stream_error_events"]:
            failed.append("server errors")
        if figures["broken_connections"]:
            failed.append("broken connections")
        if used != 0:
            failed.append(f"{used} KV blocks leaked")
        half = rss_rounds[(len(rss_rounds) - 1) // 2] if rss_rounds else 0
        if pid and rss_rounds and rss_rounds[-1] - half > args.rss_slack_mib:
            failed.append(f"resident memory still growing: {half} -> {rss_rounds[-1]} MiB")
        if failed:
            sys.exit("FAILED: " + ", ".join(failed))
        print("OK")
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
