"""Clients without standing at a node are refused large requests (typed `probation`)."""

from __future__ import annotations

import pytest
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.errors import NoCapablePeer
from dinet.node.probation import ClientProbation
from dinet.wire.ids import PeerId
from dinet.wire.messages import ChatMessage, GenerationParams


def _params(max_tokens: int, prefix: int = 0) -> GenerationParams:
    return GenerationParams(
        messages=(ChatMessage(role="user", content="hi"),), max_tokens=max_tokens, prefix_tokens=(1,) * prefix
    )


def test_a_client_earns_standing_by_settled_receipts() -> None:
    client = PeerId("newcomer")
    probation = ClientProbation(receipts_needed=3, max_tokens=64, history={PeerId("old"): 5})
    assert probation.refusal(client, _params(64)) is None
    why = probation.refusal(client, _params(65))
    assert why is not None and "64" in why and "0 of 3" in why
    assert probation.refusal(client, _params(100, prefix=40)) is None  # a resumed answer: 60 left to ask
    assert probation.refusal(PeerId("old"), _params(4096)) is None  # from the ledger's history
    for _ in range(3):
        probation.settled(client)
    assert probation.has_standing(client) and probation.refusal(client, _params(4096)) is None
    assert ClientProbation(receipts_needed=0, max_tokens=1).refusal(client, _params(4096)) is None  # off


async def test_a_new_client_is_refused_a_large_request_everywhere_and_served_a_small_one(
    client_settings, mesh
) -> None:
    async with open_network(client_settings) as network:
        await network.discover(None, mesh.nodes[0].model_hash, timeout=20, want=len(mesh.nodes))
        with pytest.raises(NoCapablePeer, match="probation: max_tokens 2000 above the 1024"):
            await answer_to(network, chat("Say hi.", max_tokens=2000), probation_good=0.0)
        _, answer = await answer_to(network, chat("Say hi.", max_tokens=4), probation_good=0.0)
    assert answer.usage.completion_tokens <= 4
