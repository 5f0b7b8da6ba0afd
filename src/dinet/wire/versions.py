"""Model-version records: a model id's versions, newest first, signed by its publisher.

A publisher (the key that signs a model's cards) names which model hashes are the
versions of one of its model ids. The record lives in the DHT under a key derived
from (publisher, model id), so anyone can look it up and nobody but the publisher can
write one that readers accept. Each new record carries a higher `sequence`: a reader,
and every DHT node that stores it, keeps the record with the highest one, so an older
record never replaces a newer one. Records expire: a publisher that stops signing
stops being followed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, ValidationError

from dinet.errors import ModelVersionsError
from dinet.wire.chunks import ModelHashHex
from dinet.wire.ids import PeerId
from dinet.wire.keys import Signer
from dinet.wire.messages import Message
from dinet.wire.signing import lifetime_problem, sign_body, signed_by

VERSIONS_DOMAIN = b"dinet-versions/1\n"
VERSIONS_NAMESPACE = "dinet-versions"  # the DHT key's namespace: /dinet-versions/<hex>
MAX_VERSIONS = 16  # the newest ones; older versions drop off the record
MAX_VERSIONS_BYTES = 8192
MAX_LIFETIME_S = 30 * 86400.0


class ModelVersion(Message):
    model_hash: ModelHashHex
    version: str = Field(min_length=1, max_length=64)  # the publisher's label, e.g. "2"
    published_at: float


class ModelVersions(Message):
    publisher: PeerId = Field(min_length=1, max_length=128)  # the key that signs the record
    model_id: str = Field(min_length=1, max_length=128)
    sequence: int = Field(ge=0, lt=2**63)  # higher replaces lower
    versions: tuple[ModelVersion, ...] = Field(min_length=1, max_length=MAX_VERSIONS)  # newest first
    issued_at: float
    expires_at: float

    @property
    def newest(self) -> ModelVersion:
        return self.versions[0]


class SignedModelVersions(Message):
    kind: Literal["model_versions"] = "model_versions"
    body: str = Field(max_length=MAX_VERSIONS_BYTES)
    signature: str = Field(max_length=256)


def versions_key(publisher: str, model_id: str) -> str:
    """The DHT key of `publisher`'s record for `model_id`: the namespace, then the hex
    sha256 of "<publisher>\\n<model id>" (80 ASCII characters in all)."""
    digest = hashlib.sha256(f"{publisher}\n{model_id}".encode()).hexdigest()
    return f"/{VERSIONS_NAMESPACE}/{digest}"


def sign_versions(record: ModelVersions, key: Signer) -> SignedModelVersions:
    body = record.model_dump_json()
    return SignedModelVersions(body=body, signature=sign_body(body, key, VERSIONS_DOMAIN))


def verify_versions(signed: SignedModelVersions, now: float | None = None) -> ModelVersions:
    """The record inside `signed`, or ModelVersionsError if forged, malformed, expired or
    out of order."""
    try:
        record = ModelVersions.model_validate_json(signed.body)
    except ValidationError as exc:
        raise ModelVersionsError(f"malformed model-version record: {exc.errors()[0]['msg']}") from None
    if not signed_by(record.publisher, signed.body, signed.signature, VERSIONS_DOMAIN):
        raise ModelVersionsError(f"model-version record not signed by its publisher {record.publisher}")
    if (problem := lifetime_problem(record.issued_at, record.expires_at, MAX_LIFETIME_S, now)) is not None:
        raise ModelVersionsError(f"model-version record for {record.model_id!r} {problem}")
    hashes = [v.model_hash for v in record.versions]
    if len(set(hashes)) != len(hashes):
        raise ModelVersionsError("model-version record lists a model hash twice")
    times = [v.published_at for v in record.versions]
    if times != sorted(times, reverse=True):
        raise ModelVersionsError("model-version record is not newest first")
    return record


def decode_versions(payload: bytes, key: str, now: float | None = None) -> ModelVersions:
    """The record in a DHT value stored under `key`: verified, and bound to that key
    (a record moved to another publisher's or model's key is refused)."""
    try:
        signed = SignedModelVersions.model_validate_json(payload)
    except ValidationError as exc:
        raise ModelVersionsError(f"malformed model-version envelope: {exc.errors()[0]['msg']}") from None
    record = verify_versions(signed, now)
    if versions_key(record.publisher, record.model_id) != key:
        raise ModelVersionsError("model-version record is stored under another key than its own")
    return record


def newest_record(records: Sequence[ModelVersions]) -> int:
    """The index of the record to keep: the highest sequence, then the latest expiry,
    then the first (so a store keeps what it holds when two are equal)."""
    if not records:
        raise ValueError("no records to choose from")
    best = 0
    for index, record in enumerate(records):
        if (record.sequence, record.expires_at) > (records[best].sequence, records[best].expires_at):
            best = index
    return best


def next_record(
    publisher: PeerId,
    model_id: str,
    newest: ModelVersion,
    previous: ModelVersions | None,
    *,
    now: float,
    lifetime_s: float,
) -> ModelVersions:
    """The record that follows `previous` (if any) with `newest` in front: one sequence
    higher, the versions before it kept (less `newest`'s hash, at most MAX_VERSIONS)."""
    older = [v for v in previous.versions if v.model_hash != newest.model_hash] if previous else []
    return ModelVersions(
        publisher=publisher,
        model_id=model_id,
        sequence=previous.sequence + 1 if previous else 0,
        versions=(newest, *older)[:MAX_VERSIONS],
        issued_at=now,
        expires_at=now + lifetime_s,
    )
