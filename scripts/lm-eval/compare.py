#!/usr/bin/env python3
"""Compares lm-evaluation-harness's log-likelihoods (from its --log_samples output) with the
same items scored directly by cordial: `tokens` = the context, `forced_output_tokens` = the
continuation, `include_output_logprobs: true`, summed. Also checks that the server tokenizes
each request's text as lm-eval's tokenizer did (else lm-eval's context split would be off).

Usage: compare.py --base-url http://127.0.0.1:PORT --model NAME --tokenizer DIR --output DIR
Prints a table and exits non-zero when any |difference| exceeds --tolerance (nats per item).
"""
import argparse
import glob
import json
import sys
import urllib.request

from transformers import AutoTokenizer


def post(base, body):
    req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def pairs(sample):
    """(context, continuation) of each request of a logged sample, in choice order."""
    args = sample["arguments"]
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": ctx, "arg_1": cont}, ...}
        keys = sorted(args, key=lambda k: int(k.rsplit("_", 1)[1]))
        return [(args[k]["arg_0"], args[k]["arg_1"]) for k in keys]
    return [(a[0], a[1]) for a in args]


def lm_eval_logprob(resp):
    """A logged response: [[ll, is_greedy]] or [ll, is_greedy], maybe as strings."""
    while isinstance(resp, list) and isinstance(resp[0], list):
        resp = resp[0]
    return float(resp[0])


def encode_pair(tok, context, continuation):
    """lm-eval's split: trailing spaces of the context move to the continuation; the
    continuation is what the whole adds after the context's tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return whole, ctx, whole[len(ctx):]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--tolerance", type=float, default=0.1)
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    files = glob.glob(a.output + "/**/samples_*.jsonl", recursive=True)
    if not files:
        sys.exit("no samples_*.jsonl under " + a.output)
    rows, mismatched_tokenization = [], 0
    correct_lm, correct_ours = 0, 0
    docs = 0
    for path in files:
        for line in open(path):
            s = json.loads(line)
            docs += 1
            ours, theirs = [], []
            for (context, continuation), resp in zip(pairs(s), s["resps"]):
                whole, ctx, cont = encode_pair(tok, context, continuation)
                text = tok.decode(whole)
                echo = post(a.base_url, {"model": a.model, "prompt": text, "max_tokens": 0,
                                         "echo": True, "logprobs": 0})
                if echo["usage"]["prompt_tokens"] != len(whole):
                    mismatched_tokenization += 1
                scored = post(a.base_url, {"model": a.model, "tokens": ctx,
                                           "forced_output_tokens": cont,
                                           "include_output_logprobs": True})
                mine = sum(scored["choices"][0]["logprobs"])
                ours.append(mine)
                theirs.append(lm_eval_logprob(resp))
                rows.append((context, continuation, theirs[-1], mine))
            target = int(s["target"])
            correct_lm += int(max(range(len(theirs)), key=theirs.__getitem__) == target)
            correct_ours += int(max(range(len(ours)), key=ours.__getitem__) == target)
    diffs = [abs(t - m) for _, _, t, m in rows]
    print("%-42s %-22s %10s %10s %8s" % ("context", "continuation", "lm-eval", "forced", "|diff|"))
    for (c, k, t, m), d in zip(rows, diffs):
        print("%-42s %-22s %10.4f %10.4f %8.4f" % (c[:42], repr(k)[:22], t, m, d))
    print()
    print("items: %d docs, %d (context, continuation) pairs" % (docs, len(rows)))
    print("max |diff| %.3g nats, mean |diff| %.3g nats" % (max(diffs), sum(diffs) / len(diffs)))
    print("accuracy: lm-eval %.4f, forced scoring %.4f" % (correct_lm / docs, correct_ours / docs))
    print("requests the server tokenized differently from lm-eval's tokenizer: %d" % mismatched_tokenization)
    ok = max(diffs) <= a.tolerance and mismatched_tokenization == 0 and correct_lm == correct_ours
    print("RESULT", "match" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
