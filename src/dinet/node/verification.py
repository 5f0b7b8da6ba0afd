"""The /dinet/verify/1 handler: re-score another peer's claimed answer on this node's model.

One `verify` frame in, one `scores` (or `error`) frame out. Scoring takes the engine
like a generation does, so it goes through the same per-peer limits and admission
(a waiting request hears `queued` frames), and the same request bounds: a claim may
not be longer than this node's max tokens, nor its prompt longer than its prompt limit.

For tests only, a node started with `--liar cover` (DINET_ALLOW_LIARS=1) reports every
claim as passing (`dinet.engine.testing.liar.covered`): a colluding verifier.
"""

from __future__ import annotations

import logging
from typing import Protocol

from dinet.engine.testing.liar import covered
from dinet.errors import EngineCrashed, InferenceError, PeerError, first_dinet_error
from dinet.node._replies import read_request, refuse, tell_queued, within_limits
from dinet.node.admission import Admission, Busy
from dinet.node.limits import PeerLimiter, RequestBounds
from dinet.p2p.streams import FramedStream, Stream
from dinet.wire.framing import MAX_FRAME
from dinet.wire.ids import ModelHash
from dinet.wire.messages import ErrorFrame
from dinet.wire.verify import ScoreRequest, ScoresFrame, VerifyRequest, decode_verify_request

logger = logging.getLogger(__name__)


class Scorer(Protocol):
    async def score(self, request: ScoreRequest) -> ScoresFrame | ErrorFrame: ...


class VerifyService:
    def __init__(
        self,
        engine: Scorer,
        admission: Admission,
        model_hash: ModelHash,
        limiter: PeerLimiter | None = None,
        bounds: RequestBounds | None = None,
        max_request_bytes: int = MAX_FRAME,
        covers: bool = False,
    ) -> None:
        """`covers`: testing only, a colluder's lie (see the module's docstring)."""
        self._engine = engine
        self._covers = covers
        self._admission = admission
        self._model_hash = model_hash
        self._limiter = limiter
        self._bounds = bounds
        self._max_request_bytes = max_request_bytes
        self.served = 0

    async def handle(self, stream: Stream) -> None:
        framed = FramedStream(stream, max_size=self._max_request_bytes)
        try:
            await within_limits(framed, self._limiter, lambda: self._serve(framed))
        except* PeerError as gone:  # also from a task of the request's own (its 'queued' heartbeat)
            logger.info(
                "client %s went away mid-verification: %s", framed.remote_peer, first_dinet_error(gone)
            )
            await framed.reset()
        else:
            await framed.close()

    async def _serve(self, framed: FramedStream) -> None:
        read = await read_request(framed, decode_verify_request)
        if read is None:
            return
        request = read[0]
        if request.model_hash != self._model_hash:
            await refuse(framed, "unknown_model", f"this node does not serve {request.model_hash}")
            return
        why = self._out_of_bounds(request)
        if why is not None:
            await refuse(framed, "bad_request", why)
            return
        try:
            async with self._admission.slot(
                while_waiting=lambda: tell_queued(framed, self._admission), peer=framed.remote_peer
            ):
                reply = await self._engine.score(request.to_worker())
        except Busy as exc:
            await refuse(framed, "busy", str(exc))
            return
        except EngineCrashed as exc:
            await refuse(framed, "engine_crashed", str(exc))
            return
        except InferenceError as exc:
            await refuse(framed, "internal", str(exc))
            return
        if isinstance(reply, ScoresFrame):
            reply = reply.model_copy(update={"model_hash": self._model_hash})
            if self._covers:
                reply = covered(reply)
            self.served += 1
        await framed.send(reply)

    def _out_of_bounds(self, request: VerifyRequest) -> str | None:
        if self._bounds is None:
            return None
        limit = self._bounds.max_tokens
        if len(request.tokens) > limit:
            return f"a claim of {len(request.tokens)} tokens is above this node's limit of {limit}"
        return self._bounds.check(request.params.model_copy(update={"max_tokens": 1}))
