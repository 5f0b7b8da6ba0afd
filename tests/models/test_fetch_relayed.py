"""Pulling a model from a holder reached only through a relay (real hosts on loopback).

Bulk bytes prefer holders connected directly; a relay's byte budget may cut a pull that
has to go through it, and then the pull fails cleanly and resumes elsewhere, every byte
kept on disk checked.
"""

from __future__ import annotations

import pytest
from tests.models._tiny import write_tiny
from tests.models.test_fetch import serving, stocked
from tests.p2p.relaying import dialer, home_host, relay_host, reserved_on

from dinet.errors import PullFailed
from dinet.models import fetch
from dinet.models.fetch import pull_model
from dinet.models.hashing import file_sha256
from dinet.models.store import ModelStore
from dinet.node.chunks import ChunkServer
from dinet.p2p.relay import RelayPolicy
from dinet.wire.ids import CHUNKS_PROTOCOL


@pytest.mark.parametrize("far_link", ["as_the_relay_left_it", "closed"])
async def test_a_pull_cut_by_a_relay_fails_cleanly_and_resumes_from_a_direct_holder(
    tmp_path, monkeypatch, far_link
):
    monkeypatch.setattr(fetch, "PUNCH_WAIT_S", 0.5)  # no punch on these hosts: do not wait for one
    model = write_tiny(tmp_path / "tiny.gguf")  # ~5 MB, five chunks of 1 MiB and more
    far_store, stored = stocked(tmp_path / "far", model)
    near_store, _ = stocked(tmp_path / "near", model)
    mine = ModelStore(tmp_path / "me")
    chunks = {CHUNKS_PROTOCOL: ChunkServer(far_store).handle}
    async with (
        relay_host(RelayPolicy(circuit_bytes=2 << 20)) as relay,
        home_host(handlers=chunks) as far,
        dialer() as me,
    ):
        await me.connect(far.peer_id, await reserved_on(far, relay))
        assert me.link_kind(far.peer_id) == "relayed"

        with pytest.raises(PullFailed):
            await pull_model(me, mine, stored.model_hash, [far.peer_id])
        partial = mine.get(stored.model_hash)
        assert partial is not None and not partial.complete
        kept = len(partial.card.chunk_hashes) - len(mine.bad_chunks(partial, partial=True))
        assert 0 < kept < len(partial.card.chunk_hashes)  # some chunks came, every one checked

        if far_link == "closed":  # known only at its relay address: a dial would take the relay again
            await me.disconnect(far.peer_id)
        async with serving(near_store) as near:
            await me.dial(near.full_addrs()[0])
            report = await pull_model(me, mine, stored.model_hash, [far.peer_id, near.peer_id])

    assert far.peer_id not in report.peers  # bulk bytes skip a relayed holder when a direct one has them
    assert report.reused_chunks == kept
    assert file_sha256(report.path) == file_sha256(model)
