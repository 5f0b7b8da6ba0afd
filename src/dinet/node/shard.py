"""The /dinet/shard/1 handler: sessions of one pipeline stage, one stream each.

A stream carries one session at a time: `shard_open`, then steps (a JSON header and
one raw tensor frame each), then `shard_close` or the end of the stream; either frees
the session's KV cache. Steps run one at a time per stage on the stage's compute
thread (`engine._compute_thread`): torch releases the GIL inside its kernels, and a
thread hand-off costs far less per token than a pipe to another process would.

Errors a client can act on keep the stream open (`unknown_session`, `bad_request`
for a step the stage cannot take); a malformed or oversized frame closes it. The
node keeps serving everyone else either way.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial

import numpy as np
import trio
from libp2p.abc import INetStream

from dinet.engine._compute_thread import ComputeThread
from dinet.engine._stage import Sampled, Stage, StageRequestError, StageSession
from dinet.errors import BadShardInput, FrameTooLarge, MalformedMessage, PeerError
from dinet.node._replies import refuse
from dinet.node._sessions import SessionTable
from dinet.p2p.streams import FramedStream
from dinet.wire.messages import ErrorCode
from dinet.wire.shard import (
    ShardAck,
    ShardClose,
    ShardHidden,
    ShardOpen,
    ShardOpened,
    ShardSampled,
    ShardStep,
    decode_shard_request,
    decode_tensor,
    rows_per_frame,
    tensor_frames,
)

logger = logging.getLogger(__name__)

OPEN_WAIT_S = 10.0  # a new stream must open a session this soon
RAW_WAIT_S = 10.0  # a step's tensor frame must follow its header this soon
EXPIRE_EVERY_S = 1.0


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal


@dataclass
class StageStats:
    """Smoothed single-token step time, advertised as the stage's tokens per second."""

    step_s: float = 0.0

    def record(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s == 0 else self.step_s + 0.2 * (seconds - self.step_s)

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.step_s if self.step_s > 0 else 0.0


class ShardService:
    def __init__(
        self, stage: Stage, compute: ComputeThread, model_hash: str, span: tuple[int, int], *,
        max_kv_bytes: int, idle_s: float,
    ) -> None:
        self._stage = stage
        self._compute = compute  # the one thread of all of this stage's torch calls, in order
        self._model_hash = model_hash
        self.span = span
        self.table: SessionTable[StageSession] = SessionTable(max_kv_bytes, idle_s)
        self.stats = StageStats()
        self._max_rows = rows_per_frame(stage.model.n_embd)

    @property
    def active(self) -> int:
        return len(self.table)

    async def expire_sessions(self) -> None:
        """Evict idle sessions, forever."""
        while True:
            self.table.expire(trio.current_time())
            await trio.sleep(EXPIRE_EVERY_S)

    async def handle(self, stream: INetStream) -> None:
        framed = FramedStream(stream)
        owned: set[str] = set()  # sessions opened on this stream: freed when it ends
        try:
            await self._serve(framed, owned)
        except PeerError as exc:
            logger.info("shard client %s went away: %s", framed.remote_peer, exc)
            await framed.reset()
            return
        finally:
            for session_id in owned:
                self.table.remove(session_id)
        await framed.close()

    async def _serve(self, framed: FramedStream, owned: set[str]) -> None:
        wait_s = OPEN_WAIT_S
        while True:
            try:
                with trio.move_on_after(wait_s) as idle:
                    payload = await framed.receive()
                if idle.cancelled_caught or payload is None:
                    return  # idle streams end; their session was (or will be) expired
                wait_s = self.table.idle_s
                message = decode_shard_request(payload)
                if isinstance(message, ShardClose):
                    return
                if isinstance(message, ShardOpen):
                    await self._open(framed, message, owned)
                else:
                    await self._step(framed, message)
            except _Refused as refused:
                await refuse(framed, refused.code, refused.message)
                if refused.fatal:
                    return
            except FrameTooLarge as exc:
                await refuse(framed, "too_large", str(exc))
                return
            except MalformedMessage as exc:
                await refuse(framed, "bad_request", str(exc))
                return

    async def _open(self, framed: FramedStream, message: ShardOpen, owned: set[str]) -> None:
        if message.model_hash is not None and message.model_hash != self._model_hash:
            raise _Refused("unknown_model", f"this stage does not serve {message.model_hash}")
        if tuple(message.span) != self.span:
            held, asked = list(self.span), list(message.span)
            raise _Refused("wrong_span", f"this stage holds blocks {held}, not {asked}")
        try:
            session = await self._compute.run(partial(self._stage.open, message.params, message.dtype))
        except StageRequestError as exc:
            raise _Refused("bad_request", str(exc)) from None
        for session_id in owned:  # one session per stream: a new open replaces the old one
            self.table.remove(session_id)
        owned.clear()
        owned.add(message.session_id)
        self.table.add(message.session_id, session, trio.current_time())
        self.table.end(message.session_id, trio.current_time())
        await framed.send(
            ShardOpened(session_id=message.session_id, n_embd=self._stage.model.n_embd,
                        prompt_ids=session.prompt_ids)
        )

    async def _step(self, framed: FramedStream, step: ShardStep) -> None:
        raw = None
        with trio.move_on_after(RAW_WAIT_S):
            raw = await framed.receive()
        if raw is None:
            raise _Refused("bad_request", "a step header without its tensor frame", fatal=True)
        width = 1 if step.dtype == "i32" else self._stage.model.n_embd
        x = decode_tensor(raw, step.rows, width, step.dtype)  # (rows, width)
        if step.rows > self._max_rows:
            raise _Refused("bad_request", f"at most {self._max_rows} rows per step")
        session = self.table.begin(step.session_id, trio.current_time())
        if session is None:
            raise _Refused("unknown_session", self.table.why_missing(step.session_id))
        try:
            if step.seq != session.steps:
                raise _Refused("bad_request", f"step {step.seq} arrived, expected step {session.steps}")
            started = time.perf_counter()
            try:
                out = await self._compute.run(partial(session.forward, x, step.sample))
            except (StageRequestError, BadShardInput) as exc:
                raise _Refused("bad_request", str(exc)) from None
            except RuntimeError as exc:  # torch's own failures: this session cannot go on
                self.table.remove(step.session_id)
                raise _Refused("internal", f"the stage failed: {exc}", fatal=True) from None
            if step.rows == 1:
                self.stats.record(time.perf_counter() - started)
        finally:
            self.table.end(step.session_id, trio.current_time())
        if out is None:
            await framed.send(ShardAck(seq=step.seq))
            return
        if isinstance(out, Sampled):
            await framed.send(ShardSampled(seq=step.seq, index=out.index, token_id=out.token_id,
                                           frames=out.frames, finish_reason=out.finish_reason))
            return
        dtype = session.dtype
        hidden = out if dtype == "f32" else out.astype(np.float16)
        header = ShardHidden(seq=step.seq, rows=step.rows, dtype=dtype)
        await framed.send_framed(tensor_frames(header, hidden))

