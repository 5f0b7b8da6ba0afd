"""Pipeline chains of real `din node --layers` processes: same tokens as llama.cpp, failover,
and every option of a request honoured (or refused) on a chain.

One module-scoped set of stages is shared by the tests: A [0,10), B and B2 [10,20),
C [20,30) in one mesh (B2 is started by the model's hash on an empty home: it pulls only
its blocks from the others before it serves), and the pair A2 [0,10) + D [10,30) on their own (no bootstrap),
so that automatic routing from A sees only 3-stage chains and a 2-stage chain A2 + D is
asked for by name. (Relayed stages dial each other: a pair that included A would make
D known to the mesh.) A, B2 and C advertise prices (`PRICES`): a chain through B asks
0.5 credits per token in all, one through B2 0.6. The tests that stop or kill stages
come last.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import aclosing
from typing import Any

import httpx
import numpy as np
import pytest
import trio
from tests.gateway._gateway_helpers import API_KEY, start_gateway
from tests.helpers import chat, raw_host

from dinet.client.ask import Answer, ask
from dinet.client.chain import Chain, ChainPlan, ChainResult, StageRules, run_chain, silent_peers
from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.client.stage_audit import StageCheck
from dinet.config import ClientSettings
from dinet.engine import WorkerEngine, default_model_path
from dinet.errors import AnswerTimedOut, NoCapablePeer
from dinet.models._gguf import read_layout
from dinet.models.layers import stage_chunks
from dinet.models.store import ModelStore
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.streams import FramedStream
from dinet.routing.shard import Route, StageOffer
from dinet.trust.reputation import WEIGHTS, Event
from dinet.wire.ids import SHARD_PROTOCOL
from dinet.wire.keys import SigningKey
from dinet.wire.messages import GenerationParams, TokenFrame
from dinet.wire.shard import (
    ShardClose,
    ShardHidden,
    ShardOpen,
    ShardOpened,
    ShardRelay,
    ShardStep,
    decode_shard_reply,
    decode_tensor,
    tensor_frames,
)

# Prompts on which llama.cpp's greedy answer has no near-tie within MAX_TOKENS tokens: on
# others its own noise (~1.3 in the logits) can flip a token against any other engine.
PROMPTS = ["What is the largest planet?", "Describe a cat in one sentence.", "What is 2 plus 2?"]
MAX_TOKENS = 24
LONG_PROMPT, LONG_TOKENS = "Write a long story about a lighthouse keeper.", 160
COPYING = "Repeat exactly: " + " ".join(["The quick brown fox jumps over the lazy dog."] * 2)
STAGE_START_S = 240.0
PRICES = {"A": 0.2, "B2": 0.1, "C": 0.3}  # credits per completion token


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Stage processes by name, one torch thread each."""
    root = tmp_path_factory.mktemp("stages")
    started: dict[str, NodeProcess] = {}
    try:
        # Stages load torch and their tensors: slow on a busy 2-core machine.
        started["A"] = start_node(root / "A", extra_args=stage_args("A", "0:10"), start_timeout=STAGE_START_S)
        rest = {"B": "10:20", "B2": "10:20", "C": "20:30", "A2": "0:10", "D": "10:30"}
        threads = []

        def start(name: str, layers: str) -> None:
            bootstrap = [] if name in ("A2", "D") else [started["A"].addr]
            by_hash = ["--model", str(started["A"].model_hash)] if name == "B2" else []
            started[name] = start_node(
                root / name,
                bootstrap=bootstrap,
                extra_args=stage_args(name, layers) + by_hash,
                start_timeout=STAGE_START_S,
            )

        for name, layers in rest.items():
            threads.append(threading.Thread(target=start, args=(name, layers)))
            threads[-1].start()
        for t in threads:
            t.join()
        assert set(started) == {"A", *rest}, "a stage did not start"
        yield started
    finally:
        for node in started.values():
            node.stop()


def stage_args(name: str, layers: str) -> list[str]:
    """A first stage drafts with the shipped model's llama.cpp copy (in its sandboxed worker)."""
    draft = ["--draft-model", str(default_model_path())] if layers.startswith("0:") else []
    return ["--layers", layers, *draft] + (["--price", str(PRICES[name])] if name in PRICES else [])


