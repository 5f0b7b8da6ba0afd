"""A test model with tool support: the default SmolLM2 GGUF with its chat template replaced
by one in the Hermes format (Qwen 2.5's shape, written here), which renders the functions
offered in a `<tools>` system block, asks for calls as `<tool_call>{"name": ...,
"arguments": {...}}</tool_call>`, and renders calls and their results back. Weights,
vocabulary and every other key are the original's, so the copy takes a second to make."""

from __future__ import annotations

from pathlib import Path

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from dinet.engine import default_model_path

TOOL_MODEL_ID = "smollm2-135m-tools"

TOOL_TEMPLATE = (
    "{%- set first = 1 if messages and messages[0].role == 'system' else 0 -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{{- messages[0].content + '\\n\\n' if first else '' -}}"
    "{{- 'You can call functions to answer. They are described in JSON"
    " within <tools></tools>:\\n<tools>\\n' -}}"
    "{%- for tool in tools -%}{{- (tool | tojson) + '\\n' -}}{%- endfor -%}"
    "{{- '</tools>\\n\\nTo call one, answer with a JSON object of its name and arguments within"
    ' <tool_call></tool_call>:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\\n</tool_call><|im_end|>\\n' -}}"
    "{%- elif first -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages[first:] -%}"
    "{%- if message.role == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message.content + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' and message.tool_calls -%}"
    "{{- '<|im_start|>assistant\\n' + (message.content or '') -}}"
    "{%- for call in message.tool_calls -%}"
    "{{- '\\n<tool_call>\\n' + ({'name': call.function.name, 'arguments': call.function.arguments} | tojson)"
    " + '\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def make_tool_model(directory: Path) -> Path:
    """The SmolLM2 GGUF with TOOL_TEMPLATE as its chat template, written into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "SmolLM2-135M-Tools.gguf"  # its model id: smollm2-135m-tools
    reader = gguf.GGUFReader(default_model_path(), "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(path, arch=arch, endianess=reader.endianess)
    template = MetadataDetails(gguf.GGUFValueType.STRING, TOOL_TEMPLATE)
    copy_with_new_metadata(reader, writer, {gguf.Keys.Tokenizer.CHAT_TEMPLATE: template}, [])
    return path
