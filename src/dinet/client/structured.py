"""Structured outputs: the grammar a request carries for a JSON answer.

A request asks for JSON (any object) or for JSON that matches a schema; either becomes a
GBNF grammar here, on the asking side, with the converter llama-cpp-python ships. The
grammar itself travels in the request (`GenerationParams.grammar`), not the schema: every
peer that serves, resumes or verifies the answer then keeps to the very same rules,
whichever converter version it has.

A request that must call a tool (`tool_choice` "required" or a named function) is
constrained the same way, to one call in the format the chat template asks for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dinet.errors import RequestError
from dinet.wire.messages import Tool


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


def tool_call_grammar(tools: Sequence[Tool], param: str = "tools") -> str:
    """One call of one of `tools`, in the Hermes format the tool templates ask for:
    `<tool_call>` JSON of the function's `name` and its `arguments` (matching its parameters'
    schema) `</tool_call>`. RequestError naming `param` for a schema without a grammar."""
    from llama_cpp.llama_grammar import SchemaConverter

    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": json.loads(tool.parameters)},
            "required": ["name", "arguments"],
        }
        for tool in tools
    ]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        converter.visit(converter.resolve_refs(schema, "tools"), "call")
        rules = converter.format_grammar()
    except Exception as exc:  # as above: the converter's errors are of many kinds
        raise RequestError(
            f"{param}: a function's parameters cannot be turned into a grammar: {exc}", param
        ) from None
    return f'root ::= "<tool_call>\\n" call "\\n</tool_call>"\n{rules}'
