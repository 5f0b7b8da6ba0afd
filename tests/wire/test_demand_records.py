"""Demand records: signed by the server that saw the demand, bounded, expiring."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from dinet.errors import DemandRecordError
from dinet.node.manifests import _TOPIC_MESSAGE
from dinet.wire.demand import DemandRecord, SignedDemand, sign_demand, verify_demand
from dinet.wire.keys import SigningKey

NOW = 1_700_000_000.0
SERVER = SigningKey(bytes(range(32)))
MODEL = "ab" * 32


def record(**changes: object) -> DemandRecord:
    fields: dict[str, object] = {
        "publisher": SERVER.peer_id,
        "model_hash": MODEL,
        "requests_per_min": 12.0,
        "busy_per_min": 3.0,
        "window_s": 60.0,
        "probability": 0.25,
        "issued_at": NOW,
        "expires_at": NOW + 180,
    }
    return DemandRecord(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_signed_record_verifies_and_says_what_its_server_saw():
    signed = sign_demand(record(), SERVER)
    got = verify_demand(signed, now=NOW + 1)
    assert (got.requests_per_min, got.busy_per_min, got.probability) == (12.0, 3.0, 0.25)


def test_a_record_signed_by_another_key_or_altered_is_refused():
    other = SigningKey(bytes(range(1, 33)))
    forged = sign_demand(record(), other)
    with pytest.raises(DemandRecordError, match="not signed"):
        verify_demand(forged, now=NOW)
    signed = sign_demand(record(), SERVER)
    altered = signed.model_copy(update={"body": signed.body.replace("12.0", "99.0")})
    with pytest.raises(DemandRecordError, match="not signed"):
        verify_demand(altered, now=NOW)


def test_expired_future_and_overlong_records_are_refused():
    with pytest.raises(DemandRecordError, match="expired"):
        verify_demand(sign_demand(record(), SERVER), now=NOW + 181)
    with pytest.raises(DemandRecordError, match="future"):
        verify_demand(sign_demand(record(issued_at=NOW + 600, expires_at=NOW + 700), SERVER), now=NOW)
    with pytest.raises(DemandRecordError, match="too long"):
        verify_demand(sign_demand(record(expires_at=NOW + 30 * 86400), SERVER), now=NOW)
    with pytest.raises(DemandRecordError, match="more refusals"):
        verify_demand(sign_demand(record(busy_per_min=20.0), SERVER), now=NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"probability": 0.0},
        {"probability": 1.5},
        {"requests_per_min": -1.0},
        {"window_s": 0.0},
        {"model_hash": "x"},
    ],
)
def test_out_of_range_fields_are_refused(changes):
    with pytest.raises(ValidationError):
        record(**changes)


def test_a_bad_body_is_a_typed_error_and_the_topic_tells_records_from_manifests():
    with pytest.raises(DemandRecordError, match="malformed"):
        verify_demand(SignedDemand(body='{"publisher": 1}', signature="x"), now=NOW)
    signed = sign_demand(record(), SERVER)
    assert isinstance(_TOPIC_MESSAGE.validate_json(signed.model_dump_json()), SignedDemand)
    with pytest.raises(ValidationError):  # bigger than any record may be
        SignedDemand(body="x" * 2000, signature="x")
