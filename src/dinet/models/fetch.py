"""Pulling a model from peers over `/dinet/chunks/1`: several peers at once, every
chunk checked against the model card before it touches the disk, resumable.

Each peer gets one stream and a worker that takes batches of missing chunks from
a shared queue. A peer that sends bytes not matching a chunk's hash is banned for
the rest of the pull and its batch goes back to the queue for the others; a peer
whose stream breaks is dropped the same way. Memory stays at about one chunk per
peer: chunks are written in place as they arrive.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dinet.errors import (
    BadChunk,
    DinetError,
    PeerError,
    PeerUnreachable,
    PullFailed,
    RemoteError,
)
from dinet.models._gguf import read_partial_layout
from dinet.models.card import chunk_offsets, verify_model_card
from dinet.models.layers import check_span, stage_chunks
from dinet.models.store import ModelStore, StoredModel
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.gate import PeerGate
from dinet.p2p.host import PeerHost, open_host
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity
from dinet.p2p.joining import Joiner
from dinet.p2p.reach import ReachConfig
from dinet.p2p.streams import FramedStream, open_framed
from dinet.wire.chunks import (
    MAX_BATCH,
    ChunkHeader,
    ChunkRequest,
    ModelCard,
    ModelCardQuery,
    SignedModelCard,
    decode_chunk_reply,
)
from dinet.wire.ids import CHUNKS_PROTOCOL, ModelHash, PeerId
from dinet.wire.messages import ErrorFrame

logger = logging.getLogger(__name__)

STREAM_TIMEOUT_S = 10.0  # opening a stream, or waiting for a reply's header
# One chunk's bytes (1 MiB): a home node's uplink may be ~1 Mbit/s, shared by a few
# pullers. Was the 10 s above, which drops such a holder in the middle of every pull.
CHUNK_TIMEOUT_S = 30.0
BATCH_BYTES = 4 << 20
# A holder reached only through a relay is usually connected directly a few seconds later
# (hole punching): bulk bytes wait this long for that rather than load a relay.
PUNCH_WAIT_S = 8.0

Progress = Callable[[int, int], None]  # (bytes verified so far, total bytes)


@dataclass
class PeerStats:
    chunks: int = 0
    bytes: int = 0
    bad_chunks: int = 0
    dropped: str | None = None  # why this peer stopped being asked

    def add(self, other: PeerStats) -> None:
        """Count `other`'s transfer from the same peer in this one."""
        self.chunks += other.chunks
        self.bytes += other.bytes
        self.bad_chunks += other.bad_chunks
        self.dropped = other.dropped or self.dropped


@dataclass
class PullReport:
    model_hash: ModelHash
    model_id: str
    path: Path
    total_chunks: int
    reused_chunks: int  # already verified on disk, or copied from another stored version
    fetched_chunks: int
    fetched_bytes: int
    seconds: float
    peers: dict[PeerId, PeerStats] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "model_hash": self.model_hash,
            "model_id": self.model_id,
            "path": str(self.path),
            "total_chunks": self.total_chunks,
            "reused_chunks": self.reused_chunks,
            "fetched_chunks": self.fetched_chunks,
            "fetched_bytes": self.fetched_bytes,
            "seconds": round(self.seconds, 3),
            "peers": {p: vars(s) for p, s in self.peers.items()},
        }


async def _open(host: PeerHost, peer_id: PeerId) -> FramedStream:
    return await open_framed(host, peer_id, CHUNKS_PROTOCOL, STREAM_TIMEOUT_S)


async def _reply(framed: FramedStream) -> SignedModelCard | ChunkHeader | ErrorFrame:
    with trio.fail_after(STREAM_TIMEOUT_S):
        payload = await framed.receive()
    if payload is None:
        raise PeerError(f"{framed.remote_peer} closed the chunk stream mid-answer")
    reply = decode_chunk_reply(payload)
    if isinstance(reply, ErrorFrame):
        raise RemoteError(reply.code, reply.message)
    return reply


