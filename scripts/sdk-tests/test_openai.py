"""The `openai` SDK (3.57.0) against a running cordial server: `client.completions.create`,
JSON and OpenAI-shaped streams; Friendli-only fields via extra_body / model_extra."""

import sys

import openai
from openai import OpenAI

from harness import BASE_URL, MAX_TOKENS, MODEL, PROMPT, TIMEOUT_S, reference_error, run

client = OpenAI(base_url=BASE_URL + "/v1", api_key="flp_local", max_retries=0, timeout=TIMEOUT_S)
GREEDY = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}


def non_stream_completion():
    r = client.completions.create(**GREEDY)
    assert r.object == "text_completion", r.object
    assert r.model == MODEL, r.model
    assert r.id.startswith("cmpl-"), r.id
    assert len(r.choices) == 1, r.choices
    c = r.choices[0]
    assert c.index == 0
    assert c.text, "empty text"
    assert c.finish_reason in ("length", "stop"), c.finish_reason
    tokens = c.model_extra["tokens"]  # a Friendli extra the SDK keeps
    assert 1 <= len(tokens) <= MAX_TOKENS, tokens
    assert r.usage.completion_tokens == len(tokens), (r.usage, tokens)
    assert r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def stream_equals_non_stream():
    r = client.completions.create(**GREEDY)
    c = r.choices[0]
    text, tokens, finish, usage = "", [], None, None
    for chunk in client.completions.create(**GREEDY, stream=True, stream_options={"include_usage": True}):
        assert chunk.id.startswith("cmpl-"), chunk.id
        for ch in chunk.choices:
            assert ch.index == 0, ch
            text += ch.text
            if ch.finish_reason is not None:
                finish = ch.finish_reason
            else:
                tokens.append(ch.model_extra["token"])
        if chunk.usage is not None:
            assert not chunk.choices, chunk
            usage = chunk.usage
    assert text == c.text, (text, c.text)
    assert tokens == c.model_extra["tokens"], (tokens, c.model_extra)
    assert finish == c.finish_reason, (finish, c.finish_reason)
    assert usage is not None and usage.total_tokens == r.usage.total_tokens, (usage, r.usage)


def seeds_are_returned():
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 1.0}
    first = client.completions.create(**body, seed=1234, n=2)
    assert len(first.choices) == 2, first.choices
    seeds = [c.model_extra["seed"] for c in first.choices]
    assert seeds[0] == 1234 and len(set(seeds)) == 2, seeds
    again = client.completions.create(**body, seed=1234, n=2)
    assert [c.text for c in again.choices] == [c.text for c in first.choices], "a seed replays its text"
    # A list of seeds, one per choice, is a Friendli extension: extra_body.
    listed = client.completions.create(**body, n=2, extra_body={"seed": [11, 22]})
    assert [c.model_extra["seed"] for c in listed.choices] == [11, 22], listed.choices
    drawn = client.completions.create(**body)
    seed = drawn.choices[0].model_extra["seed"]
    assert isinstance(seed, int) and 0 <= seed < 2**64, seed


def invalid_top_p_is_an_api_error():
    message = reference_error({**GREEDY, "top_p": 3})
    assert "top_p" in message, message
    for stream in (False, True):
        try:
            res = client.completions.create(**GREEDY, top_p=3, stream=stream)
            if stream:
                list(res)
        except openai.BadRequestError as e:  # OpenAI-flavoured requests get 400
            assert e.status_code == 400, e.status_code
            assert e.body["message"] == message, (e.body, message)
            assert e.param == "top_p", e.param
            assert e.type == "invalid_request_error", e.type
            assert message in e.message, e.message
        else:
            raise AssertionError(f"no BadRequestError (stream={stream})")


if __name__ == "__main__":
    sys.exit(run([non_stream_completion, stream_equals_non_stream, seeds_are_returned, invalid_top_p_is_an_api_error]))
