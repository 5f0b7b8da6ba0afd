"""Kademlia provider records keyed by model hash, among five real nodes."""

from __future__ import annotations

import pytest
import trio

from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import LocalMesh


@pytest.fixture(scope="module")
def five_nodes(tmp_path_factory):
    with LocalMesh(tmp_path_factory.mktemp("dht"), size=5, threads=1) as mesh:
        yield mesh


async def test_providers_of_the_model_are_found_through_the_dht(tmp_path, five_nodes):
    everyone = {n.peer_id for n in five_nodes.nodes}
    model_hash = five_nodes.nodes[0].model_hash
    settings = ClientSettings(home=tmp_path, bootstrap=[five_nodes.nodes[0].addr], mdns=False)
    async with open_network(settings) as network:
        found: set[str] = set()
        with trio.move_on_after(30):
            while found != everyone:
                found |= {p.peer_id for p in await network.joiner.find_providers(model_hash)}
                await trio.sleep(0.5)
        assert found == everyone
