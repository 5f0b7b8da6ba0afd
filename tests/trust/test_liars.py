"""Lying peers are caught by verification; honest ones never are (real nodes, real model).

One mesh (tests/trust/liar_campaign.py): an honest verifier on 2 threads, an honest
node on 1 thread, and three liars. Varied requests (greedy and sampled, 8-12 tokens;
50 per node in the suite, 200 in bench/verify.py) go to each answering node, and every
answer is re-scored by the verifier.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from liar_campaign import LIARS, cases, liar_mesh, run_campaign

from dinet.client.network import open_network
from dinet.config import ClientSettings

# Per answering node. The suite runs 30 (about a minute); bench/verify.py runs the 200 of
# the measurement (`DINET_LIAR_REQUESTS=200` runs them here too).
REQUESTS = int(os.environ.get("DINET_LIAR_REQUESTS", "30"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"


@pytest.fixture(scope="module")
def lying_mesh(tmp_path_factory):
    with liar_mesh(tmp_path_factory.mktemp("liars")) as nodes:
        yield nodes


@pytest.mark.timeout(900)
async def test_every_liar_is_caught_and_no_honest_peer_is_flagged(tmp_path, lying_mesh) -> None:
    settings = ClientSettings(home=tmp_path / "client", bootstrap=[lying_mesh["verifier"].addr], mdns=False)
    async with open_network(settings) as network:
        await network.discover(None, lying_mesh["verifier"].model_hash, timeout=30, want=len(lying_mesh))
        tallies = await run_campaign(network, lying_mesh, cases(REQUESTS))
    report = {
        role: {
            "requests": t.total,
            "flagged": t.flagged,
            "rate": round(t.rate, 4),
            "unchecked": t.unchecked,
            "worst_greedy_gap": round(t.worst_greedy_gap, 4),
            "worst_sampled_logodds": round(t.worst_sampled_logodds, 4),
            "examples": t.examples,
        }
        for role, t in tallies.items()
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "liars.json").write_text(json.dumps(report, indent=2) + "\n")
    sys.stderr.write(json.dumps(report) + "\n")
    for role, tally in tallies.items():
        assert tally.total == REQUESTS and tally.unchecked == 0, (role, report[role])
    assert tallies["honest"].flagged == 0, report["honest"]
    for liar in LIARS:
        # The bar is 99% caught. A corrupt:1 lie swaps one sampled token for a random one,
        # which now and then lands next to the verifier's own draw and passes: seen once in
        # 50 on a clean clone. So 50 requests may miss one (98%); bench/verify.py's 200
        # measure the rate itself.
        assert tallies[liar].total - tallies[liar].flagged <= max(1, REQUESTS // 100), (liar, report[liar])