async def fetch_model_card(host: PeerHost, peers: Sequence[PeerId], model_hash: ModelHash) -> SignedModelCard:
    """The signed model card of `model_hash` from the first peer that gives a valid one
    (peers connected directly first)."""
    problems = []
    for peer_id in sorted(peers, key=host.behind_relay):
        try:
            framed = await _open(host, peer_id)
            try:
                await framed.send(ModelCardQuery(model_hash=model_hash))
                reply = await _reply(framed)
            finally:
                await framed.close()
            if not isinstance(reply, SignedModelCard):
                raise PeerError(f"{peer_id} answered a model card query with {reply.kind!r}")
            verify_model_card(reply, model_hash)
            return reply
        except (DinetError, trio.TooSlowError) as exc:
            problems.append(f"{peer_id[:12]}…: {exc or 'timed out'}")
    raise PullFailed(
        f"no peer gave a valid model card for {model_hash[:16]}…: " + "; ".join(problems or ["no peers"])
    )


class _Transfer:
    """Missing chunks of one file, fetched from several peers into `target` in place."""

    def __init__(
        self,
        host: PeerHost,
        card: ModelCard,
        target: Path,
        missing: list[int],
        progress: Progress | None,
        max_rate: float | None,
    ) -> None:
        self._host = host
        self._m = card
        self._offsets = chunk_offsets(card)
        self._target = target
        self._queue = deque(missing)
        self._remaining = set(missing)
        self._progress = progress
        self._max_rate = max_rate
        self._done_bytes = card.file_size - sum(card.chunk_sizes[i] for i in missing)
        self._fetched = 0
        self._start = time.monotonic()
        self.peers: dict[PeerId, PeerStats] = {}

    async def run(self, peers: Sequence[PeerId]) -> None:
        fd = os.open(self._target, os.O_RDWR)
        try:
            self._report()
            async with trio.open_nursery() as nursery:
                for peer_id in dict.fromkeys(peers):
                    self.peers[peer_id] = PeerStats()
                    nursery.start_soon(self._worker, peer_id, fd)
        finally:
            os.close(fd)
        if self._remaining:
            why = "; ".join(f"{p[:12]}…: {s.dropped}" for p, s in self.peers.items() if s.dropped)
            raise PullFailed(f"{len(self._remaining)} chunks could not be fetched ({why or 'no peers'})")

    def _take(self) -> list[int]:
        batch: list[int] = []
        size = 0
        while self._queue and len(batch) < MAX_BATCH and size < BATCH_BYTES:
            index = self._queue.popleft()
            batch.append(index)
            size += self._m.chunk_sizes[index]
        return batch

    async def _worker(self, peer_id: PeerId, fd: int) -> None:
        stats = self.peers[peer_id]
        batch: list[int] = []
        try:
            framed = await _open(self._host, peer_id)
            try:
                while self._remaining:
                    batch = self._take()
                    if not batch:
                        await trio.sleep(0.05)  # others hold the last batches; they may fail
                        continue
                    await framed.send(ChunkRequest(model_hash=self._m.model_hash, indices=tuple(batch)))
                    while batch:
                        await self._receive(framed, batch[0], fd, stats)
                        batch.pop(0)
            finally:
                await framed.close()
        except (DinetError, trio.TooSlowError) as exc:
            if isinstance(exc, BadChunk):
                stats.bad_chunks += 1
            stats.dropped = str(exc) or "timed out"
            logger.warning("dropping %s from this pull: %s", peer_id, stats.dropped)
            self._queue.extendleft(reversed(batch))

    async def _receive(self, framed: FramedStream, index: int, fd: int, stats: PeerStats) -> None:
        header = await _reply(framed)
        size = self._m.chunk_sizes[index]
        if not isinstance(header, ChunkHeader) or header.index != index or header.size != size:
            raise BadChunk(f"expected chunk {index} of {size} bytes, got {header.kind} {header!r:.80}")
        with trio.fail_after(CHUNK_TIMEOUT_S):
            data = await framed.receive()
        if data is None or len(data) != size:
            raise PeerError(f"chunk {index} truncated ({0 if data is None else len(data)} of {size} bytes)")
        ok = await trio.to_thread.run_sync(self._check_and_write, fd, index, data)
        if not ok:
            raise BadChunk(f"chunk {index} does not match its hash")
        if index in self._remaining:
            self._remaining.discard(index)
            self._done_bytes += size
        stats.chunks += 1
        stats.bytes += size
        self._fetched += size
        self._report()
        if self._max_rate:
            ahead = self._fetched / self._max_rate - (time.monotonic() - self._start)
            if ahead > 0:
                await trio.sleep(ahead)

    def _check_and_write(self, fd: int, index: int, data: bytes) -> bool:
        if hashlib.sha256(data).hexdigest() != self._m.chunk_hashes[index]:
            return False
        os.pwrite(fd, data, self._offsets[index])
        return True

    def _report(self) -> None:
        if self._progress:
            self._progress(self._done_bytes, self._m.file_size)


