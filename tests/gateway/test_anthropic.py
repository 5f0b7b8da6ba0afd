"""The official `anthropic` package against a real `din gateway` and the real 3-node mesh:
Anthropic's Messages API gives the answer the chat API gives, in Anthropic's shapes."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from _gateway_helpers import API_KEY

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant. Answer briefly."
TURNS = [
    {"role": "user", "content": "Name a fruit."},
    {"role": "assistant", "content": "An apple."},
    {"role": "user", "content": "Name three colours."},
]
LONG = [{"role": "user", "content": "Count from one to fifty in words."}]
SHORT = [{"role": "user", "content": "What is 2+2?"}]  # answered in about 11 tokens
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}
# anthropic 2.x no longer takes `temperature` as an argument; the API and older clients still do.
GREEDY = {"extra_body": {"temperature": 0}}


@pytest.fixture
def claude(gateway) -> anthropic.Anthropic:
    """The official Anthropic client, pointed at the gateway's root; it sends `x-api-key`."""
    return anthropic.Anthropic(base_url=gateway.url, api_key=API_KEY, max_retries=0, timeout=120)


def test_a_message_is_the_chat_answer_in_anthropic_shape(claude, client, mesh):
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": SYSTEM}, *TURNS], max_tokens=16, temperature=0
    )
    raw = claude.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=16,
        **GREEDY,
        system=[{"type": "text", "text": SYSTEM}],
        messages=[*TURNS[:2], {"role": "user", "content": [{"type": "text", "text": TURNS[2]["content"]}]}],
        metadata={"user_id": "someone"},
    )
    message = raw.parse()
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == chat.choices[0].message.content
    assert message.stop_reason == STOP_REASONS[chat.choices[0].finish_reason]
    assert message.stop_sequence is None
    assert message.model == MODEL
    assert message.usage.input_tokens == chat.usage.prompt_tokens
    assert message.usage.output_tokens == chat.usage.completion_tokens
    assert raw.headers["x-dinet-peer"] in {n.peer_id for n in mesh.nodes}


def test_max_tokens_ends_a_message_with_max_tokens(claude):
    message = claude.messages.create(model=MODEL, max_tokens=8, **GREEDY, messages=LONG)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 8
    assert message.content[0].text.strip()


def test_a_streamed_message_gives_the_same_text_in_anthropic_events(claude, gateway):
    whole = claude.messages.create(model=MODEL, max_tokens=16, **GREEDY, messages=SHORT)
    with claude.messages.stream(model=MODEL, max_tokens=16, **GREEDY, messages=SHORT) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1, "the answer should arrive in several deltas"
    assert "".join(pieces) == final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.input_tokens == whole.usage.input_tokens > 0  # from message_delta
    assert final.usage.output_tokens == whole.usage.output_tokens

    # The events as sent, pings included (the SDK drops those): each named as its data's type.
    body = {"model": MODEL, "max_tokens": 16, "temperature": 0, "messages": SHORT, "stream": True}
    headers = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    reply = httpx.post(f"{gateway.url}/v1/messages", json=body, headers=headers, timeout=120)
    assert reply.headers["content-type"].startswith("text/event-stream")
    events = _events(reply.text)
    assert all(name == data["type"] for name, data in events)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}
    deltas = [data["delta"]["text"] for name, data in events if name == "content_block_delta"]
    assert "".join(deltas) == whole.content[0].text


def test_a_stop_sequence_ends_the_text_before_it(claude):
    whole = claude.messages.create(model=MODEL, max_tokens=16, **GREEDY, messages=TURNS)
    text = whole.content[0].text
    stop = text.split()[1]  # greedy decoding is the same up to the stop string
    cut = claude.messages.create(model=MODEL, max_tokens=16, **GREEDY, messages=TURNS, stop_sequences=[stop])
    assert cut.content[0].text == text[: text.index(stop)]
    # dinet's answer cannot say whether the stop string or the model ended it (docs/gateway.md).
    assert cut.stop_reason in ("end_turn", "stop_sequence")


REFUSED = [
    ({"extra_body": {"top_k": 5}}, "top_k"),
    ({"tools": [{"name": "f", "input_schema": {"type": "object"}}]}, "tools"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}],
                }
            ]
        },
        "'image'",
    ),
    ({"messages": [*LONG, {"role": "assistant", "content": "One, two,"}]}, "messages.1"),  # a prefill
]


def test_what_dinet_cannot_do_is_refused_by_name(claude):
    for change, named in REFUSED:
        with pytest.raises(anthropic.BadRequestError) as refused:
            claude.messages.create(**{"model": MODEL, "max_tokens": 8, "messages": LONG, **change})
        assert named in refused.value.message, change
        assert refused.value.body["type"] == "error"
        assert refused.value.body["error"]["type"] == "invalid_request_error"


def test_errors_are_anthropic_errors_of_the_right_class(claude, gateway):
    wrong = anthropic.Anthropic(base_url=gateway.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as unauthorized:
        wrong.messages.create(model=MODEL, max_tokens=8, messages=LONG)
    assert unauthorized.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=LONG)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in unknown.value.body["error"]["message"]


def _events(text: str) -> list[tuple[str, dict]]:
    """(name, data) of each server-sent event in a whole body."""
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events