@pytest.fixture(scope="module")
def llama_answers():
    """llama.cpp's greedy answers, token ids and text, for each prompt."""

    async def main() -> dict[str, tuple[list[int], str]]:
        answers = {}
        async with WorkerEngine(default_model_path(), threads=1) as engine:
            for prompt in PROMPTS:
                frames = []
                async with aclosing(engine.generate(chat(prompt, max_tokens=MAX_TOKENS))) as stream:
                    async for frame in stream:
                        if isinstance(frame, TokenFrame):
                            frames.append(frame)
                answers[prompt] = ([f.token_id for f in frames], "".join(f.text for f in frames))
        return answers

    return trio.run(main)


def settings_for(tmp_path, *nodes: NodeProcess) -> ClientSettings:
    return ClientSettings(
        home=tmp_path / "client", bootstrap=[n.addr for n in nodes], mdns=False, discover_timeout_s=30
    )


async def chain_answer(
    network, params: GenerationParams, sharded: bool | None = True, **options: Any
) -> tuple[list[TokenFrame], Answer]:
    frames, answer = [], None
    options = {"discover_timeout_s": 30, **options}
    async for event in ask(network, params, AskOptions(sharded=sharded, **options)):
        if isinstance(event, Answer):
            answer = event
        else:
            frames.append(event)
    assert answer is not None and answer.text == "".join(f.text for f in frames)
    return frames, answer


async def test_a_three_stage_chain_gives_llama_cpps_tokens(tmp_path, stages, llama_answers):
    async with open_network(settings_for(tmp_path, stages["A"])) as network:
        for i, prompt in enumerate(PROMPTS):
            # Asked for, or (first prompt) by default: no peer here holds the whole model.
            sharded = None if i == 0 else True
            frames, answer = await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), sharded)
            ids, text = llama_answers[prompt]
            # The same greedy ids: llama.cpp's top-1 token at every step of the answer.
            assert [f.token_id for f in frames] == ids
            assert answer.text == text
            assert [f.index for f in frames] == list(range(len(frames)))
            assert len(answer.chain) == 3
            assert answer.chain[0] == stages["A"].peer_id and answer.chain[2] == stages["C"].peer_id
            assert answer.usage.completion_tokens == len(ids) and answer.usage.prompt_tokens > 0


async def test_stages_sign_receipts_that_chain_and_an_audit_replays_each_on_another_holder(tmp_path, stages):
    """Every chain answer's receipts are checked; an audit (StageRules.audit 1) replays each
    stage on another holder of its blocks: A's on A2, B's on B2. C has none. (The chain is
    named: one through A2 would make A2, and D with it, known to the mesh.)"""
    a, b, c = stages["A"], stages["B"], stages["C"]
    route = Route(
        (StageOffer(a.peer_id, 0, 10), StageOffer(b.peer_id, 10, 20), StageOffer(c.peer_id, 20, 30)), 0.0
    )
    plan = ChainPlan(route, a.model_id, a.model_hash, 30)

    async def checked(params: GenerationParams, rules: StageRules) -> StageCheck:
        results = [
            e async for e in run_chain(network, plan, params, rules=rules) if isinstance(e, ChainResult)
        ]
        assert results[0].stage_check is not None
        return results[0].stage_check

    async with open_network(settings_for(tmp_path, a, stages["A2"])) as network:
        await know_stages(network, a, stages["A2"], b, stages["B2"], c)
        for draft in ("none", "lookup", "model"):  # guessed rows are replayed as they were taken
            check = await checked(chat(COPYING, max_tokens=MAX_TOKENS), StageRules(draft=draft, audit=1.0))
            assert check.receipts_ok and check.caught == ()
            assert sorted(check.audited) == sorted([a.peer_id, b.peer_id])
            assert check.problems == (f"no other holder of blocks 20-30 to audit {c.peer_id}",)
        # Not audited (audit 0): the receipts are still checked.
        check = await checked(chat(PROMPTS[0], max_tokens=MAX_TOKENS), StageRules())
        assert check.receipts_ok and check.audited == () and check.problems == ()
        assert network.reputation is not None
        for name in ("A", "A2", "B", "B2", "C"):  # no honest stage is held for a liar
            standing = network.reputation.standing(stages[name].peer_id)
            assert standing is None or standing.bad < WEIGHTS[Event.VERIFY_FAIL][1] / 2, name


