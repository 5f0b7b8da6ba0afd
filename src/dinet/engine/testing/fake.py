"""A FAKE engine, for benchmarks only: it runs no model at all.

    din node --fake-engine          # serves model "fake-echo", answers by echoing the prompt

`bench/scale.py` starts a hundred nodes on one machine; a hundred llama.cpp workers would
not fit in its memory, and what it measures (membership, discovery, routing, failover)
does not depend on what the tokens mean. A fake node is otherwise a real node: the real
/dinet/infer/1 handler streams the fake's tokens, signs receipts and refuses when busy, so
clients, routing and failover run their real code against it.

It can never be taken for a model: the model id is `fake-echo`, the model hash is derived
from the string "fake" (no GGUF file has it), and the node logs a loud warning.

The answer is deterministic: the words of the last message, repeated until `max_tokens`,
one word a token, each after `TOKEN_S` (so a stream lasts long enough to be interrupted).
A failover resume (`prefix_tokens`) continues at the same word, as a real engine would.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import AsyncGenerator

import trio

from dinet.wire.ids import ModelHash
from dinet.wire.messages import EndFrame, ErrorFrame, GenerationParams, TokenFrame, Usage

FAKE_MODEL_ID = "fake-echo"
FAKE_MODEL_HASH = ModelHash(hashlib.sha256(b"fake").hexdigest())
FAKE_QUANTIZATION = "fake"
FAKE_CONTEXT = 2048
FAKE_LAYERS = 1
FAKE_VOCAB = 50_000  # token ids are word hashes modulo this
TOKEN_S = 0.005  # the pace of a fast small model on one core


class FakeEngine:
    """Serves `generate` as `WorkerEngine` does (TokenFrames, then one EndFrame), without a model."""

    reply_buffered = False  # every token is its own write, as the slowest real worker's are

    async def generate(
        self, params: GenerationParams
    ) -> AsyncGenerator[TokenFrame | EndFrame | ErrorFrame, None]:
        received = trio.current_time()
        if params.grammar is not None or params.logprobs is not None:  # echoed words have neither
            yield ErrorFrame(code="bad_request", message="the fake engine has no grammar nor logprobs")
            return
        words = _words(params)
        index = len(params.prefix_tokens)
        first_at = 0.0
        while index < params.max_tokens:
            await trio.sleep(TOKEN_S)
            first_at = first_at or trio.current_time()
            word = words[index % len(words)] + " "
            yield TokenFrame(index=index, token_id=zlib.crc32(word.encode()) % FAKE_VOCAB, text=word)
            index += 1
        elapsed = trio.current_time() - first_at if first_at else 0.0
        made = index - len(params.prefix_tokens)
        yield EndFrame(
            finish_reason="length",
            usage=Usage(prompt_tokens=len(words), completion_tokens=index),
            ttft_ms=1000.0 * max(0.0, (first_at or trio.current_time()) - received),
            tokens_per_s=(made - 1) / elapsed if made > 1 and elapsed > 0 else 0.0,
        )


def _words(params: GenerationParams) -> list[str]:
    """What is echoed: the last message's words (or the prompt's), never nothing."""
    text = params.prompt if params.messages is None else params.messages[-1].content
    return (text or "").split() or ["fake"]
