"""Votes and reputation against a real lying node: two honest `din node` processes and
one that corrupts a token of every answer (`--liar corrupt:1`, the subtlest lie)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import trio
from tests.gateway._gateway_helpers import start_gateway, wait_for_peers
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.client.vote import ask_replicas
from dinet.config import ClientSettings
from dinet.engine.testing.liar import ALLOW_ENV
from dinet.errors import NoCapablePeer
from dinet.node.local_mesh import LocalMesh, NodeProcess, start_node

# Long answers: the liar's corrupted position lies within the first MAX_TOKENS tokens,
# and an answer that stopped before it would be honest by accident.
PROMPTS = [
    "Describe the sea.",
    "Explain how rain forms.",
    "Describe a busy market.",
    "Tell me about the moon.",
    "Explain why the sky is blue.",
    "Describe a forest at night.",
]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def liar_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("liar-votes")
    with LocalMesh(root, size=2, threads=1) as honest:
        liar = start_node(
            root / "liar",
            bootstrap=honest.bootstrap[:1],
            threads=1,
            extra_args=["--liar", "corrupt:1"],
            env={ALLOW_ENV: "1"},
        )
        try:
            yield honest.nodes, liar
        finally:
            liar.stop()


def settings(home, honest: list[NodeProcess], liar: NodeProcess) -> ClientSettings:
    return ClientSettings(home=home, bootstrap=[n.addr for n in honest] + [liar.addr], mdns=False)


def params_for(round_: int):
    """Greedy and seeded sampling in turn: honest peers agree exactly on both."""
    if round_ % 2:
        return chat(PROMPTS[round_], max_tokens=MAX_TOKENS, temperature=0.8, top_p=0.95, seed=round_)
    return chat(PROMPTS[round_], max_tokens=MAX_TOKENS)


async def all_three(network) -> None:
    with trio.fail_after(30):
        while len(network.candidates(None, None)) < 3:
            await trio.sleep(0.2)


def din(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dinet", *args], capture_output=True, text=True, timeout=120)


async def test_votes_flag_the_liar_and_reputation_excludes_it(tmp_path, liar_mesh):
    honest, liar = liar_mesh
    honest_ids = {n.peer_id for n in honest}
    home = tmp_path / "client"
    excluded_after = None
    async with open_network(settings(home, honest, liar)) as network:
        await all_three(network)
        for round_ in range(len(PROMPTS)):
            vote = await ask_replicas(network, params_for(round_), 3)
            assert vote.answer is not None and vote.decided_by == "majority", vote.explain()
            assert vote.answer.finish_reason == "length"
            assert set(vote.agreeing) == honest_ids, (round_, liar.peer_id, vote.summary())
            assert vote.answer.peer_id in honest_ids
            if liar.peer_id in vote.asked:
                assert vote.dissenting == (liar.peer_id,)
                assert vote.verified == {liar.peer_id: False}  # re-scored: not a near-tie
                assert vote.answers[liar.peer_id].text != vote.answer.text
            else:
                assert excluded_after is not None and vote.dissenting == ()
            usable = {p.peer_id for p in network.trusted(network.candidates(None, None))}
            assert honest_ids <= usable  # never a false positive
            if liar.peer_id not in usable and excluded_after is None:
                excluded_after = round_ + 1
        assert excluded_after == 2  # two caught answers; one alone never excludes
        # Plain requests no longer reach the liar either.
        _, answer = await answer_to(network, chat("Name a colour.", max_tokens=4))
        assert answer.peer_id in honest_ids
        with pytest.raises(NoCapablePeer, match="low reputation"):
            await answer_to(network, chat("Name a colour.", max_tokens=4), only_peers={liar.peer_id})
    # `din peers` reads the same book.
    done = await trio.to_thread.run_sync(
        lambda: din(
            "peers", "--json", "--no-mdns", "--wait", "2", "--home", str(home), "--bootstrap", honest[0].addr
        )
    )
    assert done.returncode == 0, done.stderr
    shown = {p["peer_id"]: p for p in json.loads(done.stdout)}
    assert shown[liar.peer_id]["excluded"] and shown[liar.peer_id]["reputation"] < 0.35
    for peer_id in honest_ids:
        assert shown[peer_id]["reputation"] == 1.0 and not shown[peer_id]["excluded"]
        assert shown[peer_id]["evidence"] > 2 * len(PROMPTS) - 0.5  # success + agreement per vote


async def test_without_a_majority_verification_decides_and_otherwise_nobody_is_blamed(tmp_path, liar_mesh):
    honest, liar = liar_mesh
    pair = {honest[0].peer_id, liar.peer_id}
    async with open_network(settings(tmp_path / "client", honest, liar)) as network:
        await all_three(network)
        book = network.reputation
        assert book is not None
        vote = await ask_replicas(network, params_for(0), 2, AskOptions(only_peers=pair), verify=False)
        assert vote.answer is None and vote.decided_by is None
        assert vote.summary()["majority"] is False and vote.distinct_answers == 2
        assert "no majority among 2 replicas" in vote.explain()
        # Nobody is known to be wrong: both only answered.
        assert book.score(honest[0].peer_id) == book.score(liar.peer_id) == 1.0

        vote = await ask_replicas(network, params_for(1), 2, AskOptions(only_peers=pair))
        assert vote.decided_by == "verification" and vote.answer is not None
        assert vote.answer.peer_id == honest[0].peer_id
        assert vote.verified == {honest[0].peer_id: True, liar.peer_id: False}
        assert vote.dissenting == (liar.peer_id,)
        assert book.score(honest[0].peer_id) == 1.0
        assert book.score(liar.peer_id) < 0.35  # type: ignore[operator]


def test_din_ask_and_the_gateway_vote(tmp_path, liar_mesh):
    honest, liar = liar_mesh
    everyone = [f"--bootstrap={n.addr}" for n in [*honest, liar]]
    done = din(
        "ask",
        "--json",
        "--no-mdns",
        "--replicas",
        "3",
        "--max-tokens",
        str(MAX_TOKENS),
        "--home",
        str(tmp_path / "cli"),
        *everyone,
        PROMPTS[0],
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["vote"]["majority"] and reply["vote"]["dissenting"] == [liar.peer_id]
    assert reply["vote"]["verified"] == {liar.peer_id: False}
    assert reply["peer_id"] in {n.peer_id for n in honest}
    assert reply["text"] == reply["vote"]["answers"][reply["peer_id"]]

    gateway = start_gateway(tmp_path / "gateway", everyone)
    try:
        wait_for_peers(gateway, 3)
        body = {
            "model": "smollm2-135m-instruct",
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "messages": [{"role": "user", "content": PROMPTS[0]}],
            "dinet": {"replicas": 3},
        }
        answer = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, timeout=120).json()
        assert answer["choices"][0]["message"]["content"] == reply["text"]
        assert answer["dinet"]["vote"]["dissenting"] == [liar.peer_id]
        peers = {p["peer_id"]: p for p in httpx.get(f"{gateway.url}/api/network").json()["peers"]}
        assert peers[liar.peer_id]["reputation"] < 0.35  # one caught answer: deprioritised
        assert not peers[liar.peer_id]["excluded"]
        assert peers[honest[0].peer_id]["reputation"] == 1.0
        bad = httpx.post(f"{gateway.url}/v1/chat/completions", json={**body, "dinet": {"replicas": 99}})
        assert bad.status_code == 400 and "dinet.replicas" in bad.json()["error"]["message"]
    finally:
        gateway.stop()
