"""Two colluding peers against honest ones: a liar, and a verifier that covers for it.

Real node processes on loopback, each claiming a region (loopback gives every peer the
same address prefix, so regions are what "apart" has to go on):

- `honest-a`, `honest-b`: honest, region eu-west;
- `liar`: `--liar corrupt:2` (two false tokens per answer), region ap-south;
- `colluder`: answers honestly, but as a verifier passes every claim (`--liar cover`),
  region sa-east: a Sybil claiming a far-away region to look independent, so it is
  chosen apart from any other verifier, and verifies every one of the liar's answers.

One client asks 100 short requests (8-12 tokens, greedy and sampled; the issue's 200 with
DINET_COLLUSION_REQUESTS=200) through `ask` with verification on, each pinned in turn to
one of the four producers (`only_peers`), so the liar produces a quarter of them. The
client excludes nobody (`exclude_below=0`) so that the liar keeps being asked: exclusion
is checked against the book with the default thresholds instead. The liar never earns
standing, so each of its answers is checked by two verifiers and, as they split, a third;
the colluder is outvoted.

`DINET_COLLUSION_REQUESTS=N` runs N requests instead of 100; the figures go to
artifacts/collusion.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trio
from liar_campaign import cases

from dinet.client.ask import Answer, ask
from dinet.client.network import open_network
from dinet.client.options import AskOptions
from dinet.config import ClientSettings
from dinet.engine.testing.liar import ALLOW_ENV
from dinet.node.local_mesh import NodeProcess, start_node
from dinet.routing.select import EXCLUDE_BELOW, MIN_EVIDENCE
from dinet.trust.reputation import Reputation, has_standing

REQUESTS = int(os.environ.get("DINET_COLLUSION_REQUESTS", "100"))  # 200 for the figure
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
HONEST = ("honest-a", "honest-b")
ROLES = {  # role: (region, lie)
    "honest-a": ("eu-west", None),
    "honest-b": ("eu-west", None),
    "liar": ("ap-south", "corrupt:2"),
    "colluder": ("sa-east", "cover"),
}
_OPEN_LIMITS = [
    "--per-peer-rate", "10000", "--per-peer-burst", "10000", "--per-peer-concurrency", "256",
    "--max-queue", "512",
]  # fmt: skip


@pytest.fixture(scope="module")
def colluding_mesh(tmp_path_factory):
    root = tmp_path_factory.mktemp("collusion")
    nodes: dict[str, NodeProcess] = {}
    try:
        for role, (region, lie) in ROLES.items():
            nodes[role] = start_node(
                root / role,
                bootstrap=[nodes["honest-a"].addr] if nodes else [],
                extra_args=[*_OPEN_LIMITS, "--region", region, *(["--liar", lie] if lie else [])],
                env={ALLOW_ENV: "1"} if lie else None,
            )
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


def _excluded(book: Reputation, peer_id: str) -> bool:
    """Whether a client with the default thresholds would exclude the peer now."""
    standing = book.standing(peer_id)
    return standing is not None and standing.events >= MIN_EVIDENCE and standing.score < EXCLUDE_BELOW


@pytest.mark.timeout(900)
async def test_colluding_liars_are_caught_and_no_honest_peer_is_excluded(tmp_path, colluding_mesh) -> None:
    nodes = colluding_mesh
    role_of = {n.peer_id: role for role, n in nodes.items()}
    settings = ClientSettings(
        home=tmp_path / "client", bootstrap=[nodes["honest-a"].addr], mdns=False, exclude_below=0.0
    )
    started = time.monotonic()
    answers: list[tuple[str, Answer]] = []
    ever_excluded: set[str] = set()
    async with open_network(settings) as network:
        await network.discover(None, nodes["honest-a"].model_hash, timeout=30, want=len(nodes))
        book = network.reputation
        assert book is not None
        limiter = trio.CapacityLimiter(4)

        async def one(i: int, params) -> None:
            role = list(ROLES)[i % len(ROLES)]
            options = AskOptions(verify_rate=1.0, only_peers={nodes[role].peer_id})
            async with limiter:
                async for event in ask(network, params, options):
                    if isinstance(event, Answer):
                        answers.append((role, event))
            ever_excluded.update(role_of[p] for p in role_of if _excluded(book, p))

        async with trio.open_nursery() as nursery:
            for i, params in enumerate(cases(REQUESTS, seed=24)):
                nursery.start_soon(one, i, params)
        final = {role: book.standing(nodes[role].peer_id) for role in ROLES}
    elapsed = time.monotonic() - started

    produced = Counter(role for role, _ in answers)
    caught = Counter(
        role for role, a in answers if a.verification is not None and a.verification.verified is False
    )
    passed = Counter(role for role, a in answers if a.verification is not None and a.verification.verified)
    liar_checks = [a.verification for role, a in answers if role == "liar" and a.verification is not None]
    colluder_asked = sum(nodes["colluder"].peer_id in v.verifiers for v in liar_checks)
    colluder_overruled = sum(nodes["colluder"].peer_id in v.overruled for v in liar_checks)
    report = {
        "requests": REQUESTS,
        "wall_s": round(elapsed, 1),
        "produced": dict(produced),
        "caught": dict(caught),
        "passed": dict(passed),
        "liar_caught_rate": round(caught["liar"] / produced["liar"], 4) if produced["liar"] else None,
        "colluder_verified_liar_answers": colluder_asked,
        "colluder_overruled": colluder_overruled,
        "verifiers_per_liar_answer": dict(Counter(len(v.verifiers) for v in liar_checks)),
        "ever_excluded": sorted(ever_excluded),
        "final": {
            role: None
            if s is None
            else {"score": round(s.score, 3), "events": round(s.events, 1), "bad": s.bad}
            for role, s in final.items()
        },
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "collusion.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stderr.write(json.dumps(report) + "\n")

    assert len(answers) == REQUESTS, report
    # The liar is caught on at least 99% of the answers it produced, the colluder among their
    # verifiers and outvoted.
    assert produced["liar"] >= REQUESTS // 4 and caught["liar"] >= 0.99 * produced["liar"], report
    assert colluder_overruled == colluder_asked > 0, report
    # No honest peer is ever excluded, and each keeps its standing. Verification's honest
    # noise may fail an honest answer (one seeded case of the colluder's own honest answers
    # fails in every 200-request run): at most 2% are allowed.
    assert not ever_excluded & set(HONEST), report
    for role in HONEST:
        assert has_standing(final[role]), report
        assert passed[role] >= 0.98 * produced[role], report
    # Both colluders end excluded by a client with the default thresholds.
    assert {"liar", "colluder"} <= ever_excluded, report
