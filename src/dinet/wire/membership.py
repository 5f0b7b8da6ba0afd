"""`/dinet/swim/1`: liveness probes between peers, with membership news riding on them.

One stream per exchange. A ping is answered by an ack; a ping_req asks the receiver to
ping a third peer and answer with that peer's ack (relayed) or a nack. See
docs/protocol.md, "Membership (SWIM)".
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError

from dinet.errors import MalformedMessage
from dinet.wire.messages import Message

SWIM_PROTOCOL = "/dinet/swim/1"
MAX_SWIM_FRAME = 4096  # six items of news are ~1 KB
MAX_NEWS = 6

_Count = Annotated[int, Field(ge=0, lt=2**63)]
_Peer = Annotated[str, Field(min_length=1, max_length=128)]


class NewsItem(Message):
    """What the sender believes about a peer: "alive", "suspect" or "dead" at an incarnation."""

    peer_id: _Peer
    state: Literal["alive", "suspect", "dead"]
    incarnation: _Count


class SwimPing(Message):
    kind: Literal["swim_ping"] = "swim_ping"
    probe_id: _Count
    incarnation: _Count  # the sender's own
    news: tuple[NewsItem, ...] = Field(default=(), max_length=MAX_NEWS)


class SwimPingReq(Message):
    """Ping `target` for me, and answer with its ack or a nack."""

    kind: Literal["swim_ping_req"] = "swim_ping_req"
    probe_id: _Count
    target: _Peer
    incarnation: _Count
    news: tuple[NewsItem, ...] = Field(default=(), max_length=MAX_NEWS)


class SwimAck(Message):
    """The answer to a ping, or (relayed) to a ping_req: the target answered."""

    kind: Literal["swim_ack"] = "swim_ack"
    probe_id: _Count
    incarnation: _Count  # the sender's own
    news: tuple[NewsItem, ...] = Field(default=(), max_length=MAX_NEWS)


class SwimNack(Message):
    """The answer to a ping_req whose target did not answer in time."""

    kind: Literal["swim_nack"] = "swim_nack"
    probe_id: _Count


SwimRequest = SwimPing | SwimPingReq
SwimAnswer = SwimAck | SwimNack

_requests: TypeAdapter[SwimRequest] = TypeAdapter(Annotated[SwimRequest, Field(discriminator="kind")])
_answers: TypeAdapter[SwimAnswer] = TypeAdapter(Annotated[SwimAnswer, Field(discriminator="kind")])


def decode_swim_request(payload: bytes) -> SwimRequest:
    """A ping or ping_req; MalformedMessage for anything else."""
    try:
        return _requests.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(f"bad {SWIM_PROTOCOL} request: {_first(exc)}") from None


def decode_swim_answer(payload: bytes) -> SwimAnswer:
    """An ack or nack; MalformedMessage for anything else."""
    try:
        return _answers.validate_json(payload)
    except ValidationError as exc:
        raise MalformedMessage(f"bad {SWIM_PROTOCOL} answer: {_first(exc)}") from None


def _first(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "message"
    return f"{where}: {first['msg']}"[:300]
