"""Shared bits of the SDK checks: the server under test, the raw-HTTP reference calls and a tiny
runner. Each check is a function that raises (usually AssertionError) on failure.

The runner prints one `PASS name` / `FAIL name: why` line per check, then a last line
`RESULT <passed> <failed>` that run.sh adds up.
"""

import json
import os
import sys
import time
import traceback
import urllib.error
import urllib.request

BASE_URL = os.environ["CORDIAL_BASE_URL"]  # http://127.0.0.1:PORT, no trailing slash
MODEL = os.environ["CORDIAL_MODEL_NAME"]  # the served model name
TIMEOUT_S = 60
MAX_TOKENS = 12
PROMPT = "The capital of France is"


def raw_post(body):
    """POST /v1/completions with urllib (no SDK): (status, parsed JSON body)."""
    req = urllib.request.Request(
        BASE_URL + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def requests_counted(route, status):
    """`cordial_requests_total` for `route` and `status`, all teams together."""
    with urllib.request.urlopen(BASE_URL + "/metrics", timeout=TIMEOUT_S) as resp:
        text = resp.read().decode()
    labels = (f'route="{route}"', f'status="{status}"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cordial_requests_total{") and all(l in line for l in labels))


def counted_once_more(route, status, before):
    """Waits (2 s at most) for one more request to be counted, then checks there was only one."""
    deadline = time.monotonic() + 2
    while requests_counted(route, status) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a retry would be counted by now (the SDKs back off for about that long)
    now = requests_counted(route, status)
    assert now == before + 1, f"{now - before} requests answered {status}, expected 1"


def reference_error(body):
    """Our error message for a bad request, read without any SDK."""
    status, v = raw_post(body)
    assert 400 <= status < 500, (status, v)
    msg = v["error"]["message"]
    assert isinstance(msg, str) and msg, v
    return msg


def run(checks):
    passed = failed = 0
    for check in checks:
        try:
            check()
        except Exception as e:  # noqa: BLE001 - every failure counts, whatever it is
            failed += 1
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            print(f"FAIL {check.__name__}: {detail}", flush=True)
            traceback.print_exc(file=sys.stderr)
        else:
            passed += 1
            print(f"PASS {check.__name__}", flush=True)
    print(f"RESULT {passed} {failed}", flush=True)
    return 0 if failed == 0 else 1
