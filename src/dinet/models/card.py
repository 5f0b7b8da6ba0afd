"""Model cards: build one from a GGUF file, sign it, and check one from a peer.

A model card is the signed description of one model version: its chunks' sizes
and hashes, the Merkle root, and GGUF metadata. (A node's signed capability
manifest is another thing: see wire/manifest.py.)

The model hash is content: a card is trusted for a hash only if its chunk
hashes rebuild that Merkle root. The publisher's signature says who vouched for
the metadata (id, version, GGUF summary); the bytes are checked chunk by chunk.
"""

from __future__ import annotations

import time
from pathlib import Path

import gguf
from pydantic import ValidationError

from dinet.errors import ModelCardError
from dinet.models._gguf import GGUFLayout, read_layout
from dinet.models.hashing import CHUNK_SIZE, chunk_spans, file_sha256, hash_spans, merkle_root
from dinet.wire.chunks import GGUFSummary, ModelCard, SignedModelCard
from dinet.wire.ids import ModelHash
from dinet.wire.keys import SigningKey
from dinet.wire.signing import sign_body, signed_by


def summarize(layout: GGUFLayout) -> GGUFSummary:
    meta = layout.metadata
    arch = str(meta.get("general.architecture", "unknown"))[:64]
    file_type = meta.get("general.file_type")
    try:
        quant = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").lower()  # type: ignore[call-overload]
    except (ValueError, TypeError):
        quant = "unknown"
    layers, context = meta.get(f"{arch}.block_count", 0), meta.get(f"{arch}.context_length", 0)
    return GGUFSummary(
        architecture=arch,
        quantization=quant[:32],
        layers=layers if isinstance(layers, int) else 0,
        context=context if isinstance(context, int) else 0,
        license=str(meta.get("general.license", ""))[:128],
        name=str(meta.get("general.name", ""))[:256],
    )


def build_card(path: Path, model_id: str, version: str, key: SigningKey) -> SignedModelCard:
    """Chunk, hash and describe the GGUF file at `path`, signed by `key` (blocking)."""
    layout = read_layout(path)
    spans = chunk_spans(path)
    hashes = hash_spans(path, spans)
    card = ModelCard(
        model_id=model_id,
        version=version,
        model_hash=ModelHash(merkle_root(hashes).hex()),
        file_size=path.stat().st_size,
        sha256=file_sha256(path),
        chunk_size=CHUNK_SIZE,
        chunk_sizes=tuple(length for _, length in spans),
        chunk_hashes=tuple(h.hex() for h in hashes),
        gguf=summarize(layout),
        publisher=key.peer_id,
        created_at=time.time(),
    )
    body = card.model_dump_json()
    return SignedModelCard(body=body, signature=sign_body(body, key))


def verify_model_card(signed: SignedModelCard, model_hash: ModelHash | None = None) -> ModelCard:
    """The card inside `signed` if it is signed by its publisher, self-consistent
    and (when given) for `model_hash`; ModelCardError otherwise."""
    try:
        card = ModelCard.model_validate_json(signed.body)
    except ValidationError as exc:
        raise ModelCardError(f"malformed model card: {exc.errors()[0]['msg']}") from None
    if not signed_by(card.publisher, signed.body, signed.signature):
        raise ModelCardError(f"model card signature does not match publisher {card.publisher}")
    if model_hash is not None and card.model_hash != model_hash:
        raise ModelCardError(f"model card is for {card.model_hash[:16]}…, not {model_hash[:16]}…")
    if len(card.chunk_sizes) != len(card.chunk_hashes):
        raise ModelCardError("model card lists a different number of chunk sizes and hashes")
    if sum(card.chunk_sizes) != card.file_size:
        raise ModelCardError("model card chunk sizes do not add up to the file size")
    if any(not 0 < s <= card.chunk_size for s in card.chunk_sizes):
        raise ModelCardError("model card has a chunk outside (0, chunk_size]")
    if merkle_root([bytes.fromhex(h) for h in card.chunk_hashes]).hex() != card.model_hash:
        raise ModelCardError("model card chunk hashes do not give its model hash")
    return card


def chunk_offsets(card: ModelCard) -> list[int]:
    offsets, at = [], 0
    for size in card.chunk_sizes:
        offsets.append(at)
        at += size
    return offsets
