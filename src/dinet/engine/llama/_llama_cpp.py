"""Loading a GGUF with llama-cpp-python, and building prompts exactly as it does.

Imported by the worker process and by tests that compare against in-process
llama.cpp; the node itself never imports llama_cpp.

The AMX workaround: llama.cpp repacks weights for the CPU's "extra buffer types".
On CPUs that report AMX it picks the AMX buffer type, and in this llama.cpp build
that path segfaults on the first decode (`ggml_backend_amx_mul_mat`). Model params
`use_extra_bufts=False` avoid it, but `Llama` has no keyword for them: it starts from
`llama_cpp.llama_cpp.llama_model_default_params()`. `load_llama` wraps that function
for the duration of one `Llama(...)` call and restores it. It is applied only when
/proc/cpuinfo reports AMX, because on other x86 CPUs the same extra buffer types
repack Q4_0-family weights into faster layouts, and turning them off everywhere
would cost those machines speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gguf
import jinja2
import jinja2.ext
import jinja2.meta
import llama_cpp
import llama_cpp.llama_cpp as llama_c
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from dinet.engine.info import ModelInfo
from dinet.wire.messages import ChatMessage, Tool

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

logger = logging.getLogger(__name__)

_AMX_FLAGS = frozenset({"amx_tile", "amx_int8", "amx_bf16"})


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU reports any AMX feature flag (False where unknown)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return not _AMX_FLAGS.isdisjoint(line.partition(":")[2].split())
    return False


@contextlib.contextmanager
def _model_params_without_extra_bufts() -> Iterator[None]:
    original = llama_c.llama_model_default_params

    def patched() -> llama_c.llama_model_params:
        params = original()
        params.use_extra_bufts = False
        return params

    llama_c.llama_model_default_params = patched
    try:
        yield
    finally:
        llama_c.llama_model_default_params = original


def load_llama(
    path: Path | str,
    *,
    threads: int,
    n_ctx: int = 2048,
    extra_bufts: bool | None = None,
    **options: Any,
) -> llama_cpp.Llama:
    """A `Llama` on CPU with explicit thread counts and only the last logits kept.

    `extra_bufts=None` decides from the CPU: off where AMX is reported (see above).
    `options` go to `Llama` as they are (`embedding=True`, `pooling_type=...`).
    """
    if extra_bufts is None:
        extra_bufts = not cpu_has_amx()
    scope = contextlib.nullcontext() if extra_bufts else _model_params_without_extra_bufts()
    with scope:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
            **options,
        )
    logger.info("loaded %s (extra_bufts=%s, threads=%d)", path, extra_bufts, threads)
    return llm


def read_model_info(llm: llama_cpp.Llama, path: Path | str) -> ModelInfo:
    meta = llm.metadata
    arch = meta.get("general.architecture", "unknown")
    quantization = _quantization_name(meta.get("general.file_type"))
    return ModelInfo(
        model_id=model_id_from_path(Path(path), quantization),
        architecture=arch,
        quantization=quantization,
        n_ctx=llm.n_ctx(),
        n_ctx_train=_int(meta.get(f"{arch}.context_length")),
        n_layers=_int(meta.get(f"{arch}.block_count")),
        n_vocab=llm.n_vocab(),
        has_chat_template="tokenizer.chat_template" in meta,
        tools=template_tools(meta.get("tokenizer.chat_template")),
    )


def template_tools(template: str | None) -> bool:
    """Whether a chat template declares tool support in the one format dinet reads back.

    The rule: the template reads the variable `tools` (it renders the functions offered)
    and its text holds `<tool_call>` (it shows the model, and renders back, calls in the
    Hermes format that Qwen 2.5 and 3, Hermes and SmolLM3 use: `<tool_call>{"name": ...,
    "arguments": {...}}</tool_call>`). A template in any other format would leave the
    gateway guessing at the calls, so it counts as no tool support.
    """
    if template is None or TOOL_CALL_OPEN not in template:
        return False
    environment = jinja2.Environment(
        extensions=[Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols]
    )
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(environment.parse(template))
    except jinja2.TemplateSyntaxError:
        return False


def model_id_from_path(path: Path, quantization: str) -> str:
    """`SmolLM2-135M-Instruct.Q4_1.gguf` -> `smollm2-135m-instruct`."""
    stem = path.name.removesuffix(".gguf")
    base, dot, tail = stem.rpartition(".")
    if dot and tail.lower() == quantization:
        stem = base
    return stem.lower()[:128] or "model"


def _quantization_name(file_type: str | None) -> str:
    try:
        return gguf.LlamaFileType(int(file_type or "")).name.removeprefix("MOSTLY_").lower()
    except ValueError:
        return "unknown"


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def chat_formatter(llm: llama_cpp.Llama) -> Jinja2ChatFormatter | None:
    """The GGUF's chat template, set up as `Llama.__init__` sets it up (None if absent)."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        return None
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
        bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
        add_generation_prompt=True,
        stop_token_ids=[eos_id],
    )


def chat_prompt(
    llm: llama_cpp.Llama,
    formatter: Jinja2ChatFormatter,
    messages: Sequence[ChatMessage],
    tools: Sequence[Tool] = (),
) -> tuple[list[int], tuple[str, ...]]:
    """Prompt tokens and the template's stop strings, as `create_chat_completion` builds them;
    `tools` and the messages' tool calls given to the template as Hugging Face's give them."""
    as_dicts: Any = [_message_dict(m) for m in messages]
    offered: Any = [tool.as_openai() for tool in tools] or None
    result = formatter(messages=as_dicts, tools=offered)
    tokens = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    stops = [result.stop] if isinstance(result.stop, str) else list(result.stop or [])
    return tokens, tuple(s for s in stops if s)


def _message_dict(message: ChatMessage) -> dict[str, object]:
    """A message as templates read it: a call's arguments as an object where they are one."""
    entry: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _object(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def _object(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def raw_prompt(llm: llama_cpp.Llama, prompt: str) -> list[int]:
    """Prompt tokens as `create_completion` builds them for a string prompt."""
    model = llm._model
    bos_id = model.token_cls() if model.token_cls() != -1 else llm.token_bos()
    sep_id = model.token_sep()
    bos = [bos_id] if model.add_bos_token() and bos_id != -1 else []
    eos = [sep_id if sep_id != -1 else llm.token_eos()]
    if not model.add_eos_token() and sep_id == -1:
        eos = []
    body = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True) if prompt else []
    return bos + body + eos


def token_piece(llm: llama_cpp.Llama, token: int) -> bytes:
    """The bytes of one token, as text (control tokens give b"").

    Not `Llama.detokenize`: it reads into a 32-byte buffer and silently returns
    nothing for longer tokens (this model has whitespace runs of 33+ bytes).
    """
    size = 64
    while True:
        buffer = ctypes.create_string_buffer(size)
        n = llama_c.llama_token_to_piece(llm._model.vocab, token, buffer, size, 0, False)
        if n >= 0:
            return buffer.raw[:n]
        size = -n  # too small: llama.cpp says how many bytes it needs
