"""A mesh of honest and lying pipeline stages, and audited chain answers through it.

Shared by tests/client/test_stage_liars.py and bench/stage_liars.py. The model is split
in two: blocks 0-15 ("front") and 15-30 ("back"). Two honest stages hold each half;
liars (`--liar stage-*`, DINET_ALLOW_LIARS=1) hold one half each. A case is a chain of
one front and one back stage, chosen by name, whose answer is audited (audit rate 1):
each stage is replayed on the other holders of its half, liars among them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path

from dinet.client.chain import ChainPlan, ChainResult, StageRules, run_chain
from dinet.client.network import Network
from dinet.client.stage_audit import StageCheck
from dinet.engine.testing.liar import ALLOW_ENV
from dinet.errors import DinetError
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.routing.shard import Route, StageOffer
from dinet.wire.messages import ChatMessage, GenerationParams

SPANS = {"front": (0, 15), "back": (15, 30)}
# role -> (half, lie or None)
ROLES: dict[str, tuple[str, str | None]] = {
    "front-honest-1": ("front", None),
    "front-honest-2": ("front", None),
    "back-honest-1": ("back", None),
    "back-honest-2": ("back", None),
    "front-noise": ("front", "stage-noise"),
    "front-late": ("front", "stage-late"),
    "back-noise": ("back", "stage-noise"),
    "back-late": ("back", "stage-late"),
    "back-forge": ("back", "stage-forge"),
}
START_S = 300.0  # nine torch processes loading at once on two cores
_TOPICS = ["rivers", "cats", "the moon", "bread", "chess", "volcanoes", "owls", "tea", "rain", "maps"]


@contextmanager
def stage_liar_mesh(root: Path, roles: tuple[str, ...] = tuple(ROLES)) -> Iterator[dict[str, NodeProcess]]:
    """The roles as real `din node --layers` processes on loopback, in one mesh."""
    nodes: dict[str, NodeProcess] = {}
    try:
        first, *rest = roles
        nodes[first] = _start(root, first, [])
        failures: list[str] = []

        def start(role: str) -> None:
            try:
                nodes[role] = _start(root, role, [nodes[first].addr])
            except DinetError as exc:
                failures.append(str(exc))

        threads = [threading.Thread(target=start, args=(role,)) for role in rest]
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


def _start(root: Path, role: str, bootstrap: list[str]) -> NodeProcess:
    half, lie = ROLES[role]
    start, stop = SPANS[half]
    return start_node(
        root / role,
        bootstrap=bootstrap,
        extra_args=["--layers", f"{start}:{stop}"] + (["--liar", lie] if lie else []),
        env={ALLOW_ENV: "1"} if lie else None,
        start_timeout=START_S,
    )


def case_params(rng: random.Random) -> GenerationParams:
    """A short varied request: greedy or seeded, 10-16 tokens."""
    question = f"Tell me one fact about {rng.choice(_TOPICS)}."
    sampled = rng.random() < 0.5
    return GenerationParams(
        messages=(ChatMessage(role="user", content=question),),
        max_tokens=rng.randint(10, 16),
        temperature=0.8 if sampled else 0.0,
        seed=rng.randint(0, 2**31) if sampled else 0,
    )


@dataclass(frozen=True)
class Outcome:
    chain: tuple[str, str]
    check: StageCheck
    names: dict[str, str]  # peer id -> role
    answer_s: float  # from the request to its last token
    check_s: float  # from the last token to the receipts checked and the audit done

    def caught(self) -> set[str]:
        return {self.names[p] for p in self.check.caught}


async def audited_answer(
    network: Network,
    nodes: dict[str, NodeProcess],
    front: str,
    back: str,
    params: GenerationParams,
    draft: str = "none",
) -> Outcome:
    """One answer through the chain front -> back, audited."""
    a, b = nodes[front], nodes[back]
    route = Route((StageOffer(a.peer_id, *SPANS["front"]), StageOffer(b.peer_id, *SPANS["back"])), 0.0)
    plan = ChainPlan(route, a.model_id, a.model_hash, SPANS["back"][1])
    result = None
    rules = StageRules(audit=1.0, draft=draft)  # type: ignore[arg-type]
    started = last = time.perf_counter()
    async with aclosing(run_chain(network, plan, params, rules=rules)) as events:
        async for event in events:
            if isinstance(event, ChainResult):
                result = event
            else:
                last = time.perf_counter()
    assert result is not None and result.stage_check is not None
    names = {node.peer_id: role for role, node in nodes.items()}
    return Outcome((front, back), result.stage_check, names, last - started, time.perf_counter() - last)
