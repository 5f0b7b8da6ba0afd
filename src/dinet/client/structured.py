"""Structured outputs: the grammar a request carries for a JSON answer.

A request asks for JSON (any object) or for JSON that matches a schema; either becomes a
GBNF grammar here, on the asking side, with the converter llama-cpp-python ships. The
grammar itself travels in the request (`GenerationParams.grammar`), not the schema: every
peer that serves, resumes or verifies the answer then keeps to the very same rules,
whichever converter version it has.
"""

from __future__ import annotations

import json
from typing import Any

from dinet.errors import RequestError


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's `json_object` mode)."""
    from llama_cpp.llama_grammar import JSON_GBNF  # imported on use: it loads llama.cpp's library

    return JSON_GBNF


def json_schema_grammar(schema: dict[str, Any], param: str = "response_format") -> str:
    """JSON matching `schema` (JSON Schema as OpenAI's `json_schema` mode takes it).
    RequestError naming `param` for a schema the converter cannot turn into a grammar."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain errors of many kinds for what it cannot do
        raise RequestError(
            f"{param}: this JSON schema cannot be turned into a grammar: {exc}", param
        ) from None