@pytest.mark.parametrize("draft", ["lookup", "model"])
async def test_guessed_tokens_checked_a_run_at_a_time_change_no_answer(
    tmp_path, stages, llama_answers, draft
):
    """The first stage guesses tokens (by prompt lookup, or with its draft model) and the
    last checks them (fewer trips: tests/engine/torch/test_speculative.py); the answers
    are plain ones."""
    async with open_network(settings_for(tmp_path, stages["A"])) as network:
        for prompt in PROMPTS:
            frames, answer = await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), draft=draft)
            assert ids(frames) == llama_answers[prompt][0] and len(answer.chain) == 3
        for sampling in ({}, {"temperature": 0.8, "top_p": 0.95, "seed": 11}):
            copying = chat(COPYING, max_tokens=MAX_TOKENS, **sampling)
            plain, _ = await chain_answer(network, copying)
            guessed, answer = await chain_answer(network, copying, draft=draft)
            assert ids(guessed) == ids(plain) and answer.text == "".join(f.text for f in plain)


async def test_a_two_stage_chain_gives_the_same_tokens(tmp_path, stages, llama_answers):
    a, d = stages["A2"], stages["D"]
    async with open_network(settings_for(tmp_path, a)) as network:
        await network.host.dial(d.addr)  # D is in no mesh: reach it by address
        route = Route((StageOffer(a.peer_id, 0, 10), StageOffer(d.peer_id, 10, 30)), 0.0)
        plan = ChainPlan(route, a.model_id, a.model_hash, 30)
        for prompt in PROMPTS[:2]:
            frames: list[TokenFrame] = []
            async for event in run_chain(network, plan, chat(prompt, max_tokens=MAX_TOKENS)):
                if isinstance(event, ChainResult):
                    assert event.chain == (a.peer_id, d.peer_id)
                else:
                    frames.append(event)
            assert [f.token_id for f in frames] == llama_answers[prompt][0]
        # Hidden states handed on as f16: half the bytes, and here still the same tokens.
        prompt = PROMPTS[0]
        frames = [
            e
            async for e in run_chain(network, plan, chat(prompt, max_tokens=MAX_TOKENS), dtype="f16")
            if isinstance(e, TokenFrame)
        ]
        assert [f.token_id for f in frames] == llama_answers[prompt][0]


async def know_stages(network, *nodes: NodeProcess) -> None:
    """Wait until this client has seen every one of `nodes` offer its stage."""
    wanted = {n.peer_id for n in nodes}
    with trio.fail_after(60):
        while not wanted <= {stage.peer_id for _, stage in network.stage_offers(None, None)}:
            unprobed = [m for m in network.directory.manifests() if m.peer_id not in network.rtt_ms]
            await network.probe_all(unprobed)
            await trio.sleep(0.2)


def ids(frames: list[TokenFrame]) -> list[int]:
    return [f.token_id for f in frames]


async def test_a_price_limit_holds_for_the_whole_chain(tmp_path, stages, llama_answers):
    a, b, c = stages["A"], stages["B"], stages["C"]
    prompt = PROMPTS[0]
    async with open_network(settings_for(tmp_path, a)) as network:
        await know_stages(network, a, b, stages["B2"], c)
        # Every stage asks at most 0.3 per token, every chain at least 0.5 in all: refused.
        with pytest.raises(NoCapablePeer, match="within 0.45 credits per token"):
            await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), max_price=0.45)
        # Within 0.5 only the chain through B will do (through B2 it asks 0.6).
        frames, answer = await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), max_price=0.5)
        assert answer.chain == (a.peer_id, b.peer_id, c.peer_id)
        assert ids(frames) == llama_answers[prompt][0]
        assert answer.receipts == ()  # stages issue no receipts: nothing was charged
        # The network's own limit (DINET_MAX_PRICE) holds when a request sets none.
        network.max_price = 0.45
        with pytest.raises(NoCapablePeer, match="credits per token"):
            await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS))


