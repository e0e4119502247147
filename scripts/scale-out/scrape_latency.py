#!/usr/bin/env python3
"""Latency of GET /metrics while the engine is busy, the way a gateway's endpoint picker scrapes.

Starts `--requests` streaming completions with `n` choices each (so requests × n sequences run,
64 by default), waits until the server reports them running, then scrapes /metrics every
`--interval` seconds `--scrapes` times over one keep-alive connection and prints p50/p99/max.
The streams are read by a separate process: in this one, their threads would hold Python's
lock and add up to its 5 ms switch interval to the scrapes' times.

    python3 scripts/scale-out/scrape_latency.py --base http://127.0.0.1:8000
"""
import argparse
import http.client
import multiprocessing
import os
import json
import socket
import statistics
import threading
import time
import urllib.parse


def stream_request(host, port, body, stop):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    while not stop.is_set():
        if not resp.readline():
            break
    conn.close()


LOAD_NICE = 0


def run_load(host, port, body, requests):
    # Only the scraper may run at a raised priority (chrt, to time the server and not this
    # machine's scheduler): the load runs as an ordinary process.
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    # --load-nice: the load generator stands in for remote clients; on a small machine its own
    # CPU use would otherwise be timed as the server's.
    os.nice(LOAD_NICE)
    stop = threading.Event()
    threads = [threading.Thread(target=stream_request, args=(host, port, body, stop), daemon=True)
               for _ in range(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def running(text):
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--scrapes", type=int, default=500)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--scrape-base", help="where to scrape (default --base; e.g. the server's "
                    "--metrics-port)")
    ap.add_argument("--no-stream", action="store_true",
                    help="the load's requests unstreamed (no token events for the HTTP workers)")
    ap.add_argument("--load-nice", type=int, default=0,
                    help="nice value added to the load generator's process (e.g. 19)")
    ap.add_argument("--client", choices=["raw", "http.client"], default="raw",
                    help="raw: one keep-alive socket, the request written and the response read by "
                         "Content-Length (adds ~0.1 ms here); http.client: Python's client (~0.3 ms more)")
    a = ap.parse_args()
    global LOAD_NICE
    LOAD_NICE = a.load_nice
    u = urllib.parse.urlparse(a.base)
    host, port = u.hostname, u.port or 80
    body = {"prompt": "Tell me a long story about the sea.", "max_tokens": 1000, "n": a.n,
            "ignore_eos": True, "stream": not a.no_stream, "temperature": 0.8}
    load = multiprocessing.Process(target=run_load, args=(host, port, body, a.requests), daemon=True)
    load.start()
    su = urllib.parse.urlparse(a.scrape_base or a.base)
    shost, sport = su.hostname, su.port or 80
    conn = http.client.HTTPConnection(shost, sport, timeout=30)
    sock = socket.create_connection((shost, sport), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    request = f"GET /metrics HTTP/1.1\r\nHost: {shost}:{sport}\r\n\r\n".encode()

    def scrape_raw():
        t0 = time.perf_counter()
        sock.sendall(request)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(1 << 16)
        head, _, body = buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(1 << 16)
        return time.perf_counter() - t0, body.decode()

    def scrape_http():
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        return time.perf_counter() - t0, text

    scrape = scrape_raw if a.client == "raw" else scrape_http

    deadline = time.time() + 120
    while running(scrape()[1]) < a.requests and time.time() < deadline:
        time.sleep(0.2)
    lat, seen = [], []
    for _ in range(a.scrapes):
        dt, text = scrape()
        lat.append(dt * 1e3)
        seen.append(running(text))
        time.sleep(a.interval)
    load.terminate()
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    print(json.dumps({"scrapes": len(lat), "requests_running_min": min(seen),
                      "sequences": a.requests * a.n, "p50_ms": round(p(0.5), 3),
                      "p99_ms": round(p(0.99), 3), "max_ms": round(lat[-1], 3),
                      "mean_ms": round(statistics.mean(lat), 3)}))


if __name__ == "__main__":
    main()
