"""Debt records: a node's signed word that a client owes it and has not paid.

A node publishes one on the topic of the model it serves for each client that used more
of it than its allowance and paid nothing for it (no channel voucher, no service in
return). Other nodes count a record only from a publisher that has standing with them
(it has served them), so a fresh identity cannot smear a client; a client in debt with
nodes of standing is refused by nodes it never met (`dinet.node.debts`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError

from dinet.errors import DebtRecordError
from dinet.wire.ids import PeerId
from dinet.wire.keys import Signer
from dinet.wire.messages import Message
from dinet.wire.signing import lifetime_problem, sign_body, signed_by

DEBT_DOMAIN = b"dinet-debt/1\n"
MAX_DEBT_BYTES = 1024
MAX_LIFETIME_S = 4 * 3600.0


class DebtRecord(Message):
    creditor: PeerId = Field(min_length=1, max_length=128)  # the publishing node
    debtor: PeerId = Field(min_length=1, max_length=128)
    owed: float = Field(ge=0)  # credits used beyond the allowance and not paid for
    issued_at: float
    expires_at: float


class SignedDebt(Message):
    kind: Literal["debt"] = "debt"
    body: str = Field(max_length=MAX_DEBT_BYTES)
    signature: str = Field(max_length=256)


def sign_debt(record: DebtRecord, key: Signer) -> SignedDebt:
    body = record.model_dump_json()
    return SignedDebt(body=body, signature=sign_body(body, key, DEBT_DOMAIN))


def verify_debt(signed: SignedDebt, now: float | None = None) -> DebtRecord:
    """The record inside `signed`, or DebtRecordError if forged, malformed or expired."""
    try:
        record = DebtRecord.model_validate_json(signed.body)
    except ValidationError as exc:
        raise DebtRecordError(f"malformed debt record: {exc.errors()[0]['msg']}") from None
    if not signed_by(record.creditor, signed.body, signed.signature, DEBT_DOMAIN):
        raise DebtRecordError(f"debt record not signed by its creditor {record.creditor}")
    if (problem := lifetime_problem(record.issued_at, record.expires_at, MAX_LIFETIME_S, now)) is not None:
        raise DebtRecordError(f"debt record of {record.creditor} {problem}")
    if record.debtor == record.creditor:
        raise DebtRecordError("a debt record names its creditor as debtor")
    return record