async def test_the_cost_policy_takes_the_cheapest_chain(tmp_path, stages, llama_answers):
    a, b, c = stages["A"], stages["B"], stages["C"]
    prompt = PROMPTS[1]
    async with open_network(settings_for(tmp_path, a)) as network:
        await know_stages(network, a, b, stages["B2"], c)
        frames, answer = await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), policy="cost")
    assert answer.chain == (a.peer_id, b.peer_id, c.peer_id)  # 0.5 per token, not 0.6
    assert ids(frames) == llama_answers[prompt][0]


def test_a_stage_started_by_hash_holds_only_its_blocks(stages):
    """B2 pulled what blocks 10-20 need (header, their tensors; no embedding, no head)
    and serves from that partial file: the chains through it below give llama.cpp's tokens."""
    b2 = stages["B2"]
    stored = ModelStore(b2.home).find(str(b2.model_hash), complete=False)
    assert not stored.complete and stored.layers == (10, 20)
    layout = read_layout(default_model_path())
    assert list(stored.held) == stage_chunks(stored.card, layout, 10, 20)
    held_bytes = sum(stored.card.chunk_sizes[i] for i in stored.held)
    on_disk = stored.part_path.stat().st_blocks * 512
    assert on_disk <= held_bytes + len(stored.held) * 2 * 4096  # partly filled blocks at its ends
    assert held_bytes < 0.3 * stored.card.file_size  # a third of the blocks, and shared bytes


async def test_only_peers_restricts_the_stages(tmp_path, stages, llama_answers):
    a, b2, c = stages["A"], stages["B2"], stages["C"]
    prompt = PROMPTS[2]
    attempts: list[str] = []
    async with open_network(settings_for(tmp_path, a)) as network:
        await know_stages(network, a, stages["B"], b2, c)
        frames = []
        options = AskOptions(sharded=True, only_peers={a.peer_id, b2.peer_id, c.peer_id})
        async for event in ask(
            network, chat(prompt, max_tokens=MAX_TOKENS), options, on_attempt=attempts.append
        ):
            if isinstance(event, TokenFrame):
                frames.append(event)
            else:
                answer = event
        assert answer.chain == (a.peer_id, b2.peer_id, c.peer_id) and attempts == list(answer.chain)
        assert ids(frames) == llama_answers[prompt][0]
        with pytest.raises(NoCapablePeer, match="no chain of stages"):  # nothing holds [10, 20) among them
            await chain_answer(
                network, chat(prompt, max_tokens=4), only_peers={a.peer_id, c.peer_id}, discover_timeout_s=1
            )


async def test_a_deadline_caps_max_tokens_on_a_chain(tmp_path, stages, llama_answers):
    prompt = PROMPTS[0]
    async with open_network(settings_for(tmp_path, stages["A"])) as network:
        frames, answer = await chain_answer(network, chat(prompt, max_tokens=MAX_TOKENS), deadline_s=0.1)
    capped = answer.max_tokens_capped
    assert capped is not None and 1 <= capped < MAX_TOKENS
    assert answer.usage.completion_tokens == len(frames) <= capped
    assert ids(frames) == llama_answers[prompt][0][: len(frames)]  # a shorter answer, not another one


async def test_the_request_timeout_ends_a_chain_answer_without_blaming_its_stages(tmp_path, stages):
    async with open_network(settings_for(tmp_path, stages["A"])) as network:
        with pytest.raises(AnswerTimedOut):
            await chain_answer(network, chat(LONG_PROMPT, max_tokens=LONG_TOKENS), request_timeout_s=1.0)
        book = network.reputation
        assert book is not None
        assert all(book.score(n.peer_id) is None for n in stages.values())  # the limit was ours
        # The stages freed the sessions and serve the next request.
        frames, answer = await chain_answer(network, chat(PROMPTS[2], max_tokens=4))
        assert len(frames) == 4 and all(book.score(p) == 1.0 for p in answer.chain)


