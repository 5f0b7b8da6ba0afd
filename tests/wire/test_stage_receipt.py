"""Stage receipts: signed by their stage, refused unless they tile the blocks and chain."""

from __future__ import annotations

import pytest

from dinet.errors import BadReceipt
from dinet.wire.keys import SigningKey
from dinet.wire.stage_receipt import (
    StageReceiptBody,
    audit_commitment,
    check_chaining,
    check_tiling,
    open_stage_receipt,
    sign_stage_receipt,
    step_digest,
)

D = [step_digest(bytes([i])) for i in range(8)]  # distinct step digests


def receipt(key: SigningKey, span: tuple[int, int], steps: list[tuple[str, str]]) -> StageReceiptBody:
    return StageReceiptBody(
        nonce="n1",
        session_id="s1",
        node=key.peer_id,
        model_hash="ab" * 32,
        span=span,
        audit_commit=audit_commitment(b"seed"),
        steps=tuple(steps),
    )


def test_a_receipt_opens_only_with_its_stages_signature() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    body = receipt(key, (0, 10), [(D[0], D[1])])
    assert open_stage_receipt(sign_stage_receipt(body, key)) == body
    forged = sign_stage_receipt(body, other)  # signed by someone else than its node
    with pytest.raises(BadReceipt, match="signature"):
        open_stage_receipt(forged)
    tampered = sign_stage_receipt(body, key).model_copy(
        update={"body": sign_stage_receipt(body, key).body.replace('"span":[0,10]', '"span":[0,11]')}
    )
    with pytest.raises(BadReceipt, match="signature"):
        open_stage_receipt(tampered)
    short = sign_stage_receipt(receipt(key, (0, 10), [("ab", D[1])]), key)
    with pytest.raises(BadReceipt, match="32 hex"):
        open_stage_receipt(short)


def test_receipts_must_tile_every_block_exactly_once() -> None:
    a, b, c = (SigningKey.generate() for _ in range(3))
    check_tiling([receipt(a, (0, 10), []), receipt(b, (10, 20), []), receipt(c, (20, 30), [])], 30)
    cases = {
        "a gap at block 10": [(0, 10), (11, 20), (20, 30)],
        "an overlap at block 9": [(0, 10), (9, 20), (20, 30)],
        "cover blocks 0-20": [(0, 10), (10, 20)],
        "cover blocks 0-31": [(0, 10), (10, 20), (20, 31)],
        "a gap at block 0": [(1, 10), (10, 20), (20, 30)],
    }
    for why, spans in cases.items():
        with pytest.raises(BadReceipt, match=why):
            check_tiling([receipt(k, span, []) for k, span in zip((a, b, c), spans, strict=False)], 30)


def test_receipts_must_chain_what_one_stage_sent_to_what_the_next_took() -> None:
    a, b, c = (SigningKey.generate() for _ in range(3))
    chained = [
        receipt(a, (0, 10), [(D[0], D[1]), (D[4], D[5])]),
        receipt(b, (10, 20), [(D[1], D[2]), (D[5], D[6])]),
        receipt(c, (20, 30), [(D[2], D[3]), (D[6], D[7])]),
    ]
    check_chaining(chained)
    broken = [chained[0], receipt(b, (10, 20), [(D[1], D[2]), (D[7], D[6])]), chained[2]]
    with pytest.raises(BadReceipt, match="at step 1"):
        check_chaining(broken)
    fewer = [chained[0], receipt(b, (10, 20), [(D[1], D[2])]), chained[2]]
    with pytest.raises(BadReceipt, match="signed 2 steps, the next one 1"):
        check_chaining(fewer)
