"""Free riders refused network-wide: a node publishes who owes it, and counts what others
publish when they have standing with it.

Each period a node publishes a debt record (`dinet.wire.debt`) on its model's topic for
every client whose standing with it is below zero: it used more than the allowance and
paid for none of it (by channel, or by serving this home). A node hearing a record keeps
the latest per (creditor, debtor), and counts it only while the creditor has served this
home: a fresh identity, or a peer that never served us, cannot smear anyone. With
`--refuse-debt CREDITS` a node refuses a client whose debts counted so far, its own
included, pass that sum, unless the request is paid by a channel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import trio

from dinet.errors import DebtRecordError, LedgerError
from dinet.ledger import Ledger
from dinet.p2p.host import PeerHost
from dinet.wire.debt import DebtRecord, SignedDebt, sign_debt, verify_debt
from dinet.wire.ids import ModelHash, PeerId, model_topic
from dinet.wire.keys import Signer

logger = logging.getLogger(__name__)

PERIODS_LIVE = 3.0  # a record counts this many periods: two in a row may be lost


class DebtDesk:
    def __init__(
        self,
        key: Signer,
        peer_id: PeerId,
        ledger: Ledger,
        me: Sequence[PeerId],
        *,
        allowance: float,
        every_s: float,
        refuse_over: float | None = None,
    ) -> None:
        self._key = key
        self.peer_id = peer_id
        self._ledger = ledger
        self._me = tuple(me)
        self.allowance = allowance
        self._every_s = every_s
        self.refuse_over = refuse_over
        self._heard: dict[PeerId, dict[PeerId, DebtRecord]] = {}  # debtor -> creditor -> latest record

    def heard(self, signed: SignedDebt) -> None:
        try:
            record = verify_debt(signed)
        except DebtRecordError as exc:
            logger.info("dropped a gossiped debt record: %s", exc)
            return
        if record.creditor == self.peer_id:
            return
        held = self._heard.setdefault(record.debtor, {})
        last = held.get(record.creditor)
        if last is None or last.issued_at < record.issued_at:
            held[record.creditor] = record
            logger.info("heard that %s owes %s %.6g credits", record.debtor, record.creditor, record.owed)

    def _owed_here(self, client: PeerId) -> float:
        return max(0.0, -(self.allowance + self._ledger.standing(client, self._me)))

    def owed(self, client: PeerId) -> float:
        """What `client` owes this node beyond its allowance, plus what creditors of standing
        report it owes them. Blocks (reads the ledger)."""
        now = time.time()
        total = self._owed_here(client)
        for creditor, record in self._heard.get(client, {}).items():
            if record.expires_at > now and self._ledger.served(creditor, self._me) > 0:
                total += record.owed
        return total

    async def refusal(self, client: PeerId) -> str | None:
        """Why the client is refused for its debts, or None."""
        if self.refuse_over is None:
            return None
        owed = await trio.to_thread.run_sync(self.owed, client)
        if owed <= self.refuse_over:
            return None
        return (
            f"{client} owes {owed:.6g} credits unpaid (here and to peers of standing), over this "
            f"node's limit of {self.refuse_over:g}: pay by channel, or serve others first"
        )

    def records(self, now: float) -> list[DebtRecord]:
        """This node's records of its debtors now. Blocks (reads the ledger)."""
        expires = now + PERIODS_LIVE * self._every_s
        records = []
        for client in self._ledger.clients_of(self._me):
            owed = self._owed_here(client)
            if owed > 0:
                records.append(
                    DebtRecord(
                        creditor=self.peer_id, debtor=client, owed=owed, issued_at=now, expires_at=expires
                    )
                )
        return records

    async def publish(self, host: PeerHost, served: Callable[[], Sequence[ModelHash]]) -> None:
        """Each period, a record per debtor on each served model's topic (forever)."""
        while True:
            await trio.sleep(self._every_s)
            models = served()
            if not models:
                continue
            try:
                records = await trio.to_thread.run_sync(self.records, time.time())
            except LedgerError as exc:
                logger.warning("debt records not made: %s", exc)
                continue
            for record in records:
                body = sign_debt(record, self._key).model_dump_json().encode()
                for model in models:
                    await host.publish(model_topic(model), body)
                logger.info("published that %s owes %.6g credits", record.debtor, record.owed)
