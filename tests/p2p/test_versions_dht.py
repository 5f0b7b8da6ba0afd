"""Model-version records in the DHT, among real libp2p hosts in this process: a reader
sees the newest record a publisher signed, even after it cached an older one, and a
replayed older record replaces nothing."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from dinet.errors import ModelVersionsError
from dinet.p2p.host import PeerHost, open_host
from dinet.wire.keys import SigningKey
from dinet.wire.versions import ModelVersion, SignedModelVersions, next_record, sign_versions, verify_versions

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PUBLISHER = SigningKey.generate()


def signed_record(sequence: int) -> SignedModelVersions:
    """The publisher's record number `sequence` of model 'tiny' (version `sequence` newest)."""
    now = time.time()
    previous = None
    for n in range(sequence + 1):
        newest = ModelVersion(model_hash=f"{n:064x}", version=str(n), published_at=now + n)  # type: ignore[arg-type]
        previous = next_record(PUBLISHER.peer_id, "tiny", newest, previous, now=now + n, lifetime_s=3600)
    assert previous is not None and previous.sequence == sequence
    return sign_versions(previous, PUBLISHER)


@asynccontextmanager
async def dht_network(servers: int, clients: int) -> AsyncIterator[list[PeerHost]]:
    """`servers` DHT servers and `clients` DHT clients, every one connected to every server."""
    async with AsyncExitStack() as stack:
        hosts = [
            await stack.enter_async_context(
                open_host(SigningKey.generate(), LOOPBACK, dht="server" if i < servers else "client")
            )
            for i in range(servers + clients)
        ]
        for host in hosts:
            for server in hosts[:servers]:
                if server is not host:
                    await host.dial(server.full_addrs()[0])
                    await host.add_to_routing_table(server.peer_id)
        yield hosts


def sequence_of(signed: SignedModelVersions | None) -> int:
    assert signed is not None
    return verify_versions(signed).sequence


async def test_a_reader_sees_each_newer_record_and_never_an_older_one():
    async with dht_network(servers=3, clients=3) as hosts:
        publisher, replayer, reader = hosts[3:]
        assert await publisher.put_versions(signed_record(0)) >= 1
        assert sequence_of(await reader.get_versions(PUBLISHER.peer_id, "tiny")) == 0
        assert await publisher.put_versions(signed_record(1)) >= 1
        # The reader holds record 0 now; it must still see record 1.
        assert sequence_of(await reader.get_versions(PUBLISHER.peer_id, "tiny")) == 1
        # Anyone may carry a signed record, but an older one replaces nothing.
        await replayer.put_versions(signed_record(0))
        assert sequence_of(await reader.get_versions(PUBLISHER.peer_id, "tiny")) == 1
        for server in hosts[:3]:
            assert sequence_of(await server.get_versions(PUBLISHER.peer_id, "tiny")) == 1


async def test_the_publisher_cannot_put_an_older_record_over_its_own_newer_one():
    async with dht_network(servers=2, clients=1) as hosts:
        publisher = hosts[2]
        await publisher.put_versions(signed_record(2))
        with pytest.raises(ModelVersionsError, match="newer"):
            await publisher.put_versions(signed_record(1))


async def test_no_record_is_none_and_a_forged_one_is_refused_before_it_leaves():
    async with dht_network(servers=2, clients=1) as hosts:
        with trio.fail_after(30):
            assert await hosts[2].get_versions(PUBLISHER.peer_id, "nothing") is None
        honest = signed_record(0)
        forged = SignedModelVersions(
            body=honest.body,
            signature=sign_versions(verify_versions(honest), SigningKey.generate()).signature,
        )
        with pytest.raises(ModelVersionsError):
            await hosts[2].put_versions(forged)
