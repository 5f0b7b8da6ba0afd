"""A node cut off the network (its link brought down) is routed around and used again.

Three nodes, each in its own network namespace, joined by a bridge in the test's
own namespace, where the client runs: a small LAN on one machine.
"""

from __future__ import annotations

import random
import subprocess
import uuid

import pytest
import trio
from tests.helpers import chat, is_root

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import start_node

pytestmark = pytest.mark.skipif(not is_root(), reason="network namespaces need root (CI runs as root)")

# Addresses from the benchmarking range (RFC 2544): they exist only on this bridge. A
# subnet per run, so leftovers of an interrupted run cannot shadow this one's routes.
SUBNET = f"198.18.{random.randint(100, 250)}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def lan():
    """Three namespaces on a bridge; yields (namespace, host-side link) pairs."""
    tag = uuid.uuid4().hex[:5]
    bridge = f"dbr{tag}"
    hosts = [(f"dinet-c{i}-{tag}", f"dh{i}{tag}", f"dn{i}{tag}") for i in range(3)]
    ip("link", "add", bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{SUBNET}.254/24", "dev", bridge)
        ip("link", "set", bridge, "up")
        for i, (space, outer, inner) in enumerate(hosts):
            ip("netns", "add", space)
            ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            ip("link", "set", inner, "netns", space)
            ip("link", "set", outer, "master", bridge)
            ip("link", "set", outer, "up")
            ip("-n", space, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", inner)
            ip("-n", space, "link", "set", inner, "up")
            ip("-n", space, "link", "set", "lo", "up")
        yield [(space, outer) for space, outer, _ in hosts]
    finally:
        for space, outer, _ in hosts:
            subprocess.run(["ip", "netns", "del", space], capture_output=True)
            subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


async def test_a_node_cut_off_is_routed_around_and_used_again(tmp_path, lan):
    nodes = []
    try:
        for i, (space, _) in enumerate(lan):
            nodes.append(
                await trio.to_thread.run_sync(
                    lambda i=i, space=space: start_node(
                        tmp_path / f"node-{i}",
                        listen=f"/ip4/{SUBNET}.{i + 1}/tcp/0",
                        bootstrap=[nodes[0].addr] if nodes else [],
                        command_prefix=["ip", "netns", "exec", space],
                    )
                )
            )
        settings = ClientSettings(home=tmp_path / "client", bootstrap=[nodes[0].addr], mdns=False)
        async with open_network(settings) as network:
            everyone = {n.peer_id for n in nodes}
            found = await network.discover(None, None, timeout=30, want=len(everyone))
            assert {p.peer_id for p in found} == everyone  # and the client watches them now
            cut = nodes[2]
            ip("link", "set", lan[2][1], "down")
            try:
                with trio.fail_after(60):  # it leaves the client's view (how fast: bench/failover.py)
                    while cut.peer_id in {p.peer_id for p in network.candidates(None, None)}:
                        await trio.sleep(0.1)
                for _ in range(3):
                    answer = None
                    async for event in ask(network, chat("Say hi.", max_tokens=4)):
                        answer = event if isinstance(event, Answer) else answer
                    assert answer is not None and answer.peer_id != cut.peer_id
            finally:
                ip("link", "set", lan[2][1], "up")
            with trio.fail_after(30):  # back in view once its link is up
                while cut.peer_id not in {p.peer_id for p in network.candidates(None, None)}:
                    await trio.sleep(0.2)
            results: list[Answer] = []

            async def one() -> None:
                async for event in ask(network, chat("Count to three.", max_tokens=8)):
                    if isinstance(event, Answer):
                        results.append(event)

            async with trio.open_nursery() as nursery:
                for _ in range(9):  # enough that spreading load must reach every usable peer
                    nursery.start_soon(one)
            assert cut.peer_id in {a.peer_id for a in results}  # used again
    finally:
        for node in nodes:
            node.stop()
