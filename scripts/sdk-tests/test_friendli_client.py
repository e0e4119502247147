"""The legacy `friendli-client` SDK (1.5.8) against a running cordial server: it sends every
field (unset ones as null, including its legacy keys), so streams come back in the legacy
dialect (`token_sampled` events, then one `complete` event)."""

import sys

import httpx
from friendli import Friendli
from friendli.errors import APIError

from harness import BASE_URL, MAX_TOKENS, PROMPT, TIMEOUT_S, reference_error, run

client = Friendli(base_url=BASE_URL, token="flp_local", http_client=httpx.Client(timeout=TIMEOUT_S))
GREEDY = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0}


def non_stream_completion():
    c = client.completions.create(**GREEDY)
    assert len(c.choices) == 1, c.choices
    ch = c.choices[0]
    assert ch.index == 0
    assert ch.text, "empty text"
    assert 1 <= len(ch.tokens) <= MAX_TOKENS, ch.tokens
    assert isinstance(ch.seed, int)
    assert c.usage.completion_tokens == len(ch.tokens), (c.usage, ch.tokens)
    assert c.usage.prompt_tokens > 0
    assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens


def stream_equals_non_stream():
    c = client.completions.create(**GREEDY)
    ch = c.choices[0]
    lines = list(client.completions.create(**GREEDY, stream=True))
    assert lines, "no token_sampled events"
    assert all(line.event == "token_sampled" and line.index == 0 for line in lines), lines
    assert "".join(line.text for line in lines) == ch.text, (lines, ch.text)
    assert [line.token for line in lines] == ch.tokens, (lines, ch.tokens)
    # wait(): the final `complete` event as a Completion, same as the JSON answer.
    done = client.completions.create(**GREEDY, stream=True).wait()
    assert done is not None, "no complete event"
    assert done.choices[0].text == ch.text, (done.choices[0].text, ch.text)
    assert done.choices[0].tokens == ch.tokens
    assert done.usage.total_tokens == c.usage.total_tokens, (done.usage, c.usage)


def seeds_are_returned():
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0, "n": 2, "seed": [11, 22]}
    first = client.completions.create(**body)
    assert [ch.seed for ch in first.choices] == [11, 22], first.choices
    again = client.completions.create(**body)
    assert [ch.text for ch in again.choices] == [ch.text for ch in first.choices], "a seed replays its text"
    drawn = client.completions.create(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0)
    seed = drawn.choices[0].seed
    assert 0 <= seed < 2**64, seed
    replay = client.completions.create(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=[seed])
    assert replay.choices[0].seed == seed
    assert replay.choices[0].text == drawn.choices[0].text


def invalid_top_p_is_an_api_error():
    message = reference_error({**GREEDY, "top_p": 3})
    assert "top_p" in message, message
    for stream in (False, True):
        try:
            res = client.completions.create(**GREEDY, top_p=3, stream=stream)
            if stream:
                list(res)
        except APIError as e:
            assert message in str(e), (message, str(e))
        else:
            raise AssertionError(f"no APIError (stream={stream})")


if __name__ == "__main__":
    sys.exit(run([non_stream_completion, stream_equals_non_stream, seeds_are_returned, invalid_top_p_is_an_api_error]))
