"""Private swarms and allowlists with a real `din node` process: members are served,
everyone else is refused at connection time, learns nothing, and is told why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.errors import PeerUnreachable, first_dinet_error
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.directory import PeerDirectory
from dinet.p2p.gate import PeerGate, peer_gate
from dinet.p2p.host import open_host
from dinet.p2p.joining import Joiner
from dinet.p2p.pnet import write_new_swarm_key
from dinet.wire.keys import SigningKey

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
REFUSAL_LIMIT_S = 30  # a refusal must come back, not hang: far above what it takes


@pytest.fixture(scope="module")
def private_node(tmp_path_factory):
    """A node of a private swarm, and the swarm's key file."""
    root = tmp_path_factory.mktemp("private")
    key = root / "swarm.key"
    write_new_swarm_key(key)
    node = start_node(root / "node", extra_args=["--swarm-key", str(key)])
    yield node, key
    node.stop()


async def learns_from(node: NodeProcess, gate: PeerGate, key: SigningKey | None = None) -> PeerDirectory:
    """What a fresh host behind `gate` learns by joining through `node`: its directory."""
    async with open_host(key or SigningKey.generate(), LOOPBACK, gate=gate) as host:
        joiner = Joiner(host, PeerDirectory())
        with trio.fail_after(REFUSAL_LIMIT_S):
            await joiner.join([node.addr])
        return joiner.directory


async def test_a_member_of_the_private_swarm_is_answered(tmp_path, private_node):
    node, key = private_node
    settings = ClientSettings(home=tmp_path / "client", bootstrap=[node.addr], mdns=False, swarm_key=key)
    async with open_network(settings) as network:
        text, answer = await answer_to(network, chat("Name a colour.", max_tokens=8))
    assert text and answer.peer_id == node.peer_id


@pytest.mark.parametrize("holding", ["no key", "another key"])
async def test_a_stranger_is_refused_learns_nothing_and_is_told_why(tmp_path, private_node, holding):
    node, key = private_node
    other = write_new_swarm_key(tmp_path / "other.key") if holding == "another key" else None
    settings = ClientSettings(
        home=tmp_path / "client",
        bootstrap=[node.addr],
        mdns=False,
        swarm_key=tmp_path / "other.key" if other else None,
    )
    told = "private swarm" if other is None else "not in this private swarm"
    with trio.fail_after(REFUSAL_LIMIT_S), pytest.raises(BaseExceptionGroup) as caught:
        async with open_network(settings):
            pass
    error = first_dinet_error(caught.value)  # raised inside the host's task group
    assert isinstance(error, PeerUnreachable) and told in str(error), caught.value
    directory = await learns_from(node, PeerGate(other))
    assert directory.manifests() == [] and directory.get(node.peer_id) is None
    # The node goes on serving its members.
    assert (await learns_from(node, peer_gate(key))).get(node.peer_id) is not None


def test_din_ask_without_the_key_says_to_give_one(tmp_path, private_node):
    node, _ = private_node
    done = subprocess.run(
        [sys.executable, "-m", "dinet", "ask", "hi", "--no-mdns", "--home", str(tmp_path), "-b", node.addr],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and not done.stdout
    assert "no bootstrap peer answered" in done.stderr and "--swarm-key" in done.stderr, done.stderr


def write_allowlist(path: Path, *peers: SigningKey) -> None:
    lines = ["# who may use this node", *(f"{p.peer_id}  # member" for p in peers), ""]
    path.write_text("\n".join(lines))


async def test_an_allowlist_admits_its_peers_only_and_follows_edits_without_restart(tmp_path):
    listed, unlisted = SigningKey.generate(), SigningKey.generate()
    allowlist = tmp_path / "allow.txt"
    write_allowlist(allowlist, listed)
    node = start_node(tmp_path / "node", extra_args=["--allow-peers", str(allowlist)])
    try:
        assert (await learns_from(node, PeerGate(), listed)).get(node.peer_id) is not None
        refused = await learns_from(node, PeerGate(), unlisted)
        assert refused.manifests() == [] and refused.get(node.peer_id) is None

        # Listed while the node runs: let in at its next connection.
        write_allowlist(allowlist, listed, unlisted)
        assert (await learns_from(node, PeerGate(), unlisted)).get(node.peer_id) is not None

        # Taken off: its open connection is closed, and its next one refused.
        async with open_host(listed, LOOPBACK) as host:
            await host.dial(node.addr)
            write_allowlist(allowlist, unlisted)
            with trio.fail_after(REFUSAL_LIMIT_S):
                while host.is_connected(node.peer_id):
                    await trio.sleep(0.05)
        with pytest.raises(BaseExceptionGroup) as caught:
            async with open_host(listed, LOOPBACK) as host:
                await host.dial(node.addr)
        error = first_dinet_error(caught.value)  # raised inside the host's task group
        assert isinstance(error, PeerUnreachable) and "allowlist" in str(error), caught.value
        assert (await learns_from(node, PeerGate(), listed)).get(node.peer_id) is None
        assert (await learns_from(node, PeerGate(), unlisted)).get(node.peer_id) is not None
    finally:
        node.stop()
    assert "refused a connection" in node.log_path.read_text()