async def test_stages_excluded_for_a_low_reputation_are_never_used(tmp_path, stages):
    a, b2, c = stages["A"], stages["B2"], stages["C"]
    async with open_network(settings_for(tmp_path, a)) as network:
        await know_stages(network, a, stages["B"], b2, c)
        book = network.reputation
        assert book is not None
        book.record_many([(b2.peer_id, Event.SUCCESS), (b2.peer_id, Event.VERIFY_FAIL)] * 2)  # caught twice
        with pytest.raises(NoCapablePeer, match="low reputation"):
            await chain_answer(
                network, chat(PROMPTS[0], max_tokens=4), only_peers={a.peer_id, b2.peer_id, c.peer_id}
            )
        _, answer = await chain_answer(network, chat(PROMPTS[0], max_tokens=4))
        assert b2.peer_id not in answer.chain


async def test_a_chain_answer_is_verified_by_a_whole_model_peer(tmp_path, stages, mesh):
    a = stages["A"]
    whole = {n.peer_id for n in mesh.nodes}
    assert a.model_hash == mesh.nodes[0].model_hash  # the same model, split or whole
    prompt = PROMPTS[1]
    alone = ClientSettings(home=tmp_path / "alone", bootstrap=[a.addr], mdns=False, discover_timeout_s=30)
    async with open_network(alone) as network:  # no whole-model peer in sight: nobody can check
        _, unchecked = await chain_answer(network, chat(prompt, max_tokens=8), verify_rate=1.0)
    assert unchecked.verification is not None and unchecked.verification.verified is None

    both = ClientSettings(home=tmp_path / "both", bootstrap=[a.addr, mesh.bootstrap[0]], mdns=False)
    async with open_network(both) as network:
        await network.discover(None, a.model_hash, timeout=30, want=len(mesh.nodes))
        _, answer = await chain_answer(network, chat(prompt, max_tokens=8), verify_rate=1.0)
        check = answer.verification
        assert check is not None and check.verified is True and check.verifier in whole
        assert check.checked == answer.usage.completion_tokens == 8
        book = network.reputation
        assert book is not None
        for peer_id in answer.chain:  # each stage answered and passed: success + verify_pass
            standing = book.standing(peer_id)
            assert standing is not None and standing.events == pytest.approx(2, abs=0.01)
            assert standing.bad == 0
        chosen = mesh.nodes[2].peer_id
        _, again = await chain_answer(
            network, chat(prompt, max_tokens=8), verify_rate=1.0, verifiers={chosen}
        )
        assert again.verification is not None and again.verification.verifier == chosen


async def test_a_session_lost_at_a_stage_is_replayed_without_a_change(tmp_path, stages):
    a, c = stages["A"], stages["C"]
    middle = next(stages[n] for n in ("B", "B2") if stages[n].process.poll() is None)
    route = Route(
        (StageOffer(a.peer_id, 0, 10), StageOffer(middle.peer_id, 10, 20), StageOffer(c.peer_id, 20, 30)), 0.0
    )
    plan = ChainPlan(route, a.model_id, a.model_hash, 30)
    params = chat(LONG_PROMPT, max_tokens=LONG_TOKENS)  # long enough to be mid-answer at the theft

    async def answer(network, on_first=None) -> tuple[list[int], Chain]:
        chain = Chain(network, plan, params, "f32")
        await chain.start()
        tokens: dict[int, int] = {}  # by completion index: a replayed chain sends them again
        while True:
            sampled = await chain.next_sampled()
            tokens[sampled.index] = sampled.token_id
            if on_first is not None:
                await on_first(chain)
                on_first = None
            if sampled.finish_reason is not None:
                await chain.close(clean=True)
                return [tokens[i] for i in sorted(tokens)], chain

    async with open_network(settings_for(tmp_path, a)) as network, raw_host() as thief:
        await network.discover(None, None, timeout=30, or_stages=True)
        await thief.dial(middle.addr)
        undisturbed, chain = await answer(network)
        assert chain.repairs == 0 and len(undisturbed) == LONG_TOKENS

        async def steal(chain: Chain) -> None:
            """The middle stage loses the session: another stream takes its id over, then ends."""
            stream = await thief.open_stream(middle.peer_id, SHARD_PROTOCOL, 60)
            stolen = FramedStream(stream)
            session_id = chain.links[1].session_id
            await stolen.send(ShardOpen(session_id=session_id, span=(10, 20), params=chat(LONG_PROMPT)))
            with trio.fail_after(30):
                assert isinstance(decode_shard_reply(await stolen.receive() or b""), ShardOpened)
            await stolen.send(ShardClose(session_id=session_id))
            with trio.fail_after(30):
                assert await stolen.receive() is None

        tokens, chain = await answer(network, on_first=steal)
        assert tokens == undisturbed  # replayed into fresh sessions: unchanged
        assert chain.repairs == 1  # the lost session was noticed and replayed once
        # The thief's session may have met a relayed step before it ended (the middle stage
        # then answered it wrongly and was left out, and its twin took over: this test runs
        # before one of them is killed): either way a stage of [10, 20) served.
        assert [(link.offer.start, link.offer.stop) for link in chain.links] == [(0, 10), (10, 20), (20, 30)]


