"""The client reads a verifier's frames by their `kind`, not by how its JSON is laid out:
another implementation may order an object's fields as it likes (docs/protocol.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.helpers import chat, raw_host

from dinet.client.verify import request_scores
from dinet.errors import DinetError, MalformedMessage, RemoteError
from dinet.p2p.host import PeerHost
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.ids import VERIFY_PROTOCOL
from dinet.wire.verify import ScoresFrame, VerifyRequest, decode_verify_request

MODEL_HASH = "ab" * 32


@dataclass
class FakeNetwork:
    """Only what request_scores uses of a Network: its host."""

    host: PeerHost


def verifier_sending(*frames: dict[str, object]):
    """A fake verifier: reads the claim, then sends `frames`, fields in the order given."""

    async def handle(stream: Stream) -> None:
        framed = FramedStream(stream)
        payload = await framed.receive()
        assert payload is not None
        decode_verify_request(payload)
        for frame in frames:
            await framed.send_payload(json.dumps(frame, indent=1).encode())
        await framed.close()

    return handle


def scores_for(claim: VerifyRequest) -> dict[str, object]:
    positions = [
        {"logprob": -0.5, "best_logprob": -0.5, "rank": 0, "token_id": t, "index": i}
        for i, t in enumerate(claim.tokens)
    ]
    return {
        "positions": positions,
        "elapsed_ms": 3.0,
        "prompt_tokens": 7,
        "model_hash": MODEL_HASH,
        "kind": "scores",
    }


async def ask_fake(*frames: dict[str, object], claim: VerifyRequest) -> ScoresFrame | DinetError:
    """What request_scores makes of the fake's frames: scores, or the error it raised
    (caught here: raised inside the hosts' nurseries it would come out wrapped in a group)."""
    async with raw_host() as verifier, raw_host() as client:
        verifier.set_handler(VERIFY_PROTOCOL, verifier_sending(*frames))
        await client.dial(verifier.full_addrs()[0])
        try:
            return await request_scores(FakeNetwork(client), verifier.peer_id, claim)  # type: ignore[arg-type]
        except DinetError as exc:
            return exc


CLAIM = VerifyRequest(request_id="r1", model_hash=MODEL_HASH, params=chat("Hi"), tokens=(5, 6, 7))


async def test_scores_are_read_whatever_the_order_of_their_fields() -> None:
    queued = {"waiting": 1, "kind": "queued"}
    scores = await ask_fake(queued, scores_for(CLAIM), claim=CLAIM)
    assert isinstance(scores, ScoresFrame), scores
    assert [(p.index, p.token_id) for p in scores.positions] == [(0, 5), (1, 6), (2, 7)]
    assert scores.model_hash == MODEL_HASH


async def test_an_error_frame_is_a_remote_error_and_a_token_frame_is_malformed() -> None:
    refused = await ask_fake({"message": "full", "code": "busy", "kind": "error"}, claim=CLAIM)
    assert isinstance(refused, RemoteError) and refused.code == "busy"
    wrong = await ask_fake({"text": "x", "token_id": 1, "index": 0, "kind": "token"}, claim=CLAIM)
    assert isinstance(wrong, MalformedMessage)
