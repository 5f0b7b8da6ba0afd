"""Usage receipts: what a node served a client, signed by the node and countersigned by the client.

Like manifests, signatures cover the exact bytes of `body` (the receipt's JSON), so
any implementation can verify them without re-serialising, and each key is the one
embedded in a peer id. Each signature is over a domain prefix plus the body, so a
node's signature can never pass for a client's, nor any other dinet signature for
either.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterable
from typing import Literal

from pydantic import Field, ValidationError

from dinet.errors import BadReceipt
from dinet.wire.ids import ModelHash, PeerId, RequestId
from dinet.wire.keys import Signer
from dinet.wire.messages import CountersignedReceipt, Message, SignedReceipt, receipt_id
from dinet.wire.signing import sign_body, signed_by

RECEIPT_VERSION = "dinet-receipt/1"
NODE_DOMAIN = b"dinet-receipt/1 node\n"
CLIENT_DOMAIN = b"dinet-receipt/1 client\n"
MAX_CLOCK_SKEW_S = 300.0
_HEX64 = r"^[0-9a-f]{64}$"
__all__ = ["CountersignedReceipt", "ReceiptBody", "SignedReceipt", "receipt_id"]


class ReceiptBody(Message):
    """One node's share of one request. `completion_tokens` counts only the tokens
    this node delivered (from index `first_index`), never a failover prefix."""

    version: Literal["dinet-receipt/1"] = "dinet-receipt/1"
    request_id: RequestId = Field(min_length=1, max_length=64)
    request_hash: str = Field(pattern=_HEX64)
    model_hash: ModelHash = Field(min_length=1, max_length=128)
    node: PeerId = Field(min_length=1, max_length=128)
    client: PeerId = Field(min_length=1, max_length=128)
    prompt_tokens: int = Field(ge=0, le=1_000_000)
    completion_tokens: int = Field(ge=0, le=1_000_000)
    first_index: int = Field(ge=0, le=1_000_000)
    price_per_prompt_token: float = Field(ge=0, le=1e6)
    price_per_token: float = Field(ge=0, le=1e6)
    amount: float = Field(ge=0)
    output_hash: str = Field(pattern=_HEX64)
    issued_at: float


def charge(prompt_tokens: int, completion_tokens: int, price_prompt: float, price: float) -> float:
    """The credits a receipt is worth. Verifiers recompute it with this same expression."""
    return prompt_tokens * price_prompt + completion_tokens * price


def output_hash(token_ids: Iterable[int]) -> str:
    """sha256 over the delivered token ids, each a 4-byte unsigned big-endian integer."""
    digest = hashlib.sha256()
    for token_id in token_ids:
        digest.update(struct.pack(">I", token_id))
    return digest.hexdigest()


def request_hash(payload: bytes) -> str:
    """sha256 of the exact `infer` frame payload the client sent."""
    return hashlib.sha256(payload).hexdigest()


def sign_receipt(body: ReceiptBody, key: Signer) -> SignedReceipt:
    text = body.model_dump_json()
    return SignedReceipt(body=text, node_signature=sign_body(text, key, NODE_DOMAIN))


def countersign(signed: SignedReceipt, key: Signer) -> CountersignedReceipt:
    return CountersignedReceipt(
        body=signed.body,
        node_signature=signed.node_signature,
        client_signature=sign_body(signed.body, key, CLIENT_DOMAIN),
    )


def verify_node_signature(signed: SignedReceipt | CountersignedReceipt) -> ReceiptBody:
    """The body, if well formed, self-consistent and signed by its `node`; else BadReceipt."""
    body = _parse(signed.body)
    if not signed_by(body.node, signed.body, signed.node_signature, NODE_DOMAIN):
        raise BadReceipt(f"receipt for {body.request_id}: node signature does not match {body.node}")
    return body


def verify_countersigned(receipt: CountersignedReceipt) -> ReceiptBody:
    """Both signatures and the amount checked; BadReceipt otherwise."""
    body = verify_node_signature(receipt)
    if not signed_by(body.client, receipt.body, receipt.client_signature, CLIENT_DOMAIN):
        raise BadReceipt(f"receipt for {body.request_id}: client signature does not match {body.client}")
    return body


def _parse(text: str) -> ReceiptBody:
    try:
        body = ReceiptBody.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadReceipt(f"malformed receipt at {where}: {first['msg']}") from None
    if body.node == body.client:
        raise BadReceipt("a receipt's node and client must differ")
    expected = charge(
        body.prompt_tokens, body.completion_tokens, body.price_per_prompt_token, body.price_per_token
    )
    if body.amount != expected:
        raise BadReceipt(f"receipt for {body.request_id} claims {body.amount}, its counts give {expected}")
    return body


def check_delivery(
    body: ReceiptBody,
    *,
    node: PeerId,
    client: PeerId,
    request_id: RequestId,
    request_hash: str,
    model_hash: ModelHash,
    first_index: int,
    token_ids: Iterable[int],
    prompt_tokens: int,
    max_price_prompt: float,
    max_price: float,
    now: float | None = None,
) -> None:
    """Refuse (BadReceipt) a receipt that does not describe what was actually delivered."""
    ids = list(token_ids)
    wrong = []
    if body.node != node:
        wrong.append(f"node {body.node} is not the peer that answered ({node})")
    if body.client != client:
        wrong.append(f"client {body.client} is not us ({client})")
    if body.request_id != request_id or body.request_hash != request_hash:
        wrong.append("it names another request")
    if body.model_hash != model_hash:
        wrong.append(f"model {body.model_hash} is not the one the end frame named")
    if body.first_index != first_index:
        wrong.append(f"it starts at token {body.first_index}, we resumed at {first_index}")
    if body.completion_tokens != len(ids):
        wrong.append(f"it counts {body.completion_tokens} completion tokens, we received {len(ids)}")
    if body.prompt_tokens != prompt_tokens:
        wrong.append(f"it counts {body.prompt_tokens} prompt tokens, the end frame said {prompt_tokens}")
    if body.output_hash != output_hash(ids):
        wrong.append("its output hash is not that of the tokens we received")
    if body.price_per_token > max_price or body.price_per_prompt_token > max_price_prompt:
        wrong.append("it charges more than the price the node advertised or we allowed")
    now = time.time() if now is None else now
    if abs(body.issued_at - now) > MAX_CLOCK_SKEW_S:
        wrong.append("its time is too far from ours")
    if wrong:
        raise BadReceipt(f"receipt for {request_id} refused: " + "; ".join(wrong))
