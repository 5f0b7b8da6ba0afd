"""The /dinet/infer/1 handler: one request in, a stream of token frames, then end or error."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from dinet.errors import (
    EngineCrashed,
    EngineUnavailable,
    InferenceError,
    PeerError,
    first_dinet_error,
)
from dinet.node._replies import read_request, refuse, tell_queued, within_limits
from dinet.node.admission import Admission, Busy
from dinet.node.limits import PeerLimiter, RequestBounds
from dinet.node.payments import Reservation
from dinet.node.probation import ClientProbation
from dinet.node.receipts import Accountant
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.framing import MAX_FRAME
from dinet.wire.ids import ModelHash
from dinet.wire.messages import (
    EndFrame,
    ErrorFrame,
    GenerationParams,
    InferRequest,
    TokenFrame,
    decode_request,
)
from dinet.wire.receipt import SignedReceipt, request_hash

logger = logging.getLogger(__name__)

# A deadline is refused only when the expected time is this much over it: the measured
# figures are averages, and the client capped max_tokens by much the same ones.
DEADLINE_SLACK = 1.2


class Engine(Protocol):
    def generate(
        self, params: GenerationParams
    ) -> AsyncGenerator[TokenFrame | EndFrame | ErrorFrame, None]: ...

    @property
    def reply_buffered(self) -> bool: ...


@dataclass
class SpeedStats:
    """Recent decode speed and time to first token, smoothed, for the manifest."""

    tokens_per_s: float = 0.0
    ttft_ms: float = 0.0
    served: int = 0

    def record(self, end: EndFrame) -> None:
        weight = 0.3 if self.served else 1.0
        if end.tokens_per_s > 0:
            self.tokens_per_s += weight * (end.tokens_per_s - self.tokens_per_s)
        self.ttft_ms += weight * (end.ttft_ms - self.ttft_ms)
        self.served += 1

    def expected_s(self, params: GenerationParams) -> float:
        """How long an answer of at most `params.max_tokens` should take; 0 before the
        first measurement (unknown)."""
        if not self.served or self.tokens_per_s <= 0:
            return 0.0
        tokens = params.max_tokens - len(params.prefix_tokens)
        return self.ttft_ms / 1000 + max(tokens, 0) / self.tokens_per_s


class InferenceService:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        model_id: str,
        model_hash: ModelHash,
        accountant: Accountant | None = None,
        limiter: PeerLimiter | None = None,
        bounds: RequestBounds | None = None,
        max_request_bytes: int = MAX_FRAME,
        on_request: Callable[[bool], None] = lambda busy: None,
        probation: ClientProbation | None = None,
    ) -> None:
        """`on_request(busy)`: told of every request for the model that is admitted or
        refused for want of capacity (busy or deadline), the node's demand records.
        `probation`: clients without standing here are refused large requests."""
        self.probation = probation
        self._engine = engine
        self._on_request = on_request
        self.admission = admission
        self._model_id = model_id
        self._model_hash = model_hash
        self.accountant = accountant
        self.stats = SpeedStats()
        self.limiter = limiter
        self._bounds = bounds
        self._max_request_bytes = max_request_bytes

    async def handle(self, stream: Stream) -> None:
        framed = FramedStream(stream, max_size=self._max_request_bytes)
        try:
            await self._serve(framed)
        except* PeerError as gone:  # also from a task of the request's own (its 'queued' heartbeat)
            logger.info("client %s went away mid-request: %s", framed.remote_peer, first_dinet_error(gone))
            await framed.reset()
        else:
            await framed.close()

    async def _serve(self, framed: FramedStream) -> None:
        await within_limits(framed, self.limiter, lambda: self._serve_request(framed))

    async def _serve_request(self, framed: FramedStream) -> None:
        read = await read_request(framed, decode_request)
        if read is None:
            return
        request, payload = read
        if not self._serves(request):
            wanted = request.model_hash or request.model_id
            await refuse(framed, "unknown_model", f"this node does not serve {wanted}")
            return
        out_of_bounds = None if self._bounds is None else self._bounds.check(request.params)
        if out_of_bounds is not None:
            await refuse(framed, "bad_request", out_of_bounds)
            return
        too_large = (
            None if self.probation is None else self.probation.refusal(framed.remote_peer, request.params)
        )
        if too_large is not None and not self._paid_by_channel(request):  # a deposit is standing enough
            await refuse(framed, "probation", too_large)
            return
        debts = None if self.accountant is None else self.accountant.debts
        in_debt = (
            None
            if debts is None or self._paid_by_channel(request)
            else await debts.refusal(framed.remote_peer)
        )
        if in_debt is not None:
            await refuse(framed, "payment_required", in_debt)
            return
        expected_s = self.stats.expected_s(request.params)
        missed = self._misses_deadline(request, expected_s)
        if missed is not None:
            self._on_request(True)
            await refuse(framed, "deadline", missed)
            return
        accountant = self.accountant
        payments = None if accountant is None else accountant.payments
        reservation = None
        if payments is not None:
            admitted = await payments.admit(framed.remote_peer, request)
            if isinstance(admitted, str):
                await refuse(framed, "payment_required", admitted)
                return
            reservation = admitted
        try:
            await self._admitted(framed, request, payload, expected_s, reservation)
        finally:
            if payments is not None and reservation is not None:
                payments.release(reservation)

    async def _admitted(
        self,
        framed: FramedStream,
        request: InferRequest,
        payload: bytes,
        expected_s: float,
        reservation: Reservation | None,
    ) -> None:
        accountant = self.accountant
        priority = 0.0
        if accountant is not None and accountant.priority:
            priority = await accountant.standing(framed.remote_peer)
        busy = False
        try:
            async with self.admission.slot(
                while_waiting=lambda: tell_queued(framed, self.admission),
                priority=priority,
                peer=framed.remote_peer,
                expected_s=expected_s,
            ):
                signed = await self._generate(framed, request, request_hash(payload))
        except Busy as exc:
            busy = True
            await refuse(framed, "busy", str(exc))
            return
        finally:
            self._on_request(busy)
        if signed is not None and accountant is not None:
            if reservation is not None and accountant.payments is not None:
                accountant.payments.answered(reservation)
            # Outside the slot: a client taking its time to countersign holds up nobody.
            settled = await accountant.settle(framed, signed, request.channel)
            if settled is not None and self.probation is not None:
                self.probation.settled(framed.remote_peer)

    def _paid_by_channel(self, request: InferRequest) -> bool:
        """Whether the request names a channel that this node checks before serving."""
        payments = None if self.accountant is None else self.accountant.payments
        return payments is not None and request.channel is not None

    def _misses_deadline(self, request: InferRequest, expected_s: float) -> str | None:
        """Why the request's deadline cannot be met here (the wait for a slot, then the
        answer at the measured speed), or None if it can or nothing is measured yet."""
        if request.deadline_ms is None or expected_s <= 0:
            return None
        total_s = self.admission.expected_wait_s() + expected_s
        if total_s <= request.deadline_ms / 1000 * DEADLINE_SLACK:
            return None
        return f"expected to answer in {total_s:.1f} s, over the {request.deadline_ms} ms deadline"

    def _serves(self, request: InferRequest) -> bool:
        if request.model_hash is not None and request.model_hash != self._model_hash:
            return False
        return request.model_id is None or request.model_id == self._model_id

    async def _generate(
        self, framed: FramedStream, request: InferRequest, request_digest: str
    ) -> SignedReceipt | None:
        """Stream the answer; the receipt sent in its end frame, if this node issues them."""
        # The worker writes tokens in batches; pass each batch on in one write.
        batch: list[TokenFrame | EndFrame | ErrorFrame] = []
        sent: list[int] = []  # token ids, for the receipt's count and output hash
        receipt: SignedReceipt | None = None
        try:
            async with aclosing(self._engine.generate(request.params)) as frames:
                async for frame in frames:
                    if isinstance(frame, TokenFrame):
                        sent.append(frame.token_id)
                    elif isinstance(frame, EndFrame):
                        frame = frame.model_copy(
                            update={"model_id": self._model_id, "model_hash": self._model_hash}
                        )
                        self.stats.record(frame)
                        if self.accountant is not None:
                            receipt = self.accountant.issue(
                                request_id=request.request_id,
                                request_hash=request_digest,
                                client=framed.remote_peer,
                                first_index=len(request.params.prefix_tokens),
                                token_ids=sent,
                                end=frame,
                            )
                            frame = frame.model_copy(update={"receipt": receipt})
                    batch.append(frame)
                    if not isinstance(frame, TokenFrame) or not self._engine.reply_buffered:
                        await framed.send_all(batch)
                        batch = []
        except EngineCrashed as exc:
            await framed.send_all(batch)  # the tokens made before the crash still count
            await refuse(framed, "engine_crashed", str(exc))
            return None
        except EngineUnavailable as exc:  # the engine gave up on this model: ask another peer
            await refuse(framed, "unknown_model", f"model unavailable here: {exc}")
            return None
        except InferenceError as exc:
            await refuse(framed, "internal", str(exc))
            return None
        return receipt
