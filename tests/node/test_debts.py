"""Free riders refused network-wide: a client that owes one node is refused by another that
never served it, when the creditor has standing there; a creditor without standing is not
believed."""

from __future__ import annotations

import time
from contextlib import aclosing
from pathlib import Path

import pytest
from tests.helpers import chat

from dinet.client.ask import Answer, ask
from dinet.client.network import Network, open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import NoCapablePeer
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.identity import CLIENT_IDENTITY, load_or_create_identity

PRICED = ["--price", "0.01", "--free-allowance", "0.1", "--debt-every-s", "1"]


async def ask_at(network: Network, peer: NodeProcess) -> Answer:
    options = AskOptions(only_peers=(peer.peer_id,))
    async with aclosing(ask(network, chat("Name a colour.", max_tokens=12), options)) as events:
        async for event in events:
            if isinstance(event, Answer):
                return event
    raise AssertionError("no answer")


def client(home: Path, nodes: list[NodeProcess]) -> ClientSettings:
    return ClientSettings(
        home=home, bootstrap=[n.addr for n in nodes], mdns=False, verify_rate=0.0, probation_good=0
    )


async def run_up_debt(home: Path, creditor: NodeProcess, others: list[NodeProcess]) -> str:
    """Ask `creditor` until the client owes it more than the allowance; the client's peer id."""
    async with open_network(client(home, [creditor, *others])) as network:
        await network.discover(None, None, timeout=10)
        for _ in range(3):  # 3 answers of 12 tokens at 0.01: 0.36 credits, over the 0.1 allowance
            await ask_at(network, creditor)
        return network.peer_id


def log_says(node: NodeProcess, text: str, wait_s: float = 30.0) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if text in node.log_path.read_text():
            return True
        time.sleep(0.2)
    return False


async def test_a_debt_published_by_a_peer_of_standing_refuses_the_debtor_elsewhere(tmp_path):
    creditor = start_node(tmp_path / "creditor", extra_args=PRICED)
    load_or_create_identity(tmp_path / "judge", CLIENT_IDENTITY)  # the judge's home asks too (below)
    judge = start_node(tmp_path / "judge", bootstrap=[creditor.addr], extra_args=["--refuse-debt", "0.2"])
    stranger = start_node(tmp_path / "stranger", bootstrap=[creditor.addr, judge.addr], extra_args=PRICED)
    nodes = [creditor, judge, stranger]
    try:
        # The creditor serves the judge's home once: it has standing there. The stranger never does.
        async with open_network(client(judge.home, nodes)) as network:
            await network.discover(None, None, timeout=10)
            await ask_at(network, creditor)
        free_rider = await run_up_debt(tmp_path / "free-rider", creditor, nodes)
        honest = await run_up_debt(tmp_path / "honest", stranger, nodes)  # in debt only to the stranger
        assert log_says(judge, f"heard that {free_rider} owes {creditor.peer_id}")
        assert log_says(judge, f"heard that {honest} owes {stranger.peer_id}")
        async with open_network(client(tmp_path / "free-rider", nodes)) as network:
            await network.discover(None, None, timeout=10)
            with pytest.raises(NoCapablePeer, match="owes 0.26 credits unpaid"):
                await ask_at(network, judge)
        async with open_network(client(tmp_path / "honest", nodes)) as network:
            await network.discover(None, None, timeout=10)
            assert (await ask_at(network, judge)).peer_id == judge.peer_id  # the stranger is not believed
    finally:
        for node in nodes:
            node.stop()
