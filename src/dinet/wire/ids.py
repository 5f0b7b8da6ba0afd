"""Distinct id types, so a peer id is never passed where a model hash belongs."""

from __future__ import annotations

from typing import NewType

PeerId = NewType("PeerId", str)
ModelHash = NewType("ModelHash", str)
RequestId = NewType("RequestId", str)

INFER_PROTOCOL = "/dinet/infer/1"
MANIFEST_PROTOCOL = "/dinet/manifest/1"
PROTOCOL_VERSION = "dinet/0.1.0"
CHUNKS_PROTOCOL = "/dinet/chunks/1"
SHARD_PROTOCOL = "/dinet/shard/1"
VERIFY_PROTOCOL = "/dinet/verify/1"
EMBED_PROTOCOL = "/dinet/embed/1"


def model_topic(model_hash: ModelHash) -> str:
    """The gossip topic of one model: its servers' manifests when their offer changes."""
    return f"/dinet/model/1/{model_hash}"
