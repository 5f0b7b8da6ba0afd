"""Model-version records: signed by the publisher, bound to their DHT key, newest kept."""

from __future__ import annotations

import pytest

from dinet.errors import ModelVersionsError
from dinet.wire.keys import SigningKey
from dinet.wire.versions import (
    MAX_VERSIONS,
    ModelVersion,
    ModelVersions,
    SignedModelVersions,
    decode_versions,
    newest_record,
    next_record,
    sign_versions,
    verify_versions,
    versions_key,
)

NOW = 1_700_000_000.0
DAY = 86400.0
PUBLISHER = SigningKey(bytes(range(32)))


def version(n: int, at: float = NOW) -> ModelVersion:
    return ModelVersion(model_hash=f"{n:064x}", version=str(n), published_at=at)  # type: ignore[arg-type]


def record(sequence: int = 0, *versions: ModelVersion, expires_in: float = DAY) -> ModelVersions:
    return ModelVersions(
        publisher=PUBLISHER.peer_id,
        model_id="tiny",
        sequence=sequence,
        versions=versions or (version(1),),
        issued_at=NOW,
        expires_at=NOW + expires_in,
    )


def test_a_signed_record_verifies_and_reads_back_from_its_dht_value():
    signed = sign_versions(record(3, version(2, NOW), version(1, NOW - 10)), PUBLISHER)
    key = versions_key(PUBLISHER.peer_id, "tiny")
    got = decode_versions(signed.model_dump_json().encode(), key, now=NOW)
    assert got.sequence == 3 and got.newest.model_hash == f"{2:064x}"
    assert key.startswith("/dinet-versions/") and len(key) == 80


def test_a_record_signed_by_another_key_is_refused():
    forged = sign_versions(record(), SigningKey(bytes(32)))  # the body names PUBLISHER
    with pytest.raises(ModelVersionsError, match="not signed by its publisher"):
        verify_versions(forged, now=NOW)


def test_a_record_under_another_model_or_publisher_key_is_refused():
    value = sign_versions(record(), PUBLISHER).model_dump_json().encode()
    other_publisher = SigningKey(bytes(32)).peer_id
    for key in (versions_key(PUBLISHER.peer_id, "other"), versions_key(other_publisher, "tiny")):
        with pytest.raises(ModelVersionsError, match="another key"):
            decode_versions(value, key, now=NOW)


def test_expired_future_and_overlong_records_are_refused():
    signed = sign_versions(record(expires_in=DAY), PUBLISHER)
    with pytest.raises(ModelVersionsError, match="expired"):
        verify_versions(signed, now=NOW + DAY)
    with pytest.raises(ModelVersionsError, match="future"):
        verify_versions(signed, now=NOW - 3600)
    with pytest.raises(ModelVersionsError, match="lifetime"):
        verify_versions(sign_versions(record(expires_in=365 * DAY), PUBLISHER), now=NOW)


def test_versions_out_of_order_or_repeated_are_refused():
    with pytest.raises(ModelVersionsError, match="newest first"):
        verify_versions(sign_versions(record(0, version(1, NOW - 10), version(2, NOW)), PUBLISHER), now=NOW)
    with pytest.raises(ModelVersionsError, match="twice"):
        verify_versions(sign_versions(record(0, version(1), version(1)), PUBLISHER), now=NOW)


def test_malformed_envelopes_and_bodies_are_typed_errors():
    with pytest.raises(ModelVersionsError):
        decode_versions(b"not json", versions_key(PUBLISHER.peer_id, "tiny"))
    bad_body = SignedModelVersions(body='{"publisher": 1}', signature="")
    with pytest.raises(ModelVersionsError, match="malformed"):
        verify_versions(bad_body)


def test_the_highest_sequence_wins_then_the_latest_expiry_then_the_first():
    assert newest_record([record(1), record(2), record(0)]) == 1
    assert newest_record([record(2, expires_in=DAY), record(2, expires_in=2 * DAY)]) == 1
    assert newest_record([record(2), record(2)]) == 0


def following(newest: ModelVersion, previous: ModelVersions | None) -> ModelVersions:
    return next_record(PUBLISHER.peer_id, "tiny", newest, previous, now=newest.published_at, lifetime_s=DAY)


def test_the_next_record_puts_the_new_version_first_and_keeps_a_bounded_history():
    first = following(version(1, NOW), None)
    assert first.sequence == 0 and [v.version for v in first.versions] == ["1"]
    current = first
    for n in range(2, MAX_VERSIONS + 5):
        current = following(version(n, NOW + n), current)
    assert current.sequence == MAX_VERSIONS + 3  # one per record after the first
    assert len(current.versions) == MAX_VERSIONS and current.newest.version == str(MAX_VERSIONS + 4)
    again = following(version(3, NOW + 99), current)
    assert again.newest.version == "3" and [v.version for v in again.versions].count("3") == 1
    verify_versions(sign_versions(again, PUBLISHER), now=NOW + 100)
