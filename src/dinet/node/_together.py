"""Several whole models served by one node (`din node --model A --also-serve B`): one
`Serving` whose handlers pass each stream to the model its request names.

Each model has its own engine worker (so its own llama.cpp memory: the model's weights,
KV cache and prefix cache, under `memory_mb` each), its own speed figures, receipts and
verification. All of them share the node's generation slots and queue (one `Admission`:
`max_concurrent` generations at once whatever their model, so two engines never decode
on more threads than one would), its clients' standing (one probation) and its per-peer
limits, which are held here before the request is read, as each protocol's own handler
does on a node of one model (`dinet.node._serving.Shared`).

A request that names no model goes to the first (`--model`); so does one for a model the
node does not serve, and the first refuses it as any one-model node does (`unknown_model`).
Model chunks are not dispatched: one chunk server answers for every model in the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import cast

from dinet.errors import PeerError, first_dinet_error
from dinet.node._replies import read_request, within_limits
from dinet.node._serving import Serving
from dinet.node.limits import PeerLimiter
from dinet.p2p.streams import FramedStream, Handler, Stream
from dinet.wire.ids import INFER_PROTOCOL, VERIFY_PROTOCOL, ModelHash, PeerId
from dinet.wire.messages import decode_request
from dinet.wire.verify import decode_verify_request

logger = logging.getLogger(__name__)


def _infer_names(payload: bytes) -> tuple[ModelHash | None, str | None]:
    request = decode_request(payload)
    return request.model_hash, request.model_id


def _verify_names(payload: bytes) -> tuple[ModelHash | None, str | None]:
    return decode_verify_request(payload).model_hash, None


# Per protocol: the model (hash, id; None: any) a request's payload names.
_NAMED: dict[str, Callable[[bytes], tuple[ModelHash | None, str | None]]] = {
    INFER_PROTOCOL: _infer_names,
    VERIFY_PROTOCOL: _verify_names,
}


def together(servings: Sequence[Serving], limiter: PeerLimiter, max_request_bytes: int) -> Serving:
    """The node's one Serving for `servings` (whole models sharing one Admission, and no
    per-peer limiter of their own: `limiter` is theirs): the first's fields, its manifest
    offer and the others' (`also`), and each request passed to the model it names."""
    first, *others = servings
    protocols = {protocol for serving in servings for protocol in serving.handlers}
    if not protocols <= _NAMED.keys():
        raise ValueError(f"no dispatch for {sorted(protocols - _NAMED.keys())}")
    return Serving(
        first.model_id,
        first.model_hash,
        {p: _dispatch(p, servings, limiter, max_request_bytes) for p in protocols},
        first.offer,
        lambda: _figures(servings),
        available=first.available,
        state=first.state,
        busy=lambda: any(serving.busy() for serving in servings),
        background=[task for serving in servings for task in serving.background],
        also=others,
    )


def _figures(servings: Sequence[Serving]) -> dict[str, object]:
    """The manifest's speed and load: one set for the node, so the slowest model's speed
    (of those measured) and the longest time to first token; the load is the shared
    admission's, the same in every model's figures."""
    each = [serving.figures() for serving in servings]
    speeds = [cast(float, f["tokens_per_s"]) for f in each]
    return {
        **each[0],
        "tokens_per_s": min((s for s in speeds if s > 0), default=0.0),
        "ttft_ms": max(cast(float, f["ttft_ms"]) for f in each),
    }


def _serving_named(
    servings: Sequence[Serving], model_hash: ModelHash | None, model_id: str | None
) -> Serving:
    """The model a request names (by hash, id or both); the first if it names none served."""
    for serving in servings:
        if model_hash in (None, serving.model_hash) and model_id in (None, serving.model_id):
            return serving
    return servings[0]


def _dispatch(protocol: str, servings: Sequence[Serving], limiter: PeerLimiter, max_bytes: int) -> Handler:
    named = _NAMED[protocol]

    async def handle(stream: Stream) -> None:
        replay = _Replay(stream)
        framed = FramedStream(replay, max_size=max_bytes)

        async def pass_on() -> None:
            read = await read_request(framed, named)
            if read is None:  # gone, late, too large or malformed: refused as the model would
                await framed.close()
                return
            serving = _serving_named(servings, *read[0])
            handler = serving.handlers.get(protocol)
            if handler is None:  # a protocol only some models speak: the first refuses
                handler = servings[0].handlers[protocol]
            replay.rewind()
            await handler(replay)

        try:
            await within_limits(framed, limiter, pass_on)
        except* PeerError as gone:
            logger.info(
                "client %s went away before its request: %s", framed.remote_peer, first_dinet_error(gone)
            )
            await framed.reset()

    return handle


class _Replay(Stream):
    """`stream`, whose bytes read before `rewind()` are read again after it: the request a
    dispatcher reads to choose a model, which that model's handler then reads itself."""

    def __init__(self, stream: Stream) -> None:  # no super().__init__: every method is passed on
        self._stream = stream
        self._read: bytearray | None = bytearray()  # None: not kept any more
        self._again = bytearray()

    @property
    def remote_peer(self) -> PeerId:
        return self._stream.remote_peer

    def rewind(self) -> None:
        assert self._read is not None
        self._again, self._read = self._read, None

    async def read(self, n: int) -> bytes:
        if self._again:
            data = bytes(self._again[:n])
            del self._again[:n]
            return data
        data = await self._stream.read(n)
        if self._read is not None:
            self._read += data
        return data

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    async def close(self) -> None:
        await self._stream.close()

    async def reset(self) -> None:
        await self._stream.reset()
