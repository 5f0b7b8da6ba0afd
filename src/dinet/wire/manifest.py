"""Signed capability manifests: what a node offers, signed by the node's own key.

The signature covers the exact bytes of `body` (the manifest's JSON), so any
implementation can verify it without re-serialising. The signing key is the one
embedded in the peer id, so a manifest cannot speak for another peer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, ValidationError

from dinet.errors import ManifestError
from dinet.overlay.vivaldi import DIMENSIONS, MAX_COORDINATE_MS, MAX_ERROR
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.keys import Signer
from dinet.wire.messages import Message
from dinet.wire.signing import lifetime_problem, sign_body, signed_by

# A manifest lives 2 minutes: the peers that pass a neighbour's manifest on fetch it again
# shortly before it expires, so its lifetime sets their idle traffic (at 30 s it was the
# largest share). Load and speed in it are hints: a client asks a peer it uses directly.
MANIFEST_TTL_S = 120.0
MAX_MANIFEST_LIFETIME_S = 300.0  # what a reader accepts (older readers too)
MAX_MANIFEST_BYTES = 16_384
MAX_LISTED = 256  # manifests in one answer to a manifest query, at most
LISTED_BY_DEFAULT = 32  # what a query that names no limit gets

ADDRESS_PATTERN = "^0x[0-9a-fA-F]{40}$"  # an EVM account or contract

Reach = Literal["public", "private", "unknown"]


class ModelOffer(Message):
    model_id: str = Field(min_length=1, max_length=128)
    model_hash: ModelHash = Field(min_length=1, max_length=128)
    quantization: str = Field(max_length=32)
    context: int = Field(ge=1)
    layers: tuple[int, int]  # the blocks held, [start, stop)
    # A pipeline stage (serves /dinet/shard/1, not /dinet/infer/1) and the model's
    # block count; absent in manifests of whole nodes and of older versions.
    stage: bool = False
    n_layers: int | None = Field(default=None, ge=1)
    # What the model does: "generate" (/dinet/infer/1) or "embed" (/dinet/embed/1, vectors of
    # `dimensions` numbers). Left out of the body for a generating model, so older readers
    # read every manifest of a node that serves no embedding model.
    task: Literal["generate", "embed"] = Field(default="generate", exclude_if=lambda v: v == "generate")
    dimensions: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)
    # The model's chat template declares tool support (`dinet.engine.llama._llama_cpp.template_tools`):
    # requests with `tools` are for these offers only. Left out of the body when false.
    tools: bool = Field(default=False, exclude_if=lambda v: not v)

    @property
    def total_layers(self) -> int:
        return self.n_layers if self.n_layers is not None else self.layers[1]


class Load(Message):
    active: int = Field(ge=0)
    queued: int = Field(ge=0)


Coordinate = Annotated[float, Field(ge=-MAX_COORDINATE_MS, le=MAX_COORDINATE_MS)]


class NetworkCoordinates(Message):
    """A node's Vivaldi coordinates (dinet.overlay.vivaldi), in milliseconds."""

    vector: tuple[Coordinate, ...] = Field(min_length=DIMENSIONS, max_length=DIMENSIONS)
    height: float = Field(ge=0, le=MAX_COORDINATE_MS)
    error: float = Field(ge=0, le=MAX_ERROR)


class PaymentTerms(Message):
    """How a node is paid: vouchers of channels to `payee` on the channels contract at
    `contract` on chain `chain_id`, one credit of its prices being `wei_per_credit` wei
    (or smallest units of `token`).
    With `required`, it serves only requests paid that way."""

    chain_id: int = Field(ge=1)
    contract: str = Field(pattern=ADDRESS_PATTERN)
    payee: str = Field(pattern=ADDRESS_PATTERN)
    wei_per_credit: int = Field(ge=0, lt=2**128)  # of the token's smallest unit, if it names one
    required: bool = False
    # The ERC-20 token the channels hold; ETH when absent.
    token: str | None = Field(default=None, pattern=ADDRESS_PATTERN, exclude_if=lambda v: v is None)


class Manifest(Message):
    peer_id: PeerId = Field(min_length=1, max_length=128)
    version: str = Field(max_length=32)
    region: str = Field(max_length=64)
    addrs: tuple[str, ...] = Field(max_length=16)
    models: tuple[ModelOffer, ...] = Field(max_length=32)
    max_concurrent: int = Field(ge=1)
    tokens_per_s: float = Field(ge=0)
    ttft_ms: float = Field(ge=0)
    price_per_token: float = Field(ge=0)  # per completion token
    load: Load
    issued_at: float
    expires_at: float
    price_per_prompt_token: float = Field(default=0.0, ge=0)
    # Whether peers can dial the node, as it found out by asking them to dial it back
    # (`private`: behind NAT, reached through relays); absent in older manifests.
    reach: Reach = "unknown"
    # Where the node sits in the latency space, once it has measured a round trip; left
    # out of the body when absent, so a node without them is read by older readers too.
    coords: NetworkCoordinates | None = Field(default=None, exclude_if=lambda v: v is None)
    payment: PaymentTerms | None = Field(default=None, exclude_if=lambda v: v is None)


class SignedManifest(Message):
    kind: Literal["manifest"] = "manifest"
    body: str = Field(max_length=MAX_MANIFEST_BYTES)
    signature: str = Field(max_length=256)


class ManifestQuery(Message):
    """Ask a peer for its manifest, and with `include_known` up to `limit` valid ones it
    knows: of peers serving `model_id` / `model_hash` when named (whole or as stages)."""

    kind: Literal["manifest_query"] = "manifest_query"
    include_known: bool = True
    model_id: str | None = Field(default=None, max_length=128)
    model_hash: ModelHash | None = Field(default=None, max_length=128)
    limit: int = Field(default=LISTED_BY_DEFAULT, ge=0, le=MAX_LISTED - 1)


class ManifestList(Message):
    kind: Literal["manifests"] = "manifests"
    manifests: tuple[SignedManifest, ...] = Field(max_length=MAX_LISTED)


def serves(manifest: Manifest, model_id: str | None, model_hash: ModelHash | None) -> bool:
    """Whether the peer offers the model (whole or a stage of it, or to embed with); any model
    if neither is named."""
    return any(
        (model_id is None or o.model_id == model_id) and (model_hash is None or o.model_hash == model_hash)
        for o in manifest.models
    ) or (model_id is None and model_hash is None)


def sign_manifest(manifest: Manifest, key: Signer) -> SignedManifest:
    body = manifest.model_dump_json()
    return SignedManifest(body=body, signature=sign_body(body, key))


def verify_manifest(signed: SignedManifest, now: float | None = None) -> Manifest:
    """The manifest inside `signed`, or ManifestError if forged, malformed or expired."""
    try:
        manifest = Manifest.model_validate_json(signed.body)
    except ValidationError as exc:
        raise ManifestError(f"malformed manifest: {exc.errors()[0]['msg']}") from None
    if not signed_by(manifest.peer_id, signed.body, signed.signature):
        raise ManifestError(f"manifest signature does not match peer {manifest.peer_id}")
    problem = lifetime_problem(manifest.issued_at, manifest.expires_at, MAX_MANIFEST_LIFETIME_S, now)
    if problem is not None:
        raise ManifestError(f"manifest of {manifest.peer_id} {problem}")
    return manifest
