"""A model's hash: the Merkle root over the sha256 of its chunks.

Chunks follow the GGUF layout (structure-aware chunking): a new chunk starts at
byte 0 and at the first byte of every tensor, and no chunk is longer than
CHUNK_SIZE (1 MiB). The header (metadata, tokenizer, tensor table) is therefore
chunked on its own, and each tensor's bytes (with the alignment padding after
them) are chunked from the tensor's own start. Changing a tensor changes only
its chunks; growing the metadata moves every tensor but changes none of their
chunks. Content-defined chunking would give the same resilience for any file
but costs a rolling hash over every byte (seconds per 100 MB in Python); the GGUF
tensor table already says where the boundaries belong.

This is the one definition: the store, node manifests, requests and the DHT key
all use `model_hash`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dinet.models._gguf import read_layout
from dinet.wire.ids import ModelHash

CHUNK_SIZE = 1 << 20


def chunk_spans(path: Path, chunk_size: int = CHUNK_SIZE) -> list[tuple[int, int]]:
    """(offset, length) of every chunk of the GGUF file at `path`, in order."""
    layout = read_layout(path)
    size = path.stat().st_size
    starts = sorted({0, *(t.offset for t in layout.tensors if t.offset < size)})
    spans = []
    for start, end in zip(starts, [*starts[1:], size], strict=True):
        for offset in range(start, end, chunk_size):
            spans.append((offset, min(chunk_size, end - offset)))
    return spans


def hash_spans(path: Path, spans: list[tuple[int, int]]) -> list[bytes]:
    hashes = []
    with path.open("rb") as f:
        for offset, length in spans:
            f.seek(offset)
            hashes.append(hashlib.sha256(f.read(length)).digest())
    return hashes


def chunk_hashes(path: Path, chunk_size: int = CHUNK_SIZE) -> list[bytes]:
    return hash_spans(path, chunk_spans(path, chunk_size))


def merkle_root(leaves: list[bytes]) -> bytes:
    """Pairwise sha256 up to one root; an odd node is carried up unchanged."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    level = leaves
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [hashlib.sha256(p[0] + p[1]).digest() if len(p) == 2 else p[0] for p in pairs]
    return level[0]


def model_hash(path: Path) -> ModelHash:
    return ModelHash(merkle_root(chunk_hashes(path)).hex())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
