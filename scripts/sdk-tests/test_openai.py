"""The `openai` SDK (3.57.0) against a running cordial server: `client.completions.create` and
`client.chat.completions.create`, JSON and OpenAI-shaped streams, logprobs, `echo`,
`logit_bias`; Friendli-only fields via extra_body / model_extra."""

import sys

import openai
from openai import OpenAI

from harness import (BASE_URL, MAX_TOKENS, MODEL, PROMPT, TIMEOUT_S, counted_once_more, reference_error,
                     requests_counted, run)

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


def completion_logprobs():
    r = client.completions.create(**GREEDY, logprobs=3)
    lp = r.choices[0].logprobs
    n = len(r.choices[0].model_extra["tokens"])
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, lp
    assert "".join(lp.tokens) == r.choices[0].text, (lp.tokens, r.choices[0].text)
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 3 <= len(top) <= 4, (chosen, top)
        assert abs(max(top.values()) - chosen) < 1e-6, "greedy picks the most likely token"
    streamed = []
    for chunk in client.completions.create(**GREEDY, logprobs=3, stream=True):
        for ch in chunk.choices:
            if ch.logprobs is not None:
                streamed += ch.logprobs.token_logprobs
    assert streamed == lp.token_logprobs, (streamed, lp.token_logprobs)


def echo_scores_the_prompt():
    # lm-evaluation-harness's log-likelihood request: echo, logprobs, max_tokens 0.
    r = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=1)
    c = r.choices[0]
    assert c.text == PROMPT, c.text
    lp = c.logprobs
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
    assert all(x is not None and x < 0 for x in lp.token_logprobs[1:]), lp.token_logprobs
    assert "".join(lp.tokens) == PROMPT, lp.tokens
    assert r.usage.completion_tokens == 0, r.usage
    # With generation, the text starts with the prompt; streamed, the prompt comes first.
    r = client.completions.create(**GREEDY, echo=True)
    plain = client.completions.create(**GREEDY)
    assert r.choices[0].text == PROMPT + plain.choices[0].text, (r.choices[0].text, plain.choices[0].text)
    text = "".join(ch.text for chunk in client.completions.create(**GREEDY, echo=True, stream=True)
                   for ch in chunk.choices)
    assert text == r.choices[0].text, (text, r.choices[0].text)


def logit_bias_bans_a_token():
    plain = client.completions.create(**{**GREEDY, "max_tokens": 1})
    first = plain.choices[0].model_extra["tokens"][0]
    banned = client.completions.create(**{**GREEDY, "max_tokens": 1}, logit_bias={str(first): -100})
    assert banned.choices[0].model_extra["tokens"][0] != first, (first, banned.choices[0])


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 24, "temperature": 0}


def chat_non_stream_and_stream():
    r = client.chat.completions.create(**CHAT)
    assert r.object == "chat.completion", r.object
    assert r.id.startswith("chatcmpl-"), r.id
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content, c.message
    assert "<|im_end|>" not in c.message.content, c.message.content
    assert c.finish_reason in ("stop", "length"), c.finish_reason
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
    content, role, finish, usage = "", None, None, None
    for chunk in client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True}):
        assert chunk.object == "chat.completion.chunk", chunk.object
        for ch in chunk.choices:
            role = role or ch.delta.role
            content += ch.delta.content or ""
            finish = ch.finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert role == "assistant", role
    assert content == c.message.content, (content, c.message.content)
    assert finish == c.finish_reason, (finish, c.finish_reason)
    assert usage is not None and usage.total_tokens == r.usage.total_tokens, (usage, r.usage)


def chat_n_seed_stop_and_logprobs():
    body = {**CHAT, "temperature": 0.8, "n": 2, "seed": 5, "logprobs": True, "top_logprobs": 2,
            "frequency_penalty": 0.3, "stop": ["\n\n"]}
    r = client.chat.completions.create(**body)
    again = client.chat.completions.create(**body)
    assert len(r.choices) == 2, r.choices
    assert [c.message.content for c in r.choices] == [c.message.content for c in again.choices], "seeded"
    for c in r.choices:
        content = c.logprobs.content
        assert content, c.logprobs
        assert bytes(b for t in content for b in t.bytes).decode() == c.message.content, (content, c.message)
        assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content), content
        assert "\n\n" not in c.message.content


def chat_errors_are_400():
    for kwargs, param in [({"messages": []}, "messages"), ({"n": 0}, "n"),
                          ({"top_logprobs": 3}, "top_logprobs")]:
        try:
            client.chat.completions.create(**{**CHAT, **kwargs})
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.param == param, (e.status_code, e.param, e.body)
        else:
            raise AssertionError(f"no BadRequestError for {kwargs}")


def a_timed_out_request_is_not_retried():
    # The SDK retries 429s (twice by default) unless the answer says `x-should-retry: false`.
    retrying = OpenAI(base_url=BASE_URL + "/v1", api_key="flp_local", max_retries=2, timeout=TIMEOUT_S)
    before = requests_counted("/v1/completions", 429)
    try:
        retrying.completions.create(**{**GREEDY, "max_tokens": 64},
                                    extra_body={"timeout_microseconds": 1, "ignore_eos": True})
    except openai.RateLimitError as e:
        assert e.status_code == 429, e.status_code
        assert e.body["type"] == "rate_limit_error", e.body
        assert e.body["param"] == "timeout_microseconds", e.body
        assert e.response.headers["x-should-retry"] == "false", e.response.headers
    else:
        raise AssertionError("no RateLimitError")
    counted_once_more("/v1/completions", 429, before)


if __name__ == "__main__":
    sys.exit(run([non_stream_completion, stream_equals_non_stream, seeds_are_returned, invalid_top_p_is_an_api_error,
                  completion_logprobs, echo_scores_the_prompt, logit_bias_bans_a_token,
                  chat_non_stream_and_stream, chat_n_seed_stop_and_logprobs, chat_errors_are_400,
                  a_timed_out_request_is_not_retried]))
