"""A node's side of model sharing: serving `/dinet/chunks/1`, preparing its model
(import or pull before serving), and keeping the model's bytes healthy.

The keeper re-hashes the served model's chunks in the background at a bounded
rate. A mismatch takes the model out of service at once (no manifest offer, no
chunks, inference refused), the bad chunks are fetched again from peers that hold
the model, and service resumes once every chunk matches its hash again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from dinet.config import NodeSettings
from dinet.errors import (
    DinetError,
    FrameTooLarge,
    ModelCorrupted,
    ModelNotFound,
    PeerError,
    PullFailed,
    WireError,
)
from dinet.models.catalog import LocalModel, resolve_model
from dinet.models.fetch import fetch_chunks, open_swarm, pull_layers, pull_model
from dinet.models.layers import LayerSpan
from dinet.models.store import ModelStore, StoredModel
from dinet.p2p.gate import peer_gate
from dinet.p2p.identity import load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.streams import FramedStream, Handler, Stream
from dinet.wire.chunks import ChunkHeader, ChunkRequest, ModelCardQuery, decode_chunk_query
from dinet.wire.ids import ModelHash
from dinet.wire.messages import ErrorCode, ErrorFrame

logger = logging.getLogger(__name__)

IDLE_S = 30.0  # a chunk stream may wait this long for its next request
PULL_RETRY_S = 2.0
_HASH_CHARS = set("0123456789abcdef")


class ChunkServer:
    """Answers model card queries and chunk requests for complete, healthy stored models."""

    def __init__(
        self,
        store: ModelStore,
        is_healthy: Callable[[ModelHash], bool] = lambda _: True,
        on_corrupt: Callable[[ModelHash], None] = lambda _: None,
    ) -> None:
        self._store = store
        self._is_healthy = is_healthy
        self._on_corrupt = on_corrupt

    async def _model(self, model_hash: ModelHash) -> StoredModel | None:
        stored = await trio.to_thread.run_sync(self._store.get, model_hash)
        if stored is None or not stored.complete or not self._is_healthy(model_hash):
            return None
        return stored

    async def handle(self, stream: Stream) -> None:
        framed = FramedStream(stream)
        try:
            while True:
                with trio.fail_after(IDLE_S):
                    payload = await framed.receive()
                if payload is None:
                    break
                query = decode_chunk_query(payload)
                stored = await self._model(query.model_hash)
                if stored is None:
                    await framed.send(
                        ErrorFrame(code="unknown_model", message=f"no model {query.model_hash}")
                    )
                    break
                if isinstance(query, ModelCardQuery):
                    await framed.send(stored.signed)
                elif not await self._send_chunks(framed, stored, query):
                    break
        except WireError as exc:
            code: ErrorCode = "too_large" if isinstance(exc, FrameTooLarge) else "bad_request"
            await _try_send(framed, ErrorFrame(code=code, message=str(exc)[:1000]))
        except (PeerError, trio.TooSlowError) as exc:
            logger.debug("chunk stream from %s ended: %s", framed.remote_peer, exc)
        except ModelNotFound as exc:
            await _try_send(framed, ErrorFrame(code="bad_request", message=str(exc)[:1000]))
        await framed.close()

    async def _send_chunks(self, framed: FramedStream, stored: StoredModel, query: ChunkRequest) -> bool:
        count = len(stored.card.chunk_hashes)
        for index in query.indices:
            if index >= count:
                await framed.send(ErrorFrame(code="bad_request", message=f"chunk {index} >= {count} chunks"))
                return False
            try:
                data = await trio.to_thread.run_sync(self._store.read_chunk, stored, index)
            except ModelCorrupted as exc:
                self._on_corrupt(stored.model_hash)
                await framed.send(ErrorFrame(code="unknown_model", message=str(exc)))
                return False
            await framed.send(ChunkHeader(index=index, size=len(data)))
            await framed.send_payload(data)
        return True


async def _try_send(framed: FramedStream, frame: ErrorFrame) -> None:
    try:
        await framed.send(frame)
    except PeerError:
        pass  # the peer is gone: nothing to tell


def chunk_server(keepers: Sequence[ModelKeeper]) -> ChunkServer:
    """The node's chunk server, for every complete model of its store (one for all the
    models it serves): a kept model's chunks only while its keeper finds it healthy, and
    damage found while reading one reported to its keeper."""

    def report_corrupt(model_hash: ModelHash) -> None:
        for keeper in keepers:
            keeper.report_corrupt(model_hash)

    return ChunkServer(
        keepers[0].store, lambda model_hash: all(k.is_healthy(model_hash) for k in keepers), report_corrupt
    )


class ModelKeeper:
    """Keeps one served model checked, and repairs it from peers."""

    def __init__(
        self,
        store: ModelStore,
        model_hash: ModelHash,
        scrub_bytes_per_s: float,
        lull: Callable[[], Awaitable[None]],
    ) -> None:
        self.store = store
        self._lull = lull  # awaited before each chunk is re-checked
        self.model_hash = model_hash
        self.healthy = True
        self._rate = scrub_bytes_per_s
        self._suspect = trio.Event()
        self.repairs = 0

    def is_healthy(self, model_hash: ModelHash) -> bool:
        return model_hash != self.model_hash or self.healthy

    def report_corrupt(self, model_hash: ModelHash) -> None:
        if model_hash == self.model_hash:
            self.healthy = False
            self._suspect.set()

    def guard(self, handler: Handler) -> Handler:
        """`handler`, refusing every request while the model's bytes are known bad."""

        async def guarded(stream: Stream) -> None:
            if self.healthy:
                await handler(stream)
                return
            framed = FramedStream(stream)
            await _try_send(framed, ErrorFrame(code="unknown_model", message="model under repair"))
            await framed.close()

        return guarded

    async def keep_healthy(self, joiner: Joiner) -> None:
        """Scrub forever; on damage, repair from peers until every chunk matches again."""
        stored = await trio.to_thread.run_sync(self.store.get, self.model_hash)
        assert stored is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._scrub, stored)
            while True:
                await self._suspect.wait()
                self.healthy = False
                logger.warning("model %s is damaged: out of service until repaired", self.model_hash[:16])
                # A retry pause, not a wait for an event.
                while not await self._repair(joiner, stored):  # noqa: ASYNC110
                    await trio.sleep(PULL_RETRY_S)
                self._suspect = trio.Event()
                self.healthy = True
                self.repairs += 1
                logger.warning("model %s repaired: back in service", self.model_hash[:16])

    async def _scrub(self, stored: StoredModel) -> None:
        sizes = stored.card.chunk_sizes
        while True:
            for index in stored.kept_chunks():
                size = sizes[index]
                await self._lull()
                if self.healthy and not await trio.to_thread.run_sync(self.store.chunk_ok, stored, index):
                    logger.warning("chunk %d of %s fails its hash", index, self.model_hash[:16])
                    self.report_corrupt(self.model_hash)
                await trio.sleep(size / self._rate)

    async def _repair(self, joiner: Joiner, stored: StoredModel) -> bool:
        bad = await trio.to_thread.run_sync(self.store.bad_kept_chunks, stored)
        if not bad:
            return True
        try:
            peers = await joiner.holders(self.model_hash)
            await fetch_chunks(joiner.host, stored.card, stored.readable_path, bad, peers)
        except DinetError as exc:
            logger.warning("repair of %s failed, will retry: %s", self.model_hash[:16], exc)
            return False
        return not await trio.to_thread.run_sync(self.store.bad_kept_chunks, stored)


