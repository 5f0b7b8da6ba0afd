"""The official `openai` package's Responses API against a real `din gateway` and the real
3-node mesh: the answer the chat API gives, in the Responses API's shapes."""

from __future__ import annotations

from typing import Literal

import openai
import pytest
from pydantic import BaseModel

MODEL = "smollm2-135m-instruct"
SYSTEM = "You are a helpful assistant. Answer briefly."
SHORT = "What is 2+2?"  # answered in about 11 tokens
LONG = "Count from one to fifty in words."
STATUSES = {"stop": "completed", "length": "incomplete"}


def test_a_response_is_the_chat_answer_in_responses_shape(client, mesh):
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "Name three colours."},
        ],
        max_tokens=16,
        temperature=0,
    )
    raw = client.responses.with_raw_response.create(
        model=MODEL,
        instructions=SYSTEM,
        input=[
            {"role": "user", "content": "Name a fruit."},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "An apple."}],
            },
            {"role": "user", "content": [{"type": "input_text", "text": "Name three colours."}]},
        ],
        max_output_tokens=16,
        temperature=0,
    )
    response = raw.parse()
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.output_text == chat.choices[0].message.content
    assert response.status == STATUSES[chat.choices[0].finish_reason]
    [item] = response.output
    assert item.type == "message" and item.role == "assistant"
    assert [part.type for part in item.content] == ["output_text"]
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.usage.total_tokens == chat.usage.total_tokens
    assert raw.headers["x-dinet-peer"] in {n.peer_id for n in mesh.nodes}


def test_max_output_tokens_leaves_a_response_incomplete_streamed_or_not(client):
    whole = client.responses.create(model=MODEL, input=LONG, max_output_tokens=8, temperature=0)
    assert whole.status == "incomplete" and whole.output[0].status == "incomplete"
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == 8
    events = list(
        client.responses.create(model=MODEL, input=LONG, max_output_tokens=8, temperature=0, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.output_text == whole.output_text
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_a_streamed_response_gives_the_same_text_in_responses_events(client):
    whole = client.responses.create(model=MODEL, input=SHORT, max_output_tokens=16, temperature=0)
    assert whole.status == "completed", "the prompt should be answered within the budget"
    with client.responses.stream(model=MODEL, input=SHORT, max_output_tokens=16, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == whole.output_text
    assert final.status == "completed"
    assert final.usage.output_tokens == whole.usage.output_tokens


REFUSED = [
    ({"tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}]}, "tools"),
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"store": True}, "store"),
    ({"reasoning": {"effort": "low"}}, "reasoning"),
    ({"text": {"format": {"type": "xml"}}}, "text.format"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
        "input.0.content.0",
    ),
]


def test_what_dinet_cannot_do_is_refused_by_name(client):
    for change, named in REFUSED:
        with pytest.raises(openai.BadRequestError) as refused:
            client.responses.create(**{"model": MODEL, "input": LONG, "max_output_tokens": 8, **change})
        assert refused.value.param == named, change
        assert named in refused.value.message


def test_errors_are_openai_errors_of_the_right_class(client, gateway):
    wrong = openai.OpenAI(base_url=gateway.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.responses.create(model=MODEL, input=LONG, max_output_tokens=8)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="no-such-model", input=LONG, max_output_tokens=8)
    assert unknown.value.code == "model_not_found"


def test_parse_with_a_pydantic_model_gives_that_model(client):
    class Colour(BaseModel):
        name: Literal["red", "green", "blue"]

    response = client.responses.parse(
        model=MODEL, input="Name a colour.", text_format=Colour, temperature=0, max_output_tokens=24
    )
    assert response.status == "completed" and isinstance(response.output_parsed, Colour)
