"""A node's side of receipts: sign one per answer, take back the client's countersignature,
keep it in the ledger, and rank waiting clients by their standing (tit-for-tat)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dinet.errors import BadVoucher, ChainError, FrameTooLarge, LedgerError, MalformedMessage
from dinet.ledger import Ledger
from dinet.node.debts import DebtDesk
from dinet.node.payments import PaymentDesk
from dinet.p2p.streams import FramedStream
from dinet.wire.ids import ModelHash, PeerId, RequestId
from dinet.wire.keys import Signer
from dinet.wire.messages import EndFrame, decode_countersigned
from dinet.wire.receipt import (
    ReceiptBody,
    SignedReceipt,
    charge,
    output_hash,
    sign_receipt,
    verify_countersigned,
)

logger = logging.getLogger(__name__)

COUNTERSIGN_WAIT_S = 10.0


@dataclass(frozen=True)
class Prices:
    per_prompt_token: float = 0.0
    per_token: float = 0.0


class Accountant:
    """Issues this node's receipts and records the countersigned ones.

    `me` are the peer ids this home answers for (its node and client identities):
    a peer's standing is what it earned serving them minus what it spent here, plus
    `allowance` credits every peer starts with. With `priority` on, waiting requests
    are served in order of standing, highest first. With `payments`, requests name a
    payment channel and receipts come back with its vouchers (`dinet.node.payments`).
    """

    def __init__(
        self,
        key: Signer,
        peer_id: PeerId,
        ledger: Ledger,
        prices: Prices,
        me: Sequence[str],
        *,
        allowance: float = 0.0,
        priority: bool = True,
        payments: PaymentDesk | None = None,
        debts: DebtDesk | None = None,
    ) -> None:
        self._key = key
        self.peer_id = peer_id
        self.ledger = ledger
        self.prices = prices
        self._me = tuple(me)
        self.allowance = allowance
        self.priority = priority
        self.payments = payments
        self.debts = debts

    def issue(
        self,
        *,
        request_id: RequestId,
        request_hash: str,
        client: PeerId,
        first_index: int,
        token_ids: Sequence[int],
        end: EndFrame,
    ) -> SignedReceipt:
        prompt = end.usage.prompt_tokens
        completion = len(token_ids)
        body = ReceiptBody(
            request_id=request_id,
            request_hash=request_hash,
            model_hash=end.model_hash,
            node=self.peer_id,
            client=client,
            prompt_tokens=prompt,
            completion_tokens=completion,
            first_index=first_index,
            price_per_prompt_token=self.prices.per_prompt_token,
            price_per_token=self.prices.per_token,
            amount=charge(prompt, completion, self.prices.per_prompt_token, self.prices.per_token),
            output_hash=output_hash(token_ids),
            issued_at=time.time(),
        )
        return sign_receipt(body, self._key)

    def issue_for_prompt(
        self,
        *,
        request_id: RequestId,
        request_hash: str,
        client: PeerId,
        model_hash: ModelHash,
        prompt_tokens: int,
    ) -> SignedReceipt:
        """A receipt for work on a prompt alone (embeddings): no completion tokens, so the
        output hash is that of no tokens and only the prompt price is charged."""
        body = ReceiptBody(
            request_id=request_id,
            request_hash=request_hash,
            model_hash=model_hash,
            node=self.peer_id,
            client=client,
            prompt_tokens=prompt_tokens,
            completion_tokens=0,
            first_index=0,
            price_per_prompt_token=self.prices.per_prompt_token,
            price_per_token=self.prices.per_token,
            amount=charge(prompt_tokens, 0, self.prices.per_prompt_token, self.prices.per_token),
            output_hash=output_hash(()),
            issued_at=time.time(),
        )
        return sign_receipt(body, self._key)

    async def settle(
        self, framed: FramedStream, signed: SignedReceipt, channel: str | None = None
    ) -> ReceiptBody | None:
        """Wait for the client's countersignature of `signed` and record it (with the
        voucher that pays for it on `channel`, if the request named one).

        A client that closes without one (an older client, or one that refused the
        receipt) leaves nothing in the ledger; a countersignature that does not
        match is logged and dropped.
        """
        try:
            with trio.fail_after(COUNTERSIGN_WAIT_S):
                payload = await framed.receive()
        except trio.TooSlowError:
            logger.info("client %s sent no countersigned receipt", framed.remote_peer)
            return None
        except (FrameTooLarge, MalformedMessage) as exc:
            logger.info("client %s sent a bad receipt frame: %s", framed.remote_peer, exc)
            return None
        if payload is None:
            logger.info("client %s closed without countersigning its receipt", framed.remote_peer)
            return None
        try:
            receipt = decode_countersigned(payload)
            if receipt.body != signed.body or receipt.node_signature != signed.node_signature:
                raise MalformedMessage("the countersigned receipt is not the one this node issued")
            body = verify_countersigned(receipt)
            paid = None
            if channel is not None and self.payments is not None:
                paid = await self.payments.payment_for(body, channel, receipt.voucher)
            await trio.to_thread.run_sync(self.ledger.record, receipt, paid)
        except (MalformedMessage, LedgerError, BadVoucher, ChainError) as exc:
            logger.warning("receipt from client %s not recorded: %s", framed.remote_peer, exc)
            return None
        logger.info("receipt %s recorded: %s owes %g", receipt.receipt_id[:12], body.client, body.amount)
        return body

    async def standing(self, client: PeerId) -> float:
        """The client's credit with this node: the allowance, plus what it served us,
        minus what it has used here."""
        net = await trio.to_thread.run_sync(self.ledger.standing, client, self._me)
        return self.allowance + net
