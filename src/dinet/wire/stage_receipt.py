"""Stage receipts: what one pipeline stage computed in one session, signed by the stage.

A stage keeps, for every step of a session, a digest of the rows that went in and of
what came out (hidden states as sent on, or the token ids it chose). At the end of an
answer the client asks each stage for its receipt and checks that the receipts tile
the model's blocks exactly once and chain: what stage k sent out at step s is what
stage k+1 took in at step s, the first stage took in the prompt the client sent, and
the last one chose the tokens the client received. A stage that computed its layers
wrongly still signs a receipt that chains (it sent what it sent); an audit finds it
by replaying its steps on another holder of the same blocks (`dinet.client.stage_audit`).

`audit_commit` is the sha256 of the client's audit seed, given at `shard_open`: the seed
decides whether the session is audited, so a stage cannot know it before it answers,
and cannot claim afterwards that the client chose after seeing the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydantic import Field, ValidationError

from dinet.errors import BadReceipt
from dinet.wire.ids import ModelHash, PeerId
from dinet.wire.keys import Signer
from dinet.wire.messages import Message
from dinet.wire.signing import sign_body, signed_by

STAGE_DOMAIN = b"dinet-stage-receipt/1\n"
MAX_RECEIPT_STEPS = 8192  # a session's steps: a context's tokens at most, and the prompt's chunks
_HEX64 = r"^[0-9a-f]{64}$"


def step_digest(data: bytes) -> str:
    """The digest of one step's input or output bytes (exactly as sent): sha256, 128 bits."""
    return hashlib.sha256(data).hexdigest()[:32]


def audit_commitment(seed: bytes) -> str:
    return hashlib.sha256(seed).hexdigest()


class StageReceiptBody(Message):
    """One stage's steps in one session: (input digest, output digest) per step, in order."""

    version: str = Field(default="dinet-stage-receipt/1", pattern=r"^dinet-stage-receipt/1$")
    nonce: str = Field(min_length=1, max_length=64)  # the request's, shared by every stage of the chain
    session_id: str = Field(min_length=1, max_length=64)
    node: PeerId = Field(min_length=1, max_length=128)
    model_hash: ModelHash = Field(min_length=1, max_length=128)
    span: tuple[int, int]
    audit_commit: str = Field(pattern=_HEX64)
    steps: tuple[tuple[str, str], ...] = Field(max_length=MAX_RECEIPT_STEPS)


class SignedStageReceipt(Message):
    body: str = Field(max_length=MAX_RECEIPT_STEPS * 80 + 2048)  # the body's exact JSON
    signature: str = Field(max_length=128)


def sign_stage_receipt(body: StageReceiptBody, key: Signer) -> SignedStageReceipt:
    text = body.model_dump_json()
    return SignedStageReceipt(body=text, signature=sign_body(text, key, STAGE_DOMAIN))


def open_stage_receipt(signed: SignedStageReceipt) -> StageReceiptBody:
    """The body, if well formed and signed by its `node`; BadReceipt otherwise."""
    try:
        body = StageReceiptBody.model_validate_json(signed.body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadReceipt(f"malformed stage receipt at {where}: {first['msg']}") from None
    if any(not _is_digest(d) for step in body.steps for d in step):
        raise BadReceipt("a stage receipt's step digest is not 32 hex digits")
    if not signed_by(body.node, signed.body, signed.signature, STAGE_DOMAIN):
        raise BadReceipt(f"stage receipt: the signature does not match {body.node}")
    return body


def check_tiling(receipts: Sequence[StageReceiptBody], n_layers: int) -> None:
    """The receipts' spans, in chain order, cover blocks [0, n_layers) exactly once;
    BadReceipt naming the gap or overlap otherwise."""
    at = 0
    for receipt in receipts:
        start, stop = receipt.span
        if start != at or stop <= start:
            what = "a gap" if start > at else "an overlap"
            raise BadReceipt(f"the stages' receipts do not tile the blocks: {what} at block {min(at, start)}")
        at = stop
    if at != n_layers:
        raise BadReceipt(f"the stages' receipts cover blocks 0-{at}, not all {n_layers}")


def check_chaining(receipts: Sequence[StageReceiptBody]) -> None:
    """Every stage took in, step by step, exactly what the one before it sent out;
    BadReceipt naming the first break otherwise."""
    for before, after in zip(receipts, receipts[1:], strict=False):
        if len(before.steps) != len(after.steps):
            raise BadReceipt(
                f"stage {before.node} signed {len(before.steps)} steps, the next one {len(after.steps)}"
            )
        for seq, ((_, sent), (taken, _)) in enumerate(zip(before.steps, after.steps, strict=True)):
            if sent != taken:
                raise BadReceipt(f"at step {seq}, stage {after.node} did not take in what {before.node} sent")


def _is_digest(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)
