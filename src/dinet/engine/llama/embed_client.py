"""The node's side of an embedding worker (`embed_process`).

    async with EmbedEngine(embedding_model_path(), threads=1) as engine:
        reply = await engine.embed(EmbedTexts(inputs=("a text",)))  # EmbeddingsFrame | ErrorFrame

A `WorkerEngine` in everything but what it asks: the same spawn in the sandbox, ready
frame, restart budget and crash handling; one request-reply exchange at a time, like
scoring.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import trio

from dinet.engine.llama.worker_client import WorkerEngine
from dinet.errors import EngineUnavailable, MalformedMessage, WireError
from dinet.wire.embed import EmbeddingsFrame, EmbedTexts, decode_embed_reply
from dinet.wire.framing import encode_frame
from dinet.wire.messages import ErrorFrame, encode

EMBED_LIMIT_S = 60.0  # one request of at most MAX_EMBED_INPUTS texts of a window each


class EmbedEngine(WorkerEngine):
    """Owns one embedding worker process serving one embedding GGUF."""

    def __init__(
        self, model_path: Path | str, *, threads: int = 1, liar: str | None = None, **options: Any
    ) -> None:
        super().__init__(model_path, threads=threads, **options)
        self._argv = [
            sys.executable, "-m", "dinet.engine.llama.embed_process",
            "--model", str(self.model_path),
            "--threads", str(threads),
            *self._argv[self._argv.index("--extra-bufts"):],  # and the memory limit, when set
        ]  # fmt: skip
        if liar is not None:  # testing only; the worker refuses it without DINET_ALLOW_LIARS=1
            self._argv += ["--liar", liar]

    @property
    def dimensions(self) -> int:
        worker = self._worker
        if worker is None or worker.ready is None or worker.ready.embedding_dims is None:
            raise EngineUnavailable("the embedding worker has not started yet")
        return worker.ready.embedding_dims

    async def embed(self, request: EmbedTexts) -> EmbeddingsFrame | ErrorFrame:
        """One `EmbeddingsFrame` (a vector per input) or `ErrorFrame`.

        Shielded from cancellation, like scoring: a reply left unread would be taken for
        the next request's. A worker that takes over EMBED_LIMIT_S is replaced (EngineCrashed).
        """
        async with self._slot:
            worker = await self._ready_worker()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(EMBED_LIMIT_S):
                    try:
                        await worker.stdin.send_all(encode_frame(encode(request)))
                        payload = await worker.frames.read_frame()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._crashed(worker, "its pipes broke while embedding")
                    except WireError as exc:
                        await self._crashed(worker, f"it sent garbage ({exc})")
                    if payload is None:
                        await self._crashed(worker, "its output ended while embedding")
                    try:
                        reply = decode_embed_reply(payload)
                    except MalformedMessage as exc:
                        await self._crashed(worker, f"it sent garbage while embedding ({exc})")
                    if isinstance(reply, EmbeddingsFrame | ErrorFrame):
                        self._failures = 0
                        return reply
                    await self._crashed(worker, f"it answered an embed request with {reply.kind}")
                await self._crashed(worker, f"it did not embed within {EMBED_LIMIT_S:g} s")
