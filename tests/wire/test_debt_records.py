"""Debt records: signed by the creditor, naming another peer, expiring; carried on model topics."""

from __future__ import annotations

import pytest

from dinet.errors import DebtRecordError
from dinet.node.manifests import _TOPIC_MESSAGE
from dinet.wire.debt import DebtRecord, SignedDebt, sign_debt, verify_debt
from dinet.wire.keys import SigningKey

NOW = 1_700_000_000.0
CREDITOR = SigningKey(bytes(range(32)))
DEBTOR = SigningKey(bytes(range(1, 33))).peer_id


def record(**changes: object) -> DebtRecord:
    fields: dict[str, object] = {
        "creditor": CREDITOR.peer_id, "debtor": DEBTOR, "owed": 2.5,
        "issued_at": NOW, "expires_at": NOW + 900,
    }  # fmt: skip
    return DebtRecord(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_signed_record_verifies_and_travels_on_a_model_topic():
    signed = sign_debt(record(), CREDITOR)
    assert verify_debt(signed, now=NOW + 1).owed == 2.5
    assert isinstance(_TOPIC_MESSAGE.validate_json(signed.model_dump_json()), SignedDebt)


@pytest.mark.parametrize(
    ("signed", "why"),
    [
        (sign_debt(record(), SigningKey(bytes(range(2, 34)))), "not signed by its creditor"),  # a smear
        (sign_debt(record(debtor=CREDITOR.peer_id), CREDITOR), "names its creditor as debtor"),
        (sign_debt(record(expires_at=NOW - 1, issued_at=NOW - 60), CREDITOR), "debt record of"),  # expired
    ],
    ids=["forged", "self", "expired"],
)
def test_forged_odd_or_expired_records_are_refused(signed, why):
    with pytest.raises(DebtRecordError, match=why):
        verify_debt(signed, now=NOW + 1)


def test_an_altered_record_is_refused():
    signed = sign_debt(record(), CREDITOR)
    altered = signed.model_copy(update={"body": signed.body.replace("2.5", "25.0")})
    with pytest.raises(DebtRecordError, match="not signed"):
        verify_debt(altered, now=NOW + 1)