async def fetch_chunks(
    host: PeerHost,
    card: ModelCard,
    target: Path,
    missing: list[int],
    peers: Sequence[PeerId],
    *,
    progress: Progress | None = None,
    max_rate: float | None = None,
) -> dict[PeerId, PeerStats]:
    """Fetch chunks `missing` of the model `card` describes from `peers` into the file
    `target`, from holders not behind a relay when there are any (see `bulk_holders`)."""
    transfer = _Transfer(host, card, target, missing, progress, max_rate)
    await transfer.run(await bulk_holders(host, peers))
    return transfer.peers


async def bulk_holders(host: PeerHost, peers: Sequence[PeerId]) -> list[PeerId]:
    """The holders to pull bulk bytes from: every one not reached through a relay. When
    all of them are, they get PUNCH_WAIT_S to be connected directly; if none is by then,
    the relayed ones serve (a relay may cut such a stream: its chunks go to the others,
    or the pull fails and is tried again; no unchecked byte is kept either way)."""

    def unrelayed() -> list[PeerId]:
        return [p for p in peers if not host.behind_relay(p)]

    if peers and not unrelayed():
        with trio.move_on_after(PUNCH_WAIT_S):
            while not unrelayed():  # noqa: ASYNC110 (a poll: the punch happens inside the host)
                await trio.sleep(0.1)
        if not unrelayed():
            logger.info("no holder is connected directly: pulling through a relay")
    return unrelayed() or list(peers)


async def pull_model(
    host: PeerHost,
    store: ModelStore,
    model_hash: ModelHash,
    peers: Sequence[PeerId],
    *,
    progress: Progress | None = None,
    max_rate: float | None = None,
) -> PullReport:
    """Make `model_hash` complete in `store`, fetching what it lacks from `peers`."""
    start = time.monotonic()
    existing = await trio.to_thread.run_sync(store.get, model_hash)
    if existing is not None and existing.complete:
        m = existing.card
        return PullReport(
            model_hash, m.model_id, existing.path, len(m.chunk_hashes), len(m.chunk_hashes), 0, 0, 0.0
        )
    signed = existing.signed if existing else await fetch_model_card(host, peers, model_hash)
    stored: StoredModel = await trio.to_thread.run_sync(store.begin, signed)
    m = stored.card
    missing = await trio.to_thread.run_sync(lambda: store.bad_chunks(stored, partial=True))
    missing = await trio.to_thread.run_sync(store.seed_from_local, stored, missing)
    stats = await fetch_chunks(
        host, m, stored.part_path, missing, peers, progress=progress, max_rate=max_rate
    )
    await trio.to_thread.run_sync(store.finish, stored)
    fetched = sum(m.chunk_sizes[i] for i in missing)
    return PullReport(
        model_hash,
        m.model_id,
        stored.path,
        len(m.chunk_hashes),
        len(m.chunk_hashes) - len(missing),
        len(missing),
        fetched,
        time.monotonic() - start,
        stats,
    )


