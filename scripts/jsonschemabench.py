#!/usr/bin/env python3
"""JSONSchemaBench against a running server: how many real-world schemas are accepted, and how
many accepted ones give a valid, finished answer. Fetches nothing.

Data: a local copy of the `data/` folder of https://github.com/guidance-ai/jsonschemabench (one
folder per category, one schema per `.json` file), e.g. ~/.cache/cordial/jsonschemabench/data.

Start the server first (release build), e.g. `target/release/cordial serve --threads 2`, then
  python3 scripts/jsonschemabench.py --data DIR [--base http://127.0.0.1:8000]
      [--per-category 25] [--seed 19] [--max-tokens 256] [--route completions|chat]
      [--concurrency 4] [--out results.jsonl] [--list]

Sample: per category (folders in name order), `--per-category` files drawn with
`random.Random(seed).sample` from the sorted file names (one generator for all categories, in
that order). Each schema is sent as `response_format` {"type": "json_schema"} with the prompt
"Generate a JSON object that matches the given JSON schema", temperature 0, `max_tokens`
256, the server's default model. Outcomes:
  rejected   the server answered 4xx (the message is kept);
  valid      finish_reason "stop" and the text is JSON that the validator of the schema's
             declared draft accepts (Draft 2020-12 when it declares none; `format` is an
             annotation, as the validators default to; remote `$ref`s are not fetched);
  truncated  finish_reason "length" (the answer did not finish within max_tokens);
  violation  finish_reason "stop" but not JSON or not valid: the constraint failed.
Figures per category: accepted % (of the sample), valid-of-accepted %, violations, and how many
valid answers use root keys the schema does not declare (its root lists `properties` and says
nothing of `additionalProperties`: such an answer validates without following the schema);
then where the truncated answers were cut: inside a string value (over 100 characters so far),
inside a shorter string, a number, an object key, or between values, and how many end in a loop
(their last 120 characters repeat a unit of at most 60).
`--list` prints the sampled files and exits (e.g. for the grammar crate's `schemas` example).
"""
import argparse, collections, json, os, random, sys, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor

PROMPT = "Generate a JSON object that matches the given JSON schema"


def sample(data, per_category, seed):
    rng = random.Random(seed)
    out = []
    for cat in sorted(os.listdir(data)):
        folder = os.path.join(data, cat)
        if not os.path.isdir(folder):
            continue
        files = sorted(f for f in os.listdir(folder) if f.endswith(".json"))
        for f in rng.sample(files, min(per_category, len(files))):
            out.append((cat, os.path.join(folder, f)))
    return out


def post(base, path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=900) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"error": {"message": raw.decode(errors="replace")}}


def validate(schema, instance):
    """None when valid, else the first error's message."""
    import jsonschema
    from referencing import Registry
    from referencing.exceptions import NoSuchResource

    def nowhere(uri):
        raise NoSuchResource(ref=uri)

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    v = cls(schema, registry=Registry(retrieve=nowhere))
    try:
        err = jsonschema.exceptions.best_match(v.iter_errors(instance))
    except Exception as e:  # an unresolvable reference and the like
        return f"validator error: {type(e).__name__}: {e}"
    return None if err is None else f"{err.message[:200]} at {list(err.absolute_path)}"


def cut_in(text):
    """Where a truncated answer was cut: "long string", "string", "number", "key" or "between"."""
    stack, in_str, esc, start, is_key, expect_key, num = [], False, False, 0, False, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        num = ch in "-0123456789.eE+" and (num or ch in "-0123456789")
        if ch == '"':
            in_str, start = True, i
            is_key = bool(stack) and stack[-1] == "{" and expect_key
        elif ch in "{[":
            stack.append(ch)
            expect_key = ch == "{"
        elif ch in "}]":
            stack.pop()
        elif ch == ",":
            expect_key = bool(stack) and stack[-1] == "{"
        elif ch == ":":
            expect_key = False
    if in_str:
        return "key" if is_key else ("long string" if len(text) - start > 100 else "string")
    return "number" if num else "between"


def looping(text, span=120, unit=60):
    tail = text[-span:]
    return len(tail) == span and any(
        all(tail[i] == tail[i - p] for i in range(p, span)) for p in range(1, unit + 1))


def undeclared_root_keys(schema, instance):
    if not (isinstance(schema, dict) and isinstance(instance, dict)):
        return False
    props = schema.get("properties")
    if not isinstance(props, dict) or "additionalProperties" in schema \
            or "patternProperties" in schema:
        return False
    return any(k not in props for k in instance)


