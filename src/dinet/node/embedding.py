"""The /dinet/embed/1 handler, and the embedding model a node serves beside its own
(`din node --embedding-model PATH`).

One `embed` frame in; `queued` frames while the engine is busy with another request;
one `embeddings` (or `error`) frame out, with a receipt for the prompt tokens that the
client countersigns, as for inference. The same per-peer limits as inference apply,
with an admission queue of its own: embeddings never take a generation's slot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import trio

from dinet.config import NodeSettings
from dinet.errors import EngineCrashed, EngineUnavailable, InferenceError, PeerError, first_dinet_error
from dinet.models.hashing import model_hash as hash_model
from dinet.node._replies import read_request, refuse, tell_queued, within_limits
from dinet.node.admission import Admission, Busy
from dinet.node.limits import PeerLimiter
from dinet.node.receipts import Accountant
from dinet.p2p.streams import FramedStream, Handler, Stream
from dinet.wire.embed import EmbeddingsFrame, EmbedTexts, decode_embed_request
from dinet.wire.framing import MAX_FRAME
from dinet.wire.ids import EMBED_PROTOCOL, ModelHash
from dinet.wire.manifest import ModelOffer
from dinet.wire.messages import ErrorFrame
from dinet.wire.receipt import request_hash

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    async def embed(self, request: EmbedTexts) -> EmbeddingsFrame | ErrorFrame: ...


class EmbedService:
    def __init__(
        self,
        engine: Embedder,
        admission: Admission,
        model_hash: ModelHash,
        limiter: PeerLimiter | None = None,
        max_request_bytes: int = MAX_FRAME,
        accountant: Accountant | None = None,
    ) -> None:
        self._engine = engine
        self._accountant = accountant
        self.admission = admission
        self._model_hash = model_hash
        self._limiter = limiter
        self._max_request_bytes = max_request_bytes
        self.served = 0

    async def handle(self, stream: Stream) -> None:
        framed = FramedStream(stream, max_size=self._max_request_bytes)
        try:
            await within_limits(framed, self._limiter, lambda: self._serve(framed))
        except* PeerError as gone:
            logger.info("client %s went away mid-embedding: %s", framed.remote_peer, first_dinet_error(gone))
            await framed.reset()
        else:
            await framed.close()

    async def _serve(self, framed: FramedStream) -> None:
        read = await read_request(framed, decode_embed_request)
        if read is None:
            return
        request, payload = read
        if request.model_hash != self._model_hash:
            await refuse(framed, "unknown_model", f"this node embeds with no model {request.model_hash}")
            return
        try:
            async with self.admission.slot(
                while_waiting=lambda: tell_queued(framed, self.admission), peer=framed.remote_peer
            ):
                reply = await self._engine.embed(request.to_worker())
        except Busy as exc:
            await refuse(framed, "busy", str(exc))
            return
        except EngineCrashed as exc:
            await refuse(framed, "engine_crashed", str(exc))
            return
        except InferenceError as exc:
            await refuse(framed, "internal", str(exc))
            return
        receipt = None
        if isinstance(reply, EmbeddingsFrame):
            if self._accountant is not None:
                receipt = self._accountant.issue_for_prompt(
                    request_id=request.request_id,
                    request_hash=request_hash(payload),
                    client=framed.remote_peer,
                    model_hash=self._model_hash,
                    prompt_tokens=sum(reply.tokens),
                )
            reply = reply.model_copy(update={"model_hash": self._model_hash, "receipt": receipt})
            self.served += 1
        await framed.send(reply)
        if receipt is not None and self._accountant is not None:
            await self._accountant.settle(framed, receipt)


@dataclass
class EmbeddingServing:
    """What the node adds for its embedding model: a handler and an offer (None while
    the engine is not available)."""

    model_id: str
    model_hash: ModelHash
    handlers: dict[str, Handler]
    offer: Callable[[], ModelOffer | None]
    state: Callable[[], dict[str, object]]


def embedding_model_id(path_name: str) -> str:
    """`all-minilm-l6-v2.gguf` -> `all-minilm-l6-v2`."""
    return path_name.removesuffix(".gguf").lower()[:128] or "embedding-model"


@asynccontextmanager
async def embedding_served(
    settings: NodeSettings, accountant: Accountant | None = None
) -> AsyncIterator[EmbeddingServing | None]:
    """The node's embedding model served by its own worker; None when it has none."""
    if settings.embedding_model is None:
        yield None
        return
    from dinet.engine.llama.embed_client import EmbedEngine

    path = settings.embedding_model
    model_hash = await trio.to_thread.run_sync(hash_model, path)
    engine = EmbedEngine(
        path,
        threads=settings.threads,
        memory_mb=settings.memory_mb,
        log_path=settings.home / "embed-worker.log",
        sandbox=settings.sandbox,
        max_restarts=settings.engine_restarts,
        restart_backoff_s=settings.engine_backoff_s,
        liar=settings.embedding_liar,
    )
    dimensions: int | None = None
    try:
        await engine.start()
        dimensions = engine.dimensions
    except EngineUnavailable as exc:
        logger.error("the embedding model %s is not served: %s", path.name, exc)
    model_id = embedding_model_id(path.name)
    service = EmbedService(
        engine,
        Admission(1, settings.max_queue),
        model_hash,
        limiter=PeerLimiter(settings.per_peer_rate, settings.per_peer_burst, settings.per_peer_concurrency),
        max_request_bytes=settings.max_request_bytes,
        accountant=accountant,
    )

    def offer() -> ModelOffer | None:
        if not engine.available or dimensions is None:
            return None
        info = engine.info
        return ModelOffer(
            model_id=model_id,
            model_hash=model_hash,
            quantization=info.quantization,
            context=info.n_ctx,
            layers=(0, info.n_layers),
            task="embed",
            dimensions=dimensions,
        )

    def state() -> dict[str, object]:
        return {"model_id": model_id, "serving": engine.available, "error": engine.failed}

    try:
        logger.info("serving embeddings with %s (%s)", model_id, model_hash)
        yield EmbeddingServing(model_id, model_hash, {EMBED_PROTOCOL: service.handle}, offer, state)
    finally:
        await engine.aclose()
