"""The `friendli` SDK (0.16.5, Speakeasy-generated) against a running cordial server:
container namespace (POST /v1/completions), JSON and the current (OpenAI-shaped) stream."""

import sys

from friendli import SyncFriendli
from friendli.core.models import SDKError

from harness import BASE_URL, MAX_TOKENS, MODEL, PROMPT, TIMEOUT_S, reference_error, run

client = SyncFriendli(token="flp_local", server_url=BASE_URL, retry_config=None, timeout_ms=TIMEOUT_S * 1000)
GREEDY = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0}


def complete(request):
    # Container operations ignore the client's server_url: pass it per call; never retry.
    return client.container.completions.complete(request=request, server_url=BASE_URL, retries=None)


def stream_text(request):
    """Concatenated text, tokens, last finish_reason and the usage of a streamed request."""
    text, tokens, finish, usage = "", [], None, None
    with complete({**request, "stream": True, "stream_options": {"include_usage": True}}) as events:
        for ev in events:
            for ch in ev.data.choices:
                assert ch.index == 0, ch
                text += ch.text
                if ch.finish_reason is not None:
                    finish = ch.finish_reason
                elif ch.token is not None:
                    tokens.append(ch.token)
            if ev.data.usage is not None:
                usage = ev.data.usage
    return text, tokens, finish, usage


def non_stream_completion():
    res = complete(GREEDY)
    assert res.model == MODEL, res.model
    assert res.id.startswith("cmpl-"), res.id
    assert len(res.choices) == 1, res.choices
    c = res.choices[0]
    assert c.index == 0
    assert c.text, "empty text"
    assert c.finish_reason in ("length", "stop"), c.finish_reason
    assert isinstance(c.tokens, list) and 1 <= len(c.tokens) <= MAX_TOKENS, c.tokens
    assert res.usage.completion_tokens == len(c.tokens), (res.usage, c.tokens)
    assert res.usage.prompt_tokens > 0
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens


def stream_equals_non_stream():
    res = complete(GREEDY)
    c = res.choices[0]
    text, tokens, finish, usage = stream_text(GREEDY)
    assert text == c.text, (text, c.text)
    assert tokens == c.tokens, (tokens, c.tokens)
    assert finish == c.finish_reason, (finish, c.finish_reason)
    assert usage is not None and usage.total_tokens == res.usage.total_tokens, (usage, res.usage)


def seeds_are_returned():
    body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0, "n": 2, "seed": [11, 22]}
    first = complete(body)
    assert [c.seed for c in first.choices] == [11, 22], first.choices
    again = complete(body)
    assert [c.text for c in again.choices] == [c.text for c in first.choices], "a seed replays its text"
    # No seed given: the one drawn is reported, and replaying it gives the same text.
    drawn = complete({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0})
    seed = drawn.choices[0].seed
    assert isinstance(seed, int) and 0 <= seed < 2**64, seed
    replay = complete({"prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0, "seed": seed})
    assert replay.choices[0].seed == seed
    assert replay.choices[0].text == drawn.choices[0].text


def invalid_top_p_is_an_api_error():
    bad = {**GREEDY, "top_p": 3}
    message = reference_error(bad)
    assert "top_p" in message, message
    for request in (bad, {**bad, "stream": True}):
        try:
            complete(request)
        except SDKError as e:
            assert e.status_code == 422, e.status_code
            assert message in e.body, (message, e.body)
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"no SDKError for {request}")


if __name__ == "__main__":
    sys.exit(run([non_stream_completion, stream_equals_non_stream, seeds_are_returned, invalid_top_p_is_an_api_error]))
