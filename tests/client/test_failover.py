"""Chaos with real node processes: killed, frozen and full nodes never cost an answer."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter

import pytest
import trio
from tests.helpers import answer_to, chat, resumed_text

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.node.local_mesh import LocalMesh, NodeProcess, start_node

PROMPTS = ["Tell me about the moon.", "Describe a busy market in the morning."]
MAX_TOKENS = 40
KILLS = 6  # each of the 4 variants killed at 1-2 random points; bench/failover.py runs 20


@pytest.fixture(scope="module")
def chaos_mesh_running(tmp_path_factory):
    with LocalMesh(tmp_path_factory.mktemp("chaos"), size=3, threads=1) as mesh:
        yield mesh


@pytest.fixture
def chaos_mesh(chaos_mesh_running):
    """Three nodes of our own, all running: these tests kill, freeze and restart them."""
    mesh = chaos_mesh_running
    for i, node in enumerate(mesh.nodes):
        if node.process.poll() is not None:  # left dead by an earlier failure
            alive = [n.addr for n in mesh.nodes if n.process.poll() is None]
            mesh.nodes[i] = start_node(node.home, bootstrap=alive[:1])
    return mesh


def settings_for(tmp_path, mesh) -> ClientSettings:
    # Failover and capacity alone: probation's checks of new peers (two verifications per
    # answer) would add load that CI once saw skew the 30-request shares past 8-12.
    return ClientSettings(home=tmp_path / "client", bootstrap=mesh.bootstrap, mdns=False, probation_good=0)


def variants():
    """Each prompt greedy and with seeded sampling."""
    for prompt in PROMPTS:
        yield chat(prompt, max_tokens=MAX_TOKENS)
        yield chat(prompt, max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, seed=1234)


def node_by_id(mesh: LocalMesh, peer_id: str) -> NodeProcess:
    return next(n for n in mesh.nodes if n.peer_id == peer_id)


async def restart(mesh: LocalMesh, dead: NodeProcess, network) -> None:
    """Start a killed node again from its home (same identity, new port), and wait
    until the client has heard of it at its new address."""
    dead.stop()
    others = [n.addr for n in mesh.nodes if n is not dead and n.process.poll() is None]
    fresh = await trio.to_thread.run_sync(lambda: start_node(dead.home, bootstrap=others[:1]))
    mesh.nodes[mesh.nodes.index(dead)] = fresh
    with trio.fail_after(30):
        while True:
            manifest = network.directory.get(fresh.peer_id)
            usable = {p.peer_id for p in network.candidates(None, None)}
            if manifest is not None and fresh.addr in manifest.addrs and fresh.peer_id in usable:
                return
            await trio.sleep(0.2)


async def taken_over_text(
    network, params, sent: list[tuple[str, int, str]], answer: Answer
) -> tuple[str, int]:
    """The text an answer taken over mid-way must have: the tokens sent before the peer
    that finished it took over, then what that peer gives when resumed after them (the
    same resume request it was sent). And how many tokens came before."""
    before = [(token, piece) for peer, token, piece in sent if peer != answer.peer_id]
    taken_over = await resumed_text(network.host, answer.peer_id, params, [t for t, _ in before])
    return "".join(piece for _, piece in before) + taken_over, len(before)


async def wait_for_candidates(network, count: int, timeout: float = 30.0) -> set[str]:
    with trio.fail_after(timeout):
        while len(found := {p.peer_id for p in network.candidates(None, None)}) < count:
            await trio.sleep(0.2)
    return found


async def test_load_spreads_by_capacity_and_full_nodes_spill_over(tmp_path, chaos_mesh):
    """30 concurrent requests over 3 equal nodes: each serves a third, give or take three.

    A node takes at most 4 requests of one peer at once (per-peer concurrency), so 12
    are in progress at a time: the rest are refused (rate_limited) and must be asked
    again, never dropped. This once came out 5/12/13 under load: a node cut the client's
    connection (a cancelled send broke py-libp2p's Noise framing, p2p/_yamux.py) or died
    (a queued request's reset escaped its handler, node/inference.py). Both are fixed
    and tested where they live; here no node may die and the shares stay even. On a
    loaded machine one node may finish its answers faster than another and so take more
    of the refused requests asked again: 7/12/11 is a fair spread, 5/12/13 is not.
    """
    async with open_network(settings_for(tmp_path, chaos_mesh)) as network:
        await wait_for_candidates(network, 3)
        answers: list[Answer] = []

        async def one(i: int) -> None:
            answers.append(
                (
                    await answer_to(
                        network, chat(f"Write the number {i} in words.", max_tokens=12), request_timeout_s=300
                    )
                )[1]
            )

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i)
        assert len(answers) == 30
        assert [n.process.poll() for n in chaos_mesh.nodes] == [None] * 3  # every node still serving
        shares = Counter(a.peer_id for a in answers)
        assert set(shares) == {n.peer_id for n in chaos_mesh.nodes}
        for peer_id, count in shares.items():
            assert 7 <= count <= 13, f"{peer_id} served {count} of 30: {dict(shares)}"


async def test_killing_the_serving_node_mid_answer_loses_and_repeats_nothing(tmp_path, chaos_mesh):
    """The answer is the tokens the killed node sent, then exactly what the peer that took
    over gives when resumed after them: nothing lost, nothing twice, no break."""
    rng = random.Random(20)
    async with open_network(settings_for(tmp_path, chaos_mesh)) as network:
        await wait_for_candidates(network, 3)
        for i in range(KILLS):
            params = list(variants())[i % 4]
            # Early enough that the victim still has tokens to make: it sends them in
            # batches, and a kill after its last batch would not be mid-answer.
            kill_after = rng.randint(1, MAX_TOKENS - 12)
            attempts: list[str] = []
            victim: NodeProcess | None = None
            text = ""
            sent: list[tuple[str, int, str]] = []  # (peer, token, text) as they came
            async for event in ask(network, params, on_attempt=attempts.append):
                if isinstance(event, Answer):
                    answer = event
                    continue
                text += event.text
                sent.append((attempts[-1], event.token_id, event.text))
                if event.index == kill_after and victim is None:
                    victim = node_by_id(chaos_mesh, attempts[-1])
                    os.kill(victim.process.pid, signal.SIGKILL)
            assert victim is not None
            assert answer.peer_id != victim.peer_id and len(answer.peers_tried) >= 2
            reference, before = await taken_over_text(network, params, sent, answer)
            assert before > kill_after, f"request {i}: the killed node's tokens were not all kept"
            assert text == answer.text == reference, f"request {i} killed after {kill_after}"
            await restart(chaos_mesh, victim, network)


async def test_a_frozen_node_is_detected_routed_around_and_used_again(tmp_path, chaos_mesh):
    async with open_network(settings_for(tmp_path, chaos_mesh)) as network:
        everyone = await wait_for_candidates(network, 3)
        # Freeze the node serving an answer, mid-answer: the answer goes on elsewhere.
        attempts: list[str] = []
        frozen: NodeProcess | None = None
        text = ""
        sent: list[tuple[str, int, str]] = []
        params = chat(PROMPTS[0], max_tokens=MAX_TOKENS)
        try:
            async for event in ask(network, params, on_attempt=attempts.append):
                if isinstance(event, Answer):
                    answer = event
                    continue
                text += event.text
                sent.append((attempts[-1], event.token_id, event.text))
                if event.index == 5 and frozen is None:
                    frozen = node_by_id(chaos_mesh, attempts[-1])
                    os.kill(frozen.process.pid, signal.SIGSTOP)
            assert frozen is not None
            reference, _ = await taken_over_text(network, params, sent, answer)
            assert text == reference and answer.peer_id != frozen.peer_id
            # It leaves the client's view (how fast: bench/failover.py)...
            with trio.fail_after(60):
                while frozen.peer_id in {p.peer_id for p in network.candidates(None, None)}:
                    await trio.sleep(0.1)
            # ...and requests meanwhile are served by the others.
            served = {(await answer_to(network, chat("Say hi.", max_tokens=4)))[1].peer_id for _ in range(3)}
            assert frozen.peer_id not in served
        finally:
            if frozen is not None:
                os.kill(frozen.process.pid, signal.SIGCONT)
        # Thawed, it is seen again and takes its share of a burst of requests.
        assert await wait_for_candidates(network, 3) == everyone
        async with trio.open_nursery() as nursery:
            results: list[Answer] = []

            async def one() -> None:
                results.append((await answer_to(network, chat("Count to three.", max_tokens=8)))[1])

            for _ in range(9):  # enough that spreading load must reach every usable peer
                nursery.start_soon(one)
        assert frozen.peer_id in {a.peer_id for a in results}