async def test_a_hung_stage_is_found_and_left_out(tmp_path, stages, llama_answers):
    prompt = PROMPTS[1]
    a, c = stages["A"], stages["C"]
    hung, spare = stages["B"], stages["B2"]
    route = Route(
        (StageOffer(a.peer_id, 0, 10), StageOffer(hung.peer_id, 10, 20), StageOffer(c.peer_id, 20, 30)), 0.0
    )
    frames: list[TokenFrame] = []
    result = None
    async with open_network(settings_for(tmp_path, a)) as network:
        await network.discover(None, None, timeout=30, or_stages=True)
        plan = ChainPlan(route, a.model_id, a.model_hash, 30)
        try:
            async for event in run_chain(network, plan, chat(prompt, max_tokens=MAX_TOKENS)):
                if isinstance(event, ChainResult):
                    result = event
                    continue
                frames.append(event)
                if len(frames) == 1:  # mid-answer the middle stage hangs: no error, no closed stream
                    os.kill(hung.process.pid, signal.SIGSTOP)
            # How the chain found it: the one stage that no longer answers anything.
            assert await silent_peers(network.host, list(route.peers)) == {hung.peer_id}
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
    assert result is not None
    assert [f.token_id for f in frames] == llama_answers[prompt][0]  # each token once, unchanged
    assert result.chain == (a.peer_id, spare.peer_id, c.peer_id)  # the silent stage was left out


async def test_killing_the_middle_stage_mid_answer_changes_nothing(tmp_path, stages, llama_answers):
    prompt = PROMPTS[0]
    middle = {stages["B"].peer_id: stages["B"], stages["B2"].peer_id: stages["B2"]}
    chosen: list[str] = []
    frames: list[TokenFrame] = []
    answer = None
    async with open_network(settings_for(tmp_path, stages["A"])) as network:
        async for event in ask(
            network,
            chat(prompt, max_tokens=MAX_TOKENS),
            AskOptions(sharded=True, discover_timeout_s=30),
            on_attempt=chosen.append,
        ):
            if isinstance(event, Answer):
                answer = event
                continue
            frames.append(event)
            if len(frames) == 4:  # mid-answer: kill whichever middle stage the chain uses
                (victim,) = [middle[p] for p in chosen if p in middle]
                os.kill(victim.process.pid, signal.SIGKILL)
                victim.process.wait()
        book = network.reputation
        assert book is not None
        assert answer is not None and all(book.score(p) == 1.0 for p in answer.chain)  # each earned a success
        assert book.score(victim.peer_id) != 1.0  # the killed stage did not
    assert answer is not None
    assert [f.token_id for f in frames] == llama_answers[prompt][0]
    assert answer.text == llama_answers[prompt][1]
    assert victim.peer_id not in answer.chain
    assert {p for p in answer.chain if p in middle} == set(middle) - {victim.peer_id}


