"""A small mesh of honest and lying nodes, and many verified requests against it.

Shared by tests/trust/test_liars.py and bench/verify.py. Roles:

- `verifier`: honest, 2 llama.cpp threads; re-scores every answer;
- `honest`: honest, 1 thread (another thread count than the verifier's);
- `wrong-model`, `corrupt:1`, `random`: liars (1 thread), started with DINET_ALLOW_LIARS=1.

Each case is asked of every answering role straight over `/dinet/infer/1` (so the
answering peer is known), then the claimed tokens are re-scored by the verifier
(`request_scores`) and judged (`judge`), as `verify_answer` does.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from dinet.client.network import Network
from dinet.client.verify import request_scores
from dinet.engine import default_model_path
from dinet.engine.sampler import uniform
from dinet.engine.testing.liar import ALLOW_ENV, derive_wrong_model
from dinet.errors import DinetError
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.p2p.streams import FramedStream
from dinet.trust.verify import Verdict, draw_excess, judge
from dinet.wire.ids import INFER_PROTOCOL
from dinet.wire.messages import (
    ChatMessage,
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    TokenFrame,
    decode_reply,
)
from dinet.wire.verify import VerifyRequest

LIARS = ("wrong-model", "corrupt:1", "random")
ANSWERING = ("honest", *LIARS)
# Generous limits: the campaign floods its own nodes on purpose.
_OPEN_LIMITS = [
    "--per-peer-rate", "10000", "--per-peer-burst", "10000", "--per-peer-concurrency", "256",
    "--max-queue", "512",
]  # fmt: skip
_TOPICS = [
    "rivers",
    "cats",
    "the moon",
    "bread",
    "chess",
    "volcanoes",
    "music",
    "trains",
    "winter",
    "bees",
    "paper",
    "the sea",
    "glass",
    "clocks",
    "maps",
    "salt",
    "bridges",
    "forests",
]
_ASKS = [
    "Tell me about {}.",
    "Write a short poem about {}.",
    "Give three facts about {}.",
    "Why do people like {}?",
    "Explain {} to a child.",
    "Describe {} in detail.",
]
_DECODINGS = [(0.0, 1.0), (0.0, 1.0), (0.7, 0.9), (1.0, 1.0), (0.8, 0.95)]  # (temperature, top_p)


def cases(n: int, seed: int = 0) -> list[GenerationParams]:
    """`n` short requests: varied prompts, greedy and sampled, 8-12 tokens."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        temperature, top_p = _DECODINGS[i % len(_DECODINGS)]
        content = rng.choice(_ASKS).format(rng.choice(_TOPICS))
        out.append(
            GenerationParams(
                messages=(ChatMessage(role="user", content=content),),
                max_tokens=rng.choice((8, 12)),
                temperature=temperature,
                top_p=top_p,
                seed=rng.randrange(2**31),
            )
        )
    return out


@contextmanager
def liar_mesh(root: Path) -> Iterator[dict[str, NodeProcess]]:
    """The five roles as real `din node` processes on loopback."""
    wrong = derive_wrong_model(default_model_path(), root / "wrong.gguf")
    lies = {"wrong-model": f"wrong-model:{wrong}", "corrupt:1": "corrupt:1", "random": "random"}
    nodes: dict[str, NodeProcess] = {}
    try:
        nodes["verifier"] = start_node(root / "verifier", threads=2, extra_args=_OPEN_LIMITS)
        failures: list[str] = []

        def start(role: str) -> None:
            lie = lies.get(role)
            try:
                nodes[role] = start_node(
                    root / role.replace(":", "-"),
                    bootstrap=[nodes["verifier"].addr],
                    threads=1,
                    extra_args=_OPEN_LIMITS + (["--liar", lie] if lie else []),
                    env={ALLOW_ENV: "1"} if lie else None,
                )
            except DinetError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=start, args=(role,)) for role in ANSWERING]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise DinetError("; ".join(failures))
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


@dataclass
class Tally:
    """Verified answers of one role."""

    total: int = 0
    flagged: int = 0  # verified == False
    unchecked: int = 0  # no verifier answered (always 0 here: the verifier is asked directly)
    worst_greedy_gap: float = 0.0  # largest greedy gap (nats) seen, over all answers
    worst_sampled_logodds: float = 0.0  # largest raw miss of the draw (log-odds), over all answers
    examples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.flagged / self.total if self.total else 0.0


async def answer_from(network: Network, peer_id: str, params: GenerationParams) -> list[int]:
    """The token ids one peer sends for `params` (no failover: we want this peer's claim)."""
    stream = await network.host.open_stream(peer_id, INFER_PROTOCOL, 60)
    framed = FramedStream(stream)
    tokens: list[int] = []
    ended = False
    try:
        await framed.send(InferRequest(request_id=f"campaign-{os.urandom(6).hex()}", params=params))
        with trio.fail_after(120):
            while (payload := await framed.receive()) is not None:
                frame = decode_reply(payload)
                if isinstance(frame, TokenFrame):
                    tokens.append(frame.token_id)
                elif isinstance(frame, EndFrame):
                    ended = True
                    return tokens
                elif isinstance(frame, ErrorFrame):
                    raise DinetError(f"{peer_id} refused: {frame.code}: {frame.message}")
        raise DinetError(f"{peer_id} closed without an end frame")
    finally:
        with trio.CancelScope(shield=True):  # no countersignature: the campaign keeps no ledger
            await (framed.close() if ended else framed.reset())


async def run_campaign(
    network: Network,
    nodes: dict[str, NodeProcess],
    requests: list[GenerationParams],
    roles: tuple[str, ...] = ANSWERING,
    concurrency: int = 8,
) -> dict[str, Tally]:
    """Ask every role every request, verify each answer on the verifier; tallies by role."""
    verifier = nodes["verifier"].peer_id
    model_hash = nodes["verifier"].model_hash
    tallies = {role: Tally() for role in roles}
    limiter = trio.CapacityLimiter(concurrency)

    async def one(role: str, params: GenerationParams) -> None:
        async with limiter:
            tokens = await answer_from(network, nodes[role].peer_id, params)
            claim = VerifyRequest(
                request_id=os.urandom(6).hex(), model_hash=model_hash, params=params, tokens=tuple(tokens)
            )
            scores = await request_scores(network, verifier, claim)
        check: Verdict = judge(
            scores.positions, temperature=params.temperature, top_p=params.top_p, seed=params.seed
        )
        tally = tallies[role]
        tally.total += 1
        if not check.ok:
            tally.flagged += 1
            if role == "honest" and len(tally.examples) < 5:
                tally.examples.append(f"{params.temperature}/{params.top_p}: bad {check.bad_positions}")
        if params.temperature == 0.0:
            tally.worst_greedy_gap = max(tally.worst_greedy_gap, check.worst_margin)
        else:  # the raw miss of the draw, before the near-tie rule
            raw = max((draw_excess(p, uniform(params.seed, p.index)) for p in scores.positions), default=0.0)
            tally.worst_sampled_logodds = max(tally.worst_sampled_logodds, raw)

    async with trio.open_nursery() as nursery:
        for params in requests:
            for role in roles:
                nursery.start_soon(one, role, params)
    return tallies
