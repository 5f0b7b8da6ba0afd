"""A client's side of payment channels: which channel pays which node, and the voucher
that goes back with each countersigned receipt.

A node that takes channels says so in its manifest (`PaymentTerms`: chain, contract,
payee address, wei per credit). The client pays it through its open channel to that
payee on that contract, opening one on first use if it is allowed to
(`--channel-deposit-wei`). Each voucher promises the channel's cumulative sum: the wei of
every receipt kept on it so far, this one included. The receipt and its voucher are kept
in the ledger before the voucher is sent, so a crash never leads the client to sign a
lower sum afterwards (which the node would refuse).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from typing import TYPE_CHECKING

import trio

from dinet.ledger import Ledger
from dinet.ledger.store import ChannelPayment, ChannelRecord
from dinet.settle.voucher import same_address, sign_voucher, wei_of
from dinet.wire.ids import PeerId
from dinet.wire.manifest import PaymentTerms
from dinet.wire.messages import ChannelVoucher
from dinet.wire.receipt import ReceiptBody

if TYPE_CHECKING:  # web3 takes a second to import: only a node or client with a chain loads it
    from dinet.settle.chain import Channels

logger = logging.getLogger(__name__)

STATE_FRESH_S = 30.0  # a channel's deposit read from the chain is trusted this long


class ChannelBook:
    def __init__(
        self,
        channels: Channels,
        ledger: Ledger,
        peer_id: PeerId,
        *,
        deposit_wei: int | None = None,
        timeout_s: int = 7 * 24 * 3600,
    ) -> None:
        """`deposit_wei`: open a channel with this deposit to a node that takes them and has
        none from us yet, and top it up by as much when it runs low (None: use only channels
        opened beforehand, never topped up)."""
        self._channels = channels
        self._ledger = ledger
        self._peer_id = peer_id
        self.deposit_wei = deposit_wei
        self.timeout_s = timeout_s
        self._opening = trio.Lock()
        self._deposits: dict[str, tuple[float, int]] = {}  # channel -> (read at, deposit)

    @property
    def chain(self) -> Channels:
        return self._channels

    def pays_on(self, terms: PaymentTerms) -> bool:
        domain = self._channels.domain
        return terms.chain_id == domain.chain_id and same_address(terms.contract, domain.contract)

    async def channel_for(self, node: PeerId, terms: PaymentTerms | None) -> str | None:
        """Our open channel to `node` on the terms it advertises (opened now if allowed), or
        None when it takes no channels, or on another chain, or we have none and may not open one."""
        if terms is None or not self.pays_on(terms):
            return None
        async with self._opening:  # two requests at once open one channel, not two
            for record in await trio.to_thread.run_sync(lambda: self._ledger.channels(payer=self._peer_id)):
                if (
                    record.payee == node
                    and not record.closed
                    and same_address(record.payee_address, terms.payee)
                ):
                    await self._keep_funded(record.channel)
                    return record.channel
            if self.deposit_wei is None:
                return None
            return await self.open(node, terms, self.deposit_wei)

    async def _keep_funded(self, channel: str) -> None:
        """With a deposit set, top the channel up by it once less than half of it is left
        unspent (the deposit as last read from the chain, at most STATE_FRESH_S ago)."""
        if self.deposit_wei is None:
            return
        held = self._deposits.get(channel)
        if held is None or time.monotonic() - held[0] > STATE_FRESH_S:
            state = await trio.to_thread.run_sync(self._channels.state, channel)
            held = self._deposits[channel] = (time.monotonic(), state.deposit)
        spent = (await trio.to_thread.run_sync(self._ledger.channel_totals, channel)).vouched
        if held[1] - spent < self.deposit_wei // 2:
            await trio.to_thread.run_sync(self._channels.top_up, channel, self.deposit_wei)
            self._deposits[channel] = (time.monotonic(), held[1] + self.deposit_wei)
            logger.info("topped channel %s up by %d wei", channel[:10], self.deposit_wei)

    async def open(self, node: PeerId, terms: PaymentTerms, deposit_wei: int) -> str:
        """Open a channel to `node` on chain and keep it in the ledger; its id."""
        channel = await trio.to_thread.run_sync(
            self._channels.open, terms.payee, deposit_wei, self.timeout_s, terms.token
        )
        domain = self._channels.domain
        record = ChannelRecord(
            channel, domain.chain_id, domain.contract, self._peer_id, node, terms.payee, time.time()
        )
        await trio.to_thread.run_sync(self._ledger.add_channel, record)
        logger.info("opened channel %s to %s with %d wei", channel[:10], node, deposit_wei)
        return channel

    async def payment(self, channel: str, body: ReceiptBody, terms: PaymentTerms) -> ChannelPayment:
        """The receipt's wei on `channel` and the voucher for the channel's new sum."""
        wei = wei_of(body.amount, terms.wei_per_credit)
        totals = await trio.to_thread.run_sync(self._ledger.channel_totals, channel)
        key = self._channels.key
        assert key is not None  # a client's channels act as its chain key
        signed = sign_voucher(self._channels.domain, channel, totals.owed + wei, key)
        voucher = ChannelVoucher(channel=channel, amount=signed.amount, signature=signed.signature)
        return ChannelPayment(channel, wei, voucher)


def channel_statuses(
    ledger: Ledger, chain: Channels, me: Collection[PeerId | None]
) -> list[dict[str, object]]:
    """Each channel of the ledger as `din pay status` and the gateway show it: as a payer
    (one of `me` pays), what it holds and has spent; as a payee, what is settled on chain
    (`paid`) and what is vouched but not yet claimed (`pending`). Blocks: reads the chain."""
    rows: list[dict[str, object]] = []
    for record in ledger.channels():
        totals = ledger.channel_totals(record.channel)
        state = chain.state(record.channel)
        paying = record.payer in me
        rows.append(
            {
                "channel": record.channel,
                "role": "payer" if paying else "payee",
                "peer": record.payee if paying else record.payer,
                "token": None if state.holds(None) else state.token,
                "deposit": state.deposit,
                "owed": totals.owed,  # what the receipts on it sum to
                "vouched": totals.vouched,
                "paid": state.paid,  # settled on chain
                "pending": max(0, totals.vouched - state.paid),
                "expires_at": state.expires_at,
                "closed": state.closed or record.closed,
            }
        )
    return rows
