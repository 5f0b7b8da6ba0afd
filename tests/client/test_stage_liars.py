"""Lying pipeline stages are caught by their receipts or by audits, honest ones never
(real `din node --layers` processes: tests/client/stage_liar_mesh.py).

The full campaign (200 audited chains, every lie) is bench/stage_liars.py.
"""

from __future__ import annotations

import random

import pytest
import trio
from tests.client.stage_liar_mesh import audited_answer, case_params, stage_liar_mesh

from dinet.client.network import open_network
from dinet.config import ClientSettings
from dinet.trust.reputation import WEIGHTS, Event

HONEST = ("front-honest-1", "front-honest-2", "back-honest-1", "back-honest-2")
LIARS = ("front-noise", "back-late", "back-forge")


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    with stage_liar_mesh(tmp_path_factory.mktemp("stage-liars"), HONEST + LIARS) as nodes:
        yield nodes


def settings(tmp_path, stages) -> ClientSettings:
    return ClientSettings(
        home=tmp_path / "client", bootstrap=[stages["front-honest-1"].addr], mdns=False, discover_timeout_s=30
    )


async def until_known(network, stages) -> None:
    """Until the client has every stage's manifest: the audits choose among them."""
    wanted = {n.peer_id for n in stages.values()}
    with trio.fail_after(60):
        while not wanted <= {s.peer_id for _, s in network.stage_offers(None, None)}:
            await network.look()
            await trio.sleep(0.3)


async def test_lying_stages_are_caught_and_honest_ones_pass(tmp_path, stages) -> None:
    rng = random.Random(5)
    async with open_network(settings(tmp_path, stages)) as network:
        await until_known(network, stages)
        honest = await audited_answer(network, stages, "front-honest-1", "back-honest-1", case_params(rng))
        assert honest.check.receipts_ok and honest.caught() == set()
        assert set(honest.check.audited) == {
            stages["front-honest-1"].peer_id,
            stages["back-honest-1"].peer_id,
        }

        # Noise on every step's hidden states, sent on: the replay on another front holder parts at once.
        noisy = await audited_answer(network, stages, "front-noise", "back-honest-2", case_params(rng))
        assert noisy.check.receipts_ok  # its receipt holds: it signed what it sent
        assert noisy.caught() == {"front-noise"} and noisy.check.audited == (stages["back-honest-2"].peer_id,)

        # Honest for the prompt and three tokens, noise after: the replay covers every step.
        late = await audited_answer(
            network, stages, "front-honest-2", "back-late", case_params(rng), draft="lookup"
        )
        assert late.caught() == {"back-late"}
        assert any("it chose token" in p for p in late.check.problems)

        # A receipt for blocks it does not hold: refused, and caught without an audit; the
        # other stage, whose receipt holds, is audited all the same.
        forged = await audited_answer(network, stages, "front-honest-1", "back-forge", case_params(rng))
        assert not forged.check.receipts_ok and forged.caught() == {"back-forge"}
        assert {forged.names[p] for p in forged.check.audited} == {"front-honest-1"}

        assert network.reputation is not None
        for role, node in stages.items():  # the liars caught are held for liars; no honest stage is
            standing = network.reputation.standing(node.peer_id)
            lied = (
                standing is not None and standing.bad >= WEIGHTS[Event.VERIFY_FAIL][1] / 2
            )  # decayed a little since
            assert lied == (role in LIARS), role
