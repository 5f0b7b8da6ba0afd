"""Fetching over /dinet/chunks/1 between real libp2p hosts in this process:
liars, updates by diff, and bad requests. Tiny generated GGUFs keep it quick."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
from tests.helpers import raw_host
from tests.models._tiny import write_tiny

from dinet.errors import PullFailed
from dinet.models.fetch import pull_model
from dinet.models.hashing import file_sha256
from dinet.models.store import ModelStore, StoredModel
from dinet.node.chunks import ChunkServer
from dinet.p2p.streams import FramedStream
from dinet.wire.chunks import ChunkRequest, decode_chunk_reply
from dinet.wire.ids import CHUNKS_PROTOCOL
from dinet.wire.keys import SigningKey
from dinet.wire.messages import ErrorFrame


class LyingStore(ModelStore):
    """Serves every chunk with one byte flipped (a fake peer, named so)."""

    def read_chunk(self, stored: StoredModel, index: int) -> bytes:
        data = bytearray(super().read_chunk(stored, index))
        data[0] ^= 0xFF
        return bytes(data)


@asynccontextmanager
async def serving(store: ModelStore):
    async with raw_host() as host:
        host.set_handler(CHUNKS_PROTOCOL, ChunkServer(store).handle)
        yield host


async def connect(puller, *hosts) -> list[str]:
    for h in hosts:
        await puller.dial(h.full_addrs()[0])
    return [h.peer_id for h in hosts]


def stocked(root, gguf_path, cls=ModelStore) -> tuple[ModelStore, StoredModel]:
    store = cls(root)
    return store, store.import_file(gguf_path, SigningKey.generate(), model_id="tiny")


async def test_a_lying_peer_is_caught_banned_and_the_chunks_come_from_another(tmp_path):
    model = write_tiny(tmp_path / "tiny.gguf")
    liar_store, stored = stocked(tmp_path / "liar", model, LyingStore)
    honest_store, _ = stocked(tmp_path / "honest", model)
    mine = ModelStore(tmp_path / "me")
    async with serving(liar_store) as liar, serving(honest_store) as honest, raw_host() as me:
        peers = await connect(me, liar, honest)
        report = await pull_model(me, mine, stored.model_hash, peers)
    liar_id, honest_id = peers
    assert report.peers[liar_id].bad_chunks == 1 and report.peers[liar_id].chunks == 0
    assert "does not match" in (report.peers[liar_id].dropped or "")
    assert report.peers[honest_id].chunks == report.total_chunks
    assert file_sha256(report.path) == file_sha256(model)


async def test_an_update_transfers_only_the_changed_chunks(tmp_path):
    v1 = write_tiny(tmp_path / "v1.gguf")
    v2 = write_tiny(tmp_path / "v2.gguf", change="blk.0.ffn.weight")
    server_store, new = stocked(tmp_path / "server", v2)
    mine, old = stocked(tmp_path / "me", v1)
    changed = [i for i, h in enumerate(new.card.chunk_hashes) if h not in set(old.card.chunk_hashes)]
    async with serving(server_store) as server, raw_host() as me:
        peers = await connect(me, server)
        report = await pull_model(me, mine, new.model_hash, peers)
    assert 0 < report.fetched_chunks == len(changed) < report.total_chunks
    assert report.fetched_bytes == sum(new.card.chunk_sizes[i] for i in changed)
    assert report.peers[peers[0]].bytes == report.fetched_bytes  # nothing else came over the wire
    assert file_sha256(report.path) == file_sha256(v2)


async def test_an_unknown_hash_fails_with_a_clear_error(tmp_path):
    store, _ = stocked(tmp_path / "server", write_tiny(tmp_path / "tiny.gguf"))
    async with serving(store) as server, raw_host() as me:
        peers = await connect(me, server)
        with pytest.raises(PullFailed, match="unknown_model"):
            await pull_model(me, ModelStore(tmp_path / "me"), "ab" * 32, peers)


@pytest.mark.parametrize(
    "payload, code",
    [
        (b'{"kind": "chunk_request", "model_hash": "HASH", "indices": [99]}', "bad_request"),
        (b'{"kind": "chunk_request", "model_hash": "HASH", "indices": [0], "x": 1}', "bad_request"),
        (b'{"kind": "chunk_request", "model_hash": "HASH", "indices": []}', "bad_request"),
        (b'{"kind": "chunk_request", "model_hash": "' + b"cd" * 32 + b'", "indices": [0]}', "unknown_model"),
    ],
    ids=["index-out-of-range", "unknown-field", "no-indices", "unknown-hash"],
)
async def test_bad_requests_get_an_error_frame(tmp_path, payload, code):
    store, stored = stocked(tmp_path / "server", write_tiny(tmp_path / "tiny.gguf"))
    async with serving(store) as server, raw_host() as me:
        (peer,) = await connect(me, server)
        framed = FramedStream(await me.open_stream(peer, CHUNKS_PROTOCOL, 60))
        await framed.send_payload(payload.replace(b"HASH", stored.model_hash.encode()))
        with trio.fail_after(10):
            reply = decode_chunk_reply(await framed.receive() or b"")
        assert isinstance(reply, ErrorFrame) and reply.code == code


async def test_an_oversized_frame_is_refused(tmp_path):
    store, _ = stocked(tmp_path / "server", write_tiny(tmp_path / "tiny.gguf"))
    async with serving(store) as server, raw_host() as me:
        (peer,) = await connect(me, server)
        stream = await me.open_stream(peer, CHUNKS_PROTOCOL, 60)
        await stream.write((50 << 20).to_bytes(4, "big") + b"{")
        with trio.fail_after(10):
            reply = decode_chunk_reply(await FramedStream(stream).receive() or b"")
        assert isinstance(reply, ErrorFrame) and reply.code == "too_large"


async def test_a_truncated_answer_is_an_error_and_another_peer_completes_the_pull(tmp_path):
    model = write_tiny(tmp_path / "tiny.gguf")
    store, stored = stocked(tmp_path / "server", model)

    async def truncating(stream) -> None:  # a fake peer: half a chunk, then it hangs up
        framed = FramedStream(stream)
        payload = await framed.receive()
        if payload is None:
            return
        index = ChunkRequest.model_validate_json(payload).indices[0]
        data = store.read_chunk(stored, index)
        await framed.send_payload(b'{"kind":"chunk","index":%d,"size":%d}' % (index, len(data)))
        await stream.write(len(data).to_bytes(4, "big") + data[: len(data) // 2])
        await stream.close()

    mine = ModelStore(tmp_path / "me")
    mine.begin(stored.signed)  # the model card is already here: only chunks are asked for
    async with raw_host() as cheat, serving(store) as honest, raw_host() as me:
        cheat.set_handler(CHUNKS_PROTOCOL, truncating)
        cheat_id, honest_id = await connect(me, cheat, honest)
        with pytest.raises(PullFailed, match="ended inside a frame"):
            await pull_model(me, mine, stored.model_hash, [cheat_id])
        report = await pull_model(me, mine, stored.model_hash, [honest_id])
    assert file_sha256(report.path) == file_sha256(model)