async def pull_layers(
    host: PeerHost,
    store: ModelStore,
    model_hash: ModelHash,
    peers: Sequence[PeerId],
    start: int,
    stop: int,
    *,
    progress: Progress | None = None,
    max_rate: float | None = None,
) -> PullReport:
    """Make blocks [start, stop) of `model_hash` servable from `store` as a pipeline stage,
    fetching only the chunks such a stage reads (`dinet.models.layers`) into the partial
    file. Blocks held already widen the range: a stage that pulls more keeps what it has."""
    began = time.monotonic()
    existing = await trio.to_thread.run_sync(store.get, model_hash)
    signed = existing.signed if existing else await fetch_model_card(host, peers, model_hash)
    check_span(verify_model_card(signed, model_hash), start, stop)
    if existing is not None and existing.layers is not None:
        start, stop = min(start, existing.layers[0]), max(stop, existing.layers[1])
    if existing is not None and existing.holds(start, stop):
        held = existing.kept_chunks()
        return PullReport(
            model_hash, existing.card.model_id, existing.readable_path, len(held), len(held), 0, 0, 0.0
        )
    stored: StoredModel = await trio.to_thread.run_sync(store.begin, signed)
    m = stored.card
    missing: list[int] = []
    stats: dict[PeerId, PeerStats] = {}

    async def fetch(wanted: list[int]) -> None:
        bad = await trio.to_thread.run_sync(lambda: store.bad_chunks(stored, partial=True, among=wanted))
        bad = await trio.to_thread.run_sync(store.seed_from_local, stored, bad)
        if not bad:
            return
        got = await fetch_chunks(host, m, stored.part_path, bad, peers, progress=progress, max_rate=max_rate)
        missing.extend(bad)
        for peer_id, one in got.items():
            stats.setdefault(peer_id, PeerStats()).add(one)

    # The header first, a chunk at a time: how long it is shows only as it is read.
    header, have, layout = 0, 0, None
    while layout is None and header < len(m.chunk_sizes):
        await fetch([header])
        have += m.chunk_sizes[header]
        header += 1
        layout = await trio.to_thread.run_sync(read_partial_layout, stored.part_path, have)
    if layout is None:
        raise PullFailed(f"model {model_hash[:16]}… has no GGUF header that ends inside the file")
    needed = stage_chunks(m, layout, start, stop)
    await fetch([i for i in needed if i >= header])
    stored = await trio.to_thread.run_sync(store.keep_layers, stored, start, stop, needed)
    return PullReport(
        model_hash,
        m.model_id,
        stored.part_path,
        len(needed),
        len(needed) - len(missing),
        len(missing),
        sum(m.chunk_sizes[i] for i in missing),
        time.monotonic() - began,
        stats,
    )


@dataclass
class Swarm:
    """A short-lived client host for pulling: joined through bootstrap peers, with a DHT."""

    host: PeerHost
    joiner: Joiner

    async def holders(self, model_hash: ModelHash) -> list[PeerId]:
        """Connected peers that say they hold `model_hash`: DHT provider records and manifests."""
        return await self.joiner.holders(model_hash)

    async def model_hashes(self, model_id: str) -> list[ModelHash]:
        """Hashes that peers offer under `model_id`, most offered first."""
        counts: dict[ModelHash, int] = {}
        for manifest in self.joiner.directory.manifests():
            for o in manifest.models:
                if o.model_id == model_id:
                    counts[o.model_hash] = counts.get(o.model_hash, 0) + 1
        return sorted(counts, key=lambda h: -counts[h])


@asynccontextmanager
async def open_swarm(
    home: Path,
    bootstrap: Sequence[str],
    *,
    mdns: bool = False,
    gate: PeerGate | None = None,
    hole_punching: bool = True,
) -> AsyncIterator[Swarm]:
    key = load_or_create_identity(home, CLIENT_IDENTITY)
    reach = ReachConfig(hole_punching=hole_punching)
    async with open_host(
        key, ["/ip4/0.0.0.0/tcp/0"], mdns=mdns, dht="client", gate=gate, reach=reach
    ) as host:
        joiner = Joiner(host, PeerDirectory())
        if bootstrap and not await joiner.join(bootstrap):
            raise PeerUnreachable(f"no bootstrap peer answered: {joiner.why_unreached()}")
        yield Swarm(host, joiner)
