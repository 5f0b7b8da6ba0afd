"""The /dinet/shard/1 handler: sessions of one pipeline stage, one stream each.

A stream carries one session at a time: `shard_open`, then steps (a JSON header and
one raw tensor frame each), then `shard_close` or the end of the stream; either frees
the session's KV cache. Steps run one at a time per stage on the stage's compute
thread (`engine.torch._compute_thread`): torch releases the GIL inside its kernels, and a
thread hand-off costs far less per token than a pipe to another process would.

A session opened with a relay does not answer its steps: each output goes on as a
step of the next stage's session, over one stream this stage opens to it, and the
last stage's chosen token goes back to the first stage as its next step. A token then
costs three messages around the ring instead of six through the client. The last
stage still sends the client its `shard_sampled` replies (gathered, `TELL_EVERY_S`); a
relay that breaks is reported to the client as `relay_failed`, or as `unknown_session`
when the next stage has lost its session (the client replays it there).

A session opened with a `nonce` is checked: the stage keeps its steps, and on any stream
signs a receipt over their digests (`shard_receipt_query`) or, given the audit seed the
session was opened with, sends them all for a replay elsewhere (`shard_reveal`).

Errors a client can act on keep the stream open (`unknown_session`, `bad_request`
for a step the stage cannot take); a malformed or oversized frame closes it. The
node keeps serving everyone else either way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import trio

from dinet.engine.torch._compute_thread import ComputeThread
from dinet.engine.torch._stage import Sampled, Stage, StageRequestError, StageSession
from dinet.engine.torch.stage_process import RemoteSession, StageProcess
from dinet.errors import BadShardInput, FrameTooLarge, MalformedMessage, PeerError
from dinet.node._replies import refuse
from dinet.node._sessions import SessionTable
from dinet.p2p.host import PeerHost
from dinet.p2p.streams import FramedStream, Stream, open_framed
from dinet.wire.framing import encode_frame
from dinet.wire.ids import SHARD_PROTOCOL, ModelHash
from dinet.wire.keys import is_peer_id
from dinet.wire.messages import ErrorCode, ErrorFrame, encode
from dinet.wire.shard import (
    ShardAck,
    ShardClose,
    ShardHidden,
    ShardOpen,
    ShardOpened,
    ShardReceipt,
    ShardReceiptQuery,
    ShardRelay,
    ShardReveal,
    ShardRevealed,
    ShardSampled,
    ShardStep,
    decode_shard_reply,
    decode_shard_request,
    decode_tensor,
    rows_per_frame,
    tensor_frames,
)
from dinet.wire.stage_receipt import MAX_RECEIPT_STEPS, StageReceiptBody, audit_commitment, sign_stage_receipt

logger = logging.getLogger(__name__)
T = TypeVar("T")

OPEN_WAIT_S = 10.0  # a new stream must open a session this soon
RAW_WAIT_S = 10.0  # a step's tensor frame must follow its header this soon
EXPIRE_EVERY_S = 1.0
BUSY_FOR_S = 1.0  # a stage that stepped this recently is serving: its chores wait
RELAY_OPEN_S = 5.0  # the next stage must take a stream this soon
# The last stage of a relay sends its tokens to the client at most this often (the first
# and the last at once). A write per token, and the client's work on it, cost the stages
# their shared cores: a 3-stage chain on 2 cores gave 44.7 tok/s so, 52.8 with a write
# every 4 tokens, 54.6 every 16 (one run each). 0.1 s is still ten updates a second.
TELL_EVERY_S = 0.1


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal


@dataclass
class _Relay:
    """Where a relayed session's outputs go, and the client to tell when that fails."""

    target: ShardRelay
    client: FramedStream  # the stream the session was opened on
    link: FramedStream | None = None  # to the target, opened at the first step passed on
    watch: trio.CancelScope = field(default_factory=trio.CancelScope)
    failed: bool = False
    untold: list[ShardSampled] = field(default_factory=list)  # tokens the client has not been sent
    told_at: float = 0.0


