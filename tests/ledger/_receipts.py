"""Receipts signed by keys a test holds: for ledger tests that are not about the network."""

from __future__ import annotations

import time
import uuid

from dinet.wire.keys import SigningKey
from dinet.wire.receipt import (
    CountersignedReceipt,
    ReceiptBody,
    charge,
    countersign,
    output_hash,
    sign_receipt,
)


def make_receipt(
    node: SigningKey,
    client: SigningKey,
    *,
    completion: int = 16,
    prompt: int = 20,
    price: float = 0.5,
    prompt_price: float = 0.25,
    **changes: object,
) -> CountersignedReceipt:
    """A receipt `node` issued to `client` for `completion` tokens, countersigned by `client`."""
    fields: dict[str, object] = dict(
        request_id=uuid.uuid4().hex,
        request_hash="ab" * 32,
        model_hash="cd" * 32,
        node=node.peer_id,
        client=client.peer_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        first_index=0,
        price_per_prompt_token=prompt_price,
        price_per_token=price,
        amount=charge(prompt, completion, prompt_price, price),
        output_hash=output_hash(range(completion)),
        issued_at=time.time(),
    )
    fields.update(changes)
    return countersign(sign_receipt(ReceiptBody(**fields), node), client)  # type: ignore[arg-type]
