#!/usr/bin/env python3
"""cordial replicas on 127.0.0.1 behind real routers (run by run.sh, which sets up the venv).

For each router setup: start N fresh replicas (KV events on), the router, one KV-event
subscriber per replica; send the shared-prefix workload; report every request's status, the
prefix-cache hit rate summed from the replicas' own /metrics, requests per replica, and the
subscriber's check (its live block set = the replica's cached blocks once idle; every hash
recomputed from token ids; no sequence gap). Then a failover run: one replica is SIGKILLed
mid-run by its pid and restarted; what the client saw, whether the router routed around it and
whether the restarted replica got requests again after its /health turned 200.

Everything is bounded (timeouts on every wait and request) and stops by itself.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from kv_subscriber import Subscriber

MODEL = "cordial-scale-out"
HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # noqa: BLE001 - connection refused/reset, timeouts
        return 0, repr(e).encode()


def wait_until(pred, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return time.time()
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def metrics(base):
    status, body = http("GET", base + "/metrics", timeout=10)
    out = {}
    if status != 200:
        return out
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def metric(m, name, extra=""):
    sep = "," if extra else ""
    return m.get(f'{name}{{model_name="{MODEL}",engine="0"{sep}{extra}}}', 0.0)


class Replica:
    def __init__(self, args, i, layout):
        self.args, self.i, self.layout = args, i, layout
        self.port, self.kv_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.kv_endpoint = f"tcp://127.0.0.1:{self.kv_port}"
        self.proc = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"cordial-replica{i}-", suffix=".log",
                                               delete=False)

    def start(self):
        cmd = [self.args.bin, "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", MODEL, "--threads", str(self.args.threads),
               "--kv-cache-tokens", str(self.args.kv_cache_tokens),
               "--kv-events-endpoint", self.kv_endpoint,
               "--kv-events-layout", self.layout,
               # vLLM's default topic, the empty one: vllm-router's static sources
               # (`--kv-event-source URL=ENDPOINT`) take only frames whose topic is exactly "".
               "--kv-events-topic", ""]
        if self.args.model:
            cmd += ["-m", self.args.model]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def healthy(self):
        return http("GET", self.base + "/health", timeout=2)[0] == 200

    def kill(self):
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def workload(args):
    """Shared-prefix families: each a long instruction block, then distinct questions."""
    rnd = random.Random(args.seed)
    words = ("system context policy record archive ledger figure river mountain harbor "
             "lantern engine orchard meadow signal beacon canyon glacier summit").split()
    families = []
    for f in range(args.families):
        body = " ".join(rnd.choice(words) for _ in range(args.prefix_words))
        families.append(f"Family {f} instructions: {body}.\n")
    reqs = []
    for f in range(args.families):
        for q in range(args.per_family):
            reqs.append((f, families[f] + f"Question {q}: what is item {rnd.randint(0, 999)}?"))
    rnd.shuffle(reqs)
    return reqs


def send_all(url, reqs, concurrency, max_tokens, stream=False, on_done=None):
    results = []
    lock = threading.Lock()

    def one(item):
        _, prompt = item
        t = time.time()
        body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        if stream:
            body["stream"] = True
        status, body = http("POST", url + "/v1/completions", body, timeout=120)
        if stream and status == 200 and b"data: [DONE]" not in body:
            status = -1  # the stream ended without its terminator
        with lock:
            results.append((t, time.time(), status))
            if on_done:
                on_done(len(results))
        return status

    with cf.ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, reqs))
    return results


def start_router(args, kind, policy, replicas, log):
    port = free_port()
    urls = [r.base for r in replicas]
    env = dict(os.environ)
    if kind == "envoy":
        cfg = envoy_config(port, replicas)
        path = os.path.join(tempfile.mkdtemp(prefix="cordial-envoy-"), "envoy.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        cmd = [os.path.join(args.venv, "bin", "envoy"), "-c", path, "--log-level", "warn",
               "--base-id", str(port)]
    else:
        cmd = [os.path.join(args.venv, "bin", "vllm-router"), "--host", "127.0.0.1",
               "--port", str(port), "--policy", policy, "--worker-urls", *urls,
               "--prometheus-port", str(free_port()),
               "--health-check-interval-secs", "1", "--health-failure-threshold", "1",
               "--health-success-threshold", "1", "--health-check-timeout-secs", "2",
               "--worker-startup-timeout-secs", "120", "--worker-startup-check-interval", "1",
               "--log-level", os.environ.get("ROUTER_LOG", "warning")]
        if policy == "kv_aware":
            env["VLLM_ROUTER_TOKENIZER"] = args.tokenizer
            env["VLLM_ROUTER_MODEL"] = MODEL
            for r in replicas:
                cmd += ["--kv-event-source", f"{r.base}={r.kv_endpoint}"]
            cmd += ["--kv-event-block-size", "16", "--kv-event-model", os.environ.get("KV_EVENT_MODEL", MODEL)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    return proc, base


def envoy_config(port, replicas):
    """Envoy as a plain HTTP proxy: round robin over the replicas, active /health checks."""
    endpoints = [{"endpoint": {"address": {"socket_address": {
        "address": "127.0.0.1", "port_value": r.port}}}} for r in replicas]
    return {
        "static_resources": {
            "listeners": [{
                "name": "in",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                 "http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "cordial",
                        "route_config": {"virtual_hosts": [{
                            "name": "all", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"},
                                        "route": {"cluster": "cordial", "timeout": "120s"}}]}]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions."
                                                      "filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "cordial",
                "type": "STATIC",
                "lb_policy": "ROUND_ROBIN",
                "connect_timeout": "1s",
                "load_assignment": {"cluster_name": "cordial",
                                    "endpoints": [{"lb_endpoints": endpoints}]},
                "health_checks": [{"timeout": "1s", "interval": "1s",
                                   "unhealthy_threshold": 1, "healthy_threshold": 1,
                                   "http_health_check": {"path": "/health"}}],
            }],
        },
    }


def router_ready(base):
    status, _ = http("POST", base + "/v1/completions",
                     {"model": MODEL, "prompt": "ready?", "max_tokens": 1}, timeout=10)
    return status == 200


def run_setup(args, kind, policy, reqs, failover=False):
    layout = "map"  # vllm-router decodes vLLM >= 0.28's tagged maps
    replicas = [Replica(args, i, layout) for i in range(args.replicas)]
    for r in replicas:
        r.start()
    subs = []
    log = tempfile.NamedTemporaryFile(prefix=f"cordial-router-{kind}-{policy}-", suffix=".log",
                                      delete=False)
    router = None
    try:
        wait_until(lambda: all(r.healthy() for r in replicas), 300, "replicas healthy")
        subs = [Subscriber(r.kv_endpoint, f"replica{r.i}") for r in replicas]
        router, base = start_router(args, kind, policy, replicas, log)
        wait_until(lambda: router_ready(base), 120, f"{kind} {policy} ready")
        time.sleep(1)
        before = [metrics(r.base) for r in replicas]
        events = {}
        victim = replicas[-1]

        def on_done(n):
            # Failover: kill one replica a third of the way in, restart it at once.
            if failover and n == len(reqs) // 3 and "killed" not in events:
                events["killed"] = time.time()
                victim.kill()

                def restart():
                    victim.start()
                    events["healthy"] = wait_until(victim.healthy, 300, "restarted replica")
                threading.Thread(target=restart, daemon=True).start()

        t0 = time.time()
        results = send_all(base, reqs, args.concurrency, args.max_tokens, args.stream, on_done)
        wall = time.time() - t0
        time.sleep(1.5)  # let the last events arrive
        after = [metrics(r.base) for r in replicas]
        out = {"router": kind, "policy": policy, "stream": args.stream,
               "requests": len(results),
               "ok": sum(1 for _, _, s in results if s == 200),
               "failed": sorted(str(s) for _, _, s in results if s != 200),
               "wall_s": round(wall, 1)}
        per, hits, queries = [], 0.0, 0.0
        for i, (b, a) in enumerate(zip(before, after)):
            restarted = failover and replicas[i] is victim
            base_q = 0.0 if restarted else metric(b, "vllm:prefix_cache_queries_total")
            base_h = 0.0 if restarted else metric(b, "vllm:prefix_cache_hits_total")
            q = metric(a, "vllm:prefix_cache_queries_total") - base_q
            h = metric(a, "vllm:prefix_cache_hits_total") - base_h
            done = sum(metric(a, "vllm:request_success_total", f'finished_reason="{w}"')
                       - (0 if restarted else
                          metric(b, "vllm:request_success_total", f'finished_reason="{w}"'))
                       for w in ("stop", "length"))
            per.append(int(done))
            hits += h
            queries += q
        out["requests_per_replica"] = per
        out["prefix_cache_hit_rate"] = round(hits / queries, 3) if queries else 0.0
        checks = []
        for r, s, a in zip(replicas, subs, after):
            cached = a.get("cordial_kv_blocks_cached_free", -1)
            used = a.get("cordial_kv_blocks_used", -1)
            sm = s.summary()
            sm.update({"replica_cached_blocks": int(cached), "replica_used_blocks": int(used),
                       "live_matches": used == 0 and sm["live"] == cached})
            checks.append(sm)
        out["kv_events"] = checks
        seen = [set(s.full) for s in subs]
        out["hashes_seen_on_2+_replicas"] = len(
            {h for i, a in enumerate(seen) for b in seen[i + 1:] for h in a & b})
        if failover:
            k, h = events.get("killed"), events.get("healthy")
            out["killed_at_s"] = round(k - t0, 1) if k else None
            out["healthy_again_after_s"] = round(h - k, 1) if k and h else None
            fails = [(s_, st) for s_, _, st in results if st != 200]
            out["failures_window_s"] = (
                [round(min(t for t, _ in fails) - t0, 1), round(max(t for t, _ in fails) - t0, 1)]
                if fails else [])
            if h:
                out["requests_to_restarted_after_healthy"] = per[victim.i]
        return out
    finally:
        for s in subs:
            s.close()
        if router:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                router.kill()
        for r in replicas:
            r.stop()
        log.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--venv", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--model")
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kv-cache-tokens", type=int, default=2048)
    p.add_argument("--families", type=int, default=18)
    p.add_argument("--per-family", type=int, default=6)
    p.add_argument("--prefix-words", type=int, default=150)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=7)
    # vllm-router counts a request's prompt as prefill in flight until its first streamed
    # chunk; unstreamed, until the whole response (its kv_aware cost model then sees a busy
    # replica as still prefilling). Real clients mostly stream: on by default.
    p.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                   help="send every request with stream: true (--no-stream: unstreamed)")
    p.add_argument("--setups", default="vllm-router:round_robin,vllm-router:cache_aware,"
                                         "vllm-router:kv_aware,envoy:round_robin")
    p.add_argument("--failover", default="vllm-router:round_robin")
    p.add_argument("--out")
    args = p.parse_args()
    reqs = workload(args)
    report = []
    for setup in [s for s in args.setups.split(",") if s]:
        kind, policy = setup.split(":")
        r = run_setup(args, kind, policy, reqs)
        print(json.dumps(r), flush=True)
        report.append(r)
    if args.failover:
        kind, policy = args.failover.split(":")
        r = run_setup(args, kind, policy, reqs * 2, failover=True)
        r["failover"] = True
        print(json.dumps(r), flush=True)
        report.append(r)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