@dataclass(frozen=True)
class _Check:
    """What a checked session's receipt names besides its steps."""

    nonce: str
    audit_commit: str


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
        self,
        stage: Stage | StageProcess,
        compute: ComputeThread,
        model_hash: ModelHash,
        span: tuple[int, int],
        host: PeerHost,
        *,
        max_kv_bytes: int,
        idle_s: float,
    ) -> None:
        self._host = host
        self._me = host.peer_id
        self._relays: dict[str, _Relay] = {}  # session id -> its relay, if it has one
        self._checks: dict[str, _Check] = {}  # session id -> its check, if it is checked
        self._tasks: trio.Nursery | None = None  # relay watchers run here
        self._stage = stage
        self._compute = compute  # the one thread of all of this stage's torch calls, in order
        self._model_hash = model_hash
        self.span = span
        self.table: SessionTable[StageSession | RemoteSession] = SessionTable(max_kv_bytes, idle_s)
        self.stats = StageStats()
        self._max_rows = rows_per_frame(stage.model.n_embd)
        self._last_step_at = -math.inf  # trio time

    def busy(self) -> bool:
        """A step ran within the last BUSY_FOR_S: a chain is going through this stage."""
        return trio.current_time() - self._last_step_at < BUSY_FOR_S

    @property
    def active(self) -> int:
        return len(self.table)

    async def run(self) -> None:
        """Evict idle sessions and watch relays, forever."""
        async with trio.open_nursery() as nursery:
            self._tasks = nursery
            while True:
                self.table.expire(trio.current_time())
                await trio.sleep(EXPIRE_EVERY_S)

    async def handle(self, stream: Stream) -> None:
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
                await self._drop(session_id)
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
                elif isinstance(message, ShardReceiptQuery):
                    await self._receipt(framed, message.session_id)
                elif isinstance(message, ShardReveal):
                    await self._reveal(framed, message)
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
        if message.relay is not None and not is_peer_id(message.relay.peer_id):
            raise _Refused("bad_request", "the relay's peer id is not a peer id")
        if (message.nonce is None) != (message.audit_commit is None):
            raise _Refused("bad_request", "a checked session takes a nonce and an audit_commit together")
        checked = message.nonce is not None
        try:
            opened: Callable[[], StageSession | RemoteSession] = partial(
                self._stage.open, message.params, message.dtype, message.draft, checked=checked
            )
            session = await self._compute.run(opened)
        except StageRequestError as exc:
            raise _Refused("bad_request", str(exc)) from None
        for session_id in owned:  # one session per stream: a new open replaces the old one
            await self._drop(session_id)
        owned.clear()
        owned.add(message.session_id)
        await self._drop(message.session_id)  # an id opened again starts afresh
        self.table.add(message.session_id, session, trio.current_time())
        if message.relay is not None:
            self._relays[message.session_id] = _Relay(message.relay, framed)
        if message.nonce is not None and message.audit_commit is not None:
            self._checks[message.session_id] = _Check(message.nonce, message.audit_commit)
        self.table.end(message.session_id, trio.current_time())
        await framed.send(
            ShardOpened(
                session_id=message.session_id, n_embd=self._stage.model.n_embd, prompt_ids=session.prompt_ids
            )
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
        next_step: tuple[ShardStep, npt.NDArray[np.generic]] | None = (step, x)
        while next_step is not None:  # a relay to a session of this same stage goes round here
            step, x = next_step
            session, out = await self._compute_step(step, x)
            relay = self._relays.get(step.session_id)
            if relay is None:
                await self._answer(framed, step, session, out)
                return
            next_step = await self._pass_on(relay, step, session, out)

    async def _compute_step(
        self, step: ShardStep, x: npt.NDArray[np.generic]
    ) -> tuple[StageSession | RemoteSession, npt.NDArray[np.floating] | tuple[Sampled, ...] | None]:
        session = self.table.begin(step.session_id, trio.current_time())
        if session is None:
            raise _Refused("unknown_session", self.table.why_missing(step.session_id))
        try:
            if step.seq != session.steps:
                raise _Refused("bad_request", f"step {step.seq} arrived, expected step {session.steps}")
            started = time.perf_counter()
            try:
                out = await self._compute.run(
                    partial(session.forward, x, step.sample, keep=step.keep, draft=step.draft)
                )
            except (StageRequestError, BadShardInput) as exc:
                raise _Refused("bad_request", str(exc)) from None
            except RuntimeError as exc:  # torch's own failures: this session cannot go on
                self.table.remove(step.session_id)
                raise _Refused("internal", f"the stage failed: {exc}", fatal=True) from None
            if step.rows == 1:
                self.stats.record(time.perf_counter() - started)
        finally:
            self._last_step_at = trio.current_time()
            self.table.end(step.session_id, self._last_step_at)
        return session, out

    async def _answer(
        self,
        framed: FramedStream,
        step: ShardStep,
        session: StageSession | RemoteSession,
        out: npt.NDArray[np.floating] | tuple[Sampled, ...] | None,
    ) -> None:
        """The step's output, back to whoever sent the step."""
        if out is None:
            await framed.send(ShardAck(seq=step.seq))
        elif isinstance(out, tuple):
            await framed.send_all([_sampled(step, one) for one in out])
        else:
            header = ShardHidden(seq=step.seq, rows=len(out), dtype=session.dtype)
            await framed.send_framed(tensor_frames(header, out))

    async def _pass_on(
        self,
        relay: _Relay,
        step: ShardStep,
        session: StageSession | RemoteSession,
        out: npt.NDArray[np.floating] | tuple[Sampled, ...] | None,
    ) -> tuple[ShardStep, npt.NDArray[np.generic]] | None:
        """Send the output on as the relay's next step; that step, if it is this stage's own."""
        if relay.failed or out is None:  # failed: the client replaces the chain; None: a prompt chunk
            return None
        target = relay.target.session_id
        if isinstance(out, tuple):
            if out[-1].finish_reason is not None:
                await self._tell_client(relay, [_sampled(step, one) for one in out])
                return None
            # The last token chosen is the first stage's next step (seq counts the same on
            # every stage); `keep` drops the rows of guesses that were not taken.
            on = ShardStep(session_id=target, seq=step.seq + 1, rows=1, dtype="i32", keep=session.held)
            data: npt.NDArray[np.generic] = np.array([[out[-1].token_id]], dtype=np.int32)
        else:
            on = ShardStep(
                session_id=target,
                seq=step.seq,
                rows=len(out),
                dtype=session.dtype,
                sample=step.sample,
                keep=step.keep,
                draft=session.draft_out,
            )
            data = out
        if relay.target.peer_id == self._me:
            if isinstance(out, tuple):
                await self._tell_client(relay, [_sampled(step, one) for one in out])
            return on, data
        await self._send_on(relay, on, data)
        if isinstance(out, tuple):  # after the next step is on its way: that is the critical path
            await self._tell_client(relay, [_sampled(step, one) for one in out])
        return None

    async def _send_on(self, relay: _Relay, step: ShardStep, data: npt.NDArray[np.generic]) -> None:
        try:
            if relay.link is None:
                relay.link = await self._dial(relay.target)
                assert self._tasks is not None, "ShardService.run() is not running"
                self._tasks.start_soon(self._watch, relay)
            await relay.link.send_framed(tensor_frames(step, data))
        except PeerError as exc:
            await self._relay_failed(relay, "relay_failed", str(exc))

    async def _dial(self, target: ShardRelay) -> FramedStream:
        if target.addrs and not self._host.known_addrs(target.peer_id):
            # The client's addresses only fill a gap, never replace ours.
            self._host.remember_addrs(target.peer_id, target.addrs)
        return await open_framed(self._host, target.peer_id, SHARD_PROTOCOL, RELAY_OPEN_S)

    async def _watch(self, relay: _Relay) -> None:
        """The next stage answers a relayed step only when it refuses it: report that."""
        assert relay.link is not None
        with relay.watch:
            code: ErrorCode = "relay_failed"
            try:
                payload = await relay.link.receive()
                reason = "it ended the stream"
                if payload is not None:
                    reply = decode_shard_reply(payload)
                    if isinstance(reply, ErrorFrame):  # a lost session is the client's to replay
                        code = "unknown_session" if reply.code == "unknown_session" else code
                        reason = f"{reply.code}: {reply.message}"
                    else:
                        reason = f"it answered a relayed step with {reply.kind}"
            except (PeerError, MalformedMessage, FrameTooLarge) as exc:
                reason = str(exc)
            await self._relay_failed(relay, code, reason)

    async def _relay_failed(self, relay: _Relay, code: ErrorCode, reason: str) -> None:
        if relay.failed:
            return
        relay.failed = True
        message = f"the next stage {relay.target.peer_id}: {reason}"
        try:
            await refuse(relay.client, code, message)
        except PeerError:
            pass  # the client has gone as well

    async def _tell_client(self, relay: _Relay, chosen: list[ShardSampled]) -> None:
        relay.untold += chosen
        now = trio.current_time()
        last = chosen[-1]
        if last.index > 0 and last.finish_reason is None and now - relay.told_at < TELL_EVERY_S:
            return
        told, relay.untold, relay.told_at = relay.untold, [], now
        try:
            await relay.client.send_all(told)
        except PeerError:
            relay.failed = True  # nobody to answer: stop the ring here

    async def _checked(
        self, session_id: str, read: Callable[[StageSession | RemoteSession], T | None]
    ) -> tuple[_Check, T]:
        """`read(session)` of a checked session, on the compute thread (the stage's worker
        holds what it reads, if it has one)."""
        session = self.table.begin(session_id, trio.current_time())
        if session is None:
            raise _Refused("unknown_session", self.table.why_missing(session_id))
        try:
            got = await self._compute.run(lambda: read(session))
        finally:
            self.table.end(session_id, trio.current_time())
        check = self._checks.get(session_id)
        if check is None or got is None:
            raise _Refused("bad_request", f"session {session_id} was not opened to be checked")
        return check, got

    async def _receipt(self, framed: FramedStream, session_id: str) -> None:
        """The signed digests of every step of a checked session so far."""
        check, steps = await self._checked(session_id, lambda session: session.digests())
        if len(steps) > MAX_RECEIPT_STEPS:
            raise _Refused("bad_request", f"{len(steps)} steps: a receipt signs at most {MAX_RECEIPT_STEPS}")
        span = self.span
        if self._stage.lie is not None and self._stage.lie.kind == "stage-forge":
            span = (span[0], span[1] + 1)  # a lie, for tests only: blocks it does not hold
        body = StageReceiptBody(
            nonce=check.nonce,
            session_id=session_id,
            node=self._me,
            model_hash=self._model_hash,
            span=span,
            audit_commit=check.audit_commit,
            steps=tuple(steps),
        )
        await framed.send(ShardReceipt(receipt=sign_stage_receipt(body, self._host.key)))

    async def _reveal(self, framed: FramedStream, reveal: ShardReveal) -> None:
        """Every step of a checked session, in and out, to the client that holds its audit seed."""
        check, steps = await self._checked(reveal.session_id, lambda session: session.log)
        if audit_commitment(bytes.fromhex(reveal.seed)) != check.audit_commit:
            raise _Refused("bad_request", "the seed is not the one the session was opened with")
        for seq, r in enumerate(steps):
            header = ShardRevealed(
                seq=seq,
                rows=r.rows,
                dtype=r.dtype,
                sample=r.sample,
                keep=r.keep,
                draft=r.draft,
                out_rows=r.out_rows,
                out_dtype=r.out_dtype,
            )
            frames = [encode_frame(encode(header)), encode_frame(r.data_in)]
            await framed.send_framed(b"".join(frames + ([encode_frame(r.data_out)] if r.out_rows else [])))

    async def _drop(self, session_id: str) -> None:
        """Free a session and close its relay."""
        self.table.remove(session_id)
        self._checks.pop(session_id, None)
        relay = self._relays.pop(session_id, None)
        if relay is not None:
            relay.failed = True
            relay.watch.cancel()
            if relay.link is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    await relay.link.close()


def _sampled(step: ShardStep, out: Sampled) -> ShardSampled:
    return ShardSampled(
        seq=step.seq,
        index=out.index,
        token_id=out.token_id,
        frames=out.frames,
        finish_reason=out.finish_reason,
    )
