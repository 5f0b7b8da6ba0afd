"""Verification through the shared mesh of honest nodes: ask --verify, outcomes, typed errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.helpers import answer_to, chat

from dinet.client.network import open_network
from dinet.client.verify import request_scores, verify_answer
from dinet.errors import RemoteError
from dinet.p2p.streams import FramedStream
from dinet.trust.outcomes import VerificationOutcome
from dinet.wire.ids import VERIFY_PROTOCOL
from dinet.wire.messages import ErrorFrame, decode_reply
from dinet.wire.verify import VerifyRequest


class Outcomes:
    """Keeps what the client reports (a reputation store would score it)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, VerificationOutcome]] = []

    def record_outcome(self, peer_id: str, event: VerificationOutcome) -> None:
        self.events.append((peer_id, event))


def test_din_ask_verify_json_reports_the_check(tmp_path, mesh) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dinet",
            "ask",
            "--json",
            "--verify",
            "--no-mdns",
            "--home",
            str(tmp_path),
            "--max-tokens",
            "10",
            "--bootstrap",
            mesh.bootstrap[0],
            "Name a river.",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    check = answer["verification"]
    assert check["verified"] is True, check
    assert check["verifier"] in {n.peer_id for n in mesh.nodes} - {answer["peer_id"]}
    assert check["checked"] == answer["usage"]["completion_tokens"] == 10
    assert check["bad_positions"] == []


async def test_ask_verifies_sampled_answers_and_records_outcomes(client_settings, mesh) -> None:
    outcomes = Outcomes()
    async with open_network(client_settings) as network:
        network.outcomes = outcomes
        await network.discover(None, mesh.nodes[0].model_hash, timeout=20, want=len(mesh.nodes))
        _, answer = await answer_to(
            network,
            chat("Describe a market.", max_tokens=12, temperature=0.9, top_p=0.95, seed=5),
            verify_rate=1.0,
        )
        # Its peer is still on probation (one verified answer): only with probation off is
        # an answer left unchecked at rate 0.
        _, unchecked = await answer_to(
            network, chat("Describe a market.", max_tokens=4), verify_rate=0.0, probation_good=0.0
        )
    check = answer.verification
    assert check is not None and check.verified is True and check.verifier != answer.peer_id
    assert len(answer.token_ids) == answer.usage.completion_tokens == check.checked
    assert unchecked.verification is None
    assert [(peer, event.passed, event.checked) for peer, event in outcomes.events] == [
        (answer.peer_id, True, 12)
    ]
    assert outcomes.events[0][1].verifier == check.verifier


async def test_a_peer_on_probation_is_checked_by_two_verifiers_until_it_has_standing(
    client_settings, mesh
) -> None:
    params = chat("Name a colour.", max_tokens=4)
    async with open_network(client_settings) as network:
        await network.discover(None, mesh.nodes[0].model_hash, timeout=20, want=len(mesh.nodes))
        node = mesh.nodes[0].peer_id
        checks = []
        for _ in range(4):  # verify_rate 0: only probation has answers checked
            _, answer = await answer_to(
                network, params, verify_rate=0.0, only_peers={node}, probation_good=5.9
            )
            checks.append(answer.verification)
        assert network.reputation is not None
        standing = network.reputation.standing(node)
    # Each checked answer brings a success and a verify_pass: ~6 good after three (5.9 with decay).
    assert all(c is not None and c.verified is True and len(c.verifiers) == 2 for c in checks[:3]), checks
    assert all(node not in c.verifiers for c in checks[:3] if c is not None)
    assert checks[3] is None and standing is not None and standing.good >= 5.9


async def test_a_tampered_claim_is_flagged_at_its_position(client_settings, mesh) -> None:
    params = chat("Tell me about bees.", max_tokens=10)
    async with open_network(client_settings) as network:
        await network.discover(None, mesh.nodes[0].model_hash, timeout=20, want=len(mesh.nodes))
        _, answer = await answer_to(network, params)
        tokens = list(answer.token_ids)
        tokens[6] = (tokens[6] + 4321) % 49152
        check = await verify_answer(network, params, tokens, answer.model_hash, exclude={answer.peer_id})
    assert check.verified is False
    assert 6 in check.bad_positions and all(p >= 6 for p in check.bad_positions)


async def test_bad_verify_requests_get_typed_errors_and_the_node_keeps_serving(client_settings, mesh) -> None:
    node = mesh.nodes[1]
    async with open_network(client_settings) as network:
        await network.discover(None, node.model_hash, timeout=20, want=len(mesh.nodes))
        # Not a verify message at all: bad_request, on the wire.
        stream = await network.host.open_stream(node.peer_id, VERIFY_PROTOCOL, 60)
        framed = FramedStream(stream)
        await framed.send_payload(b'{"kind":"verify","tokens":"all of them"}')
        reply = decode_reply(await framed.receive() or b"")
        assert isinstance(reply, ErrorFrame) and reply.code == "bad_request"
        await framed.close()
        claim = VerifyRequest(request_id="v", model_hash=node.model_hash, params=chat("Hi."), tokens=(1, 2))
        # A token id outside the vocabulary: the worker refuses it.
        with pytest.raises(RemoteError) as refused:
            await request_scores(network, node.peer_id, claim.model_copy(update={"tokens": (1, 10**6)}))
        assert refused.value.code == "bad_request"
        # A model this node does not serve.
        with pytest.raises(RemoteError) as unknown:
            await request_scores(network, node.peer_id, claim.model_copy(update={"model_hash": "ab" * 32}))
        assert unknown.value.code == "unknown_model"
        # No peer serves it at all: the outcome says it could not be checked.
        nobody = await verify_answer(network, chat("Hi."), [1, 2], "cd" * 32)
        assert nobody.verified is None and nobody.error
        # And the node still answers verification.
        scores = await request_scores(network, node.peer_id, claim)
        assert [p.token_id for p in scores.positions] == [1, 2]