def test_din_ask_sharded_and_the_gateway_answer_through_a_chain(tmp_path, stages, llama_answers):
    prompt = PROMPTS[0]
    alive = [n for n in stages.values() if n.process.poll() is None and n not in (stages["A2"], stages["D"])]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinet",
            "ask",
            "--sharded",
            "--draft",
            "model",
            "--json",
            "--no-mdns",
            "--home",
            str(tmp_path / "cli"),
            "--max-tokens",
            str(MAX_TOKENS),
            "--timeout",
            "30",
            "--bootstrap",
            stages["A"].addr,
            prompt,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["text"] == llama_answers[prompt][1]
    assert len(answer["chain"]) == 3 and set(answer["chain"]) <= {n.peer_id for n in alive}

    gateway = start_gateway(
        tmp_path / "gw", ["--api-key", API_KEY, "--bootstrap", stages["A"].addr, "--timeout", "30"]
    )
    try:
        reply = httpx.post(
            f"{gateway.base_url}/chat/completions",
            timeout=120,
            headers={"authorization": f"Bearer {API_KEY}"},
            json={
                "model": stages["A"].model_id,
                "max_tokens": MAX_TOKENS,
                "temperature": 0,
                "dinet_sharded": True,
                "dinet": {"draft": "lookup"},
                "messages": [{"role": "user", "content": prompt}],
            },
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["choices"][0]["message"]["content"] == llama_answers[prompt][1]
        assert len(body["dinet"]["chain"]) == 3
    finally:
        gateway.stop()


async def test_bad_frames_get_typed_errors_and_the_stage_keeps_serving(stages):
    a = stages["A"]
    async with raw_host() as host:
        await host.dial(a.addr)

        async def shard_stream() -> FramedStream:
            stream = await host.open_stream(a.peer_id, SHARD_PROTOCOL, 60)
            return FramedStream(stream)

        async def reply(framed: FramedStream):
            with trio.fail_after(30):
                return decode_shard_reply(await framed.receive() or b"")

        def step(session_id: str, seq: int, x: np.ndarray) -> bytes:
            return tensor_frames(ShardStep(session_id=session_id, seq=seq, rows=len(x), dtype="i32"), x)

        params = chat("Hello there", max_tokens=4)
        ids = np.array([[1], [2]], dtype=np.int32)
        framed = await shard_stream()
        await framed.send(ShardOpen(session_id="s1", span=(0, 12), params=params))
        assert (await reply(framed)).code == "wrong_span"
        await framed.send_framed(step("nope", 0, ids))
        assert (await reply(framed)).code == "unknown_session"
        await framed.send(ShardOpen(session_id="s1", span=(0, 10), params=params))
        opened = await reply(framed)
        assert isinstance(opened, ShardOpened) and len(opened.prompt_ids) > 2
        await framed.send_framed(step("s1", 3, ids))
        assert (await reply(framed)).code == "bad_request"  # out of order: the stream stays usable
        await framed.send_framed(step("s1", 0, np.array([[10**6]], dtype=np.int32)))
        assert (await reply(framed)).code == "bad_request"  # not a token id
        await framed.send_framed(step("s1", 0, ids))
        hidden = await reply(framed)
        assert isinstance(hidden, ShardHidden) and hidden.rows == 2
        raw = await framed.receive()
        assert raw is not None
        assert decode_tensor(raw, 2, opened.n_embd, hidden.dtype).shape == (2, opened.n_embd)
        await framed.send_payload(b'{"kind": "shard_step", "garbage": true}')
        assert (await reply(framed)).code == "bad_request"
        with trio.fail_after(30):
            assert await framed.receive() is None  # a frame that does not decode ends the stream

        # A relay the stage cannot follow: a peer id that is not one, then a peer nobody runs.
        relayed = await shard_stream()
        bogus = ShardRelay(peer_id="not-a-peer", session_id="x")
        await relayed.send(ShardOpen(session_id="s3", span=(0, 10), params=params, relay=bogus))
        assert (await reply(relayed)).code == "bad_request"
        nobody = SigningKey.generate().peer_id
        gone = ShardRelay(peer_id=nobody, session_id="x", addrs=("/ip4/127.0.0.1/tcp/9",))
        await relayed.send(ShardOpen(session_id="s3", span=(0, 10), params=params, relay=gone))
        assert isinstance(await reply(relayed), ShardOpened)
        await relayed.send_framed(step("s3", 0, ids))  # relayed: no answer unless the relay fails
        failed = await reply(relayed)
        assert failed.code == "relay_failed" and nobody in failed.message

        fresh = await shard_stream()  # and the stage still serves new sessions
        await fresh.send(ShardOpen(session_id="s2", span=(0, 10), params=params))
        assert isinstance(await reply(fresh), ShardOpened)
        await fresh.send(ShardClose(session_id="s2"))
        with trio.fail_after(30):
            assert await fresh.receive() is None
