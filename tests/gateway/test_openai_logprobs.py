"""Log-probabilities through the gateway, in OpenAI's shapes, read by the official SDK."""

from __future__ import annotations

import math

MODEL = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Name three colours."}]


def test_chat_logprobs_streamed_or_not_in_openais_shape(client):
    asked = {
        "model": MODEL,
        "messages": HELLO,
        "max_tokens": 8,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    whole = client.chat.completions.create(**asked)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert b"".join(bytes(t.bytes) for t in content).decode() == whole.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 2
        assert token.top_logprobs[0].token == token.token  # greedy: the best token
        assert math.isclose(token.top_logprobs[0].logprob, token.logprob)
    streamed = [
        t for c in client.chat.completions.create(**asked, stream=True) if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]  # fmt: skip
    assert [(t.token, t.logprob) for t in streamed] == [(t.token, t.logprob) for t in content]
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_are_parallel_lists(client):
    reply = client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == len(logprobs.text_offset) == 6
    assert all(
        len(top) == 3 and max(top.values()) == lp
        for top, lp in zip(logprobs.top_logprobs, logprobs.token_logprobs, strict=True)
    )
