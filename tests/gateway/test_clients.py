"""Clients written elsewhere, unchanged, against the gateway: `instructor` and LangChain's
`ChatOpenAI`. Each sends its own set of request fields; the gateway must take them all."""

from __future__ import annotations

from typing import Literal

import instructor
import openai
from _gateway_helpers import API_KEY
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

MODEL = "smollm2-135m-instruct"


class Weather(BaseModel):
    sky: Literal["sunny", "rainy"]


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    name: str = Field(max_length=12)


def test_instructor_returns_the_model(gateway):
    # Mode.JSON_SCHEMA sends the schema as response_format, which the gateway keeps the answer
    # to. (Mode.JSON asks for any JSON object and puts the schema in a system message: the
    # 135M model's greedy answer then echoes the schema itself, so instructor's validation fails.)
    client = instructor.from_openai(
        openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0, timeout=120),
        mode=instructor.Mode.JSON_SCHEMA,
    )
    weather = client.chat.completions.create(
        model=MODEL,
        response_model=Weather,
        messages=[{"role": "user", "content": "The sun is shining. Is the sky sunny or rainy?"}],
        temperature=0,
        max_tokens=48,
        max_retries=0,
    )
    assert isinstance(weather, Weather) and weather.sky in ("sunny", "rainy")


def test_langchain_streams_what_it_invokes_and_keeps_to_a_schema(gateway):
    def chat_model(max_tokens: int) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=gateway.base_url,
            api_key=API_KEY,
            model=MODEL,
            temperature=0,
            max_tokens=max_tokens,
            max_retries=0,
        )

    asked = "Name three colours."
    whole = chat_model(16).invoke(asked).content
    streamed = "".join(str(chunk.content) for chunk in chat_model(16).stream(asked))
    assert whole and streamed == whole

    pet = chat_model(32).with_structured_output(Pet, method="json_schema")
    answer = pet.invoke("Invent a pet: a cat or a dog, and its name.")
    assert isinstance(answer, Pet) and answer.name
