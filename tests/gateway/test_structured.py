"""Structured outputs through the gateway, with the official `openai` SDK's own
`chat.completions.parse`, and through the network with every answer re-scored: the
grammar travels in the request, so the peer that verifies keeps to it too."""

from __future__ import annotations

import json

from pydantic import BaseModel
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.client.structured import json_schema_grammar

MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Describe a person as JSON with their name and age."}]


class Person(BaseModel):
    name: str
    age: int


def test_parse_with_a_pydantic_model_gives_that_model(client):
    completion = client.chat.completions.parse(
        model=MODEL, messages=ASK, response_format=Person, temperature=0, max_tokens=48
    )
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(message.parsed, Person) and message.parsed.name


def test_json_mode_streams_the_text_it_answers_whole(client):
    asked = {"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": 24}
    whole = client.chat.completions.create(**asked, response_format={"type": "json_object"})
    streamed = client.chat.completions.create(**asked, response_format={"type": "json_object"}, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == whole.choices[0].message.content and text.lstrip().startswith("{")


async def test_a_sampled_structured_answer_is_verified_under_its_grammar(client_settings, mesh):
    schema = Person.model_json_schema()
    params = chat(
        ASK[0]["content"], max_tokens=40, temperature=1.0, seed=4, grammar=json_schema_grammar(schema)
    )
    async with open_network(client_settings) as network:
        await network.discover(None, mesh.nodes[0].model_hash, timeout=20, want=len(mesh.nodes))
        _, answer = await answer_to(network, params, verify_rate=1.0)
    Person.model_validate(json.loads(answer.text))
    check = answer.verification
    assert check is not None and check.verified is True and check.verifier != answer.peer_id, check