def run_one(a, cat, path):
    schema = json.load(open(path))
    fmt = {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
    if a.route == "chat":
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": a.max_tokens,
                "temperature": 0, "response_format": fmt}
        route = "/v1/chat/completions"
    else:
        body = {"prompt": PROMPT, "max_tokens": a.max_tokens, "temperature": 0,
                "response_format": fmt}
        route = "/v1/completions"
    body.update(a.extra)
    t = time.perf_counter()
    status, v = post(a.base, route, body)
    r = {"category": cat, "file": os.path.relpath(path, a.data), "status": status,
         "seconds": round(time.perf_counter() - t, 2)}
    if status != 200:
        r["outcome"] = "rejected"
        r["message"] = v.get("error", {}).get("message", str(v))[:300]
        return r
    choice = v["choices"][0]
    text = choice["message"]["content"] if a.route == "chat" else choice["text"]
    r["text"] = text
    r["tokens"] = v["usage"]["completion_tokens"]
    if choice["finish_reason"] == "length":
        r["outcome"] = "truncated"
        r["cut_in"] = cut_in(text)
        r["looping"] = looping(text)
        return r
    try:
        instance = json.loads(text)
    except ValueError as e:
        r["outcome"], r["message"] = "violation", f"not JSON: {e}"
        return r
    err = validate(schema, instance)
    r["outcome"] = "valid" if err is None else "violation"
    if err:
        r["message"] = err
    else:
        r["undeclared"] = undeclared_root_keys(schema, instance)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="local copy of jsonschemabench's data/")
    ap.add_argument("--base", default="http://127.0.0.1:8000")
    ap.add_argument("--per-category", type=int, default=25)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--route", choices=["completions", "chat"], default="completions")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", help="write one JSON line per schema here")
    ap.add_argument("--list", action="store_true", help="print the sampled files and exit")
    ap.add_argument("--extra", type=json.loads, default={},
                    help='JSON object merged into every request, e.g. \'{"repetition_penalty": 1.2}\'')
    a = ap.parse_args()
    picked = sample(a.data, a.per_category, a.seed)
    if a.list:
        for _, p in picked:
            print(p)
        return
    started = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as pool:
        results = list(pool.map(lambda cp: run_one(a, *cp), picked))
    if a.out:
        with open(a.out, "w") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    by_cat = collections.defaultdict(list)
    for r in results:
        by_cat[r["category"]].append(r)
    print(f"{len(results)} schemas, seed {a.seed}, route {a.route}, max_tokens {a.max_tokens}, "
          f"extra {json.dumps(a.extra)}, {time.perf_counter() - started:.0f} s\n")
    print("| category | schemas | accepted | accepted % | valid | valid-of-accepted % "
          "| truncated | violations | valid with undeclared root keys |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = sorted(by_cat.items()) + [("**all**", results)]
    for cat, rs in rows:
        c = collections.Counter(r["outcome"] for r in rs)
        acc = len(rs) - c["rejected"]
        pct = lambda x, n: f"{100 * x / n:.0f}" if n else "-"
        und = sum(1 for r in rs if r.get("undeclared"))
        print(f"| {cat} | {len(rs)} | {acc} | {pct(acc, len(rs))} | {c['valid']} | "
              f"{pct(c['valid'], acc)} | {c['truncated']} | {c['violation']} | {und} |")
    kinds = ["long string", "string", "number", "key", "between"]
    print("\nwhere the truncated answers were cut:\n")
    print("| category | truncated | " + " | ".join(kinds) + " | ending in a loop |")
    print("|---|---|" + "---|" * (len(kinds) + 1))
    for cat, rs in rows:
        t = [r for r in rs if r["outcome"] == "truncated"]
        c = collections.Counter(r["cut_in"] for r in t)
        loops = sum(1 for r in t if r["looping"])
        print(f"| {cat} | {len(t)} | " + " | ".join(str(c[k]) for k in kinds) + f" | {loops} |")
    for outcome in ("rejected", "violation"):
        rs = [r for r in results if r["outcome"] == outcome]
        if rs:
            print(f"\n{outcome}:")
            for r in rs:
                print(f"  {r['file']}: {r.get('message', '')}")
    truncated = [r for r in results if r["outcome"] == "truncated"]
    if truncated:
        print("\ntruncated (first 120 characters):")
        for r in truncated:
            print(f"  {r['file']}: {r['text'][:120]!r}")


if __name__ == "__main__":
    main()
