"""Deadlines, regions and coordinates with real node processes."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from contextlib import aclosing

import pytest
import trio
from tests.helpers import chat, open_infer, raw_host, read_replies

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.errors import DeadlineUnmet
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.routing.select import PeerView, rank_peers
from dinet.wire.messages import ErrorFrame, InferRequest

LONG_TOKENS = 400  # a request that keeps a one-slot node busy for seconds


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two one-slot nodes (--max-concurrent 1), the second bootstrapped to the first."""
    root = tmp_path_factory.mktemp("sla")
    nodes: list[NodeProcess] = []
    try:
        nodes.append(start_node(root / "a", extra_args=["--max-concurrent", "1"]))
        nodes.append(start_node(root / "b", bootstrap=[nodes[0].addr], extra_args=["--max-concurrent", "1"]))
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def settings_for(tmp_path, nodes) -> ClientSettings:
    return ClientSettings(home=tmp_path / "client", bootstrap=[nodes[0].addr], mdns=False)


async def answer(network, params, options, tried=None) -> Answer:
    async with aclosing(
        ask(network, params, options, on_attempt=tried.append if tried is not None else None)
    ) as events:
        async for event in events:
            if isinstance(event, Answer):
                return event
    raise AssertionError("ask ended without an Answer")


async def warm(network, nodes) -> None:
    """One answer from each node, so that each has measured its own speed."""
    await network.discover(None, None, timeout=30, want=len(nodes))
    for node in nodes:
        await answer(network, chat("Hi.", max_tokens=8), AskOptions(only_peers={node.peer_id}))


async def test_a_busy_node_refuses_a_tight_deadline_at_once_and_another_answers(tmp_path, pair):
    a, b = pair
    async with open_network(settings_for(tmp_path, pair)) as network:
        await warm(network, pair)
        started, long_done = trio.Event(), trio.Event()

        async def keep_a_busy() -> None:
            long = chat("Write a long story about the sea.", max_tokens=LONG_TOKENS)
            async with aclosing(ask(network, long, AskOptions(only_peers={a.peer_id}))) as events:
                async for _ in events:
                    started.set()  # A is generating: its one slot is taken
            long_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_a_busy)
            with trio.fail_after(60):
                await started.wait()
            # Straight to the busy node: it says at once that it cannot meet 3 s.
            async with raw_host() as host:
                framed = await open_infer(host, a.addr)
                request = InferRequest(
                    request_id="tight", params=chat("Hi.", max_tokens=16), deadline_ms=3000
                )
                await framed.send(request)
                replies = await read_replies(framed)
            # At once: no `queued` frame before the refusal.
            assert len(replies) == 1 and isinstance(replies[0], ErrorFrame), replies
            assert replies[0].code == "deadline"
            assert not long_done.is_set()  # refused while the long answer still runs, not after
            # Through the client: the answer comes from the other node, in time.
            tight = AskOptions(deadline_s=3.0, only_peers={a.peer_id, b.peer_id})
            tried: list[str] = []
            got = await answer(network, chat("Name a fruit.", max_tokens=16), tight, tried)
            assert got.peer_id == b.peer_id
            # Whether A was asked first (and refused at once) or passed over for its load,
            # B was the only one to answer.
            assert tried[-1] == b.peer_id
            assert got.text.strip()
            assert not long_done.is_set()
            nursery.cancel_scope.cancel()


async def test_an_impossible_deadline_is_a_typed_error_after_every_node_refused(tmp_path, pair):
    async with open_network(settings_for(tmp_path, pair)) as network:
        await warm(network, pair)
        tried: list[str] = []
        with pytest.raises(DeadlineUnmet, match="within 0.001 s"):
            await answer(network, chat("Hi.", max_tokens=16), AskOptions(deadline_s=0.001), tried)
        assert sorted(tried) == sorted(n.peer_id for n in pair)  # each refused once, none backed off
        assert all(network.health.usable(n.peer_id, trio.current_time()) for n in pair)


async def test_nodes_put_coordinates_in_their_manifests_and_the_client_estimates_from_them(tmp_path, pair):
    async with open_network(settings_for(tmp_path, pair)) as network:
        await network.discover(None, None, timeout=30, want=2)
        # Nodes and client probe each other anyway (liveness): the samples place them all.
        with trio.fail_after(120):
            while True:
                manifests = [network.directory.get(n.peer_id) for n in pair]
                estimates = [network.coordinates.estimate_ms(m) for m in manifests if m is not None]
                if len(estimates) == 2 and all(e is not None for e in estimates):
                    break
                await trio.sleep(0.5)
        for estimate in estimates:
            assert estimate is not None and math.isfinite(estimate) and 0 < estimate < 1000  # loopback
        views = {v.peer_id: v for v in network.candidates(None, None)}
        assert all(views[n.peer_id].estimated_rtt_ms is not None for n in pair)


@pytest.mark.parametrize("command", ["ask", "gateway"])
def test_the_client_region_is_a_setting_of_the_client_and_the_gateway(command, tmp_path):
    """`--region` and DINET_REGION set it (the gateway is a client too)."""
    base = [sys.executable, "-m", "dinet", command, "--home", str(tmp_path), "--print-config"]
    flag = subprocess.run([*base, "--region", "south"], capture_output=True, text=True, timeout=60)
    assert flag.returncode == 0, flag.stderr
    assert re.search(r"region\W+south\W+flag --region", flag.stdout)
    env = {**os.environ, "DINET_REGION": "north"}
    by_env = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    assert re.search(r"region\W+north\W+env DINET_REGION", by_env.stdout)


def test_the_client_region_reaches_the_router():
    """From the settings to the options every way of asking ranks by."""
    options = AskOptions.from_settings(ClientSettings(region="south", mdns=False))
    assert options.region == "south"
    views = [PeerView(name, 1.0, 50.0, 20.0, 0, 0, 1, region=name) for name in ("north", "south")]
    assert rank_peers(views, 8, region=options.region)[0].peer_id == "south"
    assert rank_peers(views, 8)[0].peer_id == "north"  # without it, the tie goes by peer id
