"""The client's end of one stage's session: one long-lived stream, one frame pair per step."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import trio
from libp2p.abc import IHost

from dinet.errors import MalformedMessage, PeerError, PeerStalled, RemoteError
from dinet.p2p.streams import FramedStream, open_framed
from dinet.routing.shard import StageOffer
from dinet.wire.ids import SHARD_PROTOCOL
from dinet.wire.messages import ErrorFrame, GenerationParams
from dinet.wire.shard import (
    HiddenDType,
    ShardAck,
    ShardClose,
    ShardHidden,
    ShardOpen,
    ShardOpened,
    ShardSampled,
    ShardStep,
    decode_shard_reply,
    decode_tensor,
    tensor_frames,
)

OPEN_TIMEOUT_S = 5.0
OPEN_REPLY_S = 30.0  # the stage tokenizes the prompt (first/last) before it answers
STEP_STALL_S = 10.0  # a decode step this late means the stage is gone or stuck
STALL_PER_ROW_S = 0.05  # prefill steps may take longer

_DTYPE_NAMES = {np.dtype("int32"): "i32", np.dtype("float32"): "f32", np.dtype("float16"): "f16"}

Tensor = npt.NDArray[np.generic]  # (rows, 1) int32 ids or (rows, n_embd) hidden states


@dataclass
class StageLink:
    offer: StageOffer
    framed: FramedStream
    session_id: str
    n_embd: int
    prompt_ids: tuple[int, ...]
    steps: int = 0

    @property
    def peer_id(self) -> str:
        return self.offer.peer_id

    @classmethod
    async def open(
        cls, host: IHost, offer: StageOffer, model_hash: str, params: GenerationParams, dtype: HiddenDType
    ) -> StageLink:
        peer_id = offer.peer_id
        framed = await open_framed(host, peer_id, SHARD_PROTOCOL, OPEN_TIMEOUT_S)
        session_id = uuid.uuid4().hex
        try:
            await framed.send(ShardOpen(session_id=session_id, model_hash=model_hash,
                                        span=(offer.start, offer.stop), params=params, dtype=dtype))
            reply = await _reply(framed, peer_id, OPEN_REPLY_S)
            if not isinstance(reply, ShardOpened) or reply.session_id != session_id:
                raise MalformedMessage(f"{peer_id} answered an open with {reply.kind}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await framed.reset()
            raise
        return cls(offer, framed, session_id, reply.n_embd, reply.prompt_ids)

    async def step(self, x: Tensor, *, sample: bool) -> Tensor | ShardSampled | None:
        """Send one step; the stage's hidden output, its sampled token, or None (not sampled)."""
        header = ShardStep(session_id=self.session_id, seq=self.steps, rows=x.shape[0],
                           dtype=_DTYPE_NAMES[x.dtype], sample=sample)  # type: ignore[arg-type]
        await self.framed.send_framed(tensor_frames(header, np.ascontiguousarray(x)))
        reply = await _reply(self.framed, self.peer_id, STEP_STALL_S + STALL_PER_ROW_S * x.shape[0])
        if isinstance(reply, ShardSampled) and sample:
            result: Tensor | ShardSampled | None = reply
        elif isinstance(reply, ShardAck) and not sample:
            result = None
        elif isinstance(reply, ShardHidden):
            raw = await _receive(self.framed, self.peer_id, STEP_STALL_S)
            if raw is None:
                raise PeerError(f"{self.peer_id} ended the stream inside a step")
            result = decode_tensor(raw, reply.rows, self.n_embd, reply.dtype)
        else:
            raise MalformedMessage(f"{self.peer_id} answered a step with {reply.kind}")
        if reply.seq != self.steps:
            raise MalformedMessage(f"{self.peer_id} answered step {reply.seq}, expected {self.steps}")
        self.steps += 1
        return result

    async def close(self, *, clean: bool) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            if clean:
                try:
                    await self.framed.send(ShardClose(session_id=self.session_id))
                except PeerError:
                    pass  # gone already: its session is freed with the stream
                await self.framed.close()
            else:
                await self.framed.reset()


async def _receive(framed: FramedStream, peer_id: str, stall_s: float) -> bytes | None:
    try:
        with trio.fail_after(stall_s):
            return await framed.receive()
    except trio.TooSlowError:
        raise PeerStalled(f"{peer_id} sent nothing for {stall_s:.1f} s") from None


async def _reply(
    framed: FramedStream, peer_id: str, stall_s: float
) -> ShardOpened | ShardHidden | ShardSampled | ShardAck:
    payload = await _receive(framed, peer_id, stall_s)
    if payload is None:
        raise PeerError(f"{peer_id} ended the shard stream")
    reply = decode_shard_reply(payload)
    if isinstance(reply, ErrorFrame):
        raise RemoteError(reply.code, reply.message)
    return reply
