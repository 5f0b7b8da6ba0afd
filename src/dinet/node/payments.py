"""A node's side of payment channels: admit only requests a channel can pay for, check the
voucher that comes back with each receipt, and claim on chain on a policy.

A channel pays one node (`payee`) from one client's deposit. Before serving a request
that names a channel the node checks, from its own ledger and the channel's state on
chain: the channel pays this node and is not closing; the client's last answer on it was
vouched for; and the deposit's unvouched rest, less what requests in flight on it may
still cost, covers this request's worst case. The voucher that comes back with the
receipt must be signed by the channel's sender and cover every receipt on the channel;
it is kept in the ledger in the receipt's own transaction. A voucher that falls short is
not kept, and the channel serves nothing more until a good one comes.

The chain is reached through `dinet.settle` (web3, blocking): every call goes through a
worker thread. See docs/incentives.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from dinet.errors import ChainError, LedgerError
from dinet.ledger import Ledger
from dinet.ledger.store import ChannelPayment, ChannelRecord
from dinet.settle.voucher import Voucher, same_address, voucher_signer, wei_of
from dinet.wire.ids import PeerId
from dinet.wire.manifest import PaymentTerms
from dinet.wire.messages import ChannelVoucher, InferRequest
from dinet.wire.receipt import ReceiptBody

if TYPE_CHECKING:  # web3 takes a second to import: only a node or client with a chain loads it
    from dinet.settle.chain import Channels, ChannelState

logger = logging.getLogger(__name__)

STATE_FRESH_S = 30.0  # a channel's state read from the chain is trusted this long
POLICY_EVERY_S = 5.0
VOUCHER_WAIT_S = (
    12.0  # a request waits this long for vouchers of earlier answers (the node waits 10 s for them)
)
# A chat template adds tokens to the messages; a prompt has at most one token per byte
# beyond them (byte-level tokenizers' worst case).
TEMPLATE_TOKENS = 64


@dataclass(frozen=True)
class PaymentPolicy:
    wei_per_credit: int
    token: str | None = None  # the ERC-20 token channels must hold (None: ETH)
    required: bool = False  # serve only requests paid by a channel
    claim_at_wei: int = 10**16  # claim once this much is vouched and not yet paid
    claim_after_s: float = 3600.0  # or once the oldest such voucher is this old
    margin_s: float = 600.0  # close this long before the channel expires; refuse from then on


@dataclass
class Reservation:
    """Room held on a channel for one request in flight; `answered` once its receipt is
    issued and its voucher awaited."""

    channel: str
    wei: int
    answered: bool = False


def worst_case_credits(request: InferRequest, per_prompt_token: float, per_token: float) -> float:
    params = request.params
    text = params.prompt if params.prompt is not None else "".join(m.content for m in params.messages or ())
    prompt_tokens = len(text.encode()) + TEMPLATE_TOKENS
    return prompt_tokens * per_prompt_token + params.max_tokens * per_token


class PaymentDesk:
    def __init__(
        self,
        channels: Channels,
        ledger: Ledger,
        peer_id: PeerId,
        policy: PaymentPolicy,
        prices: Callable[[], tuple[float, float]],
    ) -> None:
        """`prices()`: the node's current (per prompt token, per completion token) prices."""
        self._channels = channels
        self._ledger = ledger
        self._peer_id = peer_id
        self.policy = policy
        self._prices = prices
        self._states: dict[str, tuple[float, ChannelState]] = {}  # channel -> (read at, state)
        self._reserved: dict[str, int] = {}  # channel -> wei held by requests in flight
        self._due_since: dict[str, float] = {}  # channel -> when vouchers first went unclaimed
        self._payers: dict[str, PeerId] = {}  # channel -> its client, as the ledger holds it
        # Answers on a channel whose vouchers are still on their way, and an event set when
        # none are left: the next request waits for them, so it is judged on every voucher.
        self._awaiting: dict[str, int] = {}
        self._vouched: dict[str, trio.Event] = {}
        self._lock = trio.Lock()  # one admission at a time: two requests cannot share the same room

    @property
    def address(self) -> str:
        assert self._channels.key is not None  # a node's channels act as its chain key
        return self._channels.key.address

    def terms(self) -> PaymentTerms:
        domain = self._channels.domain
        return PaymentTerms(
            chain_id=domain.chain_id,
            contract=domain.contract,
            payee=self.address,
            wei_per_credit=self.policy.wei_per_credit,
            required=self.policy.required,
            token=self.policy.token,
        )

    # -- before serving ---------------------------------------------------------------------

    async def admit(self, client: PeerId, request: InferRequest) -> Reservation | str | None:
        """Room reserved on the request's channel; None for a request without one that the
        node serves anyway; or why it is refused."""
        channel = request.channel
        if channel is None:
            return (
                "this node serves only requests paid by a payment channel" if self.policy.required else None
            )
        per_prompt, per_token = self._prices()
        worst = wei_of(worst_case_credits(request, per_prompt, per_token), self.policy.wei_per_credit)
        with trio.move_on_after(VOUCHER_WAIT_S):  # then the missing voucher refuses the request
            while self._awaiting.get(channel):
                await self._vouched[channel].wait()
        async with self._lock:
            problem = await self._problem(client, channel, worst, fresh=False)
            if problem is not None:  # the chain may have moved on since it was read (a top-up)
                problem = await self._problem(client, channel, worst, fresh=True)
            if problem is not None:
                return f"channel {channel[:10]}: {problem}"
            self._reserved[channel] = self._reserved.get(channel, 0) + worst
        return Reservation(channel, worst)

    async def _problem(self, client: PeerId, channel: str, worst: int, *, fresh: bool) -> str | None:
        try:
            state = await self._state(channel, fresh=fresh)
        except ChainError as exc:
            return f"its state cannot be read from the chain ({exc})"
        if not same_address(state.payee, self.address):
            return "it pays another node"
        if state.closed:
            return "it is closed"
        if not state.holds(self.policy.token):
            return f"it holds {state.token}, this node is paid in {self.policy.token or 'ETH'}"
        if state.expires_at - time.time() < self.policy.margin_s:
            return "it expires too soon (the client could take its deposit back before this node claims)"
        payer = await self._payer(channel, client, state)
        if payer != client:
            return "it belongs to another client"
        totals = await trio.to_thread.run_sync(self._ledger.channel_totals, channel)
        if totals.unpaid:
            return f"its last answers are not vouched for ({totals.unpaid} wei owed)"
        room = state.deposit - totals.vouched - self._reserved.get(channel, 0)
        if worst > room:
            return f"its deposit has {max(room, 0)} wei left; this request may cost up to {worst}"
        return None

    async def _payer(self, channel: str, client: PeerId, state: ChannelState) -> PeerId:
        """The client a channel serves: the first one to use it."""
        if channel in self._payers:
            return self._payers[channel]
        known = await trio.to_thread.run_sync(lambda: self._ledger.channels(channel=channel))
        if known:
            self._payers[channel] = known[0].payer
            return known[0].payer
        domain = self._channels.domain
        record = ChannelRecord(
            channel, domain.chain_id, domain.contract, client, self._peer_id, state.payee, time.time()
        )
        await trio.to_thread.run_sync(self._ledger.add_channel, record)
        self._payers[channel] = client
        return client

    def answered(self, reservation: Reservation) -> None:
        """The request's answer is sent: its voucher is awaited until `release`."""
        reservation.answered = True
        if not self._awaiting.get(reservation.channel):
            self._vouched[reservation.channel] = trio.Event()
        self._awaiting[reservation.channel] = self._awaiting.get(reservation.channel, 0) + 1

    def release(self, reservation: Reservation) -> None:
        """The request is done with, its voucher taken or given up on."""
        if reservation.answered:
            left = self._awaiting.pop(reservation.channel) - 1
            if left:
                self._awaiting[reservation.channel] = left
            else:
                self._vouched.pop(reservation.channel).set()
        left = self._reserved.get(reservation.channel, 0) - reservation.wei
        if left > 0:
            self._reserved[reservation.channel] = left
        else:
            self._reserved.pop(reservation.channel, None)

    # -- after serving ------------------------------------------------------------------------

    async def payment_for(
        self, body: ReceiptBody, channel: str, voucher: ChannelVoucher | None
    ) -> ChannelPayment:
        """What pays for the receipt `body`: its wei on `channel`, with `voucher` if it
        covers every receipt on the channel (else it is dropped, logged, and the channel
        serves nothing more until a voucher that does comes)."""
        wei = wei_of(body.amount, self.policy.wei_per_credit)
        if voucher is None:
            logger.warning("client %s sent no voucher for channel %s", body.client, channel[:10])
            return ChannelPayment(channel, wei)
        problem = await self._voucher_problem(voucher, channel, wei)
        if problem is not None:
            logger.warning("voucher of %s refused: %s", body.client, problem)
            return ChannelPayment(channel, wei)
        return ChannelPayment(channel, wei, voucher)

    async def _voucher_problem(self, voucher: ChannelVoucher, channel: str, wei: int) -> str | None:
        if voucher.channel != channel:
            return "it is for another channel"
        state = await self._state(channel, fresh=False)
        signer = voucher_signer(
            self._channels.domain, Voucher(voucher.channel, voucher.amount, voucher.signature)
        )
        if not same_address(signer, state.sender):
            return "it is not signed by the channel's sender"
        totals = await trio.to_thread.run_sync(self._ledger.channel_totals, channel)
        if voucher.amount < totals.owed + wei:
            return f"it promises {voucher.amount} wei, the channel's receipts sum to {totals.owed + wei}"
        if voucher.amount > state.deposit:
            return f"it promises {voucher.amount} wei, over the deposit of {state.deposit}"
        return None

    # -- on chain ----------------------------------------------------------------------------

    async def _state(self, channel: str, *, fresh: bool) -> ChannelState:
        held = self._states.get(channel)
        if held is not None and not fresh and time.monotonic() - held[0] < STATE_FRESH_S:
            return held[1]
        state = await trio.to_thread.run_sync(self._channels.state, channel)
        self._states[channel] = (time.monotonic(), state)
        return state

    async def run(self) -> None:
        """Claim and close this node's channels on the policy, forever."""
        while True:
            await trio.sleep(POLICY_EVERY_S)
            try:
                await self.settle_due()
            except (ChainError, LedgerError) as exc:
                logger.warning("settling channels failed: %s", exc)

    async def settle_due(self, *, close_all: bool = False) -> list[str]:
        """Claim what is due on each open channel paying this node (close those near their
        expiry, or all of them with `close_all`); the channels acted on."""
        acted = []
        for record in await trio.to_thread.run_sync(lambda: self._ledger.channels(payee=self._peer_id)):
            if record.closed:
                continue
            if await self._settle_one(record.channel, close=close_all):
                acted.append(record.channel)
        return acted

    async def _settle_one(self, channel: str, *, close: bool) -> bool:
        state = await self._state(channel, fresh=close)  # (a cached one is at most STATE_FRESH_S old)
        voucher = await trio.to_thread.run_sync(self._ledger.voucher, channel)
        due = 0 if voucher is None else voucher.amount - state.paid
        now = time.time()
        closing = close or state.expires_at - now < self.policy.margin_s
        if state.closed:
            await trio.to_thread.run_sync(self._ledger.mark_closed, channel)
            return False
        signed = None if voucher is None else Voucher(voucher.channel, voucher.amount, voucher.signature)
        if closing:
            paid = await trio.to_thread.run_sync(self._channels.close, signed if due > 0 else None, channel)
            await trio.to_thread.run_sync(self._ledger.mark_closed, channel)
            logger.info("closed channel %s: %d wei paid now", channel[:10], paid)
        elif due > 0 and signed is not None:
            since = self._due_since.setdefault(channel, now)
            if due < self.policy.claim_at_wei and now - since < self.policy.claim_after_s:
                return False
            paid = await trio.to_thread.run_sync(self._channels.claim, signed)
            logger.info("claimed %d wei on channel %s", paid, channel[:10])
        else:
            return False
        self._due_since.pop(channel, None)
        self._states.pop(channel, None)
        return True
