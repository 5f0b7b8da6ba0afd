"""A model's hash: the Merkle root over the sha256 of its fixed-size chunks."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_SIZE = 1 << 20


def chunk_hashes(path: Path, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    hashes = []
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            hashes.append(hashlib.sha256(chunk).digest())
    return hashes


def merkle_root(leaves: list[bytes]) -> bytes:
    """Pairwise sha256 up to one root; an odd node is carried up unchanged."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [hashlib.sha256(p[0] + p[1]).digest() if len(p) == 2 else p[0] for p in pairs]
    return level[0]


def model_hash(path: Path) -> str:
    return merkle_root(chunk_hashes(path)).hex()
