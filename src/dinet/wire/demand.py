"""Demand records: what one server of a model saw asked of it, signed by that server.

Servers publish them on the model's gossip topic (`dinet.wire.ids.model_topic`), so
nodes deciding which model to serve (`din node --serve auto`) learn where demand exceeds
supply (`dinet.overlay.demand`). A record's `probability` is the chance its publisher
published this period (sampled publication keeps a topic's traffic flat as servers
grow): readers weigh it by that.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError

from dinet.errors import DemandRecordError
from dinet.wire.chunks import ModelHashHex
from dinet.wire.ids import PeerId
from dinet.wire.keys import Signer
from dinet.wire.messages import Message
from dinet.wire.signing import lifetime_problem, sign_body, signed_by

DEMAND_DOMAIN = b"dinet-demand/1\n"
MAX_DEMAND_BYTES = 1024
MAX_RATE_PER_MIN = 1e7  # far beyond what one node can be asked
MAX_WINDOW_S = 3600.0
MAX_LIFETIME_S = 4 * 3600.0


class DemandRecord(Message):
    publisher: PeerId = Field(min_length=1, max_length=128)
    model_hash: ModelHashHex
    requests_per_min: float = Field(ge=0, le=MAX_RATE_PER_MIN)  # every request for the model
    busy_per_min: float = Field(ge=0, le=MAX_RATE_PER_MIN)  # those refused busy, among them
    window_s: float = Field(gt=0, le=MAX_WINDOW_S)  # the rates are over this window, up to issued_at
    probability: float = Field(gt=0, le=1)  # the chance the publisher published this window
    issued_at: float
    expires_at: float


class SignedDemand(Message):
    kind: Literal["demand"] = "demand"
    body: str = Field(max_length=MAX_DEMAND_BYTES)
    signature: str = Field(max_length=256)


def sign_demand(record: DemandRecord, key: Signer) -> SignedDemand:
    body = record.model_dump_json()
    return SignedDemand(body=body, signature=sign_body(body, key, DEMAND_DOMAIN))


def verify_demand(signed: SignedDemand, now: float | None = None) -> DemandRecord:
    """The record inside `signed`, or DemandRecordError if forged, malformed or expired."""
    try:
        record = DemandRecord.model_validate_json(signed.body)
    except ValidationError as exc:
        raise DemandRecordError(f"malformed demand record: {exc.errors()[0]['msg']}") from None
    if not signed_by(record.publisher, signed.body, signed.signature, DEMAND_DOMAIN):
        raise DemandRecordError(f"demand record not signed by its publisher {record.publisher}")
    if (problem := lifetime_problem(record.issued_at, record.expires_at, MAX_LIFETIME_S, now)) is not None:
        raise DemandRecordError(f"demand record of {record.publisher} {problem}")
    if record.busy_per_min > record.requests_per_min:
        raise DemandRecordError("demand record counts more refusals than requests")
    return record
