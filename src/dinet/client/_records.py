"""What one request leaves behind, written in one place for every way of answering.

Both strategies (a whole-model peer, a chain of stages) report here what happened:
which peers produced which tokens, who failed and who answered; a whole-model peer's
receipt is checked and kept here; a verification's outcome is shared out here among
the peers whose tokens were checked. The network's health book (back-off), reputation
book and ledger are written nowhere else on the request path.

Pipeline stages issue no payment receipts (yet): their receipts of work are checked
by `dinet.client.stage_audit`, and they only earn or lose reputation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import trio

from dinet.client.network import Network
from dinet.client.verify import Verification
from dinet.errors import BadReceipt, LedgerError, PeerUnreachable, RemoteError
from dinet.ledger.store import ChannelPayment
from dinet.p2p.streams import FramedStream
from dinet.routing.select import PeerView
from dinet.trust.outcomes import VerificationOutcome
from dinet.trust.reputation import Event
from dinet.wire.ids import ModelHash, PeerId, RequestId
from dinet.wire.messages import CountersignedReceipt, EndFrame, InferRequest
from dinet.wire.receipt import ReceiptBody, check_delivery, countersign, verify_node_signature

logger = logging.getLogger(__name__)

_NO_REQUEST = RequestId("")


class Records:
    """One request's books: its receipts, and what it tells of each peer."""

    def __init__(
        self, network: Network, request_id: RequestId = _NO_REQUEST, max_price: float | None = None
    ) -> None:
        self._network = network
        self.request_id = request_id
        self.max_price = max_price  # no receipt above it is countersigned
        self.receipts: list[CountersignedReceipt] = []  # countersigned and kept in the ledger
        self.refused: list[str] = []  # why a peer's receipt was refused
        self._segments: list[tuple[tuple[PeerId, ...], int]] = []  # (peers, index of their first token)

    # -- who produced what ----------------------------------------------------------------

    def produced_by(self, peers: tuple[PeerId, ...], first_index: int) -> None:
        """From completion token `first_index` on, `peers` produce the answer (one whole-model
        peer, or every stage of a chain)."""
        if self._segments and self._segments[-1][1] == first_index:
            self._segments.pop()  # the last ones gave no token: they produced nothing
        if not self._segments or self._segments[-1][0] != peers:
            self._segments.append((peers, first_index))

    @property
    def producers(self) -> frozenset[PeerId]:
        return frozenset(p for peers, _ in self._segments for p in peers)

    # -- reputation and back-off ----------------------------------------------------------

    async def answered(self, peers: Iterable[PeerId], *, slow: Iterable[PeerId] = ()) -> None:
        """These peers gave a complete answer (and those in `slow` far slower than they claim)."""
        events = [(p, Event.SUCCESS) for p in peers] + [(p, Event.SLOW) for p in slow]
        for peer_id, _ in events:
            self._network.health.answered(peer_id)
        await self._network.note_all(events)

    async def failed(self, peer_id: PeerId, cause: BaseException | str) -> float:
        """Back the peer off; the seconds it is backed off for.

        Its reputation suffers only for what the peer did: a stream that never opened, or a
        stage that could not reach the next one, says more about the path than the peer
        (back-off and liveness probes deal with those)."""
        backoff = self._network.health.failed(peer_id, trio.current_time())
        path_problem = isinstance(cause, PeerUnreachable) or (
            isinstance(cause, RemoteError) and cause.code == "relay_failed"
        )
        if not path_problem:
            await self._network.note(peer_id, Event.FAILURE)
        return backoff

    # -- receipts -------------------------------------------------------------------------

    async def settle(
        self,
        framed: FramedStream,
        peer: PeerView,
        request: InferRequest,
        digest: str,
        token_ids: list[int],
        end: EndFrame,
    ) -> None:
        """Check a whole-model peer's receipt against what it delivered; countersign, send
        back on `framed` and keep it.

        A receipt that does not match is refused (never countersigned) and the peer is
        backed off as if it had failed; the answer itself stands.
        """
        peer_id = peer.peer_id
        if end.receipt is None:
            logger.info("peer %s sent no receipt", peer_id)
            return
        try:
            body = verify_node_signature(end.receipt)
            check_delivery(
                body,
                node=peer_id,
                client=self._network.peer_id,
                request_id=request.request_id,
                request_hash=digest,
                model_hash=end.model_hash,
                first_index=len(request.params.prefix_tokens),
                token_ids=token_ids,
                prompt_tokens=end.usage.prompt_tokens,
                max_price_prompt=_cap(peer.price_per_prompt_token, self.max_price),
                max_price=_cap(peer.price_per_token, self.max_price),
            )
        except BadReceipt as exc:
            logger.warning("refused the receipt of %s: %s", peer_id, exc)
            self.refused.append(str(exc))
            await self.failed(peer_id, exc)
            return
        receipt = countersign(end.receipt, self._network.key)
        paid = await self._payment(peer_id, request.channel, body)
        if paid is not None:
            receipt = receipt.model_copy(update={"voucher": paid.voucher})
        ledger = self._network.ledger
        kept = True
        if ledger is not None:
            try:  # before the voucher leaves: a crash must not make us sign a lower sum later
                await trio.to_thread.run_sync(ledger.record, receipt, paid)
            except LedgerError as exc:
                logger.warning("receipt of %s not kept: %s", peer_id, exc)
                self.refused.append(str(exc))
                kept = False
                receipt = receipt.model_copy(update={"voucher": None})  # nothing promised unkept
        await framed.send(receipt)
        if kept:
            self.receipts.append(receipt)

    async def _payment(
        self, peer_id: PeerId, channel: str | None, body: ReceiptBody
    ) -> ChannelPayment | None:
        """The voucher that pays for `body` on the request's channel, if it named one."""
        book = self._network.payments
        manifest = self._network.directory.get(peer_id)
        if channel is None or book is None or manifest is None or manifest.payment is None:
            return None
        return await book.payment(channel, body, manifest.payment)

    # -- verification ---------------------------------------------------------------------

    async def verified(self, verification: Verification, n_tokens: int, model_hash: ModelHash) -> None:
        """Tell `network.outcomes` how each producing peer's share of the answer fared: each
        stage of a chain answers for every token the chain produced while it was in it.
        A verifier the majority of verifiers overruled counts as a liar (`overruled`)."""
        await self._network.note_all([(v, Event.OVERRULED) for v in verification.overruled])
        outcomes = self._network.outcomes
        if verification.verified is None or verification.verifier is None or outcomes is None:
            return
        bounds = [start for _, start in self._segments[1:]] + [n_tokens]
        for (peers, start), end in zip(self._segments, bounds, strict=True):
            if end <= start:
                continue  # these peers produced nothing
            bad = tuple(i for i in verification.bad_positions if start <= i < end)
            for peer_id in peers:
                outcomes.record_outcome(
                    peer_id,
                    VerificationOutcome(
                        kind="verification",
                        passed=not bad,
                        verifier=verification.verifier,
                        model_hash=model_hash,
                        checked=end - start,
                        bad_positions=bad,
                        request_id=self.request_id,
                    ),
                )


def _cap(advertised: float, limit: float | None) -> float:
    return advertised if limit is None else min(advertised, limit)