def _looks_like_hash(name: str) -> bool:
    return 8 <= len(name) <= 64 and set(name) <= _HASH_CHARS


async def prepare_model(settings: NodeSettings) -> tuple[LocalModel, ModelHash]:
    """The node's model in its store: imported from a path or the default package, found
    by id or hash, or pulled from peers when it is a hash the store lacks (a stage,
    `--layers`, pulls only what its blocks need). Returns the model (its file inside the
    store: a stage's may be partial) and its hash."""
    store = ModelStore(settings.home)
    name = settings.model
    span = None if settings.layers is None else LayerSpan.parse(settings.layers)
    stored: StoredModel | None = None
    if name is not None and not name.endswith(".gguf"):
        try:
            stored = await trio.to_thread.run_sync(lambda: store.find(name, complete=span is None))
        except ModelNotFound:
            stored = None
        if stored is not None and span is not None and not stored.holds(span.start, span.stop):
            stored = await _pull_before_serving(settings, store, stored.model_hash, span)
        elif stored is None and len(name) == 64 and _looks_like_hash(name):
            stored = await _pull_before_serving(settings, store, ModelHash(name), span)
    if stored is None:
        model = resolve_model(name)
        key = load_or_create_identity(settings.home)
        stored = await trio.to_thread.run_sync(
            lambda: store.import_file(model.path, key, model_id=model.model_id)
        )
    return LocalModel(stored.card.model_id, stored.readable_path), stored.model_hash


async def _pull_before_serving(
    settings: NodeSettings, store: ModelStore, model_hash: ModelHash, span: LayerSpan | None
) -> StoredModel:
    what = "it" if span is None else f"blocks {span}"
    logger.info("model %s is not in the store: pulling %s before serving", model_hash[:16], what)
    gate = peer_gate(settings.swarm_key, settings.allow_peers)
    async with open_swarm(
        settings.home, settings.bootstrap, mdns=settings.mdns, gate=gate, hole_punching=settings.hole_punching
    ) as swarm:
        while True:
            peers = await swarm.holders(model_hash)
            try:
                report = await (
                    pull_model(swarm.host, store, model_hash, peers)
                    if span is None
                    else pull_layers(swarm.host, store, model_hash, peers, span.start, span.stop)
                )
                logger.info(
                    "pulled %s: %d chunks fetched, %d reused",
                    model_hash[:16],
                    report.fetched_chunks,
                    report.reused_chunks,
                )
                break
            except PullFailed as exc:
                logger.warning("pull of %s: %s; retrying", model_hash[:16], exc)
                await trio.sleep(PULL_RETRY_S)
    stored = await trio.to_thread.run_sync(store.get, model_hash)
    assert stored is not None
    return stored
